"""
The inbound frame readers: the compiled one (relayd.ws._cwire) and its pure-Python twin
(relayd.ws.reader), each held to Autobahn's own parser and to RFC 6455 by the same test bodies.

Where the compiled module is not built the compiled cases skip, unless RELAYD_REQUIRE_COMPILED=1
(.ci/run sets it), where they fail.
"""

from __future__ import annotations

import errno
import os
import random
import socket
from collections import Counter

from twisted.trial.unittest import SkipTest, TestCase

from relayd.ws import reader as python_reader
from relayd.ws import wire
from relayd.ws.reader import BINARY, CLOSE, ERROR, PING, PONG, TEXT
from tests import wire_streams
from tests.wire_streams import frame

try:
    from relayd.ws import _cwire
except ImportError as e:
    _cwire = None
    _MISSING = str(e)


def _compiled():
    if _cwire is None:
        if os.environ.get("RELAYD_REQUIRE_COMPILED") == "1":
            raise AssertionError(f"RELAYD_REQUIRE_COMPILED=1 but relayd.ws._cwire is not built: {_MISSING}")
        raise SkipTest(f"relayd.ws._cwire is not built: {_MISSING}")
    return _cwire


def pairs(events: list) -> list[tuple]:
    return list(zip(events[::2], events[1::2]))


class ReaderMixin:
    """Test bodies run over both readers; a subclass names make_reader."""

    def make_reader(self, max_frame=0, max_message=0):
        raise NotImplementedError

    def test_masked_text_and_binary(self):
        """Masked text and binary frames come out unmasked, one event each, in order."""
        reader = self.make_reader()
        events = reader.feed(frame(TEXT, "héllo".encode()) + frame(BINARY, b"\x00\xff" * 40))
        self.assertEqual(pairs(events), [(TEXT, "héllo".encode()), (BINARY, b"\x00\xff" * 40)])

    def test_every_length_encoding_split_anywhere(self):
        """Payloads of 0, 125, 126, 65535 and 65536 bytes arrive whole however the reads split them."""
        payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536]
        data = b"".join(frame(BINARY, p) for p in payloads)
        for step in (1, 3, 7, 1000, len(data)):
            reader = self.make_reader()
            events = []
            for at in range(0, len(data), step):
                events += reader.feed(data[at:at + step])
            self.assertEqual(pairs(events), [(BINARY, p) for p in payloads], f"reads of {step} bytes")

    def test_fragments_with_control_frames_between(self):
        """A fragmented message is joined; pings and pongs between its fragments are delivered as they come."""
        data = (frame(TEXT, b"one ", fin=False) + frame(PING, b"p1") + frame(0, b"two ", fin=False)
                + frame(PONG, b"") + frame(0, b"three"))
        events = self.make_reader().feed(data)
        self.assertEqual(pairs(events), [(PING, b"p1"), (PONG, b""), (TEXT, b"one two three")])

    def test_utf8_split_across_fragments(self):
        """A character split between two fragments is valid; one left unfinished at the end is 1007."""
        euro = "€".encode()
        ok = self.make_reader().feed(frame(TEXT, euro[:1], fin=False) + frame(0, euro[1:]))
        self.assertEqual(pairs(ok), [(TEXT, euro)])
        bad = self.make_reader().feed(frame(TEXT, euro[:2]))
        self.assertEqual(bad[0], ERROR)
        self.assertEqual(bad[1][0], 1007)

    def test_invalid_utf8_fails_before_the_message_ends(self):
        """Invalid UTF-8 (a surrogate) is reported when its bytes arrive, before the rest of the message."""
        reader = self.make_reader()
        events = reader.feed(frame(TEXT, b"ok \xed\xa0", fin=False))
        self.assertEqual([events[0], events[1][0]], [ERROR, 1007])

    def test_after_1007_the_peers_close_is_still_read(self):
        """After invalid UTF-8 the reader frames on: later data is dropped, the peer's close frame is delivered."""
        reader = self.make_reader()
        events = reader.feed(frame(TEXT, b"\xff") + frame(TEXT, b"dropped") + frame(PING, b"x")
                             + frame(CLOSE, b"\x03\xe8bye"))
        self.assertEqual([e[0] for e in pairs(events)], [ERROR, CLOSE])
        self.assertEqual(events[3], b"\x03\xe8bye")
        self.assertTrue(reader.failed)

    def test_after_1009_nothing_of_the_message_is_kept(self):
        """A frame over the limit is 1009 at its header; its payload is read and dropped, not held, and the close after it is read."""
        reader = self.make_reader(max_frame=1000, max_message=4000)
        big = frame(BINARY, b"x" * 100_000)
        events = reader.feed(big[:50_000])
        # the message limit is checked first, as Autobahn does
        self.assertEqual(pairs(events), [(ERROR, (1009, "message exceeds the size limit"))])
        self.assertLess(reader.buffered, 100)
        events = reader.feed(big[50_000:] + frame(CLOSE, b"\x03\xe8"))
        self.assertEqual(pairs(events), [(CLOSE, b"\x03\xe8")])

    def test_message_limit_counts_every_fragment(self):
        """Fragments each within the frame limit but over the message limit together are 1009 at the fragment that passes it."""
        reader = self.make_reader(max_frame=1000, max_message=2500)
        events = reader.feed(frame(TEXT, b"a" * 1000, fin=False) + frame(0, b"b" * 1000, fin=False))
        self.assertEqual(events, [])
        self.assertEqual(pairs(reader.feed(frame(0, b"c" * 1000)))[0], (ERROR, (1009, "message exceeds the size limit")))

    def test_framing_violations(self):
        """Each framing rule a client can break is 1002 and reported once."""
        cases = {
            "rsv": frame(TEXT, b"x", rsv=1),
            "unmasked": frame(TEXT, b"x", mask=None),
            "reserved data opcode": frame(3, b"x"),
            "reserved control opcode": frame(11, b""),
            "continuation first": frame(0, b"x"),
            "fragmented ping": frame(PING, b"x", fin=False),
            "long ping": frame(PING, b"x" * 126),
            "close of one byte": frame(CLOSE, b"x"),
            "new message inside one": frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
            "126 for a short length": frame(BINARY, b"x" * 10, minimal=False),
        }
        for name, data in cases.items():
            events = self.make_reader().feed(data + frame(TEXT, b"\xff"))
            errors = [p for k, p in pairs(events) if k == ERROR]
            self.assertEqual([code for code, _ in errors], [1002], name)

    def test_an_invalid_close_frame_still_ends_the_stream(self):
        """A close frame that breaks a rule (one byte, or over 125) is 1002 and still the peer's close, delivered empty."""
        for payload in (b"x", b"\x03\xe8" + b"r" * 124):
            reader = self.make_reader()
            events = reader.feed(frame(CLOSE, payload) + frame(TEXT, b"late"))
            self.assertEqual([(k, p if k == CLOSE else p[0]) for k, p in pairs(events)], [(ERROR, 1002), (CLOSE, b"")])
            self.assertEqual(reader.buffered, 0)

    def test_nothing_after_a_close_frame(self):
        """A close frame ends the stream: whatever follows it is not read."""
        reader = self.make_reader()
        events = reader.feed(frame(CLOSE, b"") + frame(TEXT, b"late") + b"\xff\xff")
        self.assertEqual(pairs(events), [(CLOSE, b"")])
        self.assertEqual(reader.feed(frame(TEXT, b"later")), [])

    def test_same_events_as_autobahn_on_random_and_corrupted_streams(self):
        """
        On 3,000 streams (seed 19: valid, fragmented, rule-breaking, corrupted, split at random) the
        reader reports exactly what Autobahn's own parser reports, up to the first error or close;
        the streams reach every outcome, so the comparison covers each.
        """
        outcomes = Counter()
        for seed in range(3000):
            rng = random.Random(19_000 + seed)
            pieces = wire_streams.chunks(rng, wire_streams.stream(rng))
            expected = wire_streams.autobahn_events(pieces)
            got = wire_streams.reader_events(
                self.make_reader(max_frame=wire_streams.MAX_FRAME, max_message=wire_streams.MAX_MESSAGE), pieces)
            self.assertEqual(got, expected, f"stream {19_000 + seed}")
            outcomes.update(e[0] if e[0] != "error" else f"error {e[1]}" for e in got)
        for outcome in ("message", "control", "close", "error 1002", "error 1007", "error 1009"):
            self.assertGreater(outcomes[outcome], 20, f"too few streams end in {outcome}: {outcomes}")


class PythonReaderTests(ReaderMixin, TestCase):
    def make_reader(self, max_frame=0, max_message=0):
        return python_reader.FrameReader(max_frame, max_message)


class CompiledReaderTests(ReaderMixin, TestCase):
    def make_reader(self, max_frame=0, max_message=0):
        return _compiled().FrameReader(max_frame, max_message)


class SelectionTests(TestCase):
    def test_the_selected_reader_is_the_one_asked_for(self):
        """RELAYD_WIRE=python runs the twin; otherwise the compiled reader where it is built."""
        if os.environ.get("RELAYD_WIRE") == "python":
            self.assertEqual((wire.IMPLEMENTATION, wire.FrameReader), ("python", python_reader.FrameReader))
            self.assertIn("RELAYD_WIRE=python", wire.describe())
        else:
            module = _compiled()
            self.assertEqual((wire.IMPLEMENTATION, wire.FrameReader), ("compiled", module.FrameReader))
            self.assertIs(wire.send_many, module.send_many)


class SendManyTests(TestCase):
    def setUp(self):
        self.module = _compiled()

    def test_one_frame_to_many_sockets(self):
        """One call writes the same bytes to every socket and says each took all of them."""
        pairs_ = [socket.socketpair() for _ in range(5)]
        self.addCleanup(lambda: [s.close() for p in pairs_ for s in p])
        taken = self.module.send_many([a.fileno() for a, _ in pairs_], b"\x81\x02hi")
        self.assertEqual(taken, [4] * 5)
        self.assertEqual([b.recv(10) for _, b in pairs_], [b"\x81\x02hi"] * 5)

    def test_a_full_socket_takes_part_and_a_closed_one_reports_its_error(self):
        """A socket whose buffer fills takes fewer bytes, without blocking; a closed descriptor is -EBADF."""
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = b"x" * 4_000_000
        taken = self.module.send_many([a.fileno()], data)[0]
        self.assertTrue(0 < taken < len(data), taken)
        self.assertEqual(self.module.send_many([a.fileno()], data), [-errno.EAGAIN])
        c, d = socket.socketpair()
        d.close()
        fd = c.fileno()
        c.close()
        self.assertEqual(self.module.send_many([fd], b"x"), [-errno.EBADF])
