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
