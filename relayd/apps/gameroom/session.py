"""
One gameroom client: a player or a spectator of one room; docs/protocols/gameroom.md.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from relayd import jsonutil
from relayd.apps.gameroom.core import Player, Room, player_channel
from relayd.errors import ProtocolError
from relayd.session import ISession, unavailable
from relayd.ws import closecodes
from relayd.ws.frames import Frame

_log = Logger()
MAX_CATCHUP = 1000


def _parse(payload: bytes) -> dict:
    try:
        return jsonutil.loads_typed(payload)
    except jsonutil.BadJSON as e:
        raise ProtocolError("malformed_message", str(e)) from None


@implementer(ISession)
class GameRoomSession:
    """
    One client's part in a room: spectating, joining, playing. It runs where the room is, behind the
    client's WebSocket or (several nodes) behind the RemoteEnd of a pipe on the room's owner node.
    A session whose room is on another node (owner) only carries its frames there through a pipe.
    """

    unavailable = unavailable("rooms cannot be reached now; try again")

    def __init__(self, app, conn, room: Room | None, mode: str, *, owner: str | None = None,
                 room_id: str | None = None):
        self.app = app
        self.conn = conn
        self.room = room
        self.mode = mode
        self.owner = owner  # the node holding the room, when it is not this one
        self.room_id = room_id if room_id is not None else (room.id if room is not None else None)
        self.pipe = None
        self.player: Player | None = None
        self.spectator = False
        self.subscriptions: list = []

    def send(self, frame: Frame) -> None:
        self.conn.send(frame)

    def report(self, error: ProtocolError) -> None:
        """The protocol's error form; an error that closes closes with its code (1008, or 1013 for unavailable)."""
        self.send(Frame.json({"type": "error", "error": error.kind, "message": error.message}))
        if error.close:
            self.conn.close(error.code, error.message)

    def opened(self) -> None:
        if self.owner is not None:
            self.pipe = self.app.placement.pipe(self.conn, self.owner, self.room_id, self.mode)
        elif self.room is None:
            self.conn.close(closecodes.SERVICE_RESTART, "the room moved to another node; reconnect")
        elif self.mode == "watch":
            self._spectate()

    def received(self, payload: bytes, is_binary: bool) -> None:
        if self.pipe is not None:
            self.pipe.forward(payload)
        else:
            self.handle(payload)

    def closed(self) -> None:
        if self.pipe is not None:
            self.pipe.closed()
            self.pipe = None
        self.end_session()

    def _subscribe(self, *channels: str) -> None:
        # through the connection: a piped client's node may take the room's broadcasts from Redis itself
        bus, conn = self.app.bus, self.conn
        self.subscriptions = [conn.listen(bus, c) for c in channels]

    def _spectate(self) -> None:
        room = self.room
        self.spectator = True
        self._subscribe(self.app.core.channel(room))
        self.send(Frame.json(self.app.core.welcome(room, None, None)))
        for master in room.log:
            self.send(Frame(master))

    def handle(self, payload: bytes) -> None:
        app = self.app
        core, room, now = app.core, self.room, app.reactor.seconds()
        message = _parse(payload)
        kind = message["type"]
        if kind == "catchup":
            for master in core.catchup(room, message.get("from"), MAX_CATCHUP):
                self.send(Frame(master))
            return
        if self.spectator:
            raise ProtocolError("spectator", "spectators only watch")
        if self.player is None:
            if kind != "join":
                raise ProtocolError("not_joined", "send join first")
            self._join(message, now)
            return
        if kind == "commands":
            core.packet(room, self.player, message, now)
        elif kind == "setup":
            core.change_setup(room, self.player, message.get("changes"), now)
        elif kind == "ready":
            core.set_ready(room, self.player, message.get("ready"), now)
            app.ensure_ticking()
        elif kind == "finish":
            core.finish(room, self.player, message.get("result"), now)
        elif kind == "join":
            raise ProtocolError("already_joined", "this connection has joined")
        else:
            raise ProtocolError("unknown_type", f"unknown message type {kind[:40]}")

    def _join(self, message: dict, now: float) -> None:
        app = self.app
        core, room = app.core, self.room
        if "session" in message:
            player = core.rejoin(room, message["session"], now)
            app.ensure_ticking()
            previous = app.live.get((room.id, player.pid))
            if previous is not None and previous is not self:
                previous.player = None  # its close must not mark the player away
                previous.conn.close(closecodes.REPLACED, "the session continued on a newer connection")
            self._as_player(player, None)
            from_turn = message.get("from_turn", 0)
            for master in core.catchup(room, from_turn, len(room.log)):
                self.send(Frame(master))
            return
        try:
            player, token = core.join(room, message.get("name"), message.get("user_id"), now)
        except ProtocolError as e:
            if e.kind not in ("game_running", "room_full"):
                raise  # a malformed join keeps the connection: the client may join again
            if room.settings.late_joiners == "spectate":
                self._spectate()
                return
            raise ProtocolError(e.kind, e.message, close=True) from None
        self._as_player(player, token)

    def _as_player(self, player: Player, token: str | None) -> None:
        app = self.app
        room = self.room
        self.player = player
        app.live[(room.id, player.pid)] = self
        self._subscribe(app.core.channel(room), player_channel(room.id, player.pid))
        self.send(Frame.json(app.core.welcome(room, player, token)))

    def end_session(self) -> None:
        app = self.app
        for subscription in self.subscriptions:
            subscription.cancel()
        self.subscriptions = ()
        player, self.player = self.player, None
        if player is not None and self.room is not None:
            if app.live.get((self.room.id, player.pid)) is self:
                del app.live[(self.room.id, player.pid)]
            if app.core.rooms.get(self.room.id) is self.room:
                app.core.left(self.room, player, app.reactor.seconds())
