"""Log output chosen in the config: text lines or one JSON object per line, filtered by level."""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    textFileLogObserver,
)


def _as_json_line(event: dict) -> str:
    """
    One JSON object per event: Twisted's own fields, plus the message as text ("text") and, for a
    failure, its traceback ("exception"), so a log pipeline needs no Twisted to read them.
    """
    event = dict(event)
    event["text"] = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        event["exception"] = failure.getTraceback()
    return eventAsJSON(event) + "\n"


def make_observer(log_format: str, level: str, out: IO[str] | None = None):
    out = out if out is not None else sys.stdout
    if log_format == "json":
        base = FileLogObserver(out, _as_json_line)
    else:
        base = textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    # Autobahn logs each dropped peer at warn and every frame at debug: its own namespace is kept at warn
    predicate.setLogLevelForNamespace("autobahn", max(LogLevel.levelWithName(level), LogLevel.warn, key=_rank))
    return FilteringLogObserver(base, [predicate])


_ORDER = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]


def _rank(level) -> int:
    return _ORDER.index(level)


class Sparse:
    """
    A line that can repeat without end under attack or failure (refused connections, failing writes)
    said at most once per key per interval; the times it was not said are counted into the next.
    """

    def __init__(self, clock, interval: float):
        self.clock = clock
        self.interval = interval
        self._last: dict = {}  # key -> when it was last said
        self._unsaid: dict = {}  # key -> how many were not said since

    def due(self, key) -> int:
        """How many events this line speaks for if it is said now (this one included); 0: not now."""
        now = self.clock.seconds()
        count = self._unsaid.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._unsaid[key] = count
            return 0
        self._last[key] = now
        self._unsaid[key] = 0
        return count
