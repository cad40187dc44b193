"""
groovejet on many nodes: every room has one owner node, which runs its seats, timers, migration and
snapshots; a client connected to another node is piped to it.

Redis holds (under `<prefix>:groovejet:`): `room:<code>`, the owner's lease (so codes are unique in
the cluster); `record:<code>`, the room's record with its seats (token digests only) and snapshot;
`token:<digest>`, the room a reconnect token belongs to. Records and tokens expire `record_ttl`
after the owner last touched them (every third of node_timeout while it owns the room).

A connection finds its room from its query (`code`, `resume`) or its first `joinRoom` / `resume`
message. If the room is here, its Session runs here. If another node owns it, a Pipe carries the
client's frames to that node's RemoteHost, where a RemoteClient runs the Session and sends back
on the pipe's channel. If no node owns it but its record exists (its owner died), this node takes
the lease and restores the room with its seats, so clients resume with their tokens.
"""

from __future__ import annotations

import json
import secrets

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from relayd import jsonutil
from relayd.apps.groovejet.core import CODE_ALPHABET, CODE_LENGTH, _token_key, error
from relayd.backplane.cluster import Cluster, Unavailable
from relayd.backplane.leases import Leases
from relayd.backplane.pipes import MOVED, SERVICE_RESTART, Pipes, RemoteEnd
from relayd.errors import ProtocolError
from relayd.periodic import Periodic
from relayd.ws import closecodes
from relayd.ws.frames import Frame

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

    @defer.inlineCallbacks
    def save(self, code: str, record: dict):
        yield self.cluster.call("SET", self._record_key(code), jsonutil.dumps(record), "PX", self.ttl_ms)
        for seat in record.get("seats", ()):
            yield self.cluster.call("SET", self._token_key(seat["token"]), code, "PX", self.ttl_ms)
        return True

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
        d = self.cluster.call("GET", self._token_key(_token_key(token)))
        return d.addCallback(lambda code: None if code is None else code.decode())

    @defer.inlineCallbacks
    def take_over(self, code: str):
        """The record of an ownerless room, now this node's; None when there is none or another node was first."""
        raw = yield self.cluster.call("GET", self._record_key(code))
        if raw is None or not (yield self.leases.claim(code)):
            return None
        return json.loads(raw)


class RemoteClient(RemoteEnd):
    """The room's side of a pipe; mixed with the adapter's Session (see Router.__init__)."""

    def __init__(self, pipes: Pipes, key: str, reply: str, app, params: dict):
        RemoteEnd.__init__(self, pipes, key, reply)
        self.app = app
        self.params = params


class Router(MultiService):
    """Where each client's Session runs, and the loops that keep rooms and pipes true."""

    def __init__(self, app, cluster: Cluster, *, clock, session_class, record_ttl: float):
        super().__init__()
        self.app = app
        self.cluster = cluster
        self.bus = app.bus
        self.leases = Leases(cluster, "groovejet:room", clock=clock, lost=self._lost)
        self.leases.setServiceParent(self)
        self.directory = Directory(cluster, self.leases, record_ttl)
        self.remote_class = type("RemoteSession", (RemoteClient, session_class), {})
        self.pipes = Pipes(app.bus, cluster, "groovejet", app.metrics, self._open_remote)
        Periodic("groovejet room upkeep", cluster.node_timeout / 3, self.keep, clock=clock,
                 now=False).setServiceParent(self)

    # ---- where a client goes -------------------------------------------------------------------

    def route_opening(self, conn) -> None:
        """A new connection (held): its query names a room, a resume token, or neither (lobby)."""
        resume, codes = conn.params.get("resume"), conn.params.get("code", [])
        if resume and len(resume) == 1:
            d = self.directory.room_of_token(resume[0])
        else:
            d = defer.succeed(codes[0].lower() if len(codes) == 1 and codes[0] else None)
        d.addCallback(self._place)
        d.addCallbacks(self._opened_at, self._opening_failed, callbackArgs=(conn,), errbackArgs=(conn,))

    def _opened_at(self, where, conn) -> None:
        if not conn.still_open():
            return
        node, code = where
        if node is None:
            conn.ahead_of_held(conn.start_session)
        else:
            conn.pipe = self._pipe(conn, node, code, True, self.app.core.new_identity())
        conn.release()

    def _pipe(self, conn, node: str, code: str, announce: bool, identity: tuple[str, str]):
        return self.pipes.connect(conn, node, code, {"params": conn.params, "announce": announce,
                                                       "client_id": identity[0], "token": identity[1]})

    def _open_remote(self, pipes: Pipes, key: str, reply: str, body: dict):
        client = self.remote_class(pipes, key, reply, self.app, body["params"])
        identity = (body["client_id"], body["token"])
        try:
            if body["announce"]:
                client.start_session(identity)
            else:
                client._take_identity(*identity)
        except ProtocolError as e:
            client._protocol_error(e)
        return client

    def _opening_failed(self, failure, conn) -> None:
        if not conn.still_open():
            return
        if failure.check(Unavailable):
            conn.send(Frame.json({"type": "error", "errorType": "unavailable",
                                  "errorMessage": "rooms cannot be reached now; try again"}))
            conn.close(closecodes.TRY_AGAIN_LATER, "rooms cannot be reached now")
        else:
            conn.failed(failure)

    def route_lobby(self, conn, payload: bytes) -> None:
        """A lobby message: joinRoom and resume go where their room is; the rest is handled here."""
        from relayd.apps.groovejet.adapter import _parse

        value = _parse(payload)
        data = value.get("data") if isinstance(value.get("data"), dict) else {}
        if value["type"] == "joinRoom" and isinstance(data.get("roomCode"), str) and data["roomCode"]:
            d = self._place(data["roomCode"].lower())
        elif value["type"] == "resume":
            d = self.directory.room_of_token(data.get("token")).addCallback(self._place)
        else:
            conn.handle(payload)
            return
        conn.hold()
        d.addCallbacks(self._lobby_at, self._lobby_failed, callbackArgs=(conn, payload), errbackArgs=(conn,))

    def _lobby_at(self, where, conn, payload: bytes) -> None:
        if not conn.still_open():
            return
        node, code = where
        if node is None:
            conn.ahead_of_held(conn.handle, payload)
        else:
            identity = (conn.client_id, conn.token)
            conn.end_session()  # the identity's session moves to the room's node
            conn.pipe = self._pipe(conn, node, code, False, identity)
            conn.pipe.forward(payload)
        conn.release()

    def _lobby_failed(self, failure, conn) -> None:
        if conn.still_open():
            conn.failed(failure)
            conn.release()

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

    def keep(self) -> None:
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
                session.close(SERVICE_RESTART, MOVED)
        core.drop_room(code)

    @staticmethod
    def _failed(failure) -> None:
        if not failure.check(Unavailable):
            _log.failure("groovejet: keeping rooms true failed", failure)


