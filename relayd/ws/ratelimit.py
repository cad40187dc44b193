"""
What one connection may send: a token bucket of messages and one of bytes, refilled by time.

Messages bound the per-message work (parsing, routing); bytes bound what a few large messages cost,
which the message count does not see. A connection's role (a carparty game server, a groovejet
host) chooses the Rate; a role change keeps what the connection has already spent.
"""

from __future__ import annotations


class Budget:
    __slots__ = ("rate", "burst", "byte_rate", "byte_burst", "_messages", "_bytes", "_stamp")

    def __init__(self, rate, now: float):
        self._stamp = now
        self.burst = self._messages = float(rate.rate_burst)
        self.byte_burst = self._bytes = float(rate.byte_burst)
        self.use(rate)

    def use(self, rate) -> None:
        """
        Apply another Rate from now on (a login as a game server, a promotion to host): what was
        spent stays spent, and a larger burst adds its difference at once.
        """
        self._messages = min(float(rate.rate_burst), self._messages + max(0.0, rate.rate_burst - self.burst))
        self._bytes = min(float(rate.byte_burst), self._bytes + max(0.0, rate.byte_burst - self.byte_burst))
        self.rate = rate.rate_limit
        self.burst = float(rate.rate_burst)
        self.byte_rate = rate.byte_rate
        self.byte_burst = float(rate.byte_burst)

    def take(self, now: float, size: int) -> bool:
        """Spend one message and `size` bytes if both are there; refills by elapsed time first."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._stamp = now
            if self.rate:
                self._messages = min(self.burst, self._messages + elapsed * self.rate)
            if self.byte_rate:
                self._bytes = min(self.byte_burst, self._bytes + elapsed * self.byte_rate)
        if self.rate:
            if self._messages < 1.0:
                return False
        if self.byte_rate:
            if self._bytes < size:
                return False
            self._bytes -= size
        if self.rate:
            self._messages -= 1.0
        return True
