"""
Where the clicker's shared facts live: device identities, each device's latest accepted score, and
which devices are connected. The adapter asks through IClickerState and gets Deferreds, so one
protocol handler serves one process (LocalState: ClickerCore plus the durable store) and a cluster
(relayd.apps.clicker.cluster.RedisState).
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from relayd.apps.clicker.core import ClickerCore, Latest, Score, secret_key

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
        """
        Fires True once the score is durable as the device's latest, False for a retry of an accepted
        one. A device's scores may be given before earlier ones have fired; each fires only once
        every score given before it for the device is durable (or failed).
        """

    def snapshot(ids: list) -> defer.Deferred:
        """Fires with (the ids connected now, {id: (timestamp, score)} of their latest scores)."""

    def stop() -> None:
        """Stop what start began."""


class _Writing:
    """A score being written: the device's state it makes, and the retries of it waiting for it."""

    __slots__ = ("latest", "retries")

    def __init__(self, latest: Latest):
        self.latest = latest
        self.retries: list[defer.Deferred] = []


@implementer(IClickerState)
class LocalState:
    def __init__(self, core: ClickerCore, store, clock):
        self.core = core
        self.store = store
        self.clock = clock
        self._writing: dict[str, deque[_Writing]] = {}  # device -> its scores being written, oldest first

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

    def score(self, device, score):
        # a device's scores may be written while earlier ones still are (the store commits them in
        # order, a device's waiting writes together): each is proposed on the newest state written or
        # being written, and a retry of any of them answers once everything before it is durable
        writing = self._writing.get(device)
        newest = writing[-1] if writing else None
        basis = newest.latest if newest is not None else None
        if self.core.is_retry(device, score.timestamp, basis):
            if newest is None:
                return defer.succeed(False)
            retry: defer.Deferred = defer.Deferred()
            newest.retries.append(retry)
            return retry
        entry = _Writing(self.core.propose(device, score, basis))
        if writing is None:
            writing = self._writing[device] = deque()
        writing.append(entry)
        now = self.clock.seconds()
        d = self.store.put(LATEST, device, {**entry.latest.to_json(), "seen": now})
        return d.addBoth(self._written, device, entry, now)

    def _written(self, result, device: str, entry: "_Writing", now: float):
        writing = self._writing[device]
        writing.remove(entry)  # the oldest: the store completes a device's writes in order
        if not writing:
            del self._writing[device]
        failed = isinstance(result, Failure)
        if not failed:
            self.core.commit(device, entry.latest)
            self.core.seen[device] = now
        for retry in entry.retries:
            if failed:
                retry.errback(result)
            else:
                retry.callback(False)
        return result if failed else True

    def snapshot(self, ids):
        latest = {i: (self.core.latest[i].timestamp, self.core.latest[i].score) for i in ids if i in self.core.latest}
        return defer.succeed((self.core.connected(ids), latest))
