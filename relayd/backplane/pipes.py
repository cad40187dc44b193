"""
Pipes: a client connected to one node whose room is owned by another node talks to that room through
a pipe, so the room's session logic runs in one place (its owner) for every client.

The client's node keeps a Pipe: it carries the client's frames to the owner's `<namespace>:node:<id>`
channel and hands what comes back on the pipe's own channel to the connection (frames, or a close).
The owner keeps a RemoteEnd per pipe: the app's session for that client, whose `send` and `close`
go back through the pipe. Messages of one pipe travel in order (one publisher, one channel).

When the owner dies its pipes see the room's lease move (`moved`: the client reconnects and resumes
elsewhere); when a client's node dies, its RemoteEnds are dropped as if their connections closed.
"""

from __future__ import annotations

import itertools
import json
from typing import Callable

from twisted.logger import Logger

from relayd import jsonutil
from relayd.backplane import codec
from relayd.errors import ProtocolError
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


class RemoteEnd:
    """
    The room's side of a pipe. An app mixes it into its session class: the session calls `send`,
    `close`, `report` as on a connection, and gives `report`, `handle(payload)` (a frame from the
    client) and `end_session()` (the client is gone). They come from the session class, so they are
    not defined here: a placeholder would win over them in the method order.
    """

    def __init__(self, pipes: "Pipes", key: str, reply: str):
        self.pipes = pipes
        self.key = key
        self.reply = reply
        self.open = True

    def send(self, frame: Frame) -> None:
        if self.open:
            self.pipes.bus.publish(self.reply, frame)

    def close(self, code: int, reason: str = "") -> None:
        if not self.open:
            return
        self.pipes.bus.publish(self.reply, PipeMessage("c", self.key, f"{code} {reason}".encode()))
        self.gone()

    def gone(self) -> None:
        if self.open:
            self.open = False
            self.pipes.ends.pop(self.key, None)
            self.end_session()

    def still_open(self) -> bool:
        return self.open

    def _protocol_error(self, e: ProtocolError) -> None:
        self.pipes.metrics.protocol_error(e.kind)
        _log.info("{namespace}: protocol error from a client on another node: {kind}: {message}",
                  namespace=self.pipes.namespace, kind=e.kind, message=e.message)
        self.report(e)

    def _internal_error(self) -> None:
        self.close(closecodes.INTERNAL_ERROR, "internal error")

    def dispatch(self, payload: bytes) -> None:
        try:
            self.handle(payload)
        except ProtocolError as e:
            self._protocol_error(e)
        except Exception:
            _log.failure("{namespace}: handling a piped message failed", namespace=self.pipes.namespace)
            self._internal_error()


class Pipes:
    """One app's pipes on this node, both ways."""

    def __init__(self, bus, cluster, namespace: str, metrics, open_end: Callable[["Pipes", str, str, dict], RemoteEnd]):
        self.bus = bus
        self.cluster = cluster
        self.namespace = namespace
        self.metrics = metrics
        self.open_end = open_end
        self.pipes: dict[str, Pipe] = {}  # connections here, rooms elsewhere
        self.ends: dict[str, RemoteEnd] = {}  # rooms here, connections elsewhere
        self._numbers = itertools.count(1)
        self.subscription = bus.subscribe(self.node_channel(cluster.node_id), self._arrived)

    def node_channel(self, node_id: str) -> str:
        return f"{self.namespace}:node:{node_id}"

    def connect(self, conn, owner: str, room: str, body: dict) -> Pipe:
        """Pipe conn to room on node owner; body is what the owner's open_end gets (with `reply`)."""
        key = f"{self.cluster.node_id}:{next(self._numbers)}"
        pipe = self.pipes[key] = Pipe(self, conn, owner, room, key)
        pipe.open(body)
        return pipe

    def _arrived(self, message) -> None:
        if not isinstance(message, PipeMessage):
            return
        if message.kind == "o":
            body = json.loads(message.body)
            try:
                self.ends[message.key] = self.open_end(self, message.key, body["reply"], body)
            except Exception:
                _log.failure("{namespace}: opening a piped session failed", namespace=self.namespace)
            return
        end = self.ends.get(message.key)
        if end is None:
            return
        if message.kind == "f":
            end.dispatch(message.body)
        elif message.kind == "g":
            end.gone()

    def check(self, owner_of) -> None:
        """Close pipes whose room moved; drop ends whose client's node died. owner_of(room) -> Deferred."""
        from relayd.backplane.cluster import Unavailable

        def failed(failure):
            if not failure.check(Unavailable):
                _log.failure("{namespace}: checking pipes failed", failure, namespace=self.namespace)

        for pipe in list(self.pipes.values()):
            owner_of(pipe.room).addCallbacks(lambda holder, pipe=pipe: holder != pipe.owner and pipe.moved(), failed)
        for node in {key.rsplit(":", 1)[0] for key in self.ends}:
            self.cluster.call("EXISTS", self.cluster.node_key(node)).addCallbacks(
                lambda alive, node=node: alive or self._drop_node(node), failed)

    def _drop_node(self, node: str) -> None:
        for key, end in list(self.ends.items()):
            if key.rsplit(":", 1)[0] == node:
                end.gone()
