"""
Writing frames to a plain TCP transport without a reactor round trip.

Twisted's transport.write only appends to a buffer and registers the socket for writing; the bytes
go out on a later reactor pass, and the socket is registered and unregistered with epoll for every
write (Twisted issue 5303). With fan-out that is two epoll calls and a deferred send per receiver
per message. When nothing is queued on the transport, relayd sends at once and hands Twisted only
what the socket did not take, so ordering, buffering and producer pausing stay Twisted's.

Fan-out: when a read is handled, receivers that were gathered the same frames are written together,
the frames joined once and, where the compiled wire path is built (relayd.ws.wire.send_many), sent
to every socket with nothing queued in one call. What a socket does not take goes to Twisted's
buffer as above; receivers with something queued are written through Twisted.

This relies on tcp.Server internals (relayd._internals.can_write_now), checked by
tests/test_internals.py.
"""

from __future__ import annotations

from autobahn.websocket.protocol import WebSocketProtocol

from relayd._internals import can_write_now, split_writable
from relayd.ws.wire import send_many

_CLOSED = WebSocketProtocol.STATE_CLOSED


def write_now(transport, data: bytes) -> None:
    if can_write_now(transport):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent >= 0:
            if sent == len(data):
                return
            data = data[sent:]
        # an error: the queued write below lets doWrite report the loss the usual way
    transport.write(data)


def write_to_many(protocols, data: bytes) -> None:
    """The same bytes to every protocol's connection, in one system-call loop where possible."""
    direct, fds, others = split_writable(protocols, _CLOSED)
    for protocol in others:
        protocol._write_wire(data)
    if not fds:
        return
    size = len(data)
    for protocol, taken in zip(direct, send_many(fds, data)):
        if taken != size:
            # part of it, or an error (kept whole, so the transport's doWrite reports the loss as usual)
            protocol.transport.write(data[taken:] if taken > 0 else data)


class WriteBatch:
    """
    Frames produced while one inbound read is handled, gathered per receiver and written with one send
    each when the read is done: a burst relayed to many receivers costs one syscall per receiver, not
    one per frame. Outside a read (timers, HTTP triggers) frames are written at once.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending: dict = {}

    def __enter__(self) -> "WriteBatch":
        """`with BATCH:` around the handling of one inbound read (a WebSocket's, or the bus's from Redis)."""
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if not self.depth:
            self.flush()

    def add(self, protocol, wire: bytes) -> bool:
        """Keep wire for protocol if a read is being handled; False means write it now."""
        if not self.depth:
            return False
        self.pending.setdefault(protocol, []).append(wire)
        return True

    def flush_one(self, protocol) -> None:
        wires = self.pending.pop(protocol, None)
        if wires:
            protocol._write_wire(wires[0] if len(wires) == 1 else b"".join(wires))

    def flush(self) -> None:
        if send_many is None or len(self.pending) < 2:
            while self.pending:
                self.flush_one(next(iter(self.pending)))
            return
        # receivers gathered the same frames (a broadcast) share one join and one send_many call;
        # nothing here runs app code, so no frame is added while the groups are written
        pending, self.pending = self.pending, {}
        groups: dict = {}
        for protocol, wires in pending.items():
            key = wires[0] if len(wires) == 1 else tuple(wires)
            group = groups.get(key)
            if group is None:
                groups[key] = [protocol]
            else:
                group.append(protocol)
        for key, protocols in groups.items():
            data = key if type(key) is bytes else b"".join(key)
            if len(protocols) == 1:
                protocols[0]._write_wire(data)
            else:
                write_to_many(protocols, data)


BATCH = WriteBatch()
