"""
One carparty client: a game screen or a phone, from its login frame to its close.

The protocol defines no error frames: what is wrong is a silent drop (counted in
relayd_dropped_total{reason}, logged, the connection closed without a word), except that a login
the node cannot check with Redis closes 1013 "relay unavailable, try again".
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from relayd.apps.carparty.core import CarParty, ClientSession, Drop, ServerSession, parse_login
from relayd.errors import ProtocolError
from relayd.session import ISession, unavailable
from relayd.ws import closecodes

_log = Logger()


@implementer(ISession)
class CarPartySession:
    unavailable = unavailable("relay unavailable, try again")
    too_many_held = ProtocolError("too_many_frames_before_login",
                                  "more frames than relayd holds while the login is answered", close=True)

    def __init__(self, app, conn):
        self.app = app
        self.conn = conn
        self.seat: ServerSession | ClientSession | None = None  # the core's record of this client

    def opened(self) -> None:
        pass  # nothing is sent before the login, and nothing back for it

    def received(self, payload: bytes, is_binary: bool):
        core: CarParty = self.app.core
        try:
            if self.seat is None:
                return self._login(core, payload, is_binary)
            if isinstance(self.seat, ServerSession):
                core.from_server(self.seat, payload, is_binary)
            elif is_binary:
                self.app.metrics.dropped("client_binary_frame")
            else:
                core.from_client(self.seat, payload)
        except Drop as drop:
            self._drop(drop.reason)
        return None

    def _login(self, core: CarParty, payload: bytes, is_binary: bool):
        if is_binary:
            raise Drop("login_binary")
        message = parse_login(payload)
        code = message["server_code"]
        if message["action"] == "login_server":
            self.conn.use_role("server")  # it streams to every phone and bursts a track at the start of a race
            answer = core.login_server(code, self.conn.send, self._kicked)
        else:
            answer = core.login_client(code, message["client_id"], self.conn.send, self._kicked)
        # the frames right after a login wait for its answer (from Redis, on several nodes), in order
        return answer.addCallbacks(self._logged_in, self._login_failed)

    def _logged_in(self, seat) -> None:
        if not self.conn.still_open():
            # the connection went while its login was answered: undo the login
            self._leave(seat)
            return
        self.seat = seat

    def _login_failed(self, failure):
        if failure.check(Drop):
            self._drop(failure.value.reason)
            return None
        return failure  # Redis away, or a bug: the runner answers those

    def _kicked(self) -> None:
        self.seat = None
        self.conn.close(closecodes.NORMAL, "game server left")

    def _drop(self, reason: str) -> None:
        self.app.metrics.dropped(reason)
        _log.info("carparty: dropping {peer}: {reason}", peer=self.conn.peer, reason=reason)
        if reason == "receiver_id_not_string":
            return  # a server frame addressed to nobody: the frame is dropped, not the server
        self.conn.drop()

    def report(self, error: ProtocolError) -> None:
        if error.kind == "unavailable":
            self.app.metrics.dropped("relay_unavailable")
            self.conn.close(error.code, error.message)
            return
        self._drop(error.kind)

    def closed(self) -> None:
        seat, self.seat = self.seat, None
        self._leave(seat)

    def _leave(self, seat) -> None:
        core: CarParty = self.app.core
        if isinstance(seat, ServerSession):
            core.server_left(seat)
        elif isinstance(seat, ClientSession):
            core.client_left(seat)
