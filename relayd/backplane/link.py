"""
One connection to Redis that stays up: ClientService reconnects with exponential backoff, and a
connection counts as up only once txredisapi has authenticated and selected the database.
"""

from __future__ import annotations

import random
from typing import Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.logger import Logger

from relayd.backplane.target import RedisTarget

_log = Logger()


class _LinkFactory(protocol.Factory):
    """What txredisapi's protocols expect of their factory, minus its global-reactor pool."""

    noisy = False
    isLazy = True

    def __init__(self, link: "RedisLink"):
        self.link = link

    def buildProtocol(self, addr):
        target = self.link.target
        proto = self.link.protocol_class(
            charset=None, replyTimeout=self.link.reply_timeout, password=target.password,
            dbid=target.db, convertNumbers=False, username=target.username,
        )
        proto.callLater = self.link.clock.callLater
        proto.factory = self
        return proto

    def stopTrying(self):
        # txredisapi gives up on a refused AUTH or SELECT; a daemon keeps trying with backoff, so
        # fixing the credentials on the Redis side needs no restart
        pass

    def connectionError(self, why):
        _log.error("redis {link} refused the connection: {why}", link=self.link.name, why=why)


class RedisLink(Service):
    def __init__(
        self, target: RedisTarget, *, clock, name: str, protocol_class,
        on_up: Callable[[object], None], on_down: Callable[[], None],
        on_message: Callable[[bytes, bytes], None] | None = None, reply_timeout: float | None = 5.0, max_backoff: float = 5.0,
    ):
        self.target = target
        self.clock = clock
        self.name = name
        self.protocol_class = protocol_class
        self.reply_timeout = reply_timeout
        self.on_up = on_up
        self.on_down = on_down
        self.on_message = on_message  # (channel, message) for a subscribing connection
        self.protocol = None
        # backoffPolicy's default jitter adds up to a whole second, more than a short max_backoff
        policy = backoffPolicy(
            initialDelay=min(0.2, max_backoff), maxDelay=max_backoff, factor=2.0,
            jitter=lambda: random.uniform(0, max_backoff / 10),
        )
        self.rejected = 0  # connections in a row that closed before they were usable (AUTH refused, ...)
        self._client = ClientService(
            target.endpoint(clock), _LinkFactory(self), clock=clock,
            # ClientService forgets failed attempts once a TCP connection is made; a connection Redis
            # refuses at AUTH must still back off, not reconnect in a tight loop
            retryPolicy=lambda attempt: policy(max(attempt, self.rejected)),
            prepareConnection=self._prepare,
        )

    @property
    def up(self) -> bool:
        return self.protocol is not None

    def _prepare(self, proto) -> None:
        # ClientService cannot lose a connection whose preparation is still pending, so the link
        # counts as up only once txredisapi says the connection is usable, tracked here
        self.rejected += 1
        # small commands back to back: Nagle's algorithm would hold each behind the previous one's ACK
        set_no_delay = getattr(proto.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

        def lost(inner):
            if self.protocol is inner:
                self.protocol = None
                _log.warn("redis {link} connection lost; reconnecting", link=self.name)
                self.on_down()

        proto.whenDisconnected().addCallback(lost)
        proto.whenConnected().addCallback(self._ready)

    def _ready(self, proto):
        if not proto.connected:
            return proto
        self.rejected = 0
        self.protocol = proto
        _log.info("redis {link} connected to {url}", link=self.name, url=self.target.describe())
        try:
            self.on_up(proto)
        except Exception:
            _log.failure("redis {link}: handling the new connection failed", link=self.name)
        return proto

    def startService(self):
        super().startService()
        self._client.startService()

    def stopService(self):
        super().stopService()
        self.protocol = None
        return self._client.stopService()
