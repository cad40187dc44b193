"""
groovejet on many nodes: every room has one owner node, which runs its seats, timers, migration and
snapshots; a client connected to another node is piped to it.

Redis holds (under `<prefix>:groovejet:`): `room:<code>`, the owner's lease (so codes are unique in
the cluster); `record:<code>`, the room's record with its seats (token digests only) and snapshot;
`token:<digest>`, the room a reconnect token belongs to. Records and tokens expire `record_ttl`
after the owner last touched them (every third of node_timeout while it owns the room).

A connection finds its room from its query (`code`, `resume`) or its first `joinRoom` / `resume`
message. If the room is here, its Session runs here. If another node owns it, a Pipe carries the
client's frames to that node, where a RemoteEnd (relayd.backplane.pipes) stands for the client's
connection behind the same Session and sends back on the pipe's channel. If no node owns it but its record exists (its owner died), this node takes
the lease and restores the room with its seats, so clients resume with their tokens.
"""

from __future__ import annotations

import json
import secrets

from twisted.internet import defer
from twisted.logger import Logger

from relayd import jsonutil
from relayd.apps.groovejet.core import CODE_ALPHABET, CODE_LENGTH, error, token_digest
from relayd.apps.groovejet.session import GroovejetSession, parse_message
from relayd.backplane.cluster import Cluster
from relayd.backplane.leases import Leases
from relayd.backplane.owners import OwnerPlacement
from relayd.backplane.pipes import MOVED, SERVICE_RESTART, RemoteEnd
from relayd.errors import unless_unavailable
from relayd.periodic import Periodic

_log = Logger()


class Directory:
    """Which node owns which room, the rooms' records, and which room a token belongs to."""

    def __init__(self, cluster: Cluster, leases: Leases, record_ttl: float):
        self.cluster = cluster
        self.leases = leases
        self.ttl_ms = int(record_ttl * 1000)

    def _record_key(self, code: str) -> str:
        return self.cluster.key("groovejet", "record", code)

    def _token_key(self, digest: str) -> str:
        return self.cluster.key("groovejet", "token", digest)

    @defer.inlineCallbacks
    def claim_new_code(self):
        for _ in range(32):
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if (yield self.leases.claim(code)):
                return code
        raise error("tooManyRooms", "no free room code found; try again")

    def save(self, code: str, record: dict) -> defer.Deferred:
        """The room's record and its seats' tokens, fenced by the room's lease; fires whether they were written."""
        commands = [("SET", self._record_key(code), jsonutil.dumps(record), "PX", self.ttl_ms)]
        commands += [("SET", self._token_key(seat["token"]), code, "PX", self.ttl_ms) for seat in record.get("seats", ())]
        return self.leases.write(code, commands)

    def forget(self, code: str) -> None:
        self.cluster.call("DEL", self._record_key(code)).addErrback(lambda f: None)
        self.leases.release(code)

    def touch(self, code: str, token_digests: list[str]) -> None:
        for key in [self._record_key(code)] + [self._token_key(t) for t in token_digests]:
            self.cluster.call("PEXPIRE", key, self.ttl_ms).addErrback(lambda f: None)

    def owner(self, code: str):
        return self.leases.holder(code)

    def room_of_token(self, token) -> defer.Deferred:
        if not isinstance(token, str):
            return defer.succeed(None)
        d = self.cluster.call("GET", self._token_key(token_digest(token)))
        return d.addCallback(lambda code: None if code is None else code.decode())

    @defer.inlineCallbacks
    def take_over(self, code: str):
        """The record of an ownerless room, now this node's; None when there is none or another node was first."""
        raw = yield self.cluster.call("GET", self._record_key(code))
        if raw is None or not (yield self.leases.claim(code)):
            return None
        return json.loads(raw)


class Placement(OwnerPlacement):
    """Where each client's Session runs, and the loops that keep rooms and pipes true."""

    def __init__(self, app, cluster: Cluster, *, clock, record_ttl: float):
        super().__init__(app, cluster, "groovejet", clock=clock)
        self.bus = app.bus
        self.directory = Directory(cluster, self.leases, record_ttl)
        Periodic("groovejet room upkeep", cluster.node_timeout / 3, self.upkeep, clock=clock,
                 now=False).setServiceParent(self)

    # ---- what the app asks of any placement (relayd.apps.groovejet.placement) --------------------

    def load(self) -> defer.Deferred:
        return defer.succeed(None)  # rooms live in Redis; this node holds one when it takes it over

    def new_code(self) -> defer.Deferred:
        return self.directory.claim_new_code()

    def save(self, code: str, record: dict) -> defer.Deferred:
        """The room's record with its seats, for a node that takes it over; fires whether it was written."""
        room = self.app.core.rooms.get(code)
        full = room.record(with_seats=True) if room is not None else record
        return self.directory.save(code, full).addErrback(self.app.store_failed, code)

    def forget(self, code: str) -> None:
        self.directory.forget(code)

    def seats_changed(self, room) -> None:
        self.save(room.code, room.record(with_seats=True))

    # ---- where a client goes -------------------------------------------------------------------

    def route_opening(self, session) -> defer.Deferred:
        """A new connection: its query names a room, a resume token, or neither (lobby). Fires once placed."""
        resume, codes = session.params.get("resume"), session.params.get("code", [])
        if resume and len(resume) == 1:
            d = self.directory.room_of_token(resume[0])
        else:
            d = defer.succeed(codes[0].lower() if len(codes) == 1 and codes[0] else None)
        return d.addCallback(self._place).addCallback(self._opened_at, session)

    def _opened_at(self, where, session) -> None:
        if not session.conn.still_open():
            return
        node, code = where
        if node is None:
            session.start_session()
        else:
            session.pipe = self._pipe(session.conn, node, code, True, self.app.core.new_identity(), session.params)

    def _pipe(self, conn, node: str, code: str, announce: bool, identity: tuple[str, str], params: dict):
        return self.pipes.connect(conn, node, code, {"params": params, "announce": announce,
                                                       "client_id": identity[0], "token": identity[1]})

    def _open_session(self, end: RemoteEnd, body: dict):
        # the room's session for a client on another node
        return GroovejetSession(self.app, end, body["params"], piped=body)

    def route_lobby(self, session, payload: bytes):
        """A lobby message: joinRoom and resume go where their room is; the rest is handled here."""
        value = parse_message(payload)
        data = value.get("data") if isinstance(value.get("data"), dict) else {}
        if value["type"] == "joinRoom" and isinstance(data.get("roomCode"), str) and data["roomCode"]:
            d = self._place(data["roomCode"].lower())
        elif value["type"] == "resume":
            d = self.directory.room_of_token(data.get("token")).addCallback(self._place)
        else:
            return session.handle(payload)
        return d.addCallback(self._lobby_at, session, payload)

    def _lobby_at(self, where, session, payload: bytes):
        if not session.conn.still_open():
            return None
        node, code = where
        if node is None:
            return session.handle(payload)
        identity = (session.client_id, session.token)
        session.end_session()  # the identity's session moves to the room's node
        session.pipe = self._pipe(session.conn, node, code, False, identity, session.params)
        session.pipe.forward(payload)
        return None

    @defer.inlineCallbacks
    def _place(self, code):
        """(None, code) when the room is (or is now) here or nowhere, else (its node, code)."""
        if code is None or code in self.app.core.rooms:
            return None, code
        holder = yield self.directory.owner(code)
        if holder is None:
            record = yield self.directory.take_over(code)
            if record is not None:
                if code not in self.app.core.rooms:
                    self.app.core.restore_room(code, record)
                    _log.info("groovejet: took over room {code} from a node that is gone", code=code)
                return None, code
            holder = yield self.directory.owner(code)
        if holder is None or holder == self.cluster.node_id:
            return None, code  # no such room: the Session here answers noRoomFound
        return holder, code

    # ---- keeping it true -----------------------------------------------------------------------

    def upkeep(self) -> None:
        if not self.cluster.up:
            return
        core = self.app.core
        for code, room in list(core.rooms.items()):
            seats = ([room.host] if room.host else []) + list(room.guests.values())
            self.directory.touch(code, [s.token_key for s in seats])
        self.pipes.check(self.directory.owner)

    def _lost(self, code: str) -> None:
        """Another node owns this room now (this one was cut off): its clients here reconnect there."""
        core = self.app.core
        room = core.rooms.get(code)
        if room is None:
            return
        for seat in ([room.host] if room.host else []) + list(room.guests.values()):
            session = self.app.live.get(seat.client_id)
            if session is not None:
                session.seat = None
                session.conn.close(SERVICE_RESTART, MOVED)
        core.drop_room(code)

    _failed = staticmethod(unless_unavailable("groovejet: keeping rooms true failed"))


