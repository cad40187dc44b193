"""
Where groovejet's rooms live, asked through one set of calls whatever the topology: where a new
connection or a lobby message goes, a new room's code, and where a room's record is written. Every
call answers as the cluster's does (Deferreds where it waits), so the app never asks how many nodes
there are.

LocalPlacement is one node's: every room is here, the core makes new codes, records go to the
daemon's durable store. relayd.apps.groovejet.cluster.Placement is the cluster's (leases, pipes,
takeover, records in Redis fenced by the lease).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer

ROOMS = "groovejet.room"  # the store namespace rooms were always written under


class LocalPlacement(Service):
    def __init__(self, app, store):
        self.app = app
        self.store = store

    def load(self) -> defer.Deferred:
        """Rooms written before a restart, held here again."""
        return self.store.items(ROOMS).addCallback(
            lambda rooms: [self.app.core.restore_room(code, record) for code, record in rooms] and None)

    def route_opening(self, session) -> defer.Deferred:
        session.start_session()
        return defer.succeed(None)

    def route_lobby(self, session, payload: bytes):
        return session.handle(payload)

    def new_code(self) -> defer.Deferred:
        return defer.succeed(None)  # the core makes one, unique on this node

    def save(self, code: str, record: dict) -> defer.Deferred:
        """Fires True once the room is durable, False (logged by the app) when the store failed."""
        return self.store.put(ROOMS, code, record).addCallbacks(
            lambda _: True, self.app.store_failed, errbackArgs=(code,))

    def forget(self, code: str) -> None:
        self.store.delete(ROOMS, code).addErrback(self.app.store_failed, code)

    seats_changed = None  # one node keeps seats in memory only: nothing to write when they change
