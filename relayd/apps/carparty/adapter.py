"""
carparty over WebSocket, wire-compatible with the CarParty Godot game server and phone client.

The first text frame logs in:
  {"action": "login_server", "server_code": "SNEK"}                        the game screen
  {"action": "login_client", "server_code": "SNEK", "client_id": "467123746"}  a phone
Extra fields are ignored; nothing is ever sent back for a login.

Then frames are relayed:
  phone -> server: JSON only; an object gets "client_id" set to the phone's id (overwriting any
      value it carried); other JSON values are forwarded as they are.
  server -> phones: to every phone of the server, never back to the server; a JSON object with a
      string "receiver_id" goes only to the phones whose client_id equals it (all of them when
      several share the id), forwarded unchanged with receiver_id in it.
  server <- relay: {"action": "connect", "client_id": ...} and {"action": "disconnect", ...}, once
      per phone connection.
When the server leaves, its code is freed and its phones are closed.

Silent drops, as the protocol defines (the connection is closed without a word; each is logged and
counted in relayd_dropped_total{app="carparty",reason=...}): a first frame that is not a JSON
object, an unknown action, a missing server_code, a phone without a string client_id, an unknown
code, a code already in use, and a phone frame that is not JSON. Binary frames from phones are
ignored (counted); binary frames from the server are relayed as binary.
Frames up to 1 MiB by default; every frame reaches every live receiver, in order.

With [bus] backend = redis a server code is unique in the cluster and phones may log in on any node
(relayd.apps.carparty.cluster); frames sent right after a login wait for its answer, in order. A
login the node cannot check with Redis closes 1013 "relay unavailable, try again".
"""

from __future__ import annotations

from relayd.apps.base import App
from relayd.apps.carparty.cluster import CodeKeeper
from relayd.apps.carparty.core import CarParty, ClientSession, Drop, ServerSession, parse_login
from relayd.backplane.cluster import Unavailable
from relayd.ws import closecodes
from relayd.ws.frames import Frame
from relayd.ws.protocol import RelaydProtocol


MAX_EARLY_FRAMES = 256  # frames a connection may send while its login is being answered


class CarPartyProtocol(RelaydProtocol):
    accepts_binary = True
    session: ServerSession | ClientSession | None = None
    logging_in = False
    early: list | None = None  # frames sent while the login is answered; made only when one comes

    def send(self, frame: Frame) -> None:
        self.send_frame(frame)

    def received(self, payload: bytes, is_binary: bool) -> None:
        core: CarParty = self.factory.app.core
        try:
            if self.session is None:
                if self.logging_in:
                    self._hold(payload, is_binary)
                else:
                    self._login(core, payload, is_binary)
            elif isinstance(self.session, ServerSession):
                core.from_server(self.session, payload, is_binary)
            elif is_binary:
                self.factory.metrics.dropped("client_binary_frame")
            else:
                core.from_client(self.session, payload)
        except Drop as drop:
            self._drop(drop.reason)

    def _login(self, core: CarParty, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            raise Drop("login_binary")
        message = parse_login(payload)
        code = message["server_code"]
        if message["action"] == "login_server":
            self.use_role("server")  # it streams to every phone and bursts a track at the start of a race
            d = core.login_server(code, self.send, self._kicked)
        else:
            d = core.login_client(code, message["client_id"], self.send, self._kicked)
        self.logging_in = True
        d.addCallbacks(self._logged_in, self._login_failed)

    def _hold(self, payload: bytes, is_binary: bool) -> None:
        """Frames sent right after the login wait for its answer (from Redis, on several nodes), in order."""
        if self.early is None:
            self.early = []
        if len(self.early) >= MAX_EARLY_FRAMES:
            raise Drop("too_many_frames_before_login")
        self.early.append((payload, is_binary))

    def _logged_in(self, session) -> None:
        self.logging_in = False
        core: CarParty = self.factory.app.core
        if self.state != self.STATE_OPEN:
            # the connection went while its login was answered: undo the login
            core.server_left(session) if isinstance(session, ServerSession) else core.client_left(session)
            return
        self.session = session
        early, self.early = self.early or (), None
        for payload, is_binary in early:
            if self.state != self.STATE_OPEN:
                break
            self.received(payload, is_binary)

    def _login_failed(self, failure) -> None:
        self.logging_in, self.early = False, None
        if failure.check(Drop):
            self._drop(failure.value.reason)
        elif failure.check(Unavailable):
            self.factory.metrics.dropped("relay_unavailable")
            self._log.warn("carparty: {peer} turned away: redis unreachable", peer=self.peer)
            self.close(closecodes.TRY_AGAIN_LATER, "relay unavailable, try again")
        else:
            self._log.failure("carparty: login failed", failure)
            self._internal_error()

    def _kicked(self) -> None:
        self.session = None
        self.close(closecodes.NORMAL, "game server left")

    def _drop(self, reason: str) -> None:
        self.factory.metrics.dropped(reason)
        self._log.info("carparty: dropping {peer}: {reason}", peer=self.peer, reason=reason)
        if reason == "receiver_id_not_string":
            return  # a server frame addressed to nobody: the frame is dropped, not the server
        self.dropConnection(abort=False)

    def closed(self) -> None:
        session, self.session = self.session, None
        core: CarParty = self.factory.app.core
        if isinstance(session, ServerSession):
            core.server_left(session)
        elif isinstance(session, ClientSession):
            core.client_left(session)


class CarPartyApp(App):
    protocol = CarPartyProtocol

    def __init__(self, ctx):
        super().__init__(ctx)
        self.keeper = None
        if self.cluster is None:
            self.core = CarParty(self.bus)
        else:
            self.keeper = CodeKeeper(self.cluster, clock=self.reactor)
            self.core = self.keeper.core = CarParty(self.bus, self.keeper.codes())

    def start(self):
        if self.keeper is not None:
            self.keeper.startService()

    def stop(self):
        if self.keeper is not None:
            return self.keeper.stopService()
        return None

    def room_count(self) -> int:
        return self.core.room_count()
