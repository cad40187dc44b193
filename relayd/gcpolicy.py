"""
What the garbage collector scans. A full collection walks every object the process tracks, and most
of those are what start-up made (Twisted, Autobahn, relayd and their modules, classes and functions,
the configuration): they live as long as the process and are never garbage. Walked on every full
collection they made each one a pause of about 50 ms, the tail of every latency relayd has
(`bench/run --only latency`: p99 at 1000 receivers x 50 frames/s 37-50 ms, 9-11 ms without).

Once the reactor runs, FreezeStartup collects once and moves everything that exists then out of the
collector's reach (gc.freeze). Objects made later (connections, rooms, frames) are collected as
before, so nothing that ends is kept; only what start-up made is never walked again.
"""

from __future__ import annotations

import gc

from twisted.application.service import Service
from twisted.logger import Logger

_log = Logger()


class FreezeStartup(Service):
    name = "gc-freeze-startup"

    def __init__(self, reactor):
        self.reactor = reactor
        self.frozen = 0

    def startService(self):
        super().startService()
        self.reactor.callWhenRunning(self.freeze)

    def freeze(self) -> None:
        unreachable = gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        _log.info("garbage collector: {count} objects from start-up frozen, never scanned again "
                  "({unreachable} collected first)", count=self.frozen, unreachable=unreachable)
