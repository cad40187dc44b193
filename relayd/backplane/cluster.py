"""
This node's place in a cluster: its id, its presence in Redis, and Redis commands for the state
the apps share (rosters, leases).

A node is alive while its presence key `<prefix>:node:<id>` exists: it is written every third of
`node_timeout` and expires after `node_timeout`, so a node that dies (or loses Redis) is counted
dead by the others within that time, and what it held can be cleaned up or taken over.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from txredisapi import ConnectionError as RedisConnectionError

from relayd.errors import Unavailable  # noqa: F401 (raised here, and imported from here by the apps)
from relayd.backplane.redisbus import RedisBus
from relayd.periodic import Periodic

_log = Logger()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class Cluster(MultiService):
    def __init__(self, bus: RedisBus, *, clock, node_timeout: float = 10.0):
        super().__init__()
        self.bus = bus
        self.clock = clock
        self.node_timeout = node_timeout
        self.node_id = bus.node_id.decode("ascii")
        self.prefix = bus.key_prefix
        self._reconnected: list[Callable[[], None]] = []
        Periodic("cluster heartbeat", node_timeout / 3, self._beat, clock=clock).setServiceParent(self)
        bus.publisher_listeners.append(self._publisher_up)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix,) + parts)

    def node_key(self, node_id: str) -> str:
        return self.key("node", node_id)

    @property
    def up(self) -> bool:
        return self.bus.publisher.up

    def call(self, *command) -> defer.Deferred:
        """Run one Redis command on the publishing connection (so it is ordered with publishes)."""
        proto = self.bus.publisher.protocol
        if proto is None:
            return defer.fail(Unavailable("redis is unreachable"))
        return defer.maybeDeferred(proto.execute_command, *command).addErrback(self._unavailable)

    def eval(self, script: bytes, keys: list, args: list) -> defer.Deferred:
        proto = self.bus.publisher.protocol
        if proto is None:
            return defer.fail(Unavailable("redis is unreachable"))
        return defer.maybeDeferred(proto.eval, script, keys, args).addErrback(self._unavailable)

    @staticmethod
    def _unavailable(failure):
        if failure.check(RedisConnectionError):
            raise Unavailable(failure.getErrorMessage())
        return failure

    def when_reconnected(self, callback: Callable[[], None]) -> None:
        """callback() after every (re)connection of the publishing connection: state may need writing again."""
        self._reconnected.append(callback)

    durable: bool | None = None  # whether Redis keeps its data across its own restart (None: not known)

    def _publisher_up(self) -> None:
        self._beat()
        self._check_durability()
        for callback in list(self._reconnected):
            try:
                callback()
            except Exception:
                _log.failure("cluster: re-announcing state after a reconnect failed")

    def _check_durability(self) -> None:
        """
        Ask Redis whether it persists (AOF): without it a Redis restart together with a node loses what
        that node acknowledged (docs/scaling.md, "Redis durability"). Said once per change, loudly.
        """
        def answered(reply):
            values = dict(zip(reply[0::2], reply[1::2])) if isinstance(reply, list) else {}
            appendonly = values.get("appendonly", values.get(b"appendonly"))
            durable = appendonly in ("yes", b"yes")
            self.bus.metrics.redis_persistent.set(1 if durable else 0)
            if durable != self.durable:
                self.durable = durable
                if durable:
                    _log.info("cluster: redis persists what relayd writes (appendonly yes)")
                else:
                    _log.warn(
                        "cluster: redis keeps nothing across its own restart (appendonly no): if redis restarts "
                        "together with a node, what that node acknowledged is lost; set appendonly yes with "
                        "appendfsync everysec or always (docs/scaling.md, Redis durability)")

        def unknown(failure):
            # a managed Redis may rename or refuse CONFIG: the operator has to know it some other way
            self.durable = None
            _log.warn("cluster: could not ask redis whether it persists ({why}); see docs/scaling.md, "
                      "Redis durability", why=failure.getErrorMessage())

        self.call("CONFIG", "GET", "appendonly").addCallbacks(answered, unknown)

    def _beat(self) -> None:
        if not self.up:
            return
        self.call("SET", self.node_key(self.node_id), b"1", "PX", _ms(self.node_timeout)).addErrback(
            lambda f: _log.warn("cluster: presence not renewed: {why}", why=f.getErrorMessage())
        )

    def stopService(self):
        super().stopService()
        if self.up:
            # leaving on purpose: the others need not wait node_timeout to see it gone
            return self.call("DEL", self.node_key(self.node_id)).addErrback(lambda f: None)
        return None
