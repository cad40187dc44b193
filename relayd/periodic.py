"""
Periodic work with one error policy: a child service in the daemon's service tree.

A LoopingCall whose function raises (or whose Deferred fails) stops for good. Periodic is Twisted's
TimerService calling the function through a guard that catches, logs (one line with the
traceback) and counts every failure (`relayd_periodic_errors_total{task}`), so the next call
happens on time whatever the last one did. The clock is injectable, and a Periodic may be started
and stopped again while its parent runs (ticks that run only while there is work).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

_log = Logger()

# failures by task name, for the whole process: relayd.metrics exports them as
# relayd_periodic_errors_total{task}, so no job needs wiring to be counted
ERRORS: Counter = Counter()


def guarded(name: str, function: Callable[..., Any], on_error: Callable[[], None] | None = None) -> Callable[..., Any]:
    """function, with every exception or failed Deferred logged and counted instead of raised."""

    def counted():
        ERRORS[name] += 1
        if on_error is not None:
            on_error()

    def failed(failure):
        _log.failure("{task} failed; it runs again at its next time", failure, task=name)
        counted()

    def call(*args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except Exception:
            _log.failure("{task} failed; it runs again at its next time", task=name)
            counted()
            return None
        if isinstance(result, defer.Deferred):
            return result.addErrback(failed)
        return result

    return call


class Periodic(TimerService):
    def __init__(self, name: str, interval: float, function: Callable[[], Any], *, clock, now: bool = True,
                 on_error: Callable[[], None] | None = None):
        super().__init__(interval, self._call)
        self.setName(name)
        self.clock = clock
        self._function = guarded(name, function, on_error)
        self._now = now
        self._skip = False

    def startService(self):
        # TimerService calls at once when it starts; most periodic checks should wait a step first
        self._skip = not self._now
        super().startService()

    def stopService(self):
        # a parent stopped before this child started (a start-up that failed half-way): nothing runs
        if not self.running:
            return None
        return super().stopService()

    def _call(self):
        if self._skip:
            self._skip = False
            return None
        return self._function()
