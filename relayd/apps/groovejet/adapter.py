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

from relayd import jsonutil
from relayd.apps.base import App
from relayd.apps.groovejet.placement import LocalPlacement
from relayd.apps.groovejet.core import Groovejet, error
from relayd.apps.groovejet.session import GroovejetSession
from relayd.errors import ProtocolError
from relayd.quota import AddressQuota
from relayd.web.endpoint import respond_when
from relayd.web.proxy import client_of
from relayd.ws.protocol import RelaydProtocol

_log = Logger()


class GroovejetProtocol(RelaydProtocol):
    """A client's WebSocket: the query string says which generation it speaks; the logic is a GroovejetSession."""

    params: dict = {}

    def connecting(self, request):
        # blank values count: the original treats a bare `?host` as host mode
        self.params = parse_qs(urlsplit(self.http_request_uri).query, keep_blank_values=True)
        return None

    def make_session(self):
        return GroovejetSession(self.factory.app, self, self.params)

    def rate_role(self) -> str:
        seat = self.session.seat if self.session is not None else None
        return "host" if seat is not None and seat.is_host else "client"


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
        creator = None
        if not token:
            creator = client_of(request)
            try:
                app.take_create_quota(creator)
            except ProtocolError as e:
                return self._refused(request, e, 429)
        try:
            created = app.create_room(refund=creator)
        except ProtocolError as e:
            return self._refused(request, e)
        return respond_when(request, created.addCallbacks(
            self._created, self._create_failed, callbackArgs=(request,), errbackArgs=(request,)))

    def _create_failed(self, failure, request) -> bytes:
        from relayd.errors import Unavailable

        if failure.check(ProtocolError):
            return self._refused(request, failure.value)
        if failure.check(Unavailable):
            return self._refused(request, error("unavailable", "rooms cannot be reached now; try again"))
        _log.failure("groovejet: creating a room failed", failure)
        return self._refused(request, error("internalError", "the room could not be created"))

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
        self.live: dict[str, GroovejetSession] = {}
        # where rooms live: chosen here once; nothing else in the app asks how many nodes there are
        if self.cluster is None:
            self.placement = LocalPlacement(self, self.store)
        else:
            from relayd.apps.groovejet.cluster import Placement

            ttl = o["room_expiry"] + o["reconnect_grace"] + 3 * self.cluster.node_timeout
            self.placement = Placement(self, self.cluster, clock=self.reactor, record_ttl=ttl)
        placement = self.placement
        self.create_quota = AddressQuota(o["rooms_per_address"], o["create_window"], self.reactor)
        self.core = Groovejet(
            self.bus, self.reactor,
            grace=o["reconnect_grace"], expiry=o["room_expiry"], unclaimed_expiry=o["unclaimed_expiry"],
            max_rooms=o["max_rooms"],
            migration=o["host_migration"], save_room=placement.save, forget_room=placement.forget,
            seats_changed=placement.seats_changed,
        )

    def take_create_quota(self, address: str) -> None:
        """One more room for this client address, or tooManyRooms (counted, and logged once a window)."""
        if self.create_quota.take(address):
            return
        self.metrics.protocol_error("quota")
        retry = max(1, int(self.create_quota.retry_after(address) + 0.999))
        raise error("tooManyRooms", f"this address created too many rooms; try again in {retry} s")

    def create_room(self, refund: str | None = None):
        """
        A new room here, once placement has its code (at once on one node; claimed in Redis on several);
        fires with the room. `refund`: the address whose create quota was taken for it (before, so that
        creates in flight together cannot overdraw it), given back when no room is made.
        """
        creator = refund
        try:
            self.core.check_capacity()
            created = self.placement.new_code().addCallback(self.core.create_room)
        except BaseException:
            if creator is not None:
                self.create_quota.give_back(creator)
            raise
        if creator is not None:
            created.addErrback(lambda failure: (self.create_quota.give_back(creator), failure)[1])
        return created

    def store_failed(self, failure, code) -> bool:
        """A room's record was not written (the store or Redis failed): said, and False for its waiter."""
        from relayd.errors import StoreUnavailable, Unavailable

        if failure.check(StoreUnavailable):
            pass  # the store says so once per interval
        elif failure.check(Unavailable):
            _log.warn("groovejet: room {code} not written: redis is unreachable", code=code)
        else:
            _log.failure("groovejet: the store failed for room {code}", failure, code=code)
        return False

    @defer.inlineCallbacks
    def start(self):
        yield self.placement.load()
        self.placement.startService()

    def stop(self):
        self.core.shutdown()
        return self.placement.stopService()

    def http_resource(self):
        root = Resource()
        root.putChild(b"rooms", Rooms(self))
        return root

    def room_count(self) -> int:
        return len(self.core.rooms)
