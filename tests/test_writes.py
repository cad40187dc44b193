"""
The outbound path's fan-out (relayd.ws._writes): one prepared frame to many sockets with one call,
what a socket does not take handed to Twisted's buffer, receivers with something queued left to
Twisted, and frames gathered during a read written in order per receiver.
"""

from __future__ import annotations

import socket

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from relayd.ws import _writes
from tests.test_wire_reader import _compiled


class _Receiver:
    """A protocol's side of the fan-out: a real socket, or none (something queued on its transport)."""

    def __init__(self, test, direct=True, sndbuf=None):
        self.transport = StringTransport()
        self.through_twisted: list[bytes] = []
        self.fd = -1
        self.peer = None
        if direct:
            a, b = socket.socketpair()
            test.addCleanup(a.close)
            test.addCleanup(b.close)
            if sndbuf:
                a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            b.setblocking(False)
            self.fd, self.peer = a.fileno(), b

    def direct_fd(self):
        return self.fd

    def _write_wire(self, data):
        self.through_twisted.append(data)

    def received(self) -> bytes:
        out = b""
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk


class WriteToManyTests(TestCase):
    def setUp(self):
        _compiled()

    def test_every_receiver_gets_the_bytes_once(self):
        """Sockets with nothing queued get the bytes directly, the others through their own write path; none twice."""
        direct = [_Receiver(self) for _ in range(3)]
        queued = _Receiver(self, direct=False)
        _writes.write_to_many([*direct, queued], b"\x81\x03abc")
        self.assertEqual([r.received() for r in direct], [b"\x81\x03abc"] * 3)
        self.assertEqual([r.transport.value() for r in direct], [b""] * 3)
        self.assertEqual(queued.through_twisted, [b"\x81\x03abc"])

    def test_what_a_socket_does_not_take_goes_to_twisteds_buffer(self):
        """A receiver whose socket takes part of the bytes gets the rest queued on its transport, in order."""
        slow = _Receiver(self, sndbuf=4096)
        fast = _Receiver(self)
        data = bytes(range(256)) * 20_000
        _writes.write_to_many([slow, fast], data)
        got = slow.received()
        self.assertTrue(0 < len(got) < len(data))
        self.assertEqual(got + slow.transport.value(), data)


class BatchTests(TestCase):
    def test_gathered_frames_written_in_order_per_receiver(self):
        """Frames gathered during a read reach each receiver in the order produced, whether shared or not."""
        receivers = [_Receiver(self, direct=False) for _ in range(4)]
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
        a, b = _Receiver(self, direct=False), _Receiver(self, direct=False)
        batch = _writes.WriteBatch()
        with batch:
            batch.add(a, b"x")
            batch.add(b, b"y")
            batch.flush_one(a)
            self.assertEqual((a.through_twisted, b.through_twisted), ([b"x"], []))
        self.assertEqual(b.through_twisted, [b"y"])
