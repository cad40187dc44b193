"""
One client's part in an app, behind two small interfaces, and the one runner between them.

An app's per-client logic is an ISession (relayd/apps/<app>/session.py), written against an
IConnection only. The WebSocket connection (relayd.ws.protocol.RelaydProtocol) is an IConnection,
and so is the room's end of a pipe from another node (relayd.backplane.pipes.RemoteEnd): the same
session class runs behind either.

The Runner is the only guard and the only holding queue:
- a session step (opened, received) that raises ProtocolError is counted by the connection and
  put on the wire in the protocol's own form by the session's report(); Unavailable (a shared
  service is away) becomes the session's `unavailable` error, which closes with 1013 after the
  protocol's error form; anything else is logged with its traceback and closes with 1011;
- a step may return a Deferred: the frames that arrive meanwhile wait, in order and bounded, and
  go on when it fires, through the same guard (so a failure in a callback is handled exactly like
  one raised at once).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from relayd.errors import ProtocolError, Unavailable
from relayd.ws import closecodes

_log = Logger()

MAX_HELD = 256  # frames a client may send while a step of its session waits for an answer
TOO_MANY_HELD = ProtocolError("too_many_held", "too many messages while waiting for an answer", close=True,
                              code=closecodes.POLICY)


class IConnection(Interface):
    """What a session may do with its client."""

    peer = Attribute("Who the client is, for log lines.")
    client_address = Attribute("The client's address (behind a trusted proxy, the one it names), for quotas.")

    def send(frame, latest=None) -> None:
        """Queue a relayd.ws.frames.Frame to the client (latest: a state that replaces its queued predecessor)."""

    def close(code: int, reason: str = "") -> None:
        """End the connection with this close code."""

    def drop() -> None:
        """End the connection without a close frame (a protocol's silent drop)."""

    def still_open() -> bool:
        """Whether frames sent now still reach the client."""

    def count_error(error: ProtocolError) -> bool:
        """Count and log a protocol error; False when the connection closed for too many of them."""

    def internal_error() -> None:
        """A bug hit this client: close with 1011."""

    def use_role(role: str) -> None:
        """The client now sends as this role (relayd.apps.base.AppSpec.roles)."""

    def listen(bus, channel: str):
        """Send the client every message later published on channel; returns the ISubscription."""


class ISession(Interface):
    """One client's part in an app."""

    unavailable = Attribute(
        "The ProtocolError this app answers when a shared service is away. A session may also have "
        "too_many_held, the ProtocolError for more than MAX_HELD frames waiting (else TOO_MANY_HELD).")

    def opened() -> Any:
        """The client is connected; may return a Deferred (its frames wait meanwhile)."""

    def received(payload: bytes, is_binary: bool) -> Any:
        """A frame from the client; may return a Deferred (the frames after it wait meanwhile)."""

    def closed() -> None:
        """The client is gone: release everything it held."""

    def report(error: ProtocolError) -> None:
        """Put a protocol error on the wire in the protocol's own form (and close when it says so)."""


def unavailable(message: str) -> ProtocolError:
    """The one answer to a shared service being away: the protocol's error form, then close 1013."""
    return ProtocolError("unavailable", message, close=True, code=closecodes.TRY_AGAIN_LATER)


class Runner:
    def __init__(self, connection, session, *, name: str, max_held: int = MAX_HELD):
        self.connection = connection
        self.session = session
        self.name = name
        self.max_held = max_held
        self._waiting: defer.Deferred | None = None
        self._held: deque | None = None
        self._closed = False

    # ---- from the connection -------------------------------------------------------------------

    def opened(self) -> None:
        self._step(self.session.opened)

    def received(self, payload: bytes, is_binary: bool) -> None:
        if self._waiting is not None:
            held = self._held
            if held is None:
                held = self._held = deque()
            if len(held) >= self.max_held:
                self._held = None
                self._handle(Failure(getattr(self.session, "too_many_held", TOO_MANY_HELD)))
                return
            held.append((payload, is_binary))
            return
        self._step(self.session.received, payload, is_binary)

    def closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._held = None
        try:
            self.session.closed()
        except Exception:
            _log.failure("{name}: cleaning up a client failed", name=self.name)

    @property
    def waiting(self) -> bool:
        return self._waiting is not None

    # ---- the guard ---------------------------------------------------------------------------

    def _step(self, function, *args) -> None:
        try:
            result = function(*args)
        except Exception:
            self._handle(Failure())
            return
        if isinstance(result, defer.Deferred):
            # an answer already there is handled at once, like one that comes later
            self._waiting = result
            result.addBoth(self._answered, result)

    def _answered(self, result, marker) -> None:
        if self._waiting is marker:
            self._waiting = None
        if isinstance(result, Failure):
            self._handle(result)
        held = self._held
        while held and self._waiting is None and not self._closed and self.connection.still_open():
            payload, is_binary = held.popleft()
            self._step(self.session.received, payload, is_binary)
        return None

    def _handle(self, failure: Failure) -> None:
        handle_failure(self.connection, self.session, failure, self.name)


def handle_failure(connection, session, failure: Failure, name: str) -> None:
    """
    The guard: a failure of a session's work put on the wire as the module docstring says. The
    Runner applies it to every step; a session applies it to work it started and does not make the
    next frames wait for (clicker's scores being written).
    """
    if failure.check(Unavailable):
        failure = Failure(session.unavailable)
    if failure.check(ProtocolError):
        error = failure.value
        if not connection.count_error(error):
            return
        try:
            session.report(error)
        except Exception:
            _log.failure("{name}: reporting a protocol error failed", name=name)
            connection.internal_error()
        return
    _log.failure("{name}: handling a client failed", failure, name=name)
    connection.internal_error()
