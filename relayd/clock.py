"""
The daemon's one clock: wall time read once at start, advanced by the monotonic clock.

Every duration, timeout, rate and expiry in relayd is a difference of reactor.seconds(), and Twisted's
reactor reads time.time() unless it is given another clock. A wall clock that steps (an NTP step, an
operator's `date -s`, a VM resumed) would then freeze a game for the length of a step back, hold a
handshake open for minutes, refill or drain every quota at once, and expire rooms early on a step
forward.

SteadyClock reads like wall time (so timestamps relayd stores and shows, and times it compares with
stored ones after a restart, stay meaningful) but only ever advances at the monotonic clock's rate:
a step of the system clock while relayd runs does not move it. What that costs: a timestamp written
after such a step is off by the step until relayd restarts and reads the wall clock again.
"""

from __future__ import annotations

import time


class SteadyClock:
    def __init__(self, wall=time.time, monotonic=time.monotonic):
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def seconds(self) -> float:
        return self._offset + self._monotonic()
