"""
The outbound path's fan-out (relayd.ws._writes): one prepared frame to many sockets with one call,
what a socket does not take handed to Twisted's buffer, receivers with something queued left to
Twisted, and frames gathered during a read written in order per receiver.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import TestCase

from relayd.ws import _writes
from tests.test_wire_reader import _compiled


class _Receiver:
    """
    What the fan-out sees of a connection: Autobahn's state and send queue, a transport, and its own
    write path. With `tcp` the transport is a real twisted tcp.Server on a loopback connection
    (127.0.0.1, port 0) whose far end the test reads; otherwise a StringTransport.
    """

    state = 3  # open
    send_queue = ()

    def __init__(self, test, tcp_=True, sndbuf=None):
        self.through_twisted: list[bytes] = []
        self.peer = None
        if not tcp_:
            self.transport = StringTransport()
            return
        listener = socket.create_server(("127.0.0.1", 0))
        test.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        server, address = listener.accept()
        test.addCleanup(client.close)
        server.setblocking(False)
        if sndbuf:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        client.setblocking(False)
        self.peer = client
        self.transport = tcp.Server(server, Protocol(), address, _Port(), 1, MemoryReactor())
        test.addCleanup(server.close)

    def _write_wire(self, data):
        self.through_twisted.append(data)

    def received(self) -> bytes:
        out = b""
        for _ in range(200):
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                if out:
                    return out
                continue
            if not chunk:
                return out
            out += chunk
        return out


class _Port:
    _realPortNumber = 0


class WriteToManyTests(TestCase):
    def setUp(self):
        # the compiled writer, whichever wire path this run selected (RELAYD_WIRE=python leaves
        # send_many unset, and flush never calls write_to_many then)
        self.patch(_writes, "send_many", _compiled().send_many)

    def test_every_receiver_gets_the_bytes_once(self):
        """Sockets with nothing queued get the bytes directly; the others, and non-TCP transports, through their own path."""
        direct = [_Receiver(self) for _ in range(3)]
        queued = _Receiver(self)
        queued.transport.write(b"earlier")  # Twisted holds bytes for it: the frame must stay behind them
        memory = _Receiver(self, tcp_=False)
        _writes.write_to_many([*direct, queued, memory], b"\x81\x03abc")
        self.assertEqual([r.received() for r in direct], [b"\x81\x03abc"] * 3)
        self.assertEqual([r.transport.dataBuffer for r in direct], [b""] * 3)
        self.assertEqual((queued.through_twisted, memory.through_twisted), ([b"\x81\x03abc"], [b"\x81\x03abc"]))

    def test_what_a_socket_does_not_take_goes_to_twisteds_buffer(self):
        """A receiver whose socket takes part of the bytes gets the rest queued on its transport, in order."""
        slow = _Receiver(self, sndbuf=4096)
        fast = _Receiver(self)
        data = bytes(range(256)) * 40_000
        _writes.write_to_many([slow, fast], data)
        queued = b"".join(slow.transport._tempDataBuffer) + slow.transport.dataBuffer[slow.transport.offset:]
        self.assertTrue(queued and len(queued) < len(data))
        self.assertEqual(data.endswith(queued), True)


class BatchTests(TestCase):
    def test_gathered_frames_written_in_order_per_receiver(self):
        """Frames gathered during a read reach each receiver in the order produced, whether shared or not."""
        receivers = [_Receiver(self, tcp_=False) for _ in range(4)]
        batch = _writes.WriteBatch()
        with batch:
            for r in receivers:
                batch.add(r, b"one")
            batch.add(receivers[0], b"two")
            for r in receivers[1:]:
                batch.add(r, b"three")
        self.assertEqual([r.through_twisted for r in receivers],
                         [[b"onetwo"], [b"onethree"], [b"onethree"], [b"onethree"]])

    def test_flush_one_writes_only_that_receiver(self):
        """A receiver's own frames (a close, a ping) flush only what was gathered for it, first."""
        a, b = _Receiver(self, tcp_=False), _Receiver(self, tcp_=False)
        batch = _writes.WriteBatch()
        with batch:
            batch.add(a, b"x")
            batch.add(b, b"y")
            batch.flush_one(a)
            self.assertEqual((a.through_twisted, b.through_twisted), ([b"x"], []))
        self.assertEqual(b.through_twisted, [b"y"])
