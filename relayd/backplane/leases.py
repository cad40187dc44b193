"""
Leases: a key in Redis that says which node holds a name (a carparty server code, a room), for
`node_timeout` at a time, renewed every third of it while the node holds it.

A node that dies stops renewing, so its leases expire and another node may claim the name. A node
whose lease was lost (Redis restarted empty, or it was cut off for longer than the lease and another
node took the name) takes it again if it is free, and hears `lost(name)` if it is not.

Fencing: a node acts as a name's owner only while it knows its lease is valid. Redis expires a lease
`node_timeout` after it last set it, which is after the node sent that command; so the node counts
each lease valid until half of `node_timeout` after it *sent* the claim or renewal that succeeded,
and at each renewal tick (every third of it) gives up (`lost(name)`: its clients are told the room
moved, it stops closing turns or relaying as owner) every lease whose validity ran out, because it
could not renew (cut off from Redis). It is then done acting as owner at most two thirds of
`node_timeout` after its last successful renewal was sent, a third before any other node can take the
name: two owners never act at once (clocks that drift apart by less than that margin assumed).
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from relayd.backplane.cluster import Cluster
from relayd.errors import unless_unavailable
from relayd.periodic import Periodic

_log = Logger()

# KEYS: the lease keys. ARGV: node, ttl ms. For each key: 1 renewed (or taken again, being free), 0 held by another node
_RENEW = b"""
local result = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    result[i] = 1
  elseif not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    result[i] = 1
  else
    result[i] = 0
  end
end
return result
"""

_RELEASE = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1]: the lease; KEYS[2..]: each command's key, in order. ARGV[1]: this node; ARGV[2]: how many
# commands; then for each: how many arguments follow its key, its name, those arguments.
# 1: written; 0: the lease is not this node's, and nothing was written
_FENCED = b"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local a = 3
for c = 1, tonumber(ARGV[2]) do
  local argc = tonumber(ARGV[a])
  local args = {}
  for i = 1, argc do args[i] = ARGV[a + 1 + i] end
  redis.call(ARGV[a + 1], KEYS[c + 1], unpack(args))
  a = a + 2 + argc
end
return 1
"""

_RENEW_BATCH = 500


class Leases(MultiService):
    def __init__(self, cluster: Cluster, namespace: str, *, clock, lost: Callable[[str], None]):
        super().__init__()
        self.cluster = cluster
        self.namespace = namespace
        self.lost = lost
        self.held: set[str] = set()
        self.clock = clock
        self.valid_until: dict[str, float] = {}  # name -> when this node stops trusting its lease
        Periodic(f"{namespace} lease renewals", cluster.node_timeout / 3, self.renew, clock=clock,
                 now=False).setServiceParent(self)
        cluster.when_reconnected(self.renew)

    @property
    def ttl_ms(self) -> int:
        return int(self.cluster.node_timeout * 1000)

    def key(self, name: str) -> str:
        return self.cluster.key(self.namespace, name)

    @property
    def validity(self) -> float:
        """Seconds after a claim or renewal is sent that this node trusts the lease it set."""
        return self.cluster.node_timeout / 2

    def claim(self, name: str) -> defer.Deferred:
        """Fires True when this node now holds name, False when another node does."""
        sent = self.clock.seconds()
        d = self.cluster.call("SET", self.key(name), self.cluster.node_id, "NX", "PX", self.ttl_ms)

        def answered(reply):
            if reply is None:
                return False
            self.held.add(name)
            self.valid_until[name] = sent + self.validity
            return True

        return d.addCallback(answered)

    def write(self, name: str, commands: list) -> defer.Deferred:
        """
        Run commands ((name, key, *args) each) in Redis only while this node holds name's lease, checked
        there, atomically with the writes: a write a partition held back and Redis received after the
        lease moved is refused, so a stale owner never overwrites the new owner's state. Fires True
        when written, False when refused (the lease is given up: `lost(name)`); a node that no longer
        trusts its lease (fenced) sends nothing.
        """
        if name not in self.held:
            return defer.succeed(False)
        keys = [self.key(name)] + [command[1] for command in commands]
        args: list = [self.cluster.node_id, len(commands)]
        for command in commands:
            args += [len(command) - 2, command[0], *command[2:]]

        def answered(written):
            if written:
                return True
            if name in self.held:
                _log.warn("{namespace}: a write for {name} was refused: another node holds its lease now",
                          namespace=self.namespace, name=name)
                self._give_up(name)
            return False

        return self.cluster.eval(_FENCED, keys, args).addCallback(answered)

    def holder(self, name: str) -> defer.Deferred:
        """Fires with the id of the node holding name, or None."""
        return self.cluster.call("GET", self.key(name)).addCallback(lambda r: None if r is None else r.decode())

    def release(self, name: str) -> defer.Deferred:
        """Give the lease up; fires once Redis has it (or could not be asked: it then expires by itself)."""
        if name not in self.held:
            return defer.succeed(None)
        self.held.discard(name)
        self.valid_until.pop(name, None)
        # unreachable Redis: the lease expires by itself within node_timeout
        return self.cluster.eval(_RELEASE, [self.key(name)], [self.cluster.node_id]).addErrback(
            unless_unavailable("releasing lease {name} failed", name=name))

    def renew(self) -> None:
        self._fence()
        names = sorted(self.held)
        if not names or not self.cluster.up:
            return
        sent = self.clock.seconds()
        for start in range(0, len(names), _RENEW_BATCH):
            batch = names[start:start + _RENEW_BATCH]
            d = self.cluster.eval(_RENEW, [self.key(n) for n in batch], [self.cluster.node_id, self.ttl_ms])
            d.addCallbacks(self._renewed, self._renew_failed, callbackArgs=(batch, sent))

    def _renewed(self, results, batch: list[str], sent: float) -> None:
        for name, kept in zip(batch, results):
            if name not in self.held:
                continue
            if kept:
                self.valid_until[name] = sent + self.validity
            else:
                _log.warn("lease {namespace}:{name} is now held by another node", namespace=self.namespace, name=name)
                self._give_up(name)

    def _fence(self) -> None:
        """Stop acting as owner of every name whose lease may have expired in Redis by now."""
        now = self.clock.seconds()
        expired = [name for name in self.held if self.valid_until.get(name, now) <= now]
        if expired:
            _log.warn("{namespace}: {count} leases not renewed in time (cut off from redis?): no longer acting "
                      "as their owner", namespace=self.namespace, count=len(expired))
        for name in expired:
            self._give_up(name)

    def _give_up(self, name: str) -> None:
        self.held.discard(name)
        self.valid_until.pop(name, None)
        try:
            self.lost(name)
        except Exception:
            _log.failure("handling the loss of lease {name} failed", name=name)

    _renew_failed = staticmethod(unless_unavailable("renewing leases failed"))

    def stopService(self):
        """Release every lease held; fires once Redis has them, so another node may take them at once."""
        super().stopService()
        return defer.gatherResults([self.release(name) for name in list(self.held)])
