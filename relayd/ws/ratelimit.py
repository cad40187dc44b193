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
