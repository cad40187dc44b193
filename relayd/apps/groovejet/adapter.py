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

import hmac
from urllib.parse import parse_qs, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from relayd import jsonutil
from relayd.apps.base import App
from relayd.apps.groovejet.core import Groovejet, Seat, client_channel, error, message
from relayd.errors import ProtocolError
from relayd.quota import AddressQuota
from relayd.web.proxy import client_of
from relayd.ws import closecodes
from relayd.ws.frames import Frame
from relayd.ws.protocol import RelaydProtocol

ROOMS = "groovejet.room"
MAX_HELD_FRAMES = 64  # frames a client may send while waiting for Redis (several nodes)
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


class Session:
    """
    One client's signalling: identity, lobby, room and signals. It runs where the client's room is:
    in the client's own connection (GroovejetProtocol), or, on several nodes, in a RemoteClient on
    the node that owns the room (relayd.apps.groovejet.cluster). Its host gives `app`, `send`,
    `close` and `report`.
    """

    seat: Seat | None = None
    client_id: str | None = None
    token: str | None = None
    subscription = None
    first_generation = False
    params: dict = {}
    held: list | None = None  # frames waiting for an answer from Redis (several nodes), in order

    def hold(self) -> None:
        if self.held is None:
            self.held = []

    def ahead_of_held(self, action, *args) -> None:
        """Run action now, before the frames held while it waited (they follow on release)."""
        held, self.held = self.held or [], None
        try:
            action(*args)
        except ProtocolError as e:
            self._protocol_error(e)
        if self.held is None:
            self.held = held
        else:
            self.held.extend(held)  # the action waits for something in turn; the older frames after it

    def release(self) -> None:
        """What was waiting is answered: the frames held meanwhile go on, in order."""
        held, self.held = self.held or [], None
        for payload in held:
            if not self.still_open() or self.held is not None:
                if self.held is not None:
                    self.held.extend(held[held.index(payload):])
                return
            self.dispatch(payload)

    def failed(self, failure) -> None:
        """An answer from elsewhere failed: the client hears it in the protocol's error form."""
        from relayd.backplane.cluster import Unavailable

        if failure.check(ProtocolError):
            self._protocol_error(failure.value)
        elif failure.check(Unavailable):
            self._protocol_error(error("unavailable", "rooms cannot be reached now; try again"))
        else:
            _log.failure("groovejet: handling a client failed", failure)
            self._internal_error()

    def report(self, e: ProtocolError) -> None:
        """The protocol's error form; an error that closes says why in the close too."""
        self.send(Frame.json({"type": "error", "errorType": e.kind, "errorMessage": e.message}))
        if e.close:
            self.close(closecodes.NORMAL, e.message)

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
            previous.close(closecodes.REPLACED, "resumed on a newer connection")
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

    def handle(self, payload: bytes) -> None:
        if self.held is not None:
            if len(self.held) >= MAX_HELD_FRAMES:
                raise ProtocolError("tooManyMessages", "too many messages while waiting for the room", close=True,
                                    code=closecodes.POLICY)
            self.held.append(payload)
            return
        value = _parse(payload)
        kind = value["type"]
        if self.seat is None:
            self._lobby(kind, value)
        else:
            self._in_room(kind, value)

    def _lobby(self, kind: str, value: dict) -> None:
        app = self.app
        if kind == "createRoom":
            app.take_create_quota(getattr(self, "client_address", None) or "unknown")
            created = app.create_room()
            if isinstance(created, defer.Deferred):
                self.hold()
                created.addCallback(self._created).addErrback(self.failed).addBoth(lambda _: self.release())
            else:
                self._created(created)
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


class GroovejetProtocol(Session, RelaydProtocol):
    """A client's WebSocket; its Session runs here, or (several nodes) is piped to the room's node."""

    pipe = None  # relayd.apps.groovejet.cluster.Pipe while the session runs on another node

    @property
    def app(self) -> "GroovejetApp":
        return self.factory.app

    def connecting(self, request):
        # blank values count: the original treats a bare `?host` as host mode
        self.params = parse_qs(urlsplit(self.http_request_uri).query, keep_blank_values=True)
        return None

    def send(self, frame: Frame) -> None:
        self.send_frame(frame)

    def still_open(self) -> bool:
        return self.state == self.STATE_OPEN

    def opened(self) -> None:
        router = self.app.router
        if router is None:
            self.start_session()
        else:
            self.hold()
            router.route_opening(self)

    def rate_role(self) -> str:
        seat = self.seat
        return "host" if seat is not None and seat.is_host else "client"

    def received(self, payload: bytes, is_binary: bool) -> None:
        if self.pipe is not None:
            self.pipe.forward(payload)
        elif self.held is None and self.seat is None and self.app.router is not None:
            self.app.router.route_lobby(self, payload)
        else:
            self.handle(payload)

    def dispatch(self, payload: bytes) -> None:
        try:
            self.received(payload, False)
        except ProtocolError as e:
            self._protocol_error(e)
        except Exception:
            self._log.failure("groovejet: handling a message failed")
            self._internal_error()

    def closed(self) -> None:
        self.held = None
        if self.pipe is not None:
            self.pipe.closed()
            self.pipe = None
        self.end_session()


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
        app = self.app
        token = app.options["create_token"]
        if token:
            given = request.getHeader(b"authorization") or b""
            if not hmac.compare_digest(given, b"Bearer " + token.encode()):
                app.metrics.protocol_error("unauthorized_create")
                request.setHeader(b"www-authenticate", b'Bearer realm="relayd"')
                return self._refused(request, error("unauthorized", "POST rooms needs the create token"), 401)
        else:
            try:
                app.take_create_quota(client_of(request))
            except ProtocolError as e:
                return self._refused(request, e, 429)
        try:
            created = app.create_room()
        except ProtocolError as e:
            return self._refused(request, e)
        if not isinstance(created, defer.Deferred):
            return self._created(created, request)

        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(outcome):
            if not gone:
                request.write(outcome)
                request.finish()

        def failed(failure):
            from relayd.backplane.cluster import Unavailable

            if failure.check(ProtocolError):
                return self._refused(request, failure.value)
            if failure.check(Unavailable):
                return self._refused(request, error("unavailable", "rooms cannot be reached now; try again"))
            _log.failure("groovejet: creating a room failed", failure)
            return self._refused(request, error("internalError", "the room could not be created"))

        created.addCallback(self._created, request).addErrback(failed).addCallback(answer)
        return NOT_DONE_YET

    def _created(self, room, request) -> bytes:
        self.app.metrics.http(200)
        return jsonutil.dumps({"code": room.code})

    def _refused(self, request, e: ProtocolError, code: int = 503) -> bytes:
        request.setResponseCode(code)
        self.app.metrics.http(code)
        return jsonutil.dumps({"error": e.kind, "message": e.message})


class GroovejetApp(App):
    protocol = GroovejetProtocol

    def __init__(self, ctx):
        super().__init__(ctx)
        o = self.options
        self.live: dict[str, Session] = {}
        self.router = None
        if self.cluster is None:
            save, forget, seats_changed = self._save, self._forget, None
        else:
            from relayd.apps.groovejet.cluster import Router

            ttl = o["room_expiry"] + o["reconnect_grace"] + 3 * self.cluster.node_timeout
            self.router = Router(self, self.cluster, clock=self.reactor, session_class=Session, record_ttl=ttl)
            save, forget, seats_changed = self._save_shared, self.router.directory.forget, self._seats_changed
        self.create_quota = AddressQuota(o["rooms_per_address"], o["create_window"], self.reactor)
        self.core = Groovejet(
            self.bus, self.reactor,
            grace=o["reconnect_grace"], expiry=o["room_expiry"], unclaimed_expiry=o["unclaimed_expiry"],
            max_rooms=o["max_rooms"],
            migration=o["host_migration"], save_room=save, forget_room=forget, seats_changed=seats_changed,
        )

    def take_create_quota(self, address: str) -> None:
        """One more room for this client address, or tooManyRooms (counted, and logged once a window)."""
        if self.create_quota.take(address):
            return
        self.metrics.protocol_error("quota")
        retry = max(1, int(self.create_quota.retry_after(address) + 0.999))
        raise error("tooManyRooms", f"this address created too many rooms; try again in {retry} s")

    def create_room(self):
        """A new room here: at once on one node; on several, once its code is claimed in Redis."""
        if self.router is None:
            return self.core.create_room()
        self.core.check_capacity()
        return self.router.directory.claim_new_code().addCallback(self.core.create_room)

    def _save(self, code: str, record: dict) -> defer.Deferred:
        """Fires True once the room is durable, False (logged) when the store failed."""
        return self.store.put(ROOMS, code, record).addCallbacks(lambda _: True, self._store_failed, errbackArgs=(code,))

    def _save_shared(self, code: str, record: dict) -> defer.Deferred:
        room = self.core.rooms.get(code)
        full = room.record(with_seats=True) if room is not None else record
        return self.router.directory.save(code, full).addErrback(self._store_failed, code)

    def _seats_changed(self, room) -> None:
        self._save_shared(room.code, room.record(with_seats=True))

    def _forget(self, code: str) -> None:
        self.store.delete(ROOMS, code).addErrback(self._store_failed, code)

    def _store_failed(self, failure, code) -> bool:
        from relayd.backplane.cluster import Unavailable

        if failure.check(Unavailable):
            _log.warn("groovejet: room {code} not written: redis is unreachable", code=code)
        else:
            _log.failure("groovejet: the store failed for room {code}", failure, code=code)
        return False

    @defer.inlineCallbacks
    def start(self):
        if self.router is not None:
            # several nodes: rooms live in Redis; this node's store is not theirs
            self.router.startService()
            return
        for code, record in (yield self.store.items(ROOMS)):
            self.core.restore_room(code, record)

    def stop(self):
        self.core.shutdown()
        if self.router is not None:
            return self.router.stopService()
        return None

    def http_resource(self):
        root = Resource()
        root.putChild(b"rooms", Rooms(self))
        return root

    def room_count(self) -> int:
        return len(self.core.rooms)
