"""
The fan-out seam: apps publish to named channels and subscribe connections to them, and never
deliver to each other's connections directly. The in-memory bus is one process; a backplane that
spans processes implements the same interface, and no app changes.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Interface, implementer

_log = Logger()

Receiver = Callable[[Any], None]


class ISubscription(Interface):
    def cancel() -> None:
        """Stop receiving; idempotent."""


class IBus(Interface):
    def subscribe(channel: str, receiver: Receiver) -> ISubscription:
        """Deliver every message later published on channel to receiver, in publish order."""

    def publish(channel: str, message: Any) -> int:
        """Hand message to every current subscriber of channel; returns how many received it."""

    def subscribers(channel: str) -> int:
        """How many receivers the channel has."""

    def when_subscribed(channel: str) -> Any:
        """A Deferred that fires once messages published on channel anywhere reach this node's subscribers."""

    def channel_count() -> int:
        """How many channels have at least one subscriber."""


@implementer(ISubscription)
class _Subscription:
    __slots__ = ("_bus", "channel", "receiver", "active")

    def __init__(self, bus: "MemoryBus", channel: str, receiver: Receiver):
        self._bus = bus
        self.channel = channel
        self.receiver = receiver
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._bus._remove(self)


@implementer(IBus)
class MemoryBus:
    """
    Channels are dicts of subscriptions in subscription order; an empty channel is removed at once.
    A backplane hears of a channel's first subscriber and of its last leaving through on_open and
    on_close, to subscribe this node to the channel elsewhere only while someone here listens.
    """

    def __init__(
        self, on_open: Callable[[str], None] | None = None, on_close: Callable[[str], None] | None = None
    ) -> None:
        self._channels: dict[str, dict[_Subscription, None]] = {}
        self._on_open = on_open
        self._on_close = on_close

    def subscribe(self, channel: str, receiver: Receiver) -> _Subscription:
        subscription = _Subscription(self, channel, receiver)
        members = self._channels.get(channel)
        if members is None:
            members = self._channels[channel] = {}
            if self._on_open is not None:
                self._on_open(channel)
        members[subscription] = None
        return subscription

    def channels(self) -> list[str]:
        return list(self._channels)

    def _remove(self, subscription: _Subscription) -> None:
        members = self._channels.get(subscription.channel)
        if members is not None:
            members.pop(subscription, None)
            if not members:
                del self._channels[subscription.channel]
                if self._on_close is not None:
                    self._on_close(subscription.channel)

    def publish(self, channel: str, message: Any) -> int:
        members = self._channels.get(channel)
        if not members:
            return 0
        delivered = 0
        # a receiver may subscribe or cancel while we deliver: iterate over a snapshot
        for subscription in list(members):
            if not subscription.active:
                continue
            try:
                subscription.receiver(message)
            except Exception:
                _log.failure("bus receiver failed on channel {channel}", channel=channel)
            else:
                delivered += 1
        return delivered

    def subscribers(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def when_subscribed(self, channel: str):
        return defer.succeed(None)

    def channel_count(self) -> int:
        return len(self._channels)
