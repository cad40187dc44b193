"""
What every app whose rooms each have one owner node shares on several nodes (gameroom, groovejet):
a lease per room (relayd.backplane.leases: self-fenced, and fencing the owner's writes), pipes from
the clients' nodes to the owner (relayd.backplane.pipes), and the graceful hand-over when this node
stops. An app's Placement subclasses OwnerPlacement with where its rooms are and how they are taken
over; relayd.apps.<app>.placement holds the one-node placement that answers the same calls.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet import defer

from relayd.backplane.cluster import Cluster
from relayd.backplane.leases import Leases
from relayd.backplane.pipes import Pipes, RemoteEnd


class OwnerPlacement(MultiService):
    def __init__(self, app, cluster: Cluster, namespace: str, *, clock):
        super().__init__()
        self.app = app
        self.cluster = cluster
        self.clock = clock
        self.leases = Leases(cluster, f"{namespace}:room", clock=clock, lost=self._lost)
        self.leases.setServiceParent(self)
        self.pipes = Pipes(app.bus, cluster, namespace, app.metrics, self._open_session)

    @defer.inlineCallbacks
    def stopService(self):
        # a graceful stop: the leases go first (children), then the clients piped here are told to move
        yield super().stopService()
        self.pipes.hand_over()

    def _lost(self, room: str) -> None:
        """This node no longer owns room (another node took it, or its lease could not be renewed)."""
        raise NotImplementedError

    def _open_session(self, end: RemoteEnd, body: dict):
        """The app's session for a client on another node whose room is here."""
        raise NotImplementedError
