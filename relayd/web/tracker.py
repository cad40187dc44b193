"""
Connection accounting for one listener: the total and per-address caps, and the set of live
connections a drain closes.

Each accepted connection holds a Slot from accept to close. The HTTP channel holds it first; when the
request upgrades, the slot moves to the WebSocket protocol that takes over the transport.

A connection from a trusted proxy is accepted without an address (the proxy's own address is
counted by max_connections only); it is bound to its client's address when it upgrades, and the
per-address cap applies to that address from then on.

max_connections bounds the WebSockets, checked when one upgrades; RESERVE plain HTTP connections
are accepted beyond it, so that /healthz, /readyz and /metrics still answer a full listener (a
request head has open_handshake_timeout to arrive, so the reserve cannot be held for long).
"""

from __future__ import annotations

from collections import Counter

from twisted.internet import defer


RESERVE = 16


class Slot:
    __slots__ = ("tracker", "address", "websocket", "channel", "released", "upgraded")

    def __init__(self, tracker: "ConnectionTracker", address: str | None):
        self.tracker = tracker
        self.address = address
        self.websocket = None
        self.channel = None
        self.released = False
        self.upgraded = False

    def upgrade(self) -> str:
        """This connection becomes a WebSocket; the reason it may not, or ''."""
        tracker = self.tracker
        if self.upgraded or self.released:
            return ""
        if tracker.upgraded >= tracker.max_connections:
            return "max_connections"
        self.upgraded = True
        tracker.upgraded += 1
        return ""

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.tracker._release(self)

    def bind(self, address: str) -> str:
        """Count this connection against its client's address from now on; the reason it may not, or ''."""
        if self.address is not None or self.released:
            return ""
        tracker = self.tracker
        if tracker.max_per_address and tracker._per_address[address] >= tracker.max_per_address:
            return "max_connections_per_address"
        self.address = address
        tracker._per_address[address] += 1
        return ""


class ConnectionTracker:
    def __init__(self, max_connections: int, max_per_address: int):
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.upgraded = 0  # WebSockets, and connections upgrading to one
        self.slots: set[Slot] = set()
        self._per_address: Counter[str] = Counter()
        self._empty_waiters: list[defer.Deferred] = []

    def acquire(self, address: str | None) -> tuple[Slot | None, str]:
        """A slot, or None and the reason the connection is refused; address None: not counted per address yet."""
        if len(self.slots) >= self.max_connections + RESERVE:
            return None, "max_connections"
        slot = Slot(self, None)
        if address is not None:
            reason = slot.bind(address)
            if reason:
                return None, reason
        self.slots.add(slot)
        return slot, ""

    def _release(self, slot: Slot) -> None:
        self.slots.discard(slot)
        if slot.upgraded:
            self.upgraded -= 1
        address = slot.address
        if address is not None:
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
        if not self.slots:
            waiters, self._empty_waiters = self._empty_waiters, []
            for d in waiters:
                d.callback(None)

    def __len__(self) -> int:
        return len(self.slots)

    def websockets(self) -> list:
        return [slot.websocket for slot in self.slots if slot.websocket is not None]

    def when_empty(self) -> defer.Deferred:
        if not self.slots:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._empty_waiters.append(d)
        return d
