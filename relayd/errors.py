"""
The one exception type an app core raises for bad input (ProtocolError), which the Runner
(relayd.session) turns into the protocol's error form through the session's report(); and
Unavailable, a shared service (Redis, the store) that cannot serve now.
"""

from __future__ import annotations

from twisted.logger import Logger

from relayd.ws import closecodes

_log = Logger()


class ProtocolError(Exception):
    """
    A client broke the protocol.

    kind: a short machine-readable label, used as the metric label and, where the protocol has
    error names (groovejet's errorType), on the wire.
    message: a sentence for the client and the log.
    close: whether the protocol ends the connection for this error.
    code: the WebSocket close code when it does.
    """

    def __init__(self, kind: str, message: str, close: bool = False, code: int = closecodes.POLICY):
        super().__init__(kind, message)
        self.kind = kind
        self.message = message
        self.close = close
        self.code = code

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class Unavailable(Exception):
    """A shared service (Redis) cannot be reached now; the client is told to try again later."""


class StoreUnavailable(Unavailable):
    """
    The durable store cannot write now (a full disk, an I/O error): nothing is acknowledged, the
    client gets its app's unavailable answer, and the store says so once per interval in the log.
    """


def unless_unavailable(what: str, **fields):
    """
    An errback for work that is tried again on its own (periodic upkeep, a lease that expires by
    itself): a shared service being away is expected and quiet; anything else is logged.
    """

    def errback(failure):
        if not failure.check(Unavailable):
            _log.failure(what, failure, **fields)

    return errback
