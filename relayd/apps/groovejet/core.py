"""
groovejet, sans IO: rooms of one host and its guests, WebRTC signals routed between them, seats kept
through a reconnect grace period, host migration, snapshots and room expiry.

The core owns the state and the timers (on an injected clock); it speaks to clients only by
publishing frames on their bus channels, and to the durable store only through the two callbacks
it is given (save_room / forget_room).
"""

from __future__ import annotations

import hashlib
import secrets
import string
import uuid
from typing import Any, Callable

from relayd.bus import IBus
from relayd.errors import ProtocolError
from relayd.ws import closecodes
from relayd.ws.frames import Frame

CODE_ALPHABET = string.digits + string.ascii_lowercase
CODE_LENGTH = 5


def client_channel(client_id: str) -> str:
    return "groovejet:client:" + client_id


def error(error_type: str, message: str, close: bool = False) -> ProtocolError:
    return ProtocolError(error_type, message, close=close, code=closecodes.NORMAL)


def message(kind: str, data: Any = None) -> Frame:
    return Frame.json({"type": kind} if data is None else {"type": kind, "data": data})


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


class Seat:
    """A client's place in a room; it outlives the client's connection by the grace period."""

    __slots__ = ("client_id", "token", "token_key", "room", "is_host", "connected", "since", "grace_timer",
                 "joined_order", "can_host")

    def __init__(self, client_id: str, token: str | None, room: "Room", is_host: bool, since: float, order: int,
                 token_key: str | None = None, can_host: bool = False):
        self.client_id = client_id
        self.token = token  # None for a seat restored from a record, until its client resumes
        self.token_key = token_key if token_key is not None else token_digest(token)
        self.room = room
        self.is_host = is_host
        self.connected = True
        self.since = since
        self.grace_timer = None
        self.joined_order = order
        # joined with canHost (or as host): only such a client, or one the host named, is ever promoted
        self.can_host = can_host or is_host


class Room:
    __slots__ = ("code", "host", "guests", "successor", "snapshot", "expiry_timer", "created", "claimed")

    def __init__(self, code: str, created: float):
        self.code = code
        self.claimed = False  # someone sat in it: until then it expires after unclaimed_expiry
        self.host: Seat | None = None
        self.guests: dict[str, Seat] = {}
        self.successor: str | None = None
        self.snapshot: Any = None
        self.expiry_timer = None
        self.created = created

    def empty(self) -> bool:
        return self.host is None and not self.guests

    def record(self, with_seats: bool = False) -> dict:
        record = {"created": self.created, "snapshot": self.snapshot, "claimed": self.claimed}
        if with_seats:
            # for another node taking the room over: whose seats are kept (tokens as digests only)
            record["successor"] = self.successor
            record["seats"] = [
                {"client": s.client_id, "token": s.token_key, "host": s.is_host,
                 "since": s.since, "order": s.joined_order, "can_host": s.can_host}
                for s in ([self.host] if self.host else []) + list(self.guests.values())
            ]
        return record


class Groovejet:
    def __init__(
        self,
        bus: IBus,
        clock,
        *,
        grace: float = 30.0,
        expiry: float = 300.0,
        unclaimed_expiry: float = 30.0,
        max_rooms: int = 10000,
        migration: bool = True,
        save_room: Callable[[str, dict], Any] = lambda code, record: None,
        forget_room: Callable[[str], Any] = lambda code: None,
        seats_changed: Callable[["Room"], Any] | None = None,
    ):
        self.bus = bus
        self.clock = clock
        self.grace = grace
        self.expiry = expiry
        self.unclaimed_expiry = unclaimed_expiry
        self.max_rooms = max_rooms
        self.migration = migration
        self.save_room = save_room
        self.forget_room = forget_room
        # several nodes: told whenever who sits in a room changes, so the room can be taken over
        self.seats_changed = seats_changed or (lambda room: None)
        self.rooms: dict[str, Room] = {}
        self.seats_by_token: dict[str, Seat] = {}
        self._order = 0
        self._stopped = False  # after shutdown no timer is started: the rooms stay as the store has them

    # ---- identities ----------------------------------------------------------------------------

    @staticmethod
    def new_identity() -> tuple[str, str]:
        return str(uuid.uuid4()), secrets.token_urlsafe(32)

    def resume(self, token: Any) -> Seat:
        """The seat a reconnect token holds, if it is still kept; its client is connected again.
        The caller takes the seat's identity, then calls announce_return(seat)."""
        seat = self.seats_by_token.get(token_digest(token)) if isinstance(token, str) else None
        if seat is None:
            raise error("invalidToken", "no seat is kept for this reconnect token")
        if seat.grace_timer is not None and seat.grace_timer.active():
            seat.grace_timer.cancel()
        seat.grace_timer = None
        seat.connected = True
        if seat.token is None:
            seat.token = token  # a seat restored on another node learns its token back
        self._cancel_expiry(seat.room)
        return seat

    def announce_return(self, seat: Seat) -> None:
        """Tell the room a resumed seat is back; a returning host gets the room's snapshot."""
        room = seat.room
        if seat.is_host:
            for guest in room.guests.values():
                self._send(guest.client_id, message("hostReturned", {"clientId": seat.client_id}))
            if room.snapshot is not None:
                self._send(seat.client_id, message("snapshot", room.snapshot))
        elif room.host is not None:
            self._send(room.host.client_id, message("guestReturned", {"clientId": seat.client_id}))

    # ---- rooms ---------------------------------------------------------------------------------

    def check_capacity(self) -> None:
        if len(self.rooms) >= self.max_rooms:
            raise error("tooManyRooms", "the server holds as many rooms as it may")

    def create_room(self, code: str | None = None) -> Room:
        """A new room; code, when given, was claimed for it beforehand (unique across nodes)."""
        self.check_capacity()
        code = code if code is not None else self._new_code()
        room = self.rooms[code] = Room(code, self.clock.seconds())
        self.save_room(code, room.record())
        self._schedule_expiry(room)  # unclaimed: its host has unclaimed_expiry seconds to connect
        return room

    def restore_room(self, code: str, record: dict) -> None:
        """
        A room from the store after a restart: hostless until someone who can host joins. A record
        with seats (another node's room, taken over) keeps them for their clients to resume within
        the grace, as if they had all just disconnected.
        """
        if code in self.rooms:
            return  # already live here (created while the store was still being read at start)
        room = self.rooms[code] = Room(code, record.get("created", self.clock.seconds()))
        room.snapshot = record.get("snapshot")
        # records written before rooms knew whether they were claimed count as claimed
        room.claimed = record.get("claimed", True) or room.snapshot is not None or bool(record.get("seats"))
        room.successor = record.get("successor")
        for entry in record.get("seats", ()):
            self._order = max(self._order, entry["order"])
            # a record from before can_host was kept promotes nobody it did not name (the safe reading)
            seat = Seat(entry["client"], None, room, entry["host"], entry["since"], entry["order"], entry["token"],
                        can_host=entry.get("can_host", False))
            seat.connected = False
            if seat.is_host:
                room.host = seat
            else:
                room.guests[seat.client_id] = seat
            self.seats_by_token[seat.token_key] = seat
            seat.grace_timer = self.clock.callLater(self.grace, self._grace_over, seat)
        self._schedule_expiry(room)

    def _new_code(self) -> str:
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if code not in self.rooms:
                return code

    def join(self, client_id: str, token: str, code: Any, *, as_host: bool, can_host: bool,
             first_generation: bool) -> Seat:
        """Take a seat: as host (query-string host, createRoom, or canHost in a hostless room) or guest."""
        if not isinstance(code, str) or not code:
            raise error("missingRoomCode", "no room code was given", close=first_generation)
        room = self.rooms.get(code.lower())
        if room is None:
            raise error("noRoomFound", "no room found with this code", close=first_generation)
        # a host within its reconnect grace is not there: a guest would wait for it in vain
        host_connected = room.host is not None and room.host.connected
        if as_host and host_connected:
            raise error("hostAlreadyExists", "this room already has a host", close=first_generation)
        become_host = as_host or (can_host and not host_connected)
        if not become_host and not host_connected:
            raise error("hostDisconnected", "the room has no host connected", close=first_generation)
        self._order += 1
        seat = Seat(client_id, token, room, become_host, self.clock.seconds(), self._order, can_host=can_host)
        self.seats_by_token[token_digest(token)] = seat
        self._cancel_expiry(room)
        if not room.claimed:
            room.claimed = True
            self.save_room(room.code, room.record())
        if become_host:
            replaced = room.host
            if replaced is not None:
                self._unseat(replaced)  # its reconnect token now finds no seat (invalidToken)
            room.host = seat
            if room.snapshot is not None:
                self._send(client_id, message("snapshot", room.snapshot))
            told = "hostChanged" if replaced is not None else "hostReturned"
            for guest in room.guests.values():
                self._send(guest.client_id, message(told, {"clientId": client_id}))
        else:
            room.guests[client_id] = seat
        self.seats_changed(room)
        return seat

    # ---- signalling ----------------------------------------------------------------------------

    def from_guest(self, seat: Seat, kind: str, data: dict) -> None:
        """guestOfferSignal / iceCandidate from a guest: to the host, with the guest's clientId set."""
        host = seat.room.host
        if host is None or not host.connected:
            raise error("hostDisconnected", "the room's host is not connected")
        forwarded = dict(data)
        forwarded["clientId"] = seat.client_id  # set by the server: a guest cannot speak as another
        self._send(host.client_id, message(kind, forwarded))

    def from_host(self, seat: Seat, kind: str, data: dict, payload_key: str) -> None:
        """hostAnswerSignal / iceCandidate from the host: to the named guest, without the clientId."""
        target = data.get("clientId")
        guest = seat.room.guests.get(target) if isinstance(target, str) else None
        if guest is None:
            raise error("unknownClient", "no guest with this clientId in the room")
        if not guest.connected:
            raise error("clientDisconnected", "that guest is reconnecting; signal again when it returns")
        self._send(guest.client_id, message(kind, {payload_key: data.get(payload_key)}))

    def store_snapshot(self, seat: Seat, snapshot: Any):
        if not seat.is_host:
            raise error("notHost", "only the host stores snapshots")
        seat.room.snapshot = snapshot
        return self.save_room(seat.room.code, seat.room.record())

    def set_successor(self, seat: Seat, client_id: Any) -> None:
        if not seat.is_host:
            raise error("notHost", "only the host names a successor")
        if client_id not in seat.room.guests:
            raise error("unknownClient", "no guest with this clientId in the room")
        seat.room.successor = client_id
        self.seats_changed(seat.room)

    # ---- leaving -------------------------------------------------------------------------------

    def disconnected(self, seat: Seat) -> None:
        """The seat's connection is gone: keep the seat for the grace period, tell the others."""
        if not seat.connected:
            return
        seat.connected = False
        room = seat.room
        if seat.is_host:
            for guest in room.guests.values():
                self._send(guest.client_id, message("hostLeft", {"clientId": seat.client_id}))
        elif room.host is not None:
            self._send(room.host.client_id, message("guestLeft", {"clientId": seat.client_id}))
        if not self._stopped:
            seat.grace_timer = self.clock.callLater(self.grace, self._grace_over, seat)

    def _grace_over(self, seat: Seat) -> None:
        seat.grace_timer = None
        if seat.connected:
            return
        room = seat.room
        self.seats_by_token.pop(seat.token_key, None)
        if seat.is_host:
            room.host = None
            if self.migration:
                self._migrate(room)
        else:
            room.guests.pop(seat.client_id, None)
        self.seats_changed(room)
        if room.empty() or all(not s.connected for s in self._seats(room)):
            self._schedule_expiry(room)

    def _unseat(self, seat: Seat) -> None:
        """A disconnected seat someone else took: its grace ends now and its token holds nothing."""
        if seat.grace_timer is not None and seat.grace_timer.active():
            seat.grace_timer.cancel()
        seat.grace_timer = None
        self.seats_by_token.pop(seat.token_key, None)

    def _migrate(self, room: Room) -> None:
        """
        The host is gone for good: the successor it named, or else the longest-seated guest that joined
        with canHost, becomes host. A guest that did not ask to host is never promoted (a client that
        cannot host would get offers it cannot answer); without one the room stays hostless, and its
        guests and newcomers hear hostDisconnected as for any room whose host is away.
        """
        named = room.guests.get(room.successor) if room.successor else None
        if named is not None and named.connected:
            chosen = named
        else:
            candidates = [g for g in room.guests.values() if g.connected and g.can_host]
            if not candidates:
                return
            chosen = min(candidates, key=lambda g: (g.since, g.joined_order))
        del room.guests[chosen.client_id]
        chosen.is_host = True
        room.host = chosen
        room.successor = None
        guests = [g.client_id for g in room.guests.values()]
        self._send(chosen.client_id, message("promoted", {"guests": guests, "snapshot": room.snapshot}))
        for guest in room.guests.values():
            self._send(guest.client_id, message("hostChanged", {"clientId": chosen.client_id}))

    def _seats(self, room: Room) -> list[Seat]:
        return ([room.host] if room.host else []) + list(room.guests.values())

    def _schedule_expiry(self, room: Room) -> None:
        self._cancel_expiry(room)
        if self._stopped:
            return
        wait = self.expiry if room.claimed else min(self.unclaimed_expiry, self.expiry)
        room.expiry_timer = self.clock.callLater(wait, self._expire, room)

    def _cancel_expiry(self, room: Room) -> None:
        if room.expiry_timer is not None and room.expiry_timer.active():
            room.expiry_timer.cancel()
        room.expiry_timer = None

    def _expire(self, room: Room) -> None:
        room.expiry_timer = None
        if any(s.connected for s in self._seats(room)):
            return
        for seat in self._seats(room):
            if seat.grace_timer is not None and seat.grace_timer.active():
                seat.grace_timer.cancel()
            self.seats_by_token.pop(seat.token_key, None)
        if self.rooms.get(room.code) is room:
            del self.rooms[room.code]
            self.forget_room(room.code)

    def drop_room(self, code: str) -> None:
        """Forget a room without a word (another node owns it now); its timers stop, its store record stays."""
        room = self.rooms.pop(code, None)
        if room is None:
            return
        self._cancel_expiry(room)
        for seat in self._seats(room):
            if seat.grace_timer is not None and seat.grace_timer.active():
                seat.grace_timer.cancel()
            self.seats_by_token.pop(seat.token_key, None)

    def shutdown(self) -> None:
        """Cancel every timer, and start none from now on (the daemon is stopping; rooms stay in the store)."""
        self._stopped = True
        for room in self.rooms.values():
            self._cancel_expiry(room)
            for seat in self._seats(room):
                if seat.grace_timer is not None and seat.grace_timer.active():
                    seat.grace_timer.cancel()

    def _send(self, client_id: str, frame: Frame) -> None:
        self.bus.publish(client_channel(client_id), frame)
