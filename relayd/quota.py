"""
Quotas per client address: how much lasting state anonymous clients may create.

A quota allows `limit` events per address in `window` seconds, refilled evenly (a token bucket per
address: one float and a time each). IPv6 clients are counted per /64, the block one subscriber
holds, so rotating addresses inside it gains nothing. Addresses whose bucket is full again are
forgotten as the quota is used, so memory follows the addresses active within one window.
"""

from __future__ import annotations

import ipaddress

from relayd.addresses import parse_ip


def address_key(address: str) -> str:
    """What a quota counts: the address, or its /64 for IPv6."""
    parsed = parse_ip(address)
    if parsed is None:
        return address
    if parsed.version == 4:
        return str(parsed)
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False))


class AddressQuota:
    def __init__(self, limit: int, window: float, clock):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._rate = limit / window if window > 0 else 0.0
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, stamp]
        self._uses = 0

    def take(self, address: str, cost: int = 1) -> bool:
        """Spend `cost` from this address's quota if it has that much left; 0 limit means no quota."""
        if self.limit <= 0:
            return True
        now = self.clock.seconds()
        self._uses += 1
        if self._uses % 1024 == 0:
            self._forget_full(now)
        key = address_key(address)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [float(self.limit), now]
        else:
            bucket[0] = min(float(self.limit), bucket[0] + (now - bucket[1]) * self._rate)
            bucket[1] = now
        if bucket[0] < cost:
            return False
        bucket[0] -= cost
        return True

    def give_back(self, address: str, cost: int = 1) -> None:
        """
        Undo a take whose creation did not happen after all. A quota is a reservation: taken before
        any asynchronous step of what it pays for and given back if that fails, never checked first
        and spent after (requests in flight together would each pass the check).
        """
        bucket = self._buckets.get(address_key(address))
        if bucket is not None:
            bucket[0] = min(float(self.limit), bucket[0] + cost)

    def retry_after(self, address: str) -> float:
        """Seconds until this address may create one more."""
        bucket = self._buckets.get(address_key(address))
        if bucket is None or self._rate <= 0:
            return 0.0
        return max(0.0, (1.0 - bucket[0]) / self._rate)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        limit, rate = self.limit, self._rate
        for key, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * rate >= limit:
                del self._buckets[key]
