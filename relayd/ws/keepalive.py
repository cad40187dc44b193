"""
Keepalive for every open connection of a factory on one timer.

Autobahn's own keepalive gives each connection a timer for its next ping and another for its
pong, builds a fresh ping frame each time and writes it through Twisted's deferred write path: at
10,000 idle connections that is most of what an idle daemon spends. Here the connections sit on a
wheel of one-second slots; each tick visits one slot. A connection heard from since its last visit
(any read at all) needs no ping; a silent one gets the one prebuilt empty ping frame and is
dropped if it is still silent `timeout` seconds later. The timer runs only while there are
connections to watch.
"""

from __future__ import annotations

import math
from itertools import cycle

from twisted.internet.task import LoopingCall

from relayd.periodic import guarded


PING = b"\x89\x00"  # FIN + ping, no mask, no payload: servers send unmasked frames


class Keepalive:
    TICK = 1.0

    def __init__(self, clock, interval: float, timeout: float):
        self.clock = clock
        self.slots = max(1, round(interval / self.TICK))
        self.timeout_ticks = max(1, math.ceil(timeout / self.TICK))
        self._wheel: list[set] = [set() for _ in range(self.slots)]
        self._next_slot = cycle(range(self.slots))
        self._expiring: dict[int, list] = {}
        self._ticks = 0
        self._size = 0
        # runs only while there are connections to watch; guarded: one connection never stops it
        self._loop = LoopingCall(guarded("keepalive tick", self._tick))
        self._loop.clock = clock

    def __len__(self) -> int:
        return self._size

    def watch(self, connection) -> None:
        slot = next(self._next_slot)
        connection.keepalive_slot = slot
        connection.heard = True
        connection.ping_outstanding = False
        self._wheel[slot].add(connection)
        self._size += 1
        if not self._loop.running:
            self._loop.start(self.TICK, now=False)

    def forget(self, connection) -> None:
        slot = getattr(connection, "keepalive_slot", None)
        if slot is None or connection not in self._wheel[slot]:
            return
        self._wheel[slot].discard(connection)
        connection.keepalive_slot = None
        self._size -= 1
        if not self._size and self._loop.running:
            self._loop.stop()
            self._expiring.clear()

    def _tick(self) -> None:
        self._ticks += 1
        for connection in self._expiring.pop(self._ticks, ()):
            if connection.keepalive_slot is None:
                continue
            connection.ping_outstanding = False
            if connection.heard:
                connection.heard = False
            else:
                connection.keepalive_expired()
        pinged = []
        for connection in list(self._wheel[self._ticks % self.slots]):
            if connection.ping_outstanding:
                continue  # a timeout longer than the interval: its answer is still awaited
            if connection.heard:
                connection.heard = False
            elif connection.keepalive_ping():
                connection.ping_outstanding = True
                pinged.append(connection)
        if pinged:
            self._expiring[self._ticks + self.timeout_ticks] = pinged
