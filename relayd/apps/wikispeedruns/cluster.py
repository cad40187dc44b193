"""
wikispeedruns on many nodes: the lobby prompt rosters live in Redis, changed only by Lua scripts so
that "also " renaming and the version order are decided in one place for the whole cluster.

Per group two keys: `<prefix>:wsr:roster:<group>`, a list of "node\\nmember\\nname" in join order,
and `<prefix>:wsr:version:<group>`, a counter bumped by every change. Both expire `ttl` after the
last change or sweep, so a group whose every node died does not stay forever.

RosterKeeper keeps the rosters true on this node's side: every half `node_timeout` it sweeps the
groups it has waiters in, removing the members of nodes whose presence key expired (and telling
everyone the new names); after Redis comes back it writes its waiters again (Redis may have lost
them) and finishes the leaves that could not be written while it was away.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from relayd.apps.wikispeedruns.core import RosterUpdate
from relayd.apps.wikispeedruns.roster import ALSO, IRoster, Roster
from relayd.backplane.cluster import Cluster, Unavailable
from relayd.errors import unless_unavailable
from relayd.periodic import Periodic

_log = Logger()

# KEYS: roster, version. ARGV: node, member, wanted name, ttl ms, present_only ("1": no-op if the member is there)
_JOIN = b"""
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local taken, names = {}, {}
local mine = ARGV[1] .. '\\n' .. ARGV[2] .. '\\n'
for _, e in ipairs(entries) do
  local first = string.find(e, '\\n', 1, true)
  local second = string.find(e, '\\n', first + 1, true)
  local n = string.sub(e, second + 1)
  if ARGV[5] == '1' and string.sub(e, 1, second) == mine then
    for _, e2 in ipairs(entries) do
      local f = string.find(e2, '\\n', 1, true)
      names[#names + 1] = string.sub(e2, string.find(e2, '\\n', f + 1, true) + 1)
    end
    return {tonumber(redis.call('GET', KEYS[2]) or '0'), n, names}
  end
  taken[n] = true
  names[#names + 1] = n
end
local name = ARGV[3]
while taken[name] do name = ARGV[6] .. name end
redis.call('RPUSH', KEYS[1], mine .. name)
names[#names + 1] = name
local version = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {version, name, names}
"""

# KEYS: roster, version. ARGV: node, member, ttl ms. -> {} when the group is empty now, else {version, names}
_LEAVE = b"""
local mine = ARGV[1] .. '\\n' .. ARGV[2] .. '\\n'
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local names, found = {}, false
for _, e in ipairs(entries) do
  if string.sub(e, 1, #mine) == mine then
    redis.call('LREM', KEYS[1], 1, e)
    found = true
  else
    local f = string.find(e, '\\n', 1, true)
    names[#names + 1] = string.sub(e, string.find(e, '\\n', f + 1, true) + 1)
  end
end
if #names == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {}
end
if not found then
  return {tonumber(redis.call('GET', KEYS[2]) or '0'), names}
end
local version = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {version, names}
"""

# KEYS: roster, version. ARGV: node key prefix, ttl ms. Removes members of nodes without a presence
# key. -> {} when nothing changed, else {version, names} ({0, {}} when the group is now empty)
_SWEEP = b"""
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local alive, names, removed = {}, {}, false
for _, e in ipairs(entries) do
  local f = string.find(e, '\\n', 1, true)
  local node = string.sub(e, 1, f - 1)
  if alive[node] == nil then alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1 end
  if alive[node] then
    names[#names + 1] = string.sub(e, string.find(e, '\\n', f + 1, true) + 1)
  else
    redis.call('LREM', KEYS[1], 1, e)
    removed = true
  end
end
if #names == 0 and #entries > 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {0, {}}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if not removed then return {} end
return {redis.call('INCR', KEYS[2]), names}
"""


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogatepass")


def _roster(version, names) -> Roster:
    return Roster(int(version), tuple(_text(n) for n in names))


@implementer(IRoster)
class RedisRoster:
    def __init__(self, cluster: Cluster, ttl: float):
        self.cluster = cluster
        self.ttl_ms = max(1000, int(ttl * 1000))
        # leaves Redis did not take while it was away, finished after it comes back: group, member, Deferred
        self.pending_leaves: list[tuple[str, str, defer.Deferred]] = []

    def _keys(self, group: str) -> list[str]:
        return [self.cluster.key("wsr", "roster", group), self.cluster.key("wsr", "version", group)]

    def join(self, group, member, wanted, present_only=False):
        args = [self.cluster.node_id, member, wanted.encode("utf-8", "surrogatepass"), self.ttl_ms,
                "1" if present_only else "0", ALSO]
        d = self.cluster.eval(_JOIN, self._keys(group), args)
        return d.addCallback(lambda reply: (_text(reply[1]), _roster(reply[0], reply[2])))

    def leave(self, group, member):
        done: defer.Deferred = defer.Deferred()
        self._leave(group, member, done)
        return done

    def _leave(self, group: str, member: str, done: defer.Deferred) -> None:
        d = self.cluster.eval(_LEAVE, self._keys(group), [self.cluster.node_id, member, self.ttl_ms])

        def answered(reply):
            done.callback(_roster(reply[0], reply[1]) if reply else None)

        def failed(failure):
            if failure.check(Unavailable):
                self.pending_leaves.append((group, member, done))
            else:
                done.errback(failure)

        d.addCallbacks(answered, failed)

    def retry_leaves(self) -> None:
        pending, self.pending_leaves = self.pending_leaves, []
        for group, member, done in pending:
            self._leave(group, member, done)

    def sweep(self, group: str) -> defer.Deferred:
        """Fires with the group's Roster if dead nodes' members were removed, else None."""
        d = self.cluster.eval(_SWEEP, self._keys(group), [self.cluster.node_key(""), self.ttl_ms])
        return d.addCallback(lambda reply: _roster(reply[0], reply[1]) if reply else None)


class RosterKeeper(MultiService):
    def __init__(self, core, roster: RedisRoster, cluster: Cluster, *, clock):
        super().__init__()
        self.core = core
        self.roster = roster
        self.cluster = cluster
        Periodic("wikispeedruns roster sweeps", cluster.node_timeout / 2, self.sweep, clock=clock,
                 now=False).setServiceParent(self)
        cluster.when_reconnected(self.reannounce)


    def _publish(self, group, roster: Roster | None) -> None:
        if roster is not None and roster.names:
            self.core.bus.publish(group.channel, RosterUpdate.of(roster))

    def sweep(self) -> None:
        if not self.cluster.up:
            return
        for group in list(self.core.groups.values()):
            self.roster.sweep(group.key).addCallbacks(
                lambda roster, group=group: self._publish(group, roster), self._failed
            )

    def reannounce(self) -> None:
        """After a reconnect: this node's waiters go (back) into Redis, and pending leaves are finished."""
        self.roster.retry_leaves()
        for group in list(self.core.groups.values()):
            group.version = 0  # Redis may have restarted empty and count versions from 1 again
            for waiter in list(group.waiters):
                if waiter.name is None:
                    continue  # its own join is still on the way
                d = self.roster.join(group.key, waiter.member, waiter.name, present_only=True)
                d.addCallbacks(lambda result, group=group: self._publish(group, result[1]), self._failed)

    _failed = staticmethod(unless_unavailable("wikispeedruns: keeping the roster failed"))
