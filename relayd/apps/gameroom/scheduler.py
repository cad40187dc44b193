"""
The lock-step tick scheduler: one LoopingCall for every running room of the app, on an injectable
clock, running only while a game runs. Its tick goes through relayd.periodic.guarded, the daemon's
one error policy for periodic work (a LoopingCall whose function raises stops for good), and it
measures how late each tick runs.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.task import LoopingCall
from relayd.periodic import guarded


class TickScheduler:
    def __init__(self, clock, interval: float, tick: Callable[[float], None], *, on_error=None, lateness=None):
        self.clock = clock
        self.interval = interval
        self._tick = guarded("gameroom tick", tick, on_error)
        self._lateness = lateness
        self._loop = LoopingCall(self._run)
        self._loop.clock = clock
        self._expected: float | None = None

    def start(self) -> None:
        self._expected = self.clock.seconds() + self.interval
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    @property
    def running(self) -> bool:
        return self._loop.running

    def _run(self) -> None:
        now = self.clock.seconds()
        if self._expected is not None and self._lateness is not None:
            self._lateness(max(0.0, now - self._expected))
        # LoopingCall skips intervals it missed; the next tick is due on the grid after now
        self._expected = now + self.interval - ((now - (self._expected or now)) % self.interval)
        self._tick(now)
