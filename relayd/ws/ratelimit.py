"""
What one connection may send: a token bucket of messages and one of bytes, refilled by time.

Messages bound the per-message work (parsing, routing); bytes bound what a few large messages cost,
which the message count does not see. A connection's role (a carparty game server, a groovejet
host) chooses the Rate; a role change keeps what the connection has already spent.

The buckets are refilled once per read of the socket (`refill`: every message of one read arrived at
the same moment, so this decides exactly as refilling before each message would), and a message then
costs one subtraction from each bucket (`spend`), never a clock read. An unlimited bucket holds
infinity, which no subtraction runs out.
"""

from __future__ import annotations

UNLIMITED = float("inf")


class Budget:
    __slots__ = ("rate", "burst", "byte_rate", "byte_burst", "messages", "bytes", "_stamp")

    def __init__(self, rate, now: float):
        self._stamp = now
        self.use(rate, fill=True)

    def use(self, rate, fill: bool = False) -> None:
        """
        Apply another Rate from now on (a login as a game server, a promotion to host): what was
        spent stays spent, and a larger burst adds its difference at once.
        """
        if fill:
            messages, byte_count = float(rate.rate_burst), float(rate.byte_burst)
        else:
            # an unlimited bucket spent nothing that counts: it held its burst
            messages = self.messages if self.rate else float(self.burst)
            byte_count = self.bytes if self.byte_rate else float(self.byte_burst)
            messages = min(float(rate.rate_burst), messages + max(0.0, rate.rate_burst - self.burst))
            byte_count = min(float(rate.byte_burst), byte_count + max(0.0, rate.byte_burst - self.byte_burst))
        self.rate = rate.rate_limit
        self.burst = rate.rate_burst
        self.byte_rate = rate.byte_rate
        self.byte_burst = rate.byte_burst
        self.messages = messages if self.rate else UNLIMITED
        self.bytes = byte_count if self.byte_rate else UNLIMITED

    def refill(self, now: float) -> None:
        """Add what the time since the last refill earned, up to each burst."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._stamp = now
            if self.rate:
                self.messages = min(self.burst, self.messages + elapsed * self.rate)
            if self.byte_rate:
                self.bytes = min(self.byte_burst, self.bytes + elapsed * self.byte_rate)

    def spend(self, size: int) -> bool:
        """Spend one message and `size` bytes if both are there as of the last refill; else spend nothing."""
        self.messages -= 1
        self.bytes -= size
        if self.messages < 0 or self.bytes < 0:
            self.messages += 1
            self.bytes += size
            return False
        return True

    def take(self, now: float, size: int) -> bool:
        """Refill to `now`, then spend one message and `size` bytes if both are there."""
        self.refill(now)
        return self.spend(size)


class AddressRates:
    """
    Bytes per second one client address's WebSocket connections may send together, across every app:
    a token bucket per address (per /64 for IPv6, relayd.quota.address_key) that may run into debt.
    A read that leaves its address in debt pauses reading that connection until the debt is paid,
    so a flood from one address is slowed by TCP's own flow control instead of taking the event loop
    from everyone else; nothing is refused or closed. Addresses whose bucket is full again are
    forgotten as the buckets are used.
    """

    def __init__(self, byte_rate: float, byte_burst: float):
        self.byte_rate = byte_rate
        self.byte_burst = byte_burst
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, stamp]
        self._uses = 0

    def spend(self, key: str, size: int, now: float) -> float:
        """Spend `size` bytes of key's share; the seconds its connection should stop reading (0: none)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.byte_burst, now]
            self._uses += 1
            if self._uses % 1024 == 0:
                self._forget_full(now)
        else:
            bucket[0] = min(self.byte_burst, bucket[0] + (now - bucket[1]) * self.byte_rate)
            bucket[1] = now
        bucket[0] -= size
        return -bucket[0] / self.byte_rate if bucket[0] < 0 else 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        for key, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * self.byte_rate >= self.byte_burst:
                del self._buckets[key]
