"""
A TCP proxy that can hold bytes: put between a relayd node and Redis, `hold()` cuts the node off as a
network partition does (nothing is lost or reset: bytes wait in the proxy, both ways), and `heal()`
lets everything through, in order, as a healed network delivers what it held.
"""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint


class _Side(protocol.Protocol):
    peer = None

    def dataReceived(self, data):
        self.proxy.carry(self, data)

    def connectionLost(self, reason):
        self.proxy.lost(self)


class HoldingProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.holding = False
        self.held: list = []  # (to side, bytes), in arrival order
        self.sides: list = []
        self.port = None

    @defer.inlineCallbacks
    def start(self):
        factory = protocol.Factory()
        factory.buildProtocol = self._accepted
        self._listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.port = self._listening.getHost().port
        return self

    def _accepted(self, addr):
        inner = _Side()
        inner.proxy = self
        outer = _Side()
        outer.proxy = self
        inner.peer, outer.peer = outer, inner
        self.sides += [inner, outer]
        outer.pending = []  # what the node sends before the connection to the target is up

        def connected(p):
            pending, outer.pending = outer.pending, None
            for data in pending:
                p.transport.write(data)

        TCP4ClientEndpoint(reactor, "127.0.0.1", self.target_port).connect(
            protocol.Factory.forProtocol(lambda: outer)).addCallbacks(connected, lambda f: inner.transport.loseConnection())
        return inner

    def carry(self, side, data: bytes) -> None:
        to = side.peer
        if self.holding:
            self.held.append((to, data))
        elif getattr(to, "pending", None) is not None:
            to.pending.append(data)
        elif to.transport is not None:
            to.transport.write(data)

    def lost(self, side) -> None:
        peer = side.peer
        if peer is not None and peer.transport is not None and not self.holding:
            peer.transport.loseConnection()

    def hold(self) -> None:
        self.holding = True

    def heal(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for to, data in held:
            if to.transport is not None:
                to.transport.write(data)

    def stop(self):
        for side in self.sides:
            if side.transport is not None:
                side.transport.abortConnection()
        return self._listening.stopListening()
