"""
Pipes: a client connected to one node whose room is owned by another node talks to that room through
a pipe, so the room's session logic runs in one place (its owner) for every client.

The client's node keeps a Pipe: it carries the client's frames to the owner's `<namespace>:node:<id>`
channel and hands what comes back on the pipe's own channel to the connection (frames, or a close).
The owner keeps a RemoteEnd per pipe: an IConnection whose `send` and `close` go back through the
pipe, with the app's session for that client behind it under a Runner, as behind a WebSocket.
Messages of one pipe travel in order (one publisher, one channel).

When the owner dies its pipes see the room's lease move (`moved`: the client reconnects and resumes
elsewhere); when a client's node dies, its RemoteEnds are dropped as if their connections closed.
"""

from __future__ import annotations

import itertools
import json
from typing import Callable

from twisted.logger import Logger
from zope.interface import implementer

from relayd import jsonutil
from relayd.backplane import codec
from relayd.errors import ProtocolError, unless_unavailable
from relayd.session import IConnection, Runner
from relayd.ws import closecodes
from relayd.ws.frames import Frame

_log = Logger()

SERVICE_RESTART = closecodes.SERVICE_RESTART
MOVED = "the room moved to another node; reconnect"


class PipeMessage:
    """o(pen), f(rame), g(one) towards the room; c(lose) back to the client."""

    __slots__ = ("kind", "key", "body")

    def __init__(self, kind: str, key: str, body: bytes = b""):
        self.kind = kind
        self.key = key
        self.body = body

    def to_bus(self) -> bytes:
        return self.kind.encode() + self.key.encode() + b"\n" + self.body

    @classmethod
    def from_bus(cls, data: bytes) -> "PipeMessage":
        kind, rest = data[:1].decode(), data[1:]
        key, sep, body = rest.partition(b"\n")
        if kind not in "ofgc" or not sep:
            raise ValueError("not a pipe message")
        return cls(kind, key.decode(), body)


codec.register(b"j", PipeMessage, PipeMessage.to_bus, PipeMessage.from_bus)


class Pipe:
    """The client's side: its frames to the room's node; what that node sends back, to the client."""

    def __init__(self, pipes: "Pipes", conn, owner: str, room: str, key: str):
        self.pipes = pipes
        self.conn = conn
        self.owner = owner
        self.room = room
        self.key = key
        self.reply = f"{pipes.namespace}:pipe:{key}"
        self.ready = False
        self.gone = False
        self.pending: list[bytes] = []
        self.subscription = pipes.bus.subscribe(self.reply, self._from_room)

    def open(self, body: dict) -> None:
        payload = jsonutil.dumps({**body, "reply": self.reply})

        def subscribed(_):
            # only once Redis confirms the pipe's channel: the room's first answer must not be missed
            if self.gone:
                return
            self._to_room("o", payload)
            self.ready = True
            pending, self.pending = self.pending, []
            for frame in pending:
                self._to_room("f", frame)

        self.pipes.bus.when_subscribed(self.reply).addCallback(subscribed)

    def forward(self, payload: bytes) -> None:
        if self.ready:
            self._to_room("f", payload)
        else:
            self.pending.append(payload)

    def _to_room(self, kind: str, body: bytes) -> None:
        self.pipes.bus.publish(self.pipes.node_channel(self.owner), PipeMessage(kind, self.key, body))

    def _from_room(self, message) -> None:
        if isinstance(message, PipeMessage):
            if message.kind == "c":
                code, _, reason = message.body.decode().partition(" ")
                self.conn.close(int(code), reason)
        else:
            self.conn.send(message)

    def closed(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.subscription.cancel()
        self.pipes.pipes.pop(self.key, None)
        if self.ready:
            self._to_room("g", b"")

    def moved(self) -> None:
        """The room's node died or gave the room up: the client reconnects and resumes elsewhere."""
        self.conn.close(SERVICE_RESTART, MOVED)


@implementer(IConnection)
class RemoteEnd:
    """
    The room's side of a pipe: an IConnection for the app's session of a client on another node.
    Its frames go back through the pipe; the session behind it runs under a Runner like any other.
    """

    def __init__(self, pipes: "Pipes", key: str, reply: str, client_address: str | None = None):
        self.pipes = pipes
        self.key = key
        self.reply = reply
        self.open = True
        self.peer = f"a client on node {key.rsplit(':', 1)[0]}"
        self.client_address = client_address
        self.runner: Runner | None = None
        self._errors: set[str] = set()

    def send(self, frame: Frame, latest: str | None = None) -> None:
        if self.open:
            self.pipes.bus.publish(self.reply, frame)

    def close(self, code: int, reason: str = "") -> None:
        if not self.open:
            return
        self.pipes.bus.publish(self.reply, PipeMessage("c", self.key, f"{code} {reason}".encode()))
        self.gone()

    def drop(self) -> None:
        self.close(closecodes.NORMAL, "")

    def still_open(self) -> bool:
        return self.open

    def use_role(self, role: str) -> None:
        """Rates are the client's node's to apply: nothing to do here."""

    def count_error(self, error: ProtocolError) -> bool:
        self.pipes.metrics.protocol_error(error.kind)
        if error.kind not in self._errors:
            self._errors.add(error.kind)
            _log.info("{namespace}: protocol error from {peer}: {kind}: {message}",
                      namespace=self.pipes.namespace, peer=self.peer, kind=error.kind, message=error.message)
        return True

    def internal_error(self) -> None:
        self.pipes.metrics.protocol_error("internal")
        self.close(closecodes.INTERNAL_ERROR, "internal error")

    def gone(self) -> None:
        if self.open:
            self.open = False
            self.pipes.ends.pop(self.key, None)
            if self.runner is not None:
                self.runner.closed()


class Pipes:
    """One app's pipes on this node, both ways."""

    def __init__(self, bus, cluster, namespace: str, metrics, open_session: Callable[[RemoteEnd, dict], object]):
        self.bus = bus
        self.cluster = cluster
        self.namespace = namespace
        self.metrics = metrics
        self.open_session = open_session  # (the end, the opening body) -> the app's ISession for it
        self.pipes: dict[str, Pipe] = {}  # connections here, rooms elsewhere
        self.ends: dict[str, RemoteEnd] = {}  # rooms here, connections elsewhere
        self._numbers = itertools.count(1)
        self.subscription = bus.subscribe(self.node_channel(cluster.node_id), self._arrived)

    def node_channel(self, node_id: str) -> str:
        return f"{self.namespace}:node:{node_id}"

    def connect(self, conn, owner: str, room: str, body: dict) -> Pipe:
        """Pipe conn to room on node owner; body is what the owner's open_session gets (with `reply`)."""
        key = f"{self.cluster.node_id}:{next(self._numbers)}"
        pipe = self.pipes[key] = Pipe(self, conn, owner, room, key)
        pipe.open({**body, "client_address": conn.client_address})
        return pipe

    def _arrived(self, message) -> None:
        if not isinstance(message, PipeMessage):
            return
        if message.kind == "o":
            body = json.loads(message.body)
            end = self.ends[message.key] = RemoteEnd(self, message.key, body["reply"], body.get("client_address"))
            try:
                end.runner = Runner(end, self.open_session(end, body), name=self.namespace)
            except Exception:
                _log.failure("{namespace}: opening a piped session failed", namespace=self.namespace)
                end.internal_error()
                return
            end.runner.opened()
            return
        end = self.ends.get(message.key)
        if end is None or end.runner is None:
            return
        if message.kind == "f":
            end.runner.received(message.body, False)
        elif message.kind == "g":
            end.gone()

    def check(self, owner_of) -> None:
        """Close pipes whose room moved; drop ends whose client's node died. owner_of(room) -> Deferred."""
        failed = unless_unavailable("{namespace}: checking pipes failed", namespace=self.namespace)

        for pipe in list(self.pipes.values()):
            owner_of(pipe.room).addCallbacks(lambda holder, pipe=pipe: holder != pipe.owner and pipe.moved(), failed)
        for node in {key.rsplit(":", 1)[0] for key in self.ends}:
            self.cluster.call("EXISTS", self.cluster.node_key(node)).addCallbacks(
                lambda alive, node=node: alive or self._drop_node(node), failed)

    def _drop_node(self, node: str) -> None:
        for key, end in list(self.ends.items()):
            if key.rsplit(":", 1)[0] == node:
                end.gone()
