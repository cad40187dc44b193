"""
The bus over Redis pub/sub: every node delivers to its own subscribers at once and relays the
message through Redis to the nodes that subscribe to the channel.

- Same-node delivery never waits for Redis, so it keeps working while Redis is down.
- A node subscribes in Redis to a channel only while it has a subscriber of its own there
  (MemoryBus tells it of a channel's first subscriber and its last), and re-subscribes to all of
  them after every reconnect.
- Each message carries its node's id; a node ignores its own messages when Redis echoes them.
- Publishes wait, in order, while the publishing connection is down or too far behind, in a queue of
  `queue_limit` messages; beyond it the oldest are dropped, logged and counted.
- Pub/sub is at-most-once: what a node misses while its subscribing connection is down is gone.
  Apps that need more keep it in Redis data structures (docs/scaling.md).
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from txredisapi import RedisProtocol, SubscriberProtocol
from zope.interface import implementer

from relayd.backplane import codec
from relayd.backplane.link import RedisLink
from relayd.backplane.target import RedisTarget
from relayd.bus import IBus, MemoryBus, Receiver
from relayd.ws._writes import BATCH

_log = Logger()

NODE_ID_BYTES = 8


class _OneWritePerRead:
    def dataReceived(self, data, unpause=False):
        # what one read's replies or messages make their receivers send (clicker's scores, several at
        # once; a broadcast from another node) is written once per receiver, as for a WebSocket read
        with BATCH:
            super().dataReceived(data, unpause)


class _Commands(_OneWritePerRead, RedisProtocol):
    pass


class _Subscriber(_OneWritePerRead, SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.link.on_message(channel, message)


@implementer(IBus)
class RedisBus(MultiService):
    def __init__(
        self, target: RedisTarget, *, clock, metrics, prefix: str = "relayd", queue_limit: int = 10_000,
        node_id: bytes | None = None, max_backoff: float = 5.0,
    ):
        super().__init__()
        self.target = target
        self.metrics = metrics
        self.key_prefix = prefix  # of every Redis key and channel of this cluster
        self.prefix = prefix + ":bus:"
        self._prefix_bytes = self.prefix.encode()
        self.queue_limit = queue_limit
        self.node_id = node_id if node_id is not None else secrets.token_hex(NODE_ID_BYTES // 2).encode()
        if len(self.node_id) != NODE_ID_BYTES:
            raise ValueError(f"node id must be {NODE_ID_BYTES} bytes")
        self.local = MemoryBus(on_open=self._channel_opened, on_close=self._channel_closed)
        self.pending: deque[tuple[bytes, bytes]] = deque()
        self.in_flight = 0
        self._dropped_this_outage = 0
        self._unrelayable_logged: set[str] = set()
        self.publisher_listeners: list = []  # called after each (re)connection of the publisher
        self.subscriber_listeners: list = []  # called after each (re)connection of the subscriber
        # channels whose SUBSCRIBE Redis has not confirmed yet, with who waits for the confirmation
        self._unconfirmed: dict[str, list[defer.Deferred]] = {}
        self.publisher = RedisLink(
            target, clock=clock, name="publisher", protocol_class=_Commands,
            on_up=self._publisher_up, on_down=self._link_down, max_backoff=max_backoff,
        )
        self.subscriber = RedisLink(
            target, clock=clock, name="subscriber", protocol_class=_Subscriber, reply_timeout=None,
            on_up=self._subscriber_up, on_down=self._link_down, on_message=self._arrived, max_backoff=max_backoff,
        )
        self.publisher.setServiceParent(self)
        self.subscriber.setServiceParent(self)
        self.metrics.bus_up.set(0)

    # ---- IBus ----------------------------------------------------------------------------------

    def subscribe(self, channel: str, receiver: Receiver):
        return self.local.subscribe(channel, receiver)

    def publish(self, channel: str, message: Any) -> int:
        delivered = self.local.publish(channel, message)
        try:
            body = codec.encode(message)
        except codec.Unrelayable as e:
            if str(e) not in self._unrelayable_logged:
                self._unrelayable_logged.add(str(e))
                _log.error("bus: {kind} messages cannot cross nodes; they stay on this node", kind=str(e))
            self.metrics.bus_dropped.labels("unrelayable").inc()
            return delivered
        self._send((self.prefix + channel).encode(), self.node_id + body)
        return delivered

    def subscribers(self, channel: str) -> int:
        return self.local.subscribers(channel)

    def when_subscribed(self, channel: str) -> defer.Deferred:
        waiting = self._unconfirmed.get(channel)
        if waiting is None:
            # confirmed, or Redis is away (then nothing crosses nodes anyway, and the subscription is
            # made again on reconnect)
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        waiting.append(d)
        return d

    def channel_count(self) -> int:
        return self.local.channel_count()

    # ---- health --------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        down = [link.name for link in (self.publisher, self.subscriber) if not link.up]
        if not down:
            return []
        return [f"bus: redis {self.target.describe()} unreachable ({', '.join(down)})"]

    def _link_down(self) -> None:
        self.metrics.bus_up.set(0)

    def _mark_up(self) -> None:
        if self.publisher.up and self.subscriber.up:
            self.metrics.bus_up.set(1)

    # ---- publishing ----------------------------------------------------------------------------

    def _send(self, channel: bytes, payload: bytes) -> None:
        if self.publisher.up and not self.pending and self.in_flight < self.queue_limit:
            self._publish_now(channel, payload)
            return
        self.pending.append((channel, payload))
        if len(self.pending) > self.queue_limit:
            self.pending.popleft()
            self.metrics.bus_dropped.labels("queue_full").inc()
            if not self._dropped_this_outage:
                _log.warn(
                    "bus: {limit} messages wait for redis; dropping the oldest from now on",
                    limit=self.queue_limit,
                )
            self._dropped_this_outage += 1
        self.metrics.bus_queued.set(len(self.pending))

    def _publish_now(self, channel: bytes, payload: bytes) -> None:
        self.in_flight += 1
        self.metrics.bus_published.inc()
        d = defer.maybeDeferred(self.publisher.protocol.publish, channel, payload)
        d.addCallbacks(self._published, self._publish_failed)

    def _published(self, _) -> None:
        self.in_flight -= 1
        if self.pending and self.publisher.up:
            self._drain()

    def _publish_failed(self, failure) -> None:
        self.in_flight -= 1
        self.metrics.bus_dropped.labels("connection_lost").inc()

    def _drain(self) -> None:
        while self.pending and self.publisher.up and self.in_flight < self.queue_limit:
            self._publish_now(*self.pending.popleft())
        self.metrics.bus_queued.set(len(self.pending))
        if not self.pending and self._dropped_this_outage:
            _log.warn("bus: dropped {count} messages while redis was behind or away", count=self._dropped_this_outage)
            self._dropped_this_outage = 0

    def _publisher_up(self, proto) -> None:
        self._mark_up()
        self._drain()
        for listener in list(self.publisher_listeners):
            try:
                listener()
            except Exception:
                _log.failure("bus: a publisher reconnect listener failed")

    # ---- subscribing ---------------------------------------------------------------------------

    def _channel_opened(self, channel: str) -> None:
        proto = self.subscriber.protocol
        if proto is not None:
            self._subscribe(proto, channel)

    def _subscribe(self, proto, channel: str) -> None:
        # one channel per SUBSCRIBE: Redis confirms each channel with a reply of its own, and
        # txredisapi hands replies to commands in order
        self._unconfirmed.setdefault(channel, [])
        d = defer.maybeDeferred(proto.subscribe, [(self.prefix + channel).encode()])
        d.addErrback(self._subscribe_failed, channel)
        d.addBoth(lambda _: self._confirmed(channel))

    def _confirmed(self, channel: str) -> None:
        for d in self._unconfirmed.pop(channel, []):
            d.callback(None)

    def _channel_closed(self, channel: str) -> None:
        self._confirmed(channel)
        proto = self.subscriber.protocol
        if proto is not None:
            defer.maybeDeferred(proto.unsubscribe, [(self.prefix + channel).encode()]).addErrback(
                self._subscribe_failed, channel)

    def _subscribe_failed(self, failure, channel: str) -> None:
        # the connection went away; its replacement subscribes to every channel anew
        _log.debug("bus: (un)subscribing {channel} failed: {why}", channel=channel, why=failure.getErrorMessage())

    def _subscriber_up(self, proto) -> None:
        for channel in self.local.channels():
            self._subscribe(proto, channel)
        self._mark_up()
        for listener in list(self.subscriber_listeners):
            try:
                listener()
            except Exception:
                _log.failure("bus: a subscriber reconnect listener failed")

    def _arrived(self, channel: bytes, data: bytes) -> None:
        if data[:NODE_ID_BYTES] == self.node_id or not channel.startswith(self._prefix_bytes):
            return
        self.metrics.bus_received.inc()
        try:
            message = codec.decode(data[NODE_ID_BYTES:])
            name = channel[len(self._prefix_bytes):].decode()
        except ValueError as e:
            self.metrics.bus_dropped.labels("undecodable").inc()
            _log.warn("bus: ignoring a message on {channel!r}: {why}", channel=channel, why=str(e))
            return
        self.local.publish(name, message)
