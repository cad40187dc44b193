"""
groovejet over WebSocket: a WebRTC signaling lobby, both protocol generations of the deployed clients.

Every connection first receives
  {"type": "identity", "data": {"clientId": "<uuid4>", "reconnectToken": "<secret>"}}

Query-string generation (a connection whose query has `code` or `host`):
  POST <mount>/rooms -> {"code": "<5 of [0-9a-z]>"} (CORS for any origin, preflight included)
  ws <mount>/?host=true&code=X    host (the mere presence of `host` means host)
  ws <mount>/?code=X              guest
  errors {"type": "error", "errorType": T, "errorMessage": M} then close 1000, T one of
  missingRoomCode (absent or repeated code), noRoomFound, hostDisconnected, hostAlreadyExists.
Message generation (no code/host in the query): only these until the client is in a room
  {"type": "createRoom"}                              -> {"type": "createdRoom", "data": {"roomCode"}}
  {"type": "joinRoom", "data": {"roomCode", "canHost"}} -> {"type": "joinedRoom", "data": {"isHost", "reconnected": false}}
  a room without host: with canHost the joiner becomes host, else error hostDisconnected.
Signals (data are arbitrary JSON values; the server sets clientId itself):
  guest {"type": "guestOfferSignal", "data": {"offerSignal"}}  -> host, data.clientId = guest
  host  {"type": "hostAnswerSignal", "data": {"answerSignal", "clientId"}} -> that guest, data {answerSignal}
  guest {"type": "iceCandidate", "data": {"candidate"}}        -> host, data.clientId = guest
  host  {"type": "iceCandidate", "data": {"candidate", "clientId"}} -> that guest, data {candidate}
Extensions:
  resume: ?resume=<reconnectToken> in the query, or {"type": "resume", "data": {"token"}} as the first
    message, within reconnect_grace seconds -> {"type": "resumed", "data": {"roomCode", "isHost", "clientId"}}
  guests hear {"type": "hostLeft"} / {"type": "hostReturned"}; the host hears {"type": "guestLeft"} /
    {"type": "guestReturned"} (data.clientId).
  host migration after the grace: the new host gets {"type": "promoted", "data": {"guests", "snapshot"}},
    the other guests {"type": "hostChanged", "data": {"clientId"}}; the host may name
    {"type": "setSuccessor", "data": {"clientId"}}.
  snapshots: host {"type": "snapshot", "data": <any JSON>} -> {"type": "snapshotStored"} once durable;
    a new or returning host receives {"type": "snapshot", "data": ...}.
Other errors keep the connection: invalidMessage, unknownType, notInRoom, alreadyInRoom, notHost,
notGuest, unknownClient, clientDisconnected, tooLarge, tooManyRooms, invalidToken.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource

from relayd import jsonutil
from relayd.apps.base import App
from relayd.apps.groovejet.core import Groovejet, Seat, client_channel, error, message
from relayd.errors import ProtocolError
from relayd.ws import closecodes
from relayd.ws.frames import Frame
from relayd.ws.protocol import RelaydProtocol

ROOMS = "groovejet.room"
_log = Logger()


def _parse(payload: bytes) -> dict:
    try:
        return jsonutil.loads_typed(payload)
    except jsonutil.BadJSON as e:
        raise error("invalidMessage", str(e)) from None


def _data(value: dict) -> dict:
    data = value.get("data")
    if not isinstance(data, dict):
        raise error("invalidMessage", f"{value['type'][:40]} needs a data object")
    return data


class GroovejetProtocol(RelaydProtocol):
    seat: Seat | None = None
    client_id: str | None = None
    subscription = None
    first_generation = False

    def connecting(self, request):
        # blank values count: the original treats a bare `?host` as host mode
        self.params = parse_qs(urlsplit(self.http_request_uri).query, keep_blank_values=True)
        return None

    def send(self, frame: Frame) -> None:
        self.send_frame(frame)

    def report(self, e: ProtocolError) -> None:
        self.send(Frame.json({"type": "error", "errorType": e.kind, "errorMessage": e.message}))
        if e.close:
            self.close(closecodes.NORMAL, e.message)

    # ---- identity ------------------------------------------------------------------------------

    def _take_identity(self, client_id: str, token: str) -> None:
        if self.subscription is not None:
            self.subscription.cancel()
            self.factory.app.live.pop(self.client_id, None)
        self.client_id, self.token = client_id, token
        self.subscription = self.factory.app.bus.subscribe(client_channel(client_id), self.send)
        self.factory.app.live[client_id] = self

    def _adopt(self, seat: Seat) -> None:
        """Take over a resumed seat; a connection still holding it (half-dead) is closed."""
        app: GroovejetApp = self.factory.app
        previous = app.live.get(seat.client_id)
        if previous is not None and previous is not self:
            previous.seat = None  # its close must not free the seat it lost
            previous.close(closecodes.REPLACED, "resumed on a newer connection")
        self._take_identity(seat.client_id, seat.token)
        self.seat = seat

    def _send_resumed(self) -> None:
        seat = self.seat
        self.send(message("resumed", {"roomCode": seat.room.code, "isHost": seat.is_host, "clientId": seat.client_id}))

    def opened(self) -> None:
        app: GroovejetApp = self.factory.app
        params = self.params
        resume = params.get("resume")
        self.first_generation = "code" in params or "host" in params
        resumed = None
        if resume and len(resume) == 1:
            try:
                resumed = app.core.resume(resume[0])
            except ProtocolError as e:
                self.factory.metrics.protocol_error(e.kind)
        if resumed is not None:
            self._adopt(resumed)
        else:
            self._take_identity(*app.core.new_identity())
        self.send(message("identity", {"clientId": self.client_id, "reconnectToken": self.token}))
        if resumed is not None:
            self._send_resumed()
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

    def received(self, payload: bytes, is_binary: bool) -> None:
        value = _parse(payload)
        kind = value["type"]
        if self.seat is None:
            self._lobby(kind, value)
        else:
            self._in_room(kind, value)

    def _lobby(self, kind: str, value: dict) -> None:
        app: GroovejetApp = self.factory.app
        if kind == "createRoom":
            room = app.core.create_room()
            self.seat = app.core.join(self.client_id, self.token, room.code, as_host=True, can_host=True,
                                      first_generation=False)
            self.send(message("createdRoom", {"roomCode": room.code}))
        elif kind == "joinRoom":
            data = _data(value)
            self.seat = app.core.join(self.client_id, self.token, data.get("roomCode"), as_host=False,
                                      can_host=data.get("canHost") is True, first_generation=False)
            self.send(message("joinedRoom", {"isHost": self.seat.is_host, "reconnected": False}))
        elif kind == "resume":
            self._adopt(app.core.resume(_data(value).get("token")))
            self._send_resumed()
        else:
            raise error("notInRoom", "join or create a room first")

    def _in_room(self, kind: str, value: dict) -> None:
        app: GroovejetApp = self.factory.app
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

    def closed(self) -> None:
        app: GroovejetApp = self.factory.app
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        if app.live.get(self.client_id) is self:
            del app.live[self.client_id]
        seat, self.seat = self.seat, None
        if seat is not None:
            app.core.disconnected(seat)


class Rooms(Resource):
    """POST <mount>/rooms -> {"code": ...}, answering CORS requests from any origin."""

    isLeaf = True

    def __init__(self, app: "GroovejetApp"):
        super().__init__()
        self.app = app

    def _cors(self, request):
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"access-control-allow-methods", b"POST, OPTIONS")
        requested = request.getHeader(b"access-control-request-headers")
        request.setHeader(b"access-control-allow-headers", requested or b"content-type")
        request.setHeader(b"access-control-max-age", b"600")

    def render_OPTIONS(self, request):
        self._cors(request)
        request.setResponseCode(204)
        self.app.metrics.http(204)
        return b""

    def render_POST(self, request):
        self._cors(request)
        request.setHeader(b"content-type", b"application/json")
        try:
            room = self.app.core.create_room()
        except ProtocolError as e:
            request.setResponseCode(503)
            self.app.metrics.http(503)
            return jsonutil.dumps({"error": e.kind, "message": e.message})
        self.app.metrics.http(200)
        return jsonutil.dumps({"code": room.code})


class GroovejetApp(App):
    protocol = GroovejetProtocol

    def __init__(self, ctx):
        super().__init__(ctx)
        o = self.options
        self.live: dict[str, GroovejetProtocol] = {}
        self.core = Groovejet(
            self.bus, self.reactor,
            grace=o["reconnect_grace"], expiry=o["room_expiry"], max_rooms=o["max_rooms"],
            migration=o["host_migration"], save_room=self._save, forget_room=self._forget,
        )

    def _save(self, code: str, record: dict) -> defer.Deferred:
        """Fires True once the room is durable, False (logged) when the store failed."""
        return self.store.put(ROOMS, code, record).addCallbacks(lambda _: True, self._store_failed, errbackArgs=(code,))

    def _forget(self, code: str) -> None:
        self.store.delete(ROOMS, code).addErrback(self._store_failed, code)

    def _store_failed(self, failure, code) -> bool:
        _log.failure("groovejet: the store failed for room {code}", failure, code=code)
        return False

    @defer.inlineCallbacks
    def start(self):
        for code, record in (yield self.store.items(ROOMS)):
            self.core.restore_room(code, record)

    def stop(self):
        self.core.shutdown()

    def http_resource(self):
        root = Resource()
        root.putChild(b"rooms", Rooms(self))
        return root

    def room_count(self) -> int:
        return len(self.core.rooms)
