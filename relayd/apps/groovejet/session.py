"""
One groovejet client: its identity, its seat in a room and its signals; docs/protocols/groovejet.md.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from relayd import jsonutil
from relayd.apps.groovejet.core import Seat, client_channel, error, message
from relayd.errors import ProtocolError
from relayd.session import ISession, unavailable
from relayd.ws import closecodes
from relayd.ws.frames import Frame

_log = Logger()


def parse_message(payload: bytes) -> dict:
    try:
        return jsonutil.loads_typed(payload)
    except jsonutil.BadJSON as e:
        raise error("invalidMessage", str(e)) from None


def _data(value: dict) -> dict:
    data = value.get("data")
    if not isinstance(data, dict):
        raise error("invalidMessage", f"{value['type'][:40]} needs a data object")
    return data


@implementer(ISession)
class GroovejetSession:
    """
    One client's signalling: identity, lobby, room and signals. It runs where the client's room is:
    behind the client's WebSocket, or (several nodes) behind the RemoteEnd of a pipe on the node that
    owns the room (relayd.apps.groovejet.cluster), where a session whose room is elsewhere only
    carries its frames through the pipe. While it waits for Redis (where a room is), the runner holds
    the frames that come meanwhile.
    """

    unavailable = unavailable("rooms cannot be reached now; try again")
    too_many_held = ProtocolError("tooManyMessages", "too many messages while waiting for the room", close=True,
                                  code=closecodes.POLICY)

    def __init__(self, app, conn, params: dict, *, piped: dict | None = None):
        self.app = app
        self.conn = conn
        self.params = params
        self.piped = piped  # on the room's node: how the client's node opened the pipe
        self.seat: Seat | None = None
        self.client_id: str | None = None
        self.token: str | None = None
        self.subscription = None
        self.first_generation = False
        self.pipe = None  # while the client's room is on another node

    def send(self, frame: Frame) -> None:
        self.conn.send(frame)

    def report(self, e: ProtocolError) -> None:
        """The protocol's error form; an error that closes says why in the close too."""
        self.send(Frame.json({"type": "error", "errorType": e.kind, "errorMessage": e.message}))
        if e.close:
            self.conn.close(e.code, e.message)

    def opened(self):
        placement = self.app.placement
        if self.piped is not None:
            identity = (self.piped["client_id"], self.piped["token"])
            if self.piped["announce"]:
                self.start_session(identity)
            else:
                self._take_identity(*identity)
            return None
        return placement.route_opening(self)

    def received(self, payload: bytes, is_binary: bool):
        if self.pipe is not None:
            self.pipe.forward(payload)
            return None
        if self.seat is None and self.piped is None:
            return self.app.placement.route_lobby(self, payload)
        return self.handle(payload)

    def closed(self) -> None:
        if self.pipe is not None:
            self.pipe.closed()
            self.pipe = None
        self.end_session()

    # ---- identity ------------------------------------------------------------------------------

    def _take_identity(self, client_id: str, token: str) -> None:
        app = self.app
        if self.subscription is not None:
            self.subscription.cancel()
            if app.live.get(self.client_id) is self:
                del app.live[self.client_id]
        self.client_id, self.token = client_id, token
        self.subscription = app.bus.subscribe(client_channel(client_id), self.send)
        app.live[client_id] = self

    def _adopt(self, seat: Seat) -> None:
        """Take over a resumed seat; a connection still holding it (half-dead) is closed."""
        previous = self.app.live.get(seat.client_id)
        if previous is not None and previous is not self:
            previous.seat = None  # its close must not free the seat it lost
            previous.conn.close(closecodes.REPLACED, "resumed on a newer connection")
        self._take_identity(seat.client_id, seat.token)
        self.seat = seat

    def _send_resumed(self) -> None:
        seat = self.seat
        self.send(message("resumed", {"roomCode": seat.room.code, "isHost": seat.is_host, "clientId": seat.client_id}))

    def start_session(self, identity: tuple[str, str] | None = None) -> None:
        """The connection is open: send its identity (or resume its seat) and join as the query says."""
        app = self.app
        params = self.params
        resume = params.get("resume")
        self.first_generation = "code" in params or "host" in params
        resumed = None
        if resume and len(resume) == 1:
            try:
                resumed = app.core.resume(resume[0])
            except ProtocolError as e:
                app.metrics.protocol_error(e.kind)
        if resumed is not None:
            self._adopt(resumed)
        else:
            self._take_identity(*(identity or app.core.new_identity()))
        self.send(message("identity", {"clientId": self.client_id, "reconnectToken": self.token}))
        if resumed is not None:
            self._send_resumed()
            app.core.announce_return(resumed)
            return
        if resume:
            self.send(Frame.json({"type": "error", "errorType": "invalidToken",
                                  "errorMessage": "no seat is kept for this reconnect token"}))
        if self.first_generation:
            codes = params.get("code", [])
            code = codes[0] if len(codes) == 1 else None
            self.seat = app.core.join(self.client_id, self.token, code, as_host="host" in params,
                                      can_host=False, first_generation=True)

    # ---- messages ------------------------------------------------------------------------------

    def handle(self, payload: bytes):
        value = parse_message(payload)
        kind = value["type"]
        if self.seat is None:
            return self._lobby(kind, value)
        self._in_room(kind, value)
        return None

    def _lobby(self, kind: str, value: dict):
        app = self.app
        if kind == "createRoom":
            creator = self.conn.client_address or "unknown"
            app.take_create_quota(creator)
            return app.create_room(refund=creator).addCallback(self._created)
        elif kind == "joinRoom":
            data = _data(value)
            self.seat = app.core.join(self.client_id, self.token, data.get("roomCode"), as_host=False,
                                      can_host=data.get("canHost") is True, first_generation=False)
            self.send(message("joinedRoom", {"isHost": self.seat.is_host, "reconnected": False}))
        elif kind == "resume":
            self._adopt(app.core.resume(_data(value).get("token")))
            self._send_resumed()
            app.core.announce_return(self.seat)
        else:
            raise error("notInRoom", "join or create a room first")
        return None

    def _created(self, room) -> None:
        self.seat = self.app.core.join(self.client_id, self.token, room.code, as_host=True, can_host=True,
                                       first_generation=False)
        self.send(message("createdRoom", {"roomCode": room.code}))

    def _in_room(self, kind: str, value: dict) -> None:
        app = self.app
        core, seat, options = app.core, self.seat, app.options
        if kind in ("createRoom", "joinRoom", "resume"):
            raise error("alreadyInRoom", "this connection is already in a room")
        if kind == "snapshot":
            if "data" not in value:
                raise error("invalidMessage", "snapshot needs data")
            if len(jsonutil.dumps(value["data"])) > options["max_snapshot_size"]:
                raise error("tooLarge", "the snapshot is larger than max_snapshot_size")
            stored = core.store_snapshot(seat, value["data"])
            if not isinstance(stored, defer.Deferred):
                stored = defer.succeed(True)
            stored.addCallback(self._snapshot_stored)
            return
        data = _data(value)
        if kind in ("guestOfferSignal", "hostAnswerSignal", "iceCandidate") and \
                len(jsonutil.dumps(data)) > options["max_signal_size"]:
            raise error("tooLarge", "the signal is larger than max_signal_size")
        if kind == "guestOfferSignal":
            if seat.is_host:
                raise error("notGuest", "the host does not send offers")
            core.from_guest(seat, kind, data)
        elif kind == "hostAnswerSignal":
            if not seat.is_host:
                raise error("notHost", "only the host answers")
            core.from_host(seat, kind, data, "answerSignal")
        elif kind == "iceCandidate":
            if seat.is_host:
                core.from_host(seat, kind, data, "candidate")
            else:
                core.from_guest(seat, kind, data)
        elif kind == "setSuccessor":
            core.set_successor(seat, data.get("clientId"))
        else:
            raise error("unknownType", f"unknown message type {kind[:40]}")

    def _snapshot_stored(self, stored: bool) -> None:
        if stored:
            self.send(message("snapshotStored"))
        else:
            self.send(Frame.json({"type": "error", "errorType": "snapshotNotStored",
                                  "errorMessage": "the snapshot could not be stored"}))

    def end_session(self) -> None:
        app = self.app
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        if app.live.get(self.client_id) is self:
            del app.live[self.client_id]
        seat, self.seat = self.seat, None
        if seat is not None:
            app.core.disconnected(seat)
