"""
carparty on many nodes: a server code is a lease in Redis (relayd.backplane.leases), so it is unique
in the cluster; phones on any node find their server through it, and frames cross nodes on the bus.

The keeper closes this node's phones whose server's node died (its lease expired without a
ServerGone ever arriving), and closes a server of this node whose code another node took while this
one was cut off from Redis for longer than node_timeout.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.logger import Logger
from zope.interface import implementer

from relayd.apps.carparty.core import CarParty, ICodes
from relayd.backplane.cluster import Cluster
from relayd.backplane.leases import Leases
from relayd.errors import unless_unavailable
from relayd.periodic import Periodic

_log = Logger()


@implementer(ICodes)
class LeasedCodes:
    def __init__(self, leases: Leases):
        self.leases = leases

    def claim(self, code):
        return self.leases.claim(code)

    def exists(self, code):
        return self.leases.holder(code).addCallback(lambda node: node is not None)

    def release(self, code):
        return self.leases.release(code)


class CodeKeeper(MultiService):
    def __init__(self, cluster: Cluster, *, clock):
        super().__init__()
        self.cluster = cluster
        self.core: CarParty | None = None
        self.leases = Leases(cluster, "carparty:server", clock=clock, lost=self._lost)
        self.leases.setServiceParent(self)
        Periodic("carparty phone checks", cluster.node_timeout / 2, self.check_phones, clock=clock,
                 now=False).setServiceParent(self)

    def codes(self) -> LeasedCodes:
        return LeasedCodes(self.leases)

    def _lost(self, code: str) -> None:
        if self.core is not None:
            self.core.server_lost(code)

    def check_phones(self) -> None:
        """Close the phones of servers whose lease is gone: their node died without telling anyone."""
        if self.core is None or not self.cluster.up:
            return
        for code in [c for c in self.core.clients if c not in self.core.servers]:
            self.leases.holder(code).addCallbacks(
                lambda node, code=code: node is None and self.core.server_vanished(code), self._failed
            )

    _failed = staticmethod(unless_unavailable("carparty: checking a server's lease failed"))


