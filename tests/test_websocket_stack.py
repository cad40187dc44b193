"""The shared WebSocket stack, exercised in memory through the testee echo app."""

from twisted.trial.unittest import TestCase

from relayd.ws import closecodes
from tests.support import Harness, make_config

TESTEE = """
[app:testee]
listeners = main
path = /echo
"""


def harness(extra: str = "", limits: str = "") -> Harness:
    return Harness(make_config(TESTEE + extra, limits=limits)).start()


class EchoTests(TestCase):
    def test_text_and_binary_echo(self):
        """A text and a binary message come back unchanged through the mounted app."""
        h = harness()
        c = h.ws("/echo")
        self.assertTrue(c.opened)
        c.send_text("héllo")
        c.sendMessage(b"\x00\x01", True)
        h.flush()
        self.assertEqual(c.messages, ["héllo", b"\x00\x01"])

    def test_any_path_below_mount(self):
        """An app answers at its mount path and any path below it."""
        h = harness()
        c = h.ws("/echo/deeper/still", query="x=1")
        self.assertTrue(c.opened)

    def test_unmounted_path_is_404(self):
        """A WebSocket upgrade to a path no app is mounted at is refused with 404."""
        h = harness()
        c = h.ws("/nothing")
        self.assertFalse(c.opened)
        self.assertTrue(c.closed)

    def test_plain_get_on_websocket_path_is_426(self):
        """A plain HTTP GET on a WebSocket mount answers 426 Upgrade Required."""
        h = harness()
        status, headers, _ = h.http("GET", "/echo")
        self.assertEqual(status, 426)
        self.assertEqual(headers["upgrade"], "websocket")


class LimitTests(TestCase):
    def test_oversized_message_closes_1009(self):
        """A message above max_message_size closes that connection with 1009 and leaves others alone."""
        h = harness(limits="max_message_size = 1024\nmax_frame_size = 1024\n")
        big, other = h.ws("/echo"), h.ws("/echo")
        big.send_text("x" * 2000)
        h.flush()
        self.assertTrue(big.closed)
        self.assertEqual(big.close_code, 1009)
        other.send_text("still here")
        h.flush()
        self.assertEqual(other.messages, ["still here"])

    def test_rate_limit_closes_with_documented_code(self):
        """Sustained sending above the rate limit closes with RATE_LIMITED; a burst within it passes."""
        h = harness(limits="rate_limit = 10\nrate_burst = 5\n")
        c = h.ws("/echo")
        for i in range(5):
            c.send_text(str(i))
        h.flush()
        self.assertEqual(len(c.messages), 5)
        self.assertFalse(c.closed)
        c.send_text("one too many")
        h.flush()
        self.assertTrue(c.closed)
        self.assertEqual(c.close_code, closecodes.RATE_LIMITED)

    def test_rate_limit_refills_with_time(self):
        """Tokens come back at the configured rate, so a client that slows down is not closed."""
        h = harness(limits="rate_limit = 10\nrate_burst = 2\n")
        c = h.ws("/echo")
        for i in range(6):
            c.send_text(str(i))
            h.advance(0.2)
        self.assertFalse(c.closed)
        self.assertEqual(len(c.messages), 6)

    def test_origin_allow_list(self):
        """Only listed origins may open a WebSocket; a listed origin without port accepts the default port."""
        h = harness(limits="allowed_origins = https://game.example, http://localhost:3000\n")
        self.assertTrue(h.ws("/echo", origin="https://game.example").opened)
        self.assertTrue(h.ws("/echo", origin="https://game.example:443").opened)
        self.assertTrue(h.ws("/echo", origin="http://localhost:3000").opened)
        refused = h.ws("/echo", origin="https://evil.example")
        self.assertFalse(refused.opened)
        self.assertFalse(h.ws("/echo", origin="https://game.example:8443").opened)
        self.assertEqual(
            h.service.metrics.registry.get_sample_value(
                "relayd_connections_rejected_total", {"listener": "main", "reason": "origin"}
            ),
            2.0,
        )

    def test_open_handshake_timeout(self):
        """A client that connects and never finishes its request head is cut off after the handshake timeout."""
        h = harness()
        raw = h.raw(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        self.assertFalse(raw.lost)
        h.advance(4)
        self.assertFalse(raw.lost)
        h.advance(2)
        self.assertTrue(raw.lost)

    def test_endless_header_is_cut_at_cap(self):
        """A request head longer than max_request_size is answered 400 and closed; nothing more is buffered."""
        h = harness(limits="max_request_size = 4K\n")
        raw = h.raw(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):
            raw.transport.write(b"X-Filler: " + b"a" * 500 + b"\r\n")
            h.flush()
        self.assertTrue(raw.lost)
        self.assertTrue(raw.data.startswith(b"HTTP/1.1 400"))

    def test_single_endless_line_is_cut(self):
        """One header line that never ends is cut at the cap rather than buffered."""
        h = harness(limits="max_request_size = 4K\n")
        raw = h.raw(b"GET /echo HTTP/1.1\r\nX-Long: ")
        raw.transport.write(b"b" * 5000)
        h.flush()
        self.assertTrue(raw.lost)

    def test_max_connections_per_listener(self):
        """Connections above the listener's cap are refused at accept and counted."""
        h = Harness(make_config(TESTEE, base=BASE_WITH_CAP)).start()
        first, second = h.ws("/echo"), h.ws("/echo")
        self.assertTrue(first.opened and second.opened)
        self.assertIsNone(h.raw())
        first.sendClose(1000)
        h.flush()
        self.assertTrue(h.ws("/echo").opened)

    def test_max_connections_per_address(self):
        """One address cannot take more than its share; another address still connects."""
        h = Harness(make_config(TESTEE, base=BASE_WITH_CAP.replace("max_connections = 2", "max_connections_per_address = 1"))).start()
        self.assertTrue(h.ws("/echo", host="10.0.0.1").opened)
        self.assertIsNone(h.raw(host="10.0.0.1"))
        self.assertTrue(h.ws("/echo", host="10.0.0.2").opened)


BASE_WITH_CAP = """
[relayd]
state_dir = {state_dir}

[listener:main]
endpoint = tcp:0:interface=127.0.0.1
max_connections = 2

[limits]
auto_ping_interval = 0
{limits}
"""


class SlowConsumerTests(TestCase):
    def _blocked_client(self, h):
        c = h.ws("/echo")
        server = h.service.listeners["main"].tracker.websockets()[-1]
        return c, server

    def test_backlog_size_disconnects_non_reader(self):
        """A client whose transport stays full is disconnected with SLOW_CONSUMER once its backlog passes the size cap."""
        h = harness(limits="max_send_backlog = 4K\n")
        c, server = self._blocked_client(h)
        other = h.ws("/echo")
        server.pauseProducing()  # what the transport does when the peer stops reading
        from relayd.ws.frames import Frame

        for _ in range(3):
            server.send_frame(Frame(b"y" * 1000))
        self.assertEqual(server.state, server.STATE_OPEN)
        for _ in range(3):
            server.send_frame(Frame(b"y" * 1000))
        self.assertNotEqual(server.state, server.STATE_OPEN)
        self.assertEqual(server.localCloseCode, closecodes.SLOW_CONSUMER)
        other.send_text("unaffected")
        h.flush()
        self.assertEqual(other.messages, ["unaffected"])

    def test_backlog_age_disconnects_non_reader(self):
        """A client that blocks its transport for longer than the age cap is disconnected."""
        h = harness(limits="max_send_backlog_age = 3\n")
        c, server = self._blocked_client(h)
        server.pauseProducing()
        h.advance(2)
        self.assertEqual(server.state, server.STATE_OPEN)
        h.advance(2)
        self.assertNotEqual(server.state, server.STATE_OPEN)
        self.assertEqual(server.localCloseCode, closecodes.SLOW_CONSUMER)

    def test_queued_frames_flow_in_order_on_resume(self):
        """Frames queued while the transport was full are written in order once it drains."""
        from relayd.ws.frames import Frame

        h = harness()
        c, server = self._blocked_client(h)
        server.pauseProducing()
        for i in range(5):
            server.send_frame(Frame.text(str(i)))
        h.flush()
        self.assertEqual(c.messages, [])
        server.resumeProducing()
        h.flush()
        self.assertEqual(c.messages, ["0", "1", "2", "3", "4"])
