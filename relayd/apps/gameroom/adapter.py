"""
gameroom over HTTP and WebSocket: deterministic lock-step rooms (docs/protocols/gameroom.md).

HTTP (JSON):
  POST <mount>/create  (Authorization: Bearer <create_token>)
       {"engine": ref, "seed": int|str, "players": n, "options": {...}}
       -> 201 {"id", "play_url", "watch_url", "info_url", "archive_url"}; 401 without the token
  GET  <mount>/rooms/<id>     public room info
  GET  <mount>/archive/<id>   the whole game log: setup, every master packet, hashes, events

WebSocket, text frames of JSON objects with a "type":
  <mount>/play/<id> (or <mount>/join?game_id=<id>)   players; <mount>/watch/<id>   spectators
  C {"type": "join", "name"?, "user_id"?}           -> {"type": "welcome", player_id, session, engine, seed, setup, ...}
  C {"type": "join", "session": token, "from_turn"?} -> welcome, then every master packet from from_turn
  C {"type": "setup", "changes": {...}}             -> all: {"type": "setup", "setup", "version", "by"}
  C {"type": "ready", "ready": true}                -> all: {"type": "players", ...}; all ready -> {"type": "start", ...}
  C {"type": "commands", "turn": N, "commands": [...], "hash", "hash_turn", "latency_ms", "frame_ms"}
     all packets of turn N in -> all: {"type": "turn", "turn": N, "execute_at": N+delay, "commands": [[pid, [...]], ...],
                                       "turn_ms", "iterations", "hash_ok", "hashes", "timing"?, "substituted"?}
  C {"type": "catchup", "from": K}                  -> the master packets from turn K on
  C {"type": "finish", "result": ...}               -> all finished: {"type": "finished", ...}
  S {"type": "state", "state", "turn", "away", "lagging"}   on every child-state change
  S {"type": "halted", "turn", "diverged", "reference"}     hashes diverged: the game stops
  S {"type": "error", "error": kind, "message": ...}        bad input; an unknown session closes 1008
"""

from __future__ import annotations

import zlib

from urllib.parse import parse_qs, urlsplit

from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.static import Data

from relayd import jsonutil
from relayd.apps.base import App
from relayd.apps.gameroom.core import GameRoom, Settings, static_part
from relayd.apps.gameroom.placement import LocalPlacement
from relayd.apps.gameroom.scheduler import TickScheduler
from relayd.apps.gameroom.session import GameRoomSession
from relayd.errors import ProtocolError
from relayd.quota import AddressQuota, address_key
from relayd.web.endpoint import JSONEndpoint, respond_when
from relayd.ws._writes import BATCH
from relayd.web.gameroom import client_script, client_types
from relayd.web.proxy import client_of, public_base
from relayd.ws.protocol import RelaydProtocol

_log = Logger()
PERSIST_SLICES = 8  # the persistence job's parts per persist_interval


class GameRoomProtocol(RelaydProtocol):
    """A player's or spectator's WebSocket: the URL names the room and the mode; the logic is a GameRoomSession."""

    owner = None  # the node holding the room, when it is another one (found while connecting)
    room = None

    @property
    def app(self) -> "GameRoomApp":
        return self.factory.app

    def connecting(self, request):
        app = self.app
        parts = [p for p in urlsplit(self.http_request_uri).path.split("/") if p]
        mount = [p for p in app.ctx.config.path.split("/") if p]
        rest = parts[len(mount):]
        if rest[:1] == ["join"]:
            ids = parse_qs(urlsplit(self.http_request_uri).query).get("game_id", [])
            mode, room_id = "play", ids[0] if len(ids) == 1 else None
        elif len(rest) == 2 and rest[0] in ("play", "watch"):
            mode, room_id = rest
        else:
            raise ConnectionDeny(404, "use /play/<id> or /watch/<id>")
        self.mode, self.room_id = mode, room_id
        room = app.core.rooms.get(room_id or "")
        if room is not None:
            self.room = room
            return None
        if not room_id:
            raise ConnectionDeny(404, "no such room")
        # the room may be on another node, or its node gone and the room to take over (placement knows)
        return app.placement.find(room_id).addCallback(self._found)

    def _found(self, where) -> None:
        room, owner = where
        if room is None and owner is None:
            raise ConnectionDeny(404, "no such room")
        self.room, self.owner = room, owner

    def make_session(self):
        return GameRoomSession(self.app, self, self.room, self.mode, owner=self.owner, room_id=self.room_id)


class Create(JSONEndpoint):
    """
    With create_token set, only its bearer creates rooms. Without, anyone may, within the create quota
    of its client address, and a room nobody joins is abandoned after unjoined_timeout.
    """

    def render_POST(self, request):
        app = self.app
        anonymous = not app.options["create_token"]
        client = client_of(request) if anonymous else None
        if not anonymous and not self.authorized(request, app.options["create_token"], "unauthorized_create"):
            return self.answer(request, 401, {"error": "unauthorized"})
        body = self.body(request)
        if body is None:
            return self.answer(request, 413, {"error": "body too large"})
        if anonymous and not app.create_quota.take(client):
            return self.over_quota(request, app.create_quota, client, "rooms created from this address")
        try:
            room = app.core.create(jsonutil.loads(body), app.reactor.seconds(), anonymous=anonymous,
                                   creator=address_key(client) if anonymous else None)
        except (jsonutil.BadJSON, ProtocolError) as e:
            if anonymous:
                app.create_quota.give_back(client)
            if isinstance(e, jsonutil.BadJSON):
                return self.answer(request, 400, {"error": f"not JSON: {e}"})
            status = {"too_many_rooms": 503, "too_many_rooms_from_address": 429}.get(e.kind, 400)
            return self.answer(request, status, {"error": e.message})
        # the room is this node's once placement says so (at once on one node; its lease on several)
        return respond_when(request, self.app.placement.claim(room.id).addCallbacks(
            lambda held: self._created(request, room) if held else self._refused(request, room, "room id in use", client),
            lambda failure: self._refused(request, room, failure.getErrorMessage(), client),
        ))

    def _refused(self, request, room, why: str, client: str | None) -> bytes:
        self.app.core.drop(room.id)
        if client is not None:
            self.app.create_quota.give_back(client)  # no room was made: the create is not spent
        _log.warn("gameroom: room {room} not created: {why}", room=room.id, why=why)
        return self.answer(request, 503, {"error": "the room could not be registered; try again"})

    def _created(self, request, room) -> bytes:
        # never from the Host header, which is the client's to write
        http_base = public_base(request, self.app.options["public_url"]) + self.app.mount
        base = "ws" + http_base[len("http"):]
        return self.answer(request, 201, {
            "id": room.id, "play_url": f"{base}/play/{room.id}", "watch_url": f"{base}/watch/{room.id}",
            "info_url": f"{http_base}/rooms/{room.id}", "archive_url": f"{http_base}/archive/{room.id}",
        })


class Lookup(JSONEndpoint):
    def __init__(self, app, view):
        super().__init__(app)
        self.view = view

    def render_GET(self, request):
        room_id = request.postpath[0].decode("ascii", "replace") if request.postpath else ""
        room = self.app.core.rooms.get(room_id)
        if room is not None:
            return self.answer(request, 200, self.view(room))
        if not room_id:
            return self.answer(request, 404, {"error": "no such room"})
        # a room held elsewhere: as its node last wrote it
        return respond_when(request, self.app.placement.stored_view(room_id, self.view).addCallbacks(
            lambda view: self.answer(request, 404, {"error": "no such room"}) if view is None
            else self.answer(request, 200, view),
            lambda failure: self.answer(request, 503, {"error": "rooms cannot be reached now; try again"}),
        ))


class GameRoomApp(App):
    protocol = GameRoomProtocol

    def __init__(self, ctx):
        super().__init__(ctx)
        o = self.options
        self.mount = "" if ctx.config.path == "/" else ctx.config.path
        self.settings = Settings(
            command_delay=o["command_delay"], initial_turn_ms=o["turn_ms"], min_turn_ms=o["min_turn_ms"],
            max_turn_ms=o["max_turn_ms"], iterations=o["iterations_per_turn"], lag_tolerance=o["lag_tolerance"],
            on_lag=o["on_lag"], away_timeout=o["away_timeout"], late_joiners=o["late_joiners"],
            max_players=o["max_players"], max_rooms=o["max_rooms"], max_command_bytes=o["max_command_bytes"],
            max_setup_bytes=o["max_setup_bytes"], max_turns=o["max_turns"], max_turn_rate=o["max_turn_rate"],
            setup_timeout=o["setup_timeout"],
            archive_ttl=o["archive_ttl"], unjoined_timeout=o["unjoined_timeout"],
            max_archive_bytes=o["max_archive_bytes"], max_archive_total=o["max_archive_total"],
            rooms_per_address=o["rooms_per_address"],
        )
        self.create_quota = AddressQuota(o["creates_per_address"], o["create_window"], self.reactor)
        self.core = GameRoom(self.bus, self.settings)
        self.core.close_delay = self.metrics.parent.turn_close_delay.labels(ctx.name).observe
        self.live: dict[tuple[str, str], GameRoomSession] = {}
        # where rooms live: chosen here once; nothing else in the app asks how many nodes there are
        if self.cluster is None:
            self.placement = LocalPlacement(self, self.store)
        else:
            from relayd.apps.gameroom.cluster import Placement

            self.placement = Placement(self, self.cluster, clock=self.reactor)
        self.room_store = self.placement.store
        self.scheduler = TickScheduler(
            self.reactor, o["tick_interval"], self._tick,
            on_error=self.metrics.parent.tick_errors.labels(ctx.name).inc,
            lateness=self.metrics.parent.tick_lateness.labels(ctx.name).observe,
        )
        self.every("housekeeping", 1.0, lambda: self.core.housekeeping(self.reactor.seconds()))
        # every room is written within persist_interval of a change, an eighth of the rooms at a time:
        # the work of writing hundreds of running rooms comes in eight small bursts, not one that
        # holds every room's next turn back
        self._persist_slice = 0
        self.every("persistence", self.options["persist_interval"] / PERSIST_SLICES, self._flush_slice)
        self._flushing: defer.Deferred | None = None
        self._stopping = False

    def _tick(self, now: float) -> None:
        # the master packets of every turn this tick closes, written together when it ends: each
        # room's packet to all its players in one send_many call (relayd.ws._writes)
        with BATCH:
            self.core.tick(now)
        if not self.core.running:
            # no game running: no reason to wake the reactor every tick_interval
            self.scheduler.stop()

    def ensure_ticking(self) -> None:
        """Ticks run only while a game runs: called whenever a room may have started running."""
        if self.core.running and not self.scheduler.running and not self._stopping:
            self.scheduler.start()

    @defer.inlineCallbacks
    def start(self):
        now = self.reactor.seconds()
        for meta, log in (yield self.room_store.load_all()):
            try:
                self.core.restore(meta, log, now)
            except Exception:
                _log.failure("gameroom: room {room} could not be restored", room=meta.get("id"))
        self.placement.startService()
        self.ensure_ticking()

    def _flush_slice(self):
        """The changed rooms of the next eighth; the same eighth again while a write is going."""
        if self._flushing is not None:
            return None
        part = self._persist_slice
        self._persist_slice = (part + 1) % PERSIST_SLICES
        return self._flush(lambda room_id: zlib.crc32(room_id.encode()) % PERSIST_SLICES == part)

    def _flush(self, chosen=None):
        """Write the changed rooms' state and new log chunks together (those `chosen` says, or all)."""
        if self._flushing is not None:
            return None  # the previous write is still going; its rooms stay dirty
        core = self.core
        rooms = []
        for room_id in list(core.dirty):
            if chosen is not None and not chosen(room_id):
                continue
            core.dirty.discard(room_id)
            room = core.rooms.get(room_id)
            if room is None:
                continue
            size = room.log_chunk
            chunks = {
                index: [p.decode() for p in room.log[index * size:(index + 1) * size]]
                for index in range(room.persisted // size, (len(room.log) - 1) // size + 1)
            }
            meta = room.meta()
            static = jsonutil.dumps(static_part(meta))
            rooms.append((meta if static != room.stored_static else None, room.progress(), chunks))
            room.persisted = len(room.log)
            room.stored_static = static
        deleted, core.deleted = core.deleted, set()
        if not rooms and not deleted:
            return None
        for room_id in deleted:
            self.placement.release(room_id)
        d = self._flushing = self.room_store.save(rooms, deleted)
        d.addErrback(self._flush_failed, [progress["id"] for _, progress, _ in rooms])
        d.addBoth(self._flushed)  # may run at once: a store that wrote synchronously
        return None

    def _flush_failed(self, failure, room_ids):
        from relayd.errors import StoreUnavailable, Unavailable

        if failure.check(StoreUnavailable):
            pass  # the store says so once per interval; the rooms are retried
        elif failure.check(Unavailable):
            _log.warn("gameroom: rooms not written, redis is unreachable; they are retried")
        else:
            _log.failure("gameroom: persisting rooms failed; they are retried", failure)
        for room_id in room_ids:
            room = self.core.rooms.get(room_id)
            if room is not None:
                room.persisted = 0
                room.stored_static = None
                self.core.dirty.add(room_id)

    def _flushed(self, _):
        self._flushing = None

    @defer.inlineCallbacks
    def stop(self):
        self._stopping = True
        self.scheduler.stop()
        if self._flushing is not None:
            yield self._flushing
        self._flush()
        if self._flushing is not None:
            yield self._flushing
        # written first, released then: a node taking a room over finds it as it was left
        yield self.placement.stopService()

    def accepts_websocket_path(self, postpath) -> bool:
        return (len(postpath) == 2 and postpath[0] in (b"play", b"watch")) or postpath[:1] == [b"join"]

    def http_resource(self):
        root = Resource()
        # the browser client library, for any page that plays or watches a room (not a demo: always on)
        root.putChild(b"client.js", Data(client_script(), "text/javascript; charset=utf-8"))
        root.putChild(b"client.d.ts", Data(client_types(), "text/plain; charset=utf-8"))
        root.putChild(b"create", Create(self))
        root.putChild(b"rooms", Lookup(self, lambda room: room.info()))
        root.putChild(b"archive", Lookup(self, lambda room: room.archive()))
        return root

    def room_count(self) -> int:
        return len(self.core.rooms)
