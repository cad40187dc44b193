"""
clicker on many nodes: identities, latest scores and who is connected live in Redis, changed by
Lua scripts, so a device keeps its id on every node and a listener anywhere sees every device.

Keys (under `<prefix>:clicker:`): `identity` (secret digest -> id), `ids` (ids in use), `latest`
(id -> "timestamp score recent,timestamps"; decimal strings, so 64-bit values stay exact), and
`online` (id -> "node\\ntoken" of its live connection).

- A score is acknowledged (SCORED) only after the script wrote it, then published on the bus. Pub/sub
  may miss a node whose subscribing connection is down; when it is back, this node hands every
  listened device's latest score to its listeners again, so an acknowledged score reaches them.
- A device that registers on another node takes over: the node it left hears `Taken` on the
  device's owner channel and closes the old connection (4001) without a disconnect/connect flap.
- The devices of a dead node are marked disconnected by the first node to sweep them (every half
  `node_timeout`), which tells their listeners.
- Each node keeps a copy of what it writes in its own durable store, and after every connection to
  Redis copies its store to Redis where keys are absent: devices keep their ids when a deployment
  moves to several nodes, and when Redis restarts empty.
"""

from __future__ import annotations

import itertools

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from relayd.apps.clicker.core import (
    RECENT_TIMESTAMPS, REGISTRATION_QUOTA, ClickerCore, Event, canonical_secret, device_channel, secret_key,
)
from relayd.apps.clicker.state import IDENTITIES, LATEST, IClickerState
from relayd.backplane import codec
from relayd.backplane.cluster import Cluster, Unavailable
from relayd.errors import StoreUnavailable, ProtocolError
from relayd.periodic import Periodic

_log = Logger()

MAX_IDS = 900_000
_KNOWN, _NEW, _TAKEN, _FULL, _QUOTA = 0, 1, 2, 3, 4

# KEYS: identity, ids. ARGV: known digest or '', new digest, candidate id, max ids, may mint ('1' or '0')
_IDENTIFY = b"""
if ARGV[1] ~= '' then
  local id = redis.call('HGET', KEYS[1], ARGV[1])
  if id then return {id, 0} end
end
if ARGV[5] == '0' then return {'', 4} end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {'', 3} end
if redis.call('SADD', KEYS[2], ARGV[3]) == 0 then return {'', 2} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return {ARGV[3], 1}
"""

# KEYS: online. ARGV: device, this connection's "node\\ntoken". -> the previous holder or false
_ATTACH = b"""
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"""

# KEYS: online. ARGV: device, "node\\ntoken". -> 1 when it was the live connection (now removed)
_DETACH = b"""
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: latest. ARGV: device, timestamp, score, how many timestamps to remember. -> 1 accepted, 0 a retry
_SCORE = b"""
local recent = {}
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local list = string.match(current, '^%S+ %S+ (%S*)$') or ''
  for t in string.gmatch(list, '[^,]+') do
    if t == ARGV[2] then return 0 end
    recent[#recent + 1] = t
  end
end
recent[#recent + 1] = ARGV[2]
while #recent > tonumber(ARGV[4]) do table.remove(recent, 1) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. table.concat(recent, ','))
return 1
"""

# KEYS: online. ARGV: node key prefix. Removes devices whose node has no presence key; -> their ids
_SWEEP = b"""
local entries = redis.call('HGETALL', KEYS[1])
local alive, gone = {}, {}
for i = 1, #entries, 2 do
  local node = string.match(entries[i + 1], '^([^\\n]*)')
  if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1 end
  if not alive[node] then
    redis.call('HDEL', KEYS[1], entries[i])
    gone[#gone + 1] = entries[i]
  end
end
return gone
"""


class Taken:
    """Said on a device's owner channel when a connection (on some node) takes its identity."""

    __slots__ = ("holder",)

    def __init__(self, holder: str):
        self.holder = holder


codec.register(b"k", Taken, lambda m: m.holder.encode(), lambda b: Taken(b.decode()))


def owner_channel(device: str) -> str:
    return "clicker:owner:" + device


def _latest_text(timestamp: int, score: int, recent) -> str:
    return f"{timestamp} {score} {','.join(str(t) for t in recent)}"


@implementer(IClickerState)
class RedisState:
    def __init__(self, core: ClickerCore, cluster: Cluster, bus, store, *, clock):
        self.core = core  # its id and secret generators, this node's live connections and copies of latest scores
        self.cluster = cluster
        self.bus = bus
        self.store = store
        self._tokens = itertools.count(1)
        self._holders: dict[object, tuple[str, object]] = {}  # connection -> (holder text, owner subscription)
        self._pending_detach: list[tuple[str, str]] = []  # detaches Redis did not take while it was away
        self._sweeper = Periodic("clicker online sweeps", cluster.node_timeout / 2, self.sweep, clock=clock, now=False)
        cluster.when_reconnected(self._reconnected)
        bus.subscriber_listeners.append(self.resend_latest)

    def _key(self, name: str) -> str:
        return self.cluster.key("clicker", name)

    def start(self):
        self._sweeper.startService()
        return defer.succeed(None)

    def stop(self):
        if self._sweeper.running:
            self._sweeper.stopService()

    def expire(self, ttl: float):
        """Identities in Redis are not expired yet (docs/protocols/clicker.md, "On several nodes")."""
        return defer.succeed(0)

    # ---- identities ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def identify(self, secret, may_mint=True):
        secret = canonical_secret(secret)
        known = secret_key(secret) if secret is not None else ""
        for _ in range(32):
            new_secret, candidate = self.core.new_secret(), self.core.random_id()
            device, outcome = yield self.cluster.eval(
                _IDENTIFY, [self._key("identity"), self._key("ids")],
                [known, secret_key(new_secret), candidate, MAX_IDS, "1" if may_mint else "0"],
            )
            if outcome == _KNOWN:
                return device.decode(), secret, False
            if outcome == _QUOTA:
                raise REGISTRATION_QUOTA
            if outcome == _NEW:
                self._keep_locally(IDENTITIES, secret_key(new_secret), {"id": device.decode()})
                return device.decode(), new_secret, True
            if outcome == _FULL:
                raise ProtocolError("no_free_ids", "no free device ids left")
        raise ProtocolError("no_free_ids", "no free device id found; try again")

    # ---- who is connected ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def attach(self, device, connection):
        holder = f"{self.cluster.node_id}\n{next(self._tokens)}"

        def taken(message):
            if isinstance(message, Taken) and message.holder != holder and self.core.connections.get(device) is connection:
                # another node's connection took the identity: this one leaves without a disconnect
                del self.core.connections[device]
                self._release(connection)
                connection.replaced()

        subscription = self.bus.subscribe(owner_channel(device), taken)
        self._holders[connection] = (holder, subscription)
        try:
            yield self.bus.when_subscribed(owner_channel(device))
            old = yield self.cluster.eval(_ATTACH, [self._key("online")], [device, holder])
        except Exception:
            self._release(connection)
            raise
        previous = self.core.attach(device, connection)
        if old is not None and previous is None:
            self.bus.publish(owner_channel(device), Taken(holder))
        return previous, old is not None

    def _release(self, connection) -> None:
        entry = self._holders.pop(connection, None)
        if entry is not None:
            entry[1].cancel()

    @defer.inlineCallbacks
    def detach(self, device, connection):
        entry = self._holders.get(connection)
        self._release(connection)
        if not self.core.detach(device, connection) or entry is None:
            return False
        try:
            removed = yield self.cluster.eval(_DETACH, [self._key("online")], [device, entry[0]])
        except Unavailable:
            # Redis is away: the entry stays until this node's presence expires or it reconnects
            self._pending_detach.append((device, entry[0]))
            return True
        return bool(removed)

    # ---- scores --------------------------------------------------------------------------------

    def score(self, device, score):
        d = self.cluster.eval(_SCORE, [self._key("latest")], [device, score.timestamp, score.score, RECENT_TIMESTAMPS])

        def answered(accepted):
            if accepted == 1:
                # the local copy remembers as many recent timestamps as Redis and one node do, so a
                # copy written back after Redis restarts empty still recognises a retried score
                latest = self.core.propose(device, score)
                self.core.commit(device, latest)
                self._keep_locally(LATEST, device, latest.to_json())
            return accepted == 1

        return d.addCallback(answered)

    def _keep_locally(self, namespace: str, key: str, value) -> None:
        """A copy in this node's store, written back to Redis should Redis restart empty."""
        self.store.put(namespace, key, value).addErrback(
            lambda f: None if f.check(StoreUnavailable) else _log.failure("clicker: keeping a local copy failed", f))

    @defer.inlineCallbacks
    def snapshot(self, ids):
        online = yield self.cluster.call("HMGET", self._key("online"), *ids)
        latest = yield self.cluster.call("HMGET", self._key("latest"), *ids)
        connected = [i for i, holder in zip(ids, online) if holder is not None]
        scores = {}
        for device, text in zip(ids, latest):
            if text is not None:
                timestamp, score, _ = text.decode().split(" ", 2)
                scores[device] = (int(timestamp), int(score))
        return connected, scores

    # ---- keeping Redis true --------------------------------------------------------------------

    def sweep(self) -> None:
        if not self.cluster.up:
            return
        d = self.cluster.eval(_SWEEP, [self._key("online")], [self.cluster.node_key("")])

        def swept(gone):
            for device in gone:
                device = device.decode()
                self.bus.publish(device_channel(device), Event("disconnect", device))

        d.addCallbacks(swept, self._failed)

    def resend_latest(self) -> None:
        """After the subscribing connection is back: what listeners here may have missed, the latest scores."""
        prefix = device_channel("")
        devices = [c[len(prefix):] for c in self.bus.local.channels() if c.startswith(prefix)]
        if not devices:
            return

        def got(snapshot):
            for device, (timestamp, score) in snapshot[1].items():
                self.bus.local.publish(device_channel(device), Event("score", device, timestamp, score))

        self.snapshot(devices).addCallbacks(got, self._failed)

    @defer.inlineCallbacks
    def _reconnected(self):
        try:
            pending, self._pending_detach = self._pending_detach, []
            for device, holder in pending:
                yield self.cluster.eval(_DETACH, [self._key("online")], [device, holder])
            # this node's live devices go (back) into Redis: it may have restarted empty
            for device, connection in list(self.core.connections.items()):
                entry = self._holders.get(connection)
                if entry is not None:
                    yield self.cluster.call("HSETNX", self._key("online"), device, entry[0])
            yield self._import_store()
        except Unavailable as e:
            _log.warn("clicker: redis went away again while this node wrote its state back: {why}", why=str(e))
        except Exception:
            _log.failure("clicker: writing this node's state to redis failed")

    @defer.inlineCallbacks
    def _import_store(self):
        identities = yield self.store.items(IDENTITIES)
        latest = yield self.store.items(LATEST)
        for digest, value in identities:
            yield self.cluster.call("SADD", self._key("ids"), value["id"])
            yield self.cluster.call("HSETNX", self._key("identity"), digest, value["id"])
        for device, value in latest:
            text = _latest_text(value["timestamp"], value["score"], value.get("recent", ()))
            yield self.cluster.call("HSETNX", self._key("latest"), device, text)
        if identities or latest:
            _log.info("clicker: {identities} identities and {latest} latest scores from the local store are in redis",
                      identities=len(identities), latest=len(latest))

    @staticmethod
    def _failed(failure) -> None:
        if not failure.check(Unavailable):
            _log.failure("clicker: keeping redis true failed", failure)
