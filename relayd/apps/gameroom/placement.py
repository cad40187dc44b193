"""
Where gameroom's rooms live, asked through one set of calls whatever the topology: find a room,
claim and release it, read a room held elsewhere, and the room store its writes go to. Every call
answers with a Deferred on one node as on several, so the app never asks how many nodes there are.

LocalPlacement is one node's: a room is here or nowhere, a claim always holds, the room store is
the daemon's durable store. relayd.apps.gameroom.cluster.Placement is the cluster's (leases,
pipes, takeover, fenced writes in Redis).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer

from relayd.apps.gameroom.roomstore import LocalRoomStore


class LocalPlacement(Service):
    def __init__(self, app, store):
        self.app = app
        self.store = LocalRoomStore(store)

    def claim(self, room_id: str) -> defer.Deferred:
        return defer.succeed(True)

    def release(self, room_id: str) -> None:
        return None

    def find(self, room_id: str) -> defer.Deferred:
        """(the room, None) when it is here, else (None, None): every stored room was loaded at start."""
        room = self.app.core.rooms.get(room_id)
        return defer.succeed((room, None) if room is not None else (None, None))

    def stored_view(self, room_id: str, view) -> defer.Deferred:
        return defer.succeed(None)  # a room not held here does not exist on one node
