"""
Pipes: a client connected to one node whose room is owned by another node talks to that room through
a pipe, so the room's session logic runs in one place (its owner) for every client.

The client's node keeps a Pipe: it carries the client's frames to the owner's `<namespace>:node:<id>`
channel and hands what comes back on the pipe's own channel to the connection (frames, or a close).
The owner keeps a RemoteEnd per pipe: an IConnection whose `send` and `close` go back through the
pipe, with the app's session for that client behind it under a Runner, as behind a WebSocket.
Messages of one pipe travel in order (one publisher, one channel).

A channel the room broadcasts to every client (gameroom's master packets) need not cross Redis once
per piped client: the client's node names such channels when it opens the pipe (`follows`) and
subscribes to them itself before the pipe opens. When the room's session listens to one of them for
its client (IConnection.listen), the RemoteEnd sends a marker down the pipe (`s`, and `u` when it stops)
instead of forwarding every message, and from the marker on the client's node hands that channel's
messages to the client. The marker and the broadcasts leave the owner through one Redis connection
and reach the client's node through one, so the client sees them in the order the owner published
them: nothing before the marker, everything after it, in place among the pipe's own frames.

When the owner dies its pipes see the room's lease move (`moved`: the client reconnects and resumes
elsewhere); when it stops gracefully it releases its leases and then tells every piped client the
room moved (`hand_over`); when a client's node dies, its RemoteEnds are dropped as if their
connections closed.
"""

from __future__ import annotations

import itertools
import json
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from relayd import jsonutil
from relayd.backplane import codec
from relayd.errors import ProtocolError, unless_unavailable
from relayd.bus import ISubscription
from relayd.session import IConnection, Runner
from relayd.ws import closecodes
from relayd.ws.frames import Frame

_log = Logger()

SERVICE_RESTART = closecodes.SERVICE_RESTART
MOVED = "the room moved to another node; reconnect"


class PipeMessage:
    """o(pen), f(rame), g(one) towards the room; c(lose), s(tart) and u(nfollow) a channel back to the client."""

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
        if kind not in "ofgcsu" or not sep:
            raise ValueError("not a pipe message")
        return cls(kind, key.decode(), body)


codec.register(b"j", PipeMessage, PipeMessage.to_bus, PipeMessage.from_bus)


class Pipe:
    """The client's side: its frames to the room's node; what that node sends back, to the client."""

    def __init__(self, pipes: "Pipes", conn, owner: str, room: str, key: str, follows=()):
        self.pipes = pipes
        self.conn = conn
        self.owner = owner
        self.room = room
        self.key = key
        self.reply = f"{pipes.namespace}:pipe:{key}"
        self.ready = False
        self.gone = False
        self.pending: list[bytes] = []
        bus = pipes.bus
        self.subscription = bus.subscribe(self.reply, self._from_room)
        # channels the room may have this node deliver; handed on only while the room says so
        self.following: set[str] = set()
        self.follows = [bus.subscribe(channel, self._followed(channel)) for channel in follows]

    def _followed(self, channel: str):
        following, send = self.following, self.conn.send

        def deliver(message) -> None:
            if channel in following:
                send(message)

        return deliver

    def open(self, body: dict) -> None:
        follows = [subscription.channel for subscription in self.follows]
        payload = jsonutil.dumps({**body, "reply": self.reply, "follows": follows})

        def subscribed(_):
            # only once Redis confirms the pipe's channel: the room's first answer must not be missed
            if self.gone:
                return
            self._to_room("o", payload)
            self.ready = True
            pending, self.pending = self.pending, []
            for frame in pending:
                self._to_room("f", frame)

        bus = self.pipes.bus
        waits = [bus.when_subscribed(channel) for channel in [self.reply] + follows]
        defer.gatherResults(waits, consumeErrors=True).addCallback(subscribed)

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
            elif message.kind == "s":
                self.following.add(message.body.decode())
            elif message.kind == "u":
                self.following.discard(message.body.decode())
        else:
            self.conn.send(message)

    def closed(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.subscription.cancel()
        for subscription in self.follows:
            subscription.cancel()
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

    def __init__(self, pipes: "Pipes", key: str, reply: str, client_address: str | None = None, follows=()):
        self.pipes = pipes
        self.key = key
        self.reply = reply
        self.follows = frozenset(follows)  # channels the client's node delivers itself once told to
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
        self.marker("c", f"{code} {reason}")
        self.gone()

    def marker(self, kind: str, body: str) -> None:
        if self.open:
            self.pipes.bus.publish(self.reply, PipeMessage(kind, self.key, body.encode()))

    def drop(self) -> None:
        self.close(closecodes.NORMAL, "")

    def still_open(self) -> bool:
        return self.open

    def use_role(self, role: str) -> None:
        """Rates are the client's node's to apply: nothing to do here."""

    def listen(self, bus, channel: str):
        if channel not in self.follows:
            return bus.subscribe(channel, self.send)
        return _Following(self, channel)

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


@implementer(ISubscription)
class _Following:
    """A RemoteEnd's client hearing a channel from its own node: started and stopped by markers."""

    def __init__(self, end: RemoteEnd, channel: str):
        self.end = end
        self.channel = channel
        self.active = True
        end.marker("s", channel)

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self.end.marker("u", self.channel)


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

    def connect(self, conn, owner: str, room: str, body: dict, follows=()) -> Pipe:
        """
        Pipe conn to room on node owner; body is what the owner's open_session gets (with `reply`),
        follows the channels this node may deliver to conn from Redis itself (see the module docstring).
        """
        key = f"{self.cluster.node_id}:{next(self._numbers)}"
        pipe = self.pipes[key] = Pipe(self, conn, owner, room, key, follows)
        pipe.open({**body, "client_address": conn.client_address})
        return pipe

    def _arrived(self, message) -> None:
        if not isinstance(message, PipeMessage):
            return
        if message.kind == "o":
            body = json.loads(message.body)
            end = self.ends[message.key] = RemoteEnd(self, message.key, body["reply"], body.get("client_address"),
                                                     body.get("follows", ()))
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

    def hand_over(self) -> int:
        """
        This node stops owning rooms (a graceful stop, its leases released): every client piped here is
        told the room moved (1012), so it reconnects and resumes on the node that takes the room over
        at once, not when its node's next check would have seen the lease move. Returns how many.
        """
        ends = list(self.ends.values())
        for end in ends:
            end.close(SERVICE_RESTART, MOVED)
        return len(ends)

    def _drop_node(self, node: str) -> None:
        for key, end in list(self.ends.items()):
            if key.rsplit(":", 1)[0] == node:
                end.gone()
