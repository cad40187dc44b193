"""
gameroom on many nodes: each room has one owner node (a lease in Redis, `<prefix>:gameroom:room:<id>`),
which runs its ticks; players and spectators connected to other nodes are piped to it
(relayd.backplane.pipes). Rooms are written to Redis (RedisRoomStore), the session store every node
shares: when an owner dies, its lease expires and the first node a player of the room reaches takes
the room over from the store, and the players rejoin with their session tokens.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from relayd.apps.gameroom.core import room_channel
from relayd.apps.gameroom.roomstore import RedisRoomStore
from relayd.backplane.cluster import Cluster
from relayd.backplane.owners import OwnerPlacement
from relayd.backplane.pipes import MOVED, SERVICE_RESTART, RemoteEnd
from relayd.periodic import Periodic

_log = Logger()


class Placement(OwnerPlacement):
    def __init__(self, app, cluster: Cluster, *, clock):
        super().__init__(app, cluster, "gameroom", clock=clock)
        self.store = RedisRoomStore(cluster, self.leases)
        app.core.node = cluster.node_id
        Periodic("gameroom pipe checks", cluster.node_timeout / 2, self.upkeep, clock=clock,
                 now=False).setServiceParent(self)

    def claim(self, room_id: str) -> defer.Deferred:
        return self.leases.claim(room_id)

    def release(self, room_id: str) -> None:
        self.leases.release(room_id)

    @defer.inlineCallbacks
    def find(self, room_id: str):
        """(the room, held here, None) or (None, the node holding it); (None, None) when there is none."""
        core = self.app.core
        if room_id in core.rooms:
            return core.rooms[room_id], None
        holder = yield self.leases.holder(room_id)
        if holder is not None and holder != self.cluster.node_id:
            return None, holder
        stored = yield self.store.load(room_id)
        if stored is None:
            return None, None
        if holder is None and not (yield self.leases.claim(room_id)):
            return None, (yield self.leases.holder(room_id))
        room = core.rooms.get(room_id)
        if room is None:
            room = core.restore(*stored, self.clock.seconds())
            _log.info("gameroom: took over room {room} from a node that is gone", room=room_id)
        return room, None

    @defer.inlineCallbacks
    def stored_view(self, room_id: str, view):
        """A room's info or archive as last written, for an HTTP request on a node that does not hold it."""
        stored = yield self.store.load(room_id)
        return None if stored is None else view(self.app.core.build(*stored))

    def pipe(self, conn, owner: str, room_id: str, mode: str):
        # the room's broadcasts reach this node once, from Redis, for all of its clients in the room
        return self.pipes.connect(conn, owner, room_id, {"room": room_id, "mode": mode},
                                  follows=[room_channel(room_id, owner)])

    def _open_session(self, end: RemoteEnd, body: dict):
        # the room's session for a client on another node (a room gone from here tells it to reconnect)
        from relayd.apps.gameroom.session import GameRoomSession

        return GameRoomSession(self.app, end, self.app.core.rooms.get(body["room"]), body["mode"],
                               room_id=body["room"])

    def upkeep(self) -> None:
        if self.cluster.up:
            self.pipes.check(self.leases.holder)

    def _lost(self, room_id: str) -> None:
        """Another node holds this room now (this one was cut off): its clients here reconnect there."""
        for (rid, _), session in list(self.app.live.items()):
            if rid == room_id:
                session.conn.close(SERVICE_RESTART, MOVED)
        for end in list(self.pipes.ends.values()):
            if end.room is not None and end.room.id == room_id:
                end.close(SERVICE_RESTART, MOVED)
        self.app.core.drop(room_id)


