"""
What the garbage collector scans, and how often it scans everything.

A full collection walks every object the process tracks. Most of those are what start-up made
(Twisted, Autobahn, relayd and their modules, classes and functions, the configuration): they live
as long as the process and are never garbage. Walked on every full collection they made each one a
pause of about 50 ms, the tail of every latency relayd has (`bench/run --only latency`: p99 at 1000
receivers x 50 frames/s 37-50 ms, 9-11 ms without). Once the reactor runs, CollectorPolicy collects
once and moves everything that exists then out of the collector's reach (gc.freeze). Objects made
later (connections, rooms, frames) are collected as before, so nothing that ends is kept.

What is left to walk still grows with the load: at 500 gameroom rooms a full collection took
24-30 ms, and Python ran one about every 6 seconds (after every 10 collections of the middle
generation, once a quarter of the old generation is new since the last one; objects that reach the
old generation and are then freed by their reference count count as new all the same). Those pauses
were the p99 of the master packets' delay (within 25-50 ms; within 10 ms with full collections ten
times rarer). So a full collection waits for FULL_COLLECTION_EVERY middle-generation collections:
cyclic garbage old enough to be in the old generation is freed later, young garbage as before.
"""

from __future__ import annotations

import gc

from twisted.application.service import Service
from twisted.logger import Logger

_log = Logger()

FULL_COLLECTION_EVERY = 100  # middle-generation collections between full ones (Python's own: 10)


class CollectorPolicy(Service):
    name = "gc-policy"

    def __init__(self, reactor):
        self.reactor = reactor
        self.frozen = 0

    def startService(self):
        super().startService()
        self.reactor.callWhenRunning(self.apply)

    def apply(self) -> None:
        unreachable = gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
        _log.info("garbage collector: {count} objects from start-up frozen, never scanned again "
                  "({unreachable} collected first); a full collection every {every} of the middle generation",
                  count=self.frozen, unreachable=unreachable, every=FULL_COLLECTION_EVERY)
