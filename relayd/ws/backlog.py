"""
What the whole process holds for clients that do not read, and who gives it back when it is too much.

Each connection bounds its own send queue (max_send_backlog, max_send_backlog_age). That alone lets
many connections together hold any amount: a thousand deaf readers at 8 MiB each is 8 GB. Backlogs
sums what is really held and sheds the largest holders when a bound is passed:

- a queued frame counts once however many queues hold it (a broadcast's frame is one bytes object),
  through the frame's `queued` count;
- bytes a connection handed to Twisted's buffer before its transport paused it count for that
  connection until it resumes (they are its own copy);
- `total`: the process's bound; past it, the connections holding the most are closed as slow
  consumers (4008), largest first, until the total is under the bound again;
- `per_address`: one client address's share (what its connections hold, each counting its frames);
  past it, that address's largest holders are closed the same way;
- the connection whose message is being handled (a sender whose broadcast is being fanned out) is
  never the one closed for what its receivers hold.
"""

from __future__ import annotations

import os
from collections import Counter

from relayd.quota import address_key

_MIB = 1024 * 1024


def machine_memory() -> int:
    """Physical memory in bytes, or 0 where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def default_total(memory: int | None = None) -> int:
    """The process's bound when the config says `auto`: 1/32 of the machine's memory, 64 MiB to 1 GiB."""
    memory = machine_memory() if memory is None else memory
    if memory <= 0:
        return 256 * _MIB
    return max(64 * _MIB, min(1024 * _MIB, memory // 32 // _MIB * _MIB))


class Backlogs:
    def __init__(self, total: int, per_address: int, *, on_shed=None):
        self.total = total
        self.per_address = per_address
        self.held = 0  # bytes held, each frame once
        self.holders: set = set()  # connections holding anything
        self.by_address: Counter = Counter()  # address key -> what its connections hold
        self.released = 0  # bytes closed connections let go since relayd.memory last gave memory back
        self.reading = None  # the connection whose read is being handled now
        self._on_shed = on_shed  # (connection, why) -> None: closes the connection as a slow consumer

    # ---- what connections report ------------------------------------------------------------

    def queued(self, connection, frame) -> None:
        """A frame entered a connection's queue."""
        size = len(frame)
        if not frame.queued:
            self.held += size
        frame.queued += 1
        self._add(connection, size)

    def dequeued(self, connection, frame, dropped: bool = False) -> None:
        """A frame left a connection's queue: written, replaced, or `dropped` with a closed connection's queue."""
        size = len(frame)
        frame.queued -= 1
        if not frame.queued:
            self.held -= size
            if dropped:
                self.released += size
        self._add(connection, -size)

    def buffered(self, connection, size: int, dropped: bool = False) -> None:
        """
        Bytes the connection left in Twisted's buffer when it was paused; negative once it resumes, or
        once it closed (`dropped`: the buffer goes with the dead transport, freed by the collector).
        """
        self.held += size
        if dropped:
            self.released -= size
        self._add(connection, size)

    @staticmethod
    def key_of(connection) -> str:
        """The address a connection counts against (here and in relayd.ws.ratelimit.AddressRates), kept on it."""
        key = connection.backlog_key
        if key is None:
            key = connection.backlog_key = address_key(connection.client_address or "unknown")
        return key

    def _add(self, connection, size: int) -> None:
        connection.backlog_held += size
        key = self.key_of(connection)
        self.by_address[key] += size
        if connection.backlog_held > 0:
            self.holders.add(connection)
        else:
            self.holders.discard(connection)
            if self.by_address[key] <= 0:
                del self.by_address[key]
        if size > 0:
            if self.per_address and self.by_address[key] > self.per_address:
                self._shed("address", key)
            if self.total and self.held > self.total:
                self._shed("total", None)

    # ---- shedding ---------------------------------------------------------------------------

    def _shed(self, why: str, key) -> None:
        candidates = [c for c in self.holders
                      if c is not self.reading and (key is None or c.backlog_key == key)]
        candidates.sort(key=lambda c: c.backlog_held, reverse=True)
        for connection in candidates:
            if why == "total" and self.held <= self.total:
                return
            if why == "address" and self.by_address.get(key, 0) <= self.per_address:
                return
            if self._on_shed is not None:
                self._on_shed(connection, why)
            else:
                connection.shed(why)
