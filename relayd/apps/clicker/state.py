"""
Where the clicker's shared facts live: device identities, each device's latest accepted score, and
which devices are connected. The adapter asks through IClickerState and gets Deferreds, so one
protocol handler serves one process (LocalState: ClickerCore plus the durable store) and a cluster
(relayd.apps.clicker.cluster.RedisState).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import Interface, implementer

from relayd.apps.clicker.core import ClickerCore, Score, secret_key

IDENTITIES = "clicker.identity"
LATEST = "clicker.latest"
SEEN_RESOLUTION = 86400.0  # a known device's REGISTER rewrites its identity's time at most daily


class IClickerState(Interface):
    def start() -> defer.Deferred:
        """Load or prepare what the state needs before the first connection."""

    def identify(secret, may_mint: bool = True) -> defer.Deferred:
        """
        Fires with (device id, secret, minted) once a new identity is durable; without may_mint a
        REGISTER that would mint one fails with the registration quota's ProtocolError.
        """

    def attach(device: str, connection) -> defer.Deferred:
        """
        Make connection the device's live one. Fires with (the connection it replaces on this node or
        None, whether the device was connected anywhere before).
        """

    def detach(device: str, connection) -> defer.Deferred:
        """Fires True when connection was the device's live one (it is now disconnected)."""

    def score(device: str, score: Score) -> defer.Deferred:
        """Fires True once the score is durable as the device's latest, False for a retry of an accepted one."""

    def snapshot(ids: list) -> defer.Deferred:
        """Fires with (the ids connected now, {id: (timestamp, score)} of their latest scores)."""

    def stop() -> None:
        """Stop what start began."""


@implementer(IClickerState)
class LocalState:
    def __init__(self, core: ClickerCore, store, clock):
        self.core = core
        self.store = store
        self.clock = clock

    @defer.inlineCallbacks
    def start(self):
        identities = yield self.store.items(IDENTITIES)
        latest = yield self.store.items(LATEST)
        # identities stored before they carried a time count as seen now
        self.core.load(identities, latest, self.clock.seconds())

    def stop(self):
        pass  # nothing runs between commands

    @defer.inlineCallbacks
    def identify(self, secret, may_mint=True):
        device, secret, new = self.core.identify(secret, may_mint)
        now = self.clock.seconds()
        if new or now - self.core.seen.get(device, 0.0) > SEEN_RESOLUTION:
            try:
                yield self.store.put(IDENTITIES, secret_key(secret), {"id": device, "seen": now})
            except Exception:
                if new:
                    self.core.forget(device, [secret_key(secret)])
                raise
        self.core.seen[device] = now
        return device, secret, new

    @defer.inlineCallbacks
    def expire(self, ttl: float):
        """Remove the identities (and latest scores) of devices unused for ttl seconds; fires with how many."""
        gone = self.core.unused_since(self.clock.seconds() - ttl)
        for device, keys in gone:
            self.core.forget(device, keys)
            for key in keys:
                yield self.store.delete(IDENTITIES, key)
            yield self.store.delete(LATEST, device)
        return len(gone)

    def attach(self, device, connection):
        previous = self.core.attach(device, connection)
        return defer.succeed((previous, previous is not None))

    def detach(self, device, connection):
        return defer.succeed(self.core.detach(device, connection))

    @defer.inlineCallbacks
    def score(self, device, score):
        if self.core.is_retry(device, score.timestamp):
            return False
        latest = self.core.propose(device, score)
        now = self.clock.seconds()
        yield self.store.put(LATEST, device, {**latest.to_json(), "seen": now})
        self.core.commit(device, latest)
        self.core.seen[device] = now
        return True

    def snapshot(self, ids):
        latest = {i: (self.core.latest[i].timestamp, self.core.latest[i].score) for i in ids if i in self.core.latest}
        return defer.succeed((self.core.connected(ids), latest))
