"""
gameroom, sans IO: deterministic lock-step rooms in the Age of Empires model.

The server never runs engine code. It gathers each player's command packet for the open turn,
closes the turn into a master packet (every player's commands in a fixed order, the turn timing
and the hash verdict) and broadcasts it; commands execute `command_delay` turns after the turn they
were sent for, so the next master packet travels while a turn plays. Time is passed in (`now`).

A turn closes when its last packet arrives, unless max_turn_rate holds it back. Everything else
that happens at a time (a turn held by the rate cap, a turn running late, a lagging player
substituted, an away player dropped) is a deadline: each running room keeps only its next one in a
queue ordered by time, and tick(now) serves the rooms whose deadline passed, none of the others.
Rooms' rate grids are offset from one another so that rooms started together do not close together.
Frames go out on the bus; the durable store is fed by the app from `dirty`.
"""

from __future__ import annotations

from collections import Counter
from itertools import count

import functools
import hashlib
import heapq
import secrets
import uuid
from typing import Any

import attr

from relayd import jsonutil
from relayd.apps.gameroom import states
from relayd.bus import IBus
from relayd.errors import ProtocolError
from relayd.ws.frames import Frame

# A room's log is stored in chunks of packets, and every write of a running room rewrites its last
# chunk in full: small chunks keep that write small. Rooms stored before chunks had a size in their
# record used 256 (STORED_LOG_CHUNK); a room keeps the size it was stored with.
LOG_CHUNK = 32
STORED_LOG_CHUNK = 256


def room_channel(room_id: str, node: str = "") -> str:
    """
    What a room broadcasts on. In a cluster the name carries the node holding the room, so a node
    whose clients follow the room through pipes hears only the owner those pipes were opened to.
    """
    return "gameroom:room:" + room_id + ("@" + node if node else "")


def player_channel(room_id: str, pid: str) -> str:
    return "gameroom:player:" + room_id + ":" + pid


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _err(kind: str, message: str, close: bool = False) -> ProtocolError:
    return ProtocolError(kind, message, close=close)


def _frame(kind: str, **fields) -> Frame:
    return Frame.json({"type": kind, **fields})


@attr.s(frozen=True, auto_attribs=True)
class Settings:
    command_delay: int = 2
    initial_turn_ms: int = 100
    min_turn_ms: int = 50
    max_turn_ms: int = 1000
    iterations: int = 4
    lag_tolerance: float = 5.0
    on_lag: str = "substitute"  # or "wait"
    away_timeout: float = 60.0
    late_joiners: str = "spectate"  # or "refuse"
    max_players: int = 16
    max_rooms: int = 1000
    max_command_bytes: int = 4096
    max_setup_bytes: int = 16384
    max_turns: int = 100000
    max_turn_rate: float = 60.0
    setup_timeout: float = 3600.0
    archive_ttl: float = 86400.0
    unjoined_timeout: float = 0.0  # rooms created without the token: seconds to their first player; 0 never
    max_archive_bytes: int = 64 * 1024 * 1024
    max_archive_total: int = 1024 * 1024 * 1024
    rooms_per_address: int = 20  # live rooms (in setup or running) one creator address holds; 0 no cap


@attr.s(auto_attribs=True, eq=False)
class Player:
    pid: str
    name: str
    user_id: str
    token: str  # digest of the session token; the token itself is never kept
    connected: bool = True
    ready: bool = False
    away_since: float | None = None
    dropped: bool = False
    latency_ms: float = 0.0
    frame_ms: float = 0.0
    finished: Any = None

    def public(self) -> dict:
        return {"player_id": self.pid, "name": self.name, "user_id": self.user_id, "connected": self.connected,
                "ready": self.ready, "dropped": self.dropped}

    def record(self) -> dict:
        # written with its room every persist_interval: built directly, attr.asdict costs several times this
        return {"pid": self.pid, "name": self.name, "user_id": self.user_id, "token": self.token,
                "connected": self.connected, "ready": self.ready, "away_since": self.away_since,
                "dropped": self.dropped, "latency_ms": self.latency_ms, "frame_ms": self.frame_ms,
                "finished": self.finished}


@attr.s(auto_attribs=True, eq=False)
class Room:
    id: str
    engine: str
    seed: Any
    expected: int
    settings: Settings
    created: float
    setup: dict = attr.Factory(dict)
    setup_version: int = 0
    state: str = states.SETUP
    players: list = attr.Factory(list)
    turn: int = 0
    turn_ms: int = 100
    iterations: int = 4
    pending_timing: dict | None = None
    packets: dict = attr.Factory(dict)
    opened_at: float = 0.0
    lag_since: float | None = None
    log: list = attr.Factory(list)  # master packets, encoded JSON, by turn
    hashes: dict = attr.Factory(dict)
    events: list = attr.Factory(list)
    started: float | None = None
    ended: float | None = None
    persisted: int = 0
    last_close: float = float("-inf")
    log_bytes: int = 0
    log_chunk: int = LOG_CHUNK  # packets per stored chunk of the log
    stored_static: bytes | None = None  # static_part of the meta as last written (None: write it next time)
    due: float | None = None  # the room's deadline in the queue (GameRoom._reschedule)
    complete_at: float | None = None  # when the open turn's last packet arrived
    creator: str | None = None  # the address an anonymous create came from (not stored: a cap on live rooms)

    def player(self, pid: str) -> Player | None:
        for p in self.players:
            if p.pid == pid:
                return p
        return None

    def deadline(self) -> float:
        """When the open turn is late: its packets had command_delay turns to arrive."""
        return self.opened_at + self.settings.command_delay * self.turn_ms / 1000.0

    def gate(self) -> float:
        """The earliest the open turn may close under max_turn_rate."""
        return self.last_close + 1.0 / self.settings.max_turn_rate

    def complete(self) -> bool:
        return all(p.pid in self.packets or p.dropped for p in self.players)

    def info(self) -> dict:
        return {
            "id": self.id, "engine": self.engine, "expected_players": self.expected, "state": self.state,
            "turn": self.turn, "turn_ms": self.turn_ms, "iterations": self.iterations,
            "command_delay": self.settings.command_delay, "players": [p.public() for p in self.players],
            "created": self.created, "started": self.started, "ended": self.ended,
        }

    def archive(self) -> dict:
        return {
            **self.info(), "seed": self.seed, "setup": self.setup, "setup_version": self.setup_version,
            "packets": [jsonutil.loads(p) for p in self.log], "events": self.events,
        }

    def progress(self) -> dict:
        """
        What changes turn by turn, stored apart from the meta (which changes at joins, setup and state
        changes), so a running room's write is this and its new packets: merge_progress puts it back.
        """
        return {"id": self.id, "turn": self.turn, "turn_ms": self.turn_ms, "iterations": self.iterations,
                "pending_timing": self.pending_timing, "hashes": {str(k): v for k, v in self.hashes.items()},
                "log_length": len(self.log), "timing": {p.pid: [p.latency_ms, p.frame_ms] for p in self.players}}

    def meta(self) -> dict:
        """Everything but the log, for the durable store."""
        return {
            "id": self.id, "engine": self.engine, "seed": self.seed, "expected": self.expected,
            "settings": _settings_record(self.settings), "created": self.created, "setup": self.setup,
            "setup_version": self.setup_version, "state": self.state, "players": [p.record() for p in self.players],
            "turn": self.turn, "turn_ms": self.turn_ms, "iterations": self.iterations,
            "pending_timing": self.pending_timing, "hashes": {str(k): v for k, v in self.hashes.items()},
            "events": self.events, "started": self.started, "ended": self.ended, "log_length": len(self.log),
            "log_chunk": self.log_chunk,
        }


@functools.lru_cache(maxsize=256)
def _settings_record(settings: Settings) -> dict:
    """A room's settings as stored (frozen: rooms with equal settings share one record, never changed)."""
    return attr.asdict(settings)


# the meta's fields a progress record carries newer values of (and each player's timing)
PROGRESS_FIELDS = ("turn", "turn_ms", "iterations", "pending_timing", "hashes", "log_length")
_TIMING_FIELDS = ("latency_ms", "frame_ms")


def static_part(meta: dict) -> dict:
    """The meta without what its progress record carries: when this is unchanged, the meta need not be written."""
    static = {k: v for k, v in meta.items() if k not in PROGRESS_FIELDS}
    static["players"] = [{k: v for k, v in p.items() if k not in _TIMING_FIELDS} for p in meta["players"]]
    return static


def merge_progress(meta: dict, progress: dict | None) -> dict:
    """A stored meta brought up to its room's progress record, when there is one (rooms stored before have none)."""
    if progress is None:
        return meta
    merged = {**meta, **{k: progress[k] for k in PROGRESS_FIELDS}}
    timing = progress.get("timing", {})
    merged["players"] = [{**p, **dict(zip(_TIMING_FIELDS, timing[p["pid"]]))} if p["pid"] in timing else p
                         for p in meta["players"]]
    return merged


def _check_size(value: Any, limit: int, what: str) -> None:
    if len(jsonutil.dumps(value)) > limit:
        raise _err("too_large", f"{what} is larger than {limit} bytes")


def _number(message: dict, key: str, lo: float, hi: float, default: float = 0.0) -> float:
    value = message.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _err("malformed_packet", f"{key} must be a number from {lo} to {hi}")
    return float(value)


class GameRoom:
    def __init__(self, bus: IBus, settings: Settings):
        self.bus = bus
        self.settings = settings
        self.node = ""  # in a cluster, this node's id: room_channel names it
        self.rooms: dict[str, Room] = {}
        self.running: dict[str, Room] = {}
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()
        self.archive_bytes = 0  # the master packets every held room keeps
        # (when, order, room id): a room's entry is current while its `due` is `when`; others are skipped
        self._deadlines: list[tuple[float, int, str]] = []
        self._order = count()
        # told how long each closed turn waited after it could close (the app's histogram)
        self.close_delay = None

    # ---- rooms -----------------------------------------------------------------------------

    def create(self, body: Any, now: float, *, anonymous: bool = False, creator: str | None = None) -> Room:
        """
        A new room; an anonymous one (no create token) is abandoned if nobody joins it in time, and its
        creator's address (`creator`) may hold at most rooms_per_address live rooms. Finished archives
        are kept only while their place is not needed: at max_rooms the oldest finished one goes.
        """
        if not isinstance(body, dict):
            raise _err("bad_request", "the body must be a JSON object")
        cap = self.settings.rooms_per_address
        if creator is not None and cap and sum(
                1 for r in self.rooms.values() if r.creator == creator and r.ended is None) >= cap:
            raise _err("too_many_rooms_from_address",
                       f"this address holds {cap} rooms in setup or play; finish or leave one first")
        if len(self.rooms) >= self.settings.max_rooms:
            self._evict_oldest_finished()
        if len(self.rooms) >= self.settings.max_rooms:
            raise _err("too_many_rooms", "the server holds as many rooms as it may")
        if self.archive_bytes >= self.settings.max_archive_total:
            raise _err("too_many_rooms", "the server holds as much game history as it may")
        engine, seed, expected = body.get("engine"), body.get("seed"), body.get("players")
        options = body.get("options", {})
        if not isinstance(engine, str) or not 0 < len(engine) <= 256:
            raise _err("bad_request", "engine must be a reference string of up to 256 characters")
        if not (isinstance(seed, str) and len(seed) <= 256) and not (isinstance(seed, int) and not isinstance(seed, bool)):
            raise _err("bad_request", "seed must be an integer or a string of up to 256 characters")
        if isinstance(expected, bool) or not isinstance(expected, int) or not 1 <= expected <= self.settings.max_players:
            raise _err("bad_request", f"players must be a whole number from 1 to {self.settings.max_players}")
        if not isinstance(options, dict):
            raise _err("bad_request", "options must be an object")
        settings = attr.evolve(self._room_settings(options),
                               unjoined_timeout=self.settings.unjoined_timeout if anonymous else 0.0)
        setup = options.get("setup", {})
        if not isinstance(setup, dict):
            raise _err("bad_request", "options.setup must be an object")
        _check_size(setup, settings.max_setup_bytes, "the setup")
        room = Room(id=uuid.uuid4().hex[:12], engine=engine, seed=seed, expected=expected, settings=settings,
                    created=now, setup=setup, turn_ms=settings.initial_turn_ms, iterations=settings.iterations,
                    creator=creator)
        self.rooms[room.id] = room
        self._event(room, now, "created")
        return room

    def _room_settings(self, options: dict) -> Settings:
        """Room options may tighten the server's settings within their bounds."""
        s = self.settings
        changes: dict[str, Any] = {}
        for key, lo, hi in (("command_delay", 1, 16), ("iterations", 1, 1000),
                            ("initial_turn_ms", s.min_turn_ms, s.max_turn_ms)):
            if key in options:
                value = options[key]
                if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                    raise _err("bad_request", f"options.{key} must be a whole number from {lo} to {hi}")
                changes[key] = value
        for key, choices in (("on_lag", ("substitute", "wait")), ("late_joiners", ("spectate", "refuse"))):
            if key in options:
                if options[key] not in choices:
                    raise _err("bad_request", f"options.{key} must be one of {', '.join(choices)}")
                changes[key] = options[key]
        unknown = set(options) - {"command_delay", "iterations", "initial_turn_ms", "on_lag", "late_joiners", "setup"}
        if unknown:
            raise _err("bad_request", f"unknown options: {', '.join(sorted(unknown))[:200]}")
        return attr.evolve(s, **changes)

    def _event(self, room: Room, now: float, kind: str, **fields) -> None:
        room.events.append({"at": round(now, 3), "event": kind, "turn": room.turn, **fields})
        self.dirty.add(room.id)

    def channel(self, room: Room) -> str:
        """The channel the room's broadcasts go to: every session of the room listens to it."""
        return room_channel(room.id, self.node)

    def _broadcast(self, room: Room, frame: Frame) -> None:
        self.bus.publish(self.channel(room), frame)

    def _to_player(self, room: Room, pid: str, frame: Frame) -> None:
        self.bus.publish(player_channel(room.id, pid), frame)

    def _players_changed(self, room: Room) -> None:
        self._broadcast(room, _frame("players", players=[p.public() for p in room.players]))
        self.dirty.add(room.id)

    # ---- joining ---------------------------------------------------------------------------

    def join(self, room: Room, name: Any, user_id: Any, now: float) -> tuple[Player, str]:
        if room.state != states.SETUP:
            raise _err("game_running", "the game has started; players are locked")
        if len(room.players) >= room.expected:
            raise _err("room_full", "the room has all its players")
        if name is None:
            name = "guest-" + uuid.uuid4().hex[:8]
        if user_id is None:
            user_id = str(uuid.uuid4())
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise _err("malformed_join", "name must be a string of 1 to 64 characters")
        if not isinstance(user_id, str) or not 0 < len(user_id) <= 128:
            raise _err("malformed_join", "user_id must be a string of 1 to 128 characters")
        used = {p.pid for p in room.players}
        pid = next(f"p{i}" for i in range(1, room.expected + 2) if f"p{i}" not in used)
        token = secrets.token_urlsafe(32)
        player = Player(pid=pid, name=name, user_id=user_id, token=token_key(token))
        room.players.append(player)
        self._event(room, now, "joined", player=pid)
        self._players_changed(room)
        return player, token

    def rejoin(self, room: Room, token: Any, now: float) -> Player:
        """The session token is the only way to act as a player."""
        if isinstance(token, str):
            key = token_key(token)
            for player in room.players:
                if secrets.compare_digest(player.token, key):
                    player.connected = True
                    player.away_since = None
                    player.dropped = False
                    self._event(room, now, "reconnected", player=player.pid)
                    self._players_changed(room)
                    self._refresh_state(room, now)
                    self._reschedule(room, now)
                    return player
        raise _err("invalid_session", "this session token belongs to no player of this room", close=True)

    def left(self, room: Room, player: Player, now: float) -> None:
        if room.state == states.SETUP:
            # a setup seat is freed at once; the player may join again
            room.players.remove(player)
            self._event(room, now, "left", player=player.pid)
            self._players_changed(room)
            return
        if room.state == states.FINISHED:
            return
        player.connected = False
        player.away_since = now
        self._event(room, now, "disconnected", player=player.pid)
        self._players_changed(room)
        self._refresh_state(room, now)
        self._reschedule(room, now)

    def welcome(self, room: Room, player: Player | None, token: str | None) -> dict:
        return {
            "type": "welcome", "room": room.id, "player_id": player.pid if player else None,
            "session": token, "spectator": player is None, "engine": room.engine, "seed": room.seed,
            "setup": room.setup, "setup_version": room.setup_version, "expected_players": room.expected,
            "players": [p.public() for p in room.players], "state": room.state, "turn": room.turn,
            "turn_ms": room.turn_ms, "iterations": room.iterations, "command_delay": room.settings.command_delay,
            "order": [p.pid for p in room.players] if states.is_running(room.state) or room.state == states.FINISHED else None,
        }

    # ---- setup -----------------------------------------------------------------------------

    def change_setup(self, room: Room, player: Player, changes: Any, now: float) -> None:
        if room.state != states.SETUP:
            raise _err("not_in_setup", "the setup is final once the game runs")
        if not isinstance(changes, dict):
            raise _err("malformed_setup", "changes must be an object")
        merged = dict(room.setup)
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        _check_size(merged, room.settings.max_setup_bytes, "the setup")
        room.setup = merged
        room.setup_version += 1
        for p in room.players:
            p.ready = False  # a changed setup must be agreed again
        self._event(room, now, "setup", player=player.pid, version=room.setup_version)
        self._broadcast(room, _frame("setup", setup=merged, version=room.setup_version, by=player.pid))
        self._players_changed(room)

    def set_ready(self, room: Room, player: Player, ready: Any, now: float) -> None:
        if room.state != states.SETUP:
            raise _err("not_in_setup", "readiness is committed in setup")
        if not isinstance(ready, bool):
            raise _err("malformed_ready", "ready must be true or false")
        player.ready = ready
        self._players_changed(room)
        if len(room.players) == room.expected and all(p.ready and p.connected for p in room.players):
            self._start(room, now)

    def _start(self, room: Room, now: float) -> None:
        room.state = states.transition(room.state, "start")
        room.started = now
        room.turn = 0
        room.opened_at = now
        # rooms started together would share one rate grid and close their turns in the same instant:
        # each room's grid is offset by a fraction of a turn that its id decides
        offset = int.from_bytes(hashlib.blake2b(room.id.encode(), digest_size=4).digest(), "big") / 2 ** 32
        room.last_close = now - (1.0 - offset) / room.settings.max_turn_rate
        self.running[room.id] = room
        self._event(room, now, "started")
        self._broadcast(room, _frame(
            "start", order=[p.pid for p in room.players], setup=room.setup, setup_version=room.setup_version,
            seed=room.seed, engine=room.engine, turn=0, turn_ms=room.turn_ms, iterations=room.iterations,
            command_delay=room.settings.command_delay, state=room.state,
        ))
        self._reschedule(room, now)

    # ---- turns -----------------------------------------------------------------------------

    def packet(self, room: Room, player: Player, message: dict, now: float) -> None:
        if room.state in (states.HALTED, states.FINISHED) or not states.is_running(room.state):
            raise _err("not_running", f"the room is {room.state}")
        turn = message.get("turn")
        if isinstance(turn, bool) or not isinstance(turn, int):
            raise _err("malformed_packet", "turn must be a whole number")
        commands = message.get("commands", [])
        if not isinstance(commands, list):
            raise _err("malformed_packet", "commands must be a list")
        _check_size(commands, room.settings.max_command_bytes, "the commands")
        state_hash, hash_turn = message.get("hash"), message.get("hash_turn")
        if state_hash is not None and (not isinstance(state_hash, str) or len(state_hash) > 128):
            raise _err("malformed_packet", "hash must be a string of up to 128 characters")
        if state_hash is not None and (isinstance(hash_turn, bool) or not isinstance(hash_turn, int) or hash_turn < 0):
            raise _err("malformed_packet", "hash_turn is the last turn run (0 or more): before any turn has run, "
                                           "send no hash")
        if state_hash is not None and hash_turn >= turn:
            raise _err("malformed_packet", f"hash_turn {hash_turn} cannot have run before turn {turn}")
        latency = _number(message, "latency_ms", 0, 60000)
        frame_ms = _number(message, "frame_ms", 0, 60000)
        if turn < room.turn:
            # a resend of a packet whose turn already closed: its master packet is the acknowledgement
            if 0 <= turn < len(room.log):
                self._to_player(room, player.pid, Frame(room.log[turn]))
            return
        if turn > room.turn:
            raise _err("turn_not_open", f"turn {turn} is not open (the open turn is {room.turn})")
        packet = {"commands": commands, "hash": state_hash, "hash_turn": hash_turn}
        previous = room.packets.get(player.pid)
        if previous is not None:
            if previous != packet:
                raise _err("conflicting_packet", f"a different packet for turn {turn} was already accepted")
            return  # a duplicate: idempotent
        room.packets[player.pid] = packet
        # a slower report counts at once (the turn must hold it); a faster one moves the figure a fifth
        # of the way, so one quick frame does not shorten every turn
        player.latency_ms = max(latency, 0.8 * player.latency_ms + 0.2 * latency)
        player.frame_ms = max(frame_ms, 0.8 * player.frame_ms + 0.2 * frame_ms)
        if state_hash is not None and self._record_hash(room, player, hash_turn, state_hash, now):
            return
        if room.complete_at is None and room.complete():
            room.complete_at = now
        self._close_if_complete(room, now)
        self._reschedule(room, now)

    def _close_if_complete(self, room: Room, now: float) -> bool:
        """Close the open turn once every packet is in, but no faster than max_turn_rate (then at its gate)."""
        if not room.complete():
            return False
        gate = room.gate()
        if now < gate:
            return True
        ready = max(gate, room.complete_at if room.complete_at is not None else now)
        self._close_turn(room, now, substituted=[p.pid for p in room.players if p.pid not in room.packets],
                         ready=ready)
        return True

    def _record_hash(self, room: Room, player: Player, hash_turn: int, value: str, now: float) -> bool:
        """
        Decide a turn's hashes once every active player reported one; True when the game halted.
        The agreed state is the hash most players report (a tie goes to the hash of the earliest
        player in the order, so with two players the first is the reference); every player whose
        hash differs from it is named.
        """
        seen = room.hashes.setdefault(hash_turn, {})
        seen[player.pid] = value
        reported = []
        for p in room.players:
            if not p.dropped:
                if p.pid not in seen:
                    return False
                reported.append(seen[p.pid])
        if not reported or reported.count(reported[0]) == len(reported):
            del room.hashes[hash_turn]  # every player agreed: nothing left to compare
            return False
        active = [p.pid for p in room.players if not p.dropped]
        counts = Counter(seen[pid] for pid in active)
        most = max(counts.values())
        reference_pid = next(pid for pid in active if counts[seen[pid]] == most)
        reference = seen[reference_pid]
        diverged = [pid for pid in active if seen[pid] != reference]
        room.state = states.transition(room.state, "diverged")
        self.running.pop(room.id, None)
        room.ended = now
        self._event(room, now, "diverged", hash_turn=hash_turn, diverged=diverged, reference=reference_pid,
                    hashes=dict(seen))
        self._broadcast(room, _frame("halted", turn=hash_turn, diverged=diverged, reference=reference_pid,
                                     state=room.state))
        return True

    def _close_turn(self, room: Room, now: float, substituted: list[str], ready: float) -> None:
        """The open turn's master packet, out now; `ready` is when the turn could have closed."""
        if self.close_delay is not None:
            self.close_delay(max(0.0, now - ready))
        n = room.turn
        master: dict[str, Any] = {
            "type": "turn", "turn": n, "execute_at": n + room.settings.command_delay,
            "commands": [[p.pid, room.packets[p.pid]["commands"] if p.pid in room.packets else []] for p in room.players],
            "turn_ms": room.turn_ms, "iterations": room.iterations, "hash_ok": True,
            "hashes": {pid: [pk["hash_turn"], pk["hash"]] for pid, pk in room.packets.items() if pk["hash"] is not None},
        }
        if substituted:
            master["substituted"] = substituted
            self._event(room, now, "substituted", players=substituted)
        timing = self._adapt_timing(room, n, now)
        if timing is not None:
            master["timing"] = timing
        frame = Frame.json(master)
        # kept encoded (a fraction of a dict's memory, sent as it is), and copied to its exact size:
        # orjson's bytes keep the capacity they grew to, two to four times their length
        packet = memoryview(frame.payload).tobytes()
        room.log.append(packet)
        room.log_bytes += len(packet)
        self.archive_bytes += len(packet)
        self._broadcast(room, frame)
        room.turn = n + 1
        room.packets = {}
        room.complete_at = None
        room.opened_at = now
        # keep the cap on a grid: a close that waited for the next tick does not push every later
        # turn back by that wait, so a room answering at once holds max_turn_rate, not a little less
        gap = 1.0 / room.settings.max_turn_rate
        room.last_close = room.last_close + gap if now - room.last_close < 2 * gap else now
        room.lag_since = None
        pending = room.pending_timing
        if pending is not None and room.turn >= pending["from_turn"]:
            room.turn_ms, room.iterations = pending["turn_ms"], pending["iterations"]
            room.pending_timing = None
        self.dirty.add(room.id)
        if room.turn >= room.settings.max_turns:
            self._finish(room, now, "max_turns")
            return
        if room.log_bytes >= room.settings.max_archive_bytes:
            self._finish(room, now, "archive_full")
            return
        self._refresh_state(room, now)

    def _adapt_timing(self, room: Room, n: int, now: float) -> dict | None:
        """
        The turn must hold the slowest player's engine iterations, and command_delay turns must
        cover the slowest round trip: a turn too short for that is lengthened at the next
        announcement, however small the change; a shorter turn is announced only when it is more
        than 10% shorter. Either is announced for a turn far enough ahead that every client
        switches together.
        """
        if room.pending_timing is not None:
            return None
        s = room.settings
        active = [p for p in room.players if not p.dropped]
        if not active:
            return None
        slowest_frame = max(p.frame_ms for p in active) * room.iterations
        slowest_rtt = max(p.latency_ms for p in active) * 1.2 / s.command_delay
        wanted = int(min(s.max_turn_ms, max(s.min_turn_ms, s.initial_turn_ms if not (slowest_frame or slowest_rtt)
                                             else max(slowest_frame, slowest_rtt, s.min_turn_ms))))
        if wanted <= room.turn_ms and room.turn_ms - wanted <= room.turn_ms * 0.1:
            return None
        room.pending_timing = {"turn_ms": wanted, "iterations": room.iterations,
                               "from_turn": n + s.command_delay + 1}
        self._event(room, now, "timing", **room.pending_timing)
        return dict(room.pending_timing)

    def catchup(self, room: Room, from_turn: Any, limit: int) -> list[bytes]:
        if isinstance(from_turn, bool) or not isinstance(from_turn, int) or from_turn < 0:
            raise _err("malformed_catchup", "from must be a whole number")
        return room.log[from_turn:from_turn + limit]

    def finish(self, room: Room, player: Player, result: Any, now: float) -> None:
        if not states.is_running(room.state):
            raise _err("not_running", f"the room is {room.state}")
        _check_size(result, 4096, "the result")
        player.finished = {"result": result, "turn": room.turn}
        self._event(room, now, "finish", player=player.pid)
        if all(p.finished is not None or p.dropped for p in room.players):
            self._finish(room, now, "players")

    def _finish(self, room: Room, now: float, reason: str) -> None:
        room.state = states.transition(room.state, "finish")
        room.ended = now
        self.running.pop(room.id, None)
        self._event(room, now, "finished", reason=reason)
        self._broadcast(room, _frame("finished", reason=reason, turn=room.turn,
                                     results={p.pid: p.finished for p in room.players}))

    # ---- time ------------------------------------------------------------------------------

    def _refresh_state(self, room: Room, now: float) -> None:
        state = room.state
        if not states.is_running(state) or state == states.HALTED:
            return
        away = [p.pid for p in room.players if not p.connected and not p.dropped]
        missing = [p.pid for p in room.players if p.pid not in room.packets and not p.dropped]
        late = bool(missing) and now >= room.deadline()
        target = states.WAITING if away else states.LAGGING if late else states.ITERATING
        if target == state:
            return
        event = {states.WAITING: "away", states.LAGGING: "late"}.get(target)
        if event is None:
            event = "back" if state == states.WAITING else "caught_up"
        room.state = states.transition(state, event)
        if target == states.LAGGING:
            room.lag_since = now
        self._event(room, now, "state", state=room.state)
        self._broadcast(room, _frame("state", state=room.state, turn=room.turn, away=away,
                                     lagging=missing if target == states.LAGGING else []))

    def tick(self, now: float) -> None:
        """Serve the rooms whose deadline passed; a room with nothing due costs nothing here."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            when, _, room_id = heapq.heappop(deadlines)
            room = self.running.get(room_id)
            if room is None or room.due != when:
                continue  # the room stopped, or its deadline moved since this entry
            room.due = None
            self._serve(room, now)
            self._reschedule(room, now)

    def _serve(self, room: Room, now: float) -> None:
        """What is due for one room: away players dropped, a held turn closed, a late turn, substitution."""
        for p in room.players:
            if not p.connected and not p.dropped and p.away_since is not None \
                    and now >= p.away_since + room.settings.away_timeout:
                p.dropped = True
                self._event(room, now, "dropped", player=p.pid)
                self._players_changed(room)
        if all(p.dropped for p in room.players):
            self._finish(room, now, "abandoned")
            return
        if self._close_if_complete(room, now):
            return
        missing = [p.pid for p in room.players if p.pid not in room.packets]
        self._refresh_state(room, now)
        if room.state == states.LAGGING and room.settings.on_lag == "substitute" and room.lag_since is not None:
            substitute_at = room.lag_since + room.settings.lag_tolerance
            if now >= substitute_at:
                self._close_turn(room, now, substituted=missing, ready=substitute_at)

    def _next_deadline(self, room: Room, now: float) -> float | None:
        """The next time something is due for a running room, if anything is (after now)."""
        if self.running.get(room.id) is not room:
            return None
        s = room.settings
        times = [p.away_since + s.away_timeout for p in room.players
                 if not p.connected and not p.dropped and p.away_since is not None]
        if room.complete():
            times.append(room.gate())
        elif room.state == states.LAGGING:
            if s.on_lag == "substitute" and room.lag_since is not None:
                times.append(room.lag_since + s.lag_tolerance)
        elif room.state != states.WAITING:
            times.append(room.deadline())
        # a time already passed was served just now: whatever still waits, waits for a player
        later = [t for t in times if t > now]
        return min(later) if later else None

    def _reschedule(self, room: Room, now: float) -> None:
        """Put the room's next deadline in the queue (where it moved earlier or later, the old entry goes stale)."""
        when = self._next_deadline(room, now)
        if when == room.due:
            return
        room.due = when
        if when is not None:
            heapq.heappush(self._deadlines, (when, next(self._order), room.id))

    def housekeeping(self, now: float) -> None:
        """Rooms never leak: unstarted rooms time out, finished ones leave after archive_ttl."""
        for room in list(self.rooms.values()):
            if room.state == states.SETUP:
                unjoined = room.settings.unjoined_timeout
                if now - room.created >= room.settings.setup_timeout:
                    self._abandon(room, now, "setup_timeout")
                elif unjoined and not room.players and now - room.created >= unjoined:
                    self._abandon(room, now, "unjoined")
            if room.ended is not None and now - room.ended >= room.settings.archive_ttl:
                self._delete(room)
        # past the total, the oldest finished archives go first, before their time
        while self.archive_bytes > self.settings.max_archive_total and self._evict_oldest_finished():
            pass

    def _evict_oldest_finished(self) -> bool:
        """Delete the finished (or abandoned) room that ended first; False when every room is live."""
        finished = [r for r in self.rooms.values() if r.ended is not None]
        if not finished:
            return False
        self._delete(min(finished, key=lambda r: r.ended))
        return True

    def _delete(self, room: Room) -> None:
        del self.rooms[room.id]
        self.running.pop(room.id, None)
        self.dirty.discard(room.id)
        self.deleted.add(room.id)
        self.archive_bytes -= room.log_bytes

    def _abandon(self, room: Room, now: float, reason: str) -> None:
        room.state = states.transition(room.state, "abandon")
        room.ended = now
        self._event(room, now, "abandoned", reason=reason)
        self._broadcast(room, _frame("finished", reason=reason, turn=0, results={}))

    # ---- the durable store -----------------------------------------------------------------

    def restore(self, meta: dict, log: list, now: float) -> Room:
        """A stored room, held here again: a running game waits for its players to come back."""
        room = self.build(meta, log)
        if states.is_running(room.state) and room.state != states.HALTED:
            for p in room.players:
                if not p.dropped:
                    p.connected, p.away_since = False, now
            room.opened_at = now
            self.running[room.id] = room
            # loading is not a transition: a restored game waits for its players to come back
            room.state = states.WAITING
            self._reschedule(room, now)
        elif room.state == states.SETUP:
            room.players = []  # setup seats do not outlive their connections
        self.rooms[room.id] = room
        self.archive_bytes += room.log_bytes
        return room

    def drop(self, room_id: str) -> None:
        """Stop holding a room without deleting it from the store (another node holds it now)."""
        room = self.rooms.pop(room_id, None)
        if room is not None:
            self.archive_bytes -= room.log_bytes
        self.running.pop(room_id, None)
        self.dirty.discard(room_id)

    @staticmethod
    def build(meta: dict, log: list) -> Room:
        """A Room as stored, not held here (restore holds it; an info page on another node only reads it)."""
        settings = Settings(**meta["settings"])
        room = Room(id=meta["id"], engine=meta["engine"], seed=meta["seed"], expected=meta["expected"],
                    settings=settings, created=meta["created"], setup=meta["setup"],
                    setup_version=meta["setup_version"], state=meta["state"], turn=meta["turn"],
                    turn_ms=meta["turn_ms"], iterations=meta["iterations"], pending_timing=meta["pending_timing"],
                    hashes={int(k): v for k, v in meta["hashes"].items()}, events=meta["events"],
                    started=meta["started"], ended=meta["ended"], log=[p.encode() for p in log[:meta["turn"]]],
                    persisted=meta["turn"], log_chunk=meta.get("log_chunk", STORED_LOG_CHUNK))
        room.log_bytes = sum(len(p) for p in room.log)
        room.players = [Player(**p) for p in meta["players"]]
        return room
