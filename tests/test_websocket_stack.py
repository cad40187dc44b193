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
        """A request head longer than max_request_size is answered 400; what follows is thrown away, not buffered, and the connection closed within the lingering time."""
        from relayd.web.site import LINGER_SECONDS

        h = harness(limits="max_request_size = 4K\n")
        raw = h.raw(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):
            raw.transport.write(b"X-Filler: " + b"a" * 500 + b"\r\n")
            h.flush()
        self.assertTrue(raw.data.startswith(b"HTTP/1.1 400"))
        channel = h.service.listeners["main"].tracker.slots.copy().pop().channel
        self.assertEqual(channel._buffer, b"")
        h.advance(LINGER_SECONDS)
        self.assertTrue(raw.lost)

    def test_single_endless_line_is_cut(self):
        """One header line that never ends is cut at the cap rather than buffered."""
        h = harness(limits="max_request_size = 4K\n")
        raw = h.raw(b"GET /echo HTTP/1.1\r\nX-Long: ")
        raw.transport.write(b"b" * 5000)
        h.flush()
        self.assertTrue(raw.data.startswith(b"HTTP/1.1 400"))
        h.advance(10)
        self.assertTrue(raw.lost)

    def test_max_connections_per_listener(self):
        """WebSockets above the listener's cap are refused 503 and counted; its reserve of plain HTTP connections still answers /healthz and /metrics; past the reserve, connections are refused at accept."""
        from relayd.web.tracker import RESERVE

        h = Harness(make_config(TESTEE, base=BASE_WITH_CAP)).start()
        first, second = h.ws("/echo"), h.ws("/echo")
        self.assertTrue(first.opened and second.opened)
        third = h.ws("/echo")
        self.assertFalse(third.opened)
        self.assertEqual(h.http("GET", "/healthz")[0], 200)
        self.assertEqual(h.http("GET", "/metrics")[0], 200)
        held = [h.raw() for _ in range(RESERVE)]  # idle HTTP connections take the whole reserve
        self.assertTrue(all(raw is not None for raw in held))
        self.assertIsNone(h.raw())
        self.assertEqual(h.service.metrics.registry.get_sample_value(
            "relayd_connections_rejected_total", {"listener": "main", "reason": "max_connections"}), 2)
        for raw in held:
            raw.transport.loseConnection()
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


def _backlog_harness(daemon: str, limits: str = "") -> Harness:
    from tests.support import BASE_INI

    base = BASE_INI.replace("drain_timeout = 10\n", "drain_timeout = 10\n" + daemon)
    return Harness(make_config(TESTEE, base=base, limits=limits)).start()


class BacklogTests(TestCase):
    """What connections hold together for clients that do not read (relayd.ws.backlog)."""

    def _deaf(self, h, count: int):
        clients = [h.ws("/echo") for _ in range(count)]
        servers = h.service.listeners["main"].tracker.websockets()[-count:]
        for server in servers:
            server.pauseProducing()  # each transport is full: its peer stopped reading
        return clients, servers

    def test_trickling_reader_is_aged_out(self):
        """A reader that drains a little now and then but keeps its queue above the low mark is closed at max_send_backlog_age, counted from when it fell behind."""
        from relayd.ws.frames import Frame

        h = harness(limits="max_send_backlog = 64K\nmax_send_backlog_age = 10\n")
        _, server = h.ws("/echo"), h.service.listeners["main"].tracker.websockets()[-1]
        server.pauseProducing()
        for _ in range(40):
            server.send_frame(Frame(b"y" * 1000))  # 40 KB queued, above the 8 KB low mark
        # when it reads, Twisted's buffer takes one frame and is full again
        write = server.transport.write
        self.patch(server.transport, "write", lambda data: (write(data), server.pauseProducing()))
        for _ in range(4):
            h.advance(2.4)
            server.resumeProducing()
            server.send_frame(Frame(b"y" * 1000))
        self.assertEqual(server.state, server.STATE_OPEN)
        h.advance(1)
        self.assertEqual(server.localCloseCode, closecodes.SLOW_CONSUMER)
        self.assertEqual(self._slow(h, "age"), 1)

    def test_reader_that_catches_up_is_aged_from_its_next_block(self):
        """A reader whose queue drains below the low mark starts a new age when it blocks again."""
        from relayd.ws.frames import Frame

        h = harness(limits="max_send_backlog = 64K\nmax_send_backlog_age = 10\n")
        _, server = h.ws("/echo"), h.service.listeners["main"].tracker.websockets()[-1]
        server.pauseProducing()
        for _ in range(40):
            server.send_frame(Frame(b"y" * 1000))
        h.advance(9)
        server.resumeProducing()  # everything written: it caught up
        server.pauseProducing()
        h.advance(9)
        self.assertEqual(server.state, server.STATE_OPEN)
        h.advance(2)
        self.assertEqual(server.localCloseCode, closecodes.SLOW_CONSUMER)

    def _slow(self, h, reason: str) -> float:
        value = h.service.metrics.registry.get_sample_value(
            "relayd_slow_consumers_total", {"app": "testee", "reason": reason})
        return value or 0

    def test_total_bound_closes_the_largest_holders(self):
        """Past max_total_backlog the connections holding the most are closed 4008, largest first, until the total fits; smaller holders and readers stay."""
        from relayd.ws.frames import Frame

        h = _backlog_harness("max_total_backlog = 1000K\nmax_backlog_per_address = 0\n",
                             limits="max_send_backlog = 8M\n")
        clients, servers = self._deaf(h, 3)
        reader = h.ws("/echo")
        big, middle, small = servers
        size = len(Frame(b"x" * 100_000))
        for _ in range(6):
            big.send_frame(Frame(b"b" * 100_000))
        for _ in range(3):
            middle.send_frame(Frame(b"m" * 100_000))
        small.send_frame(Frame(b"s" * 100_000))
        self.assertEqual(h.service.backlogs.held, 10 * size)  # 1,000,100 bytes: under 1000K
        self.assertTrue(all(s.state == s.STATE_OPEN for s in servers))
        middle.send_frame(Frame(b"m" * 100_000))  # over by one frame
        self.assertEqual(big.localCloseCode, closecodes.SLOW_CONSUMER)
        self.assertEqual(middle.state, middle.STATE_OPEN)
        self.assertEqual(small.state, small.STATE_OPEN)
        self.assertEqual(h.service.backlogs.held, 5 * size)
        self.assertEqual(self._slow(h, "total"), 1)
        reader.send_text("unaffected")
        h.flush()
        self.assertEqual(reader.messages, ["unaffected"])

    def test_a_broadcast_frame_counts_once(self):
        """One frame queued for many deaf receivers is held once, and counted once against the total."""
        from relayd.ws.frames import Frame

        h = _backlog_harness("max_total_backlog = 1M\nmax_backlog_per_address = 0\n",
                             limits="max_send_backlog = 8M\n")
        clients, servers = self._deaf(h, 20)
        frames = [Frame(b"z" * 100_000) for _ in range(5)]
        for frame in frames:
            for server in servers:
                server.send_frame(frame)
        # 20 connections x 500 KB queued each, 500 KB held: nobody is over the 1 MB bound
        self.assertEqual(h.service.backlogs.held, sum(len(f) for f in frames))
        self.assertTrue(all(s.state == s.STATE_OPEN for s in servers))
        for server in servers[:10]:
            server.dropConnection(abort=True)
        h.flush()
        self.assertEqual(h.service.backlogs.held, sum(len(f) for f in frames))
        for server in servers[10:]:
            server.dropConnection(abort=True)
        h.flush()
        self.assertEqual(h.service.backlogs.held, 0)
        self.assertEqual(h.service.backlogs.holders, set())

    def test_one_address_share(self):
        """Past max_backlog_per_address, that address's largest holders are closed; another address's are not."""
        from relayd.ws.frames import Frame

        h = _backlog_harness("max_total_backlog = 64M\nmax_backlog_per_address = 300K\n",
                             limits="max_send_backlog = 8M\n")
        clients, servers = self._deaf(h, 3)
        a1, a2, b1 = servers
        for server, address in ((a1, "192.0.2.1"), (a2, "192.0.2.1"), (b1, "192.0.2.2")):
            server.client_address, server.backlog_key = address, None  # as if they came from there
        for _ in range(3):
            b1.send_frame(Frame(b"b" * 100_000))  # 300 KB at .2: at its share, not over
        a1.send_frame(Frame(b"a" * 120_000))
        a1.send_frame(Frame(b"a" * 120_000))
        a2.send_frame(Frame(b"a" * 60_000))
        self.assertTrue(all(s.state == s.STATE_OPEN for s in servers))
        a2.send_frame(Frame(b"a" * 60_000))  # .1 holds 360 KB: its largest holder is a1 (240 KB)
        self.assertEqual(a1.localCloseCode, closecodes.SLOW_CONSUMER)
        self.assertEqual(a2.state, a2.STATE_OPEN)
        self.assertEqual(b1.state, b1.STATE_OPEN)
        self.assertEqual(self._slow(h, "address"), 1)

    def test_bytes_in_twisteds_buffer_count(self):
        """What a connection left in Twisted's write buffer when it was paused counts for it until it resumes or closes."""
        from relayd.ws import protocol

        h = _backlog_harness("max_total_backlog = 64M\n")
        _, server = h.ws("/echo"), h.service.listeners["main"].tracker.websockets()[-1]
        self.patch(protocol, "buffered_bytes", lambda transport: 5000)  # what Twisted holds for it
        server.pauseProducing()
        self.assertEqual(h.service.backlogs.held, 5000)
        self.assertEqual(server.backlog_held, 5000)
        server.resumeProducing()
        self.assertEqual(h.service.backlogs.held, 0)
        server.pauseProducing()
        server.dropConnection(abort=True)
        h.flush()
        self.assertEqual(h.service.backlogs.held, 0)

    def test_buffered_bytes_reads_below_wrappers(self):
        """Twisted's buffer is read off the socket's transport, below a wrapper such as TLS or the PROXY reader."""
        from twisted.internet.abstract import FileDescriptor
        from twisted.internet.testing import MemoryReactor
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

        socket_transport = FileDescriptor(MemoryReactor())
        socket_transport.connected = 1
        socket_transport.write(b"x" * 5000)
        self.assertEqual(_buffered(socket_transport), 5000)
        from twisted.internet.protocol import Protocol

        wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
        wrapper.makeConnection(socket_transport)
        self.assertEqual(_buffered(wrapper), 5000)
        self.assertEqual(_buffered(object()), 0)

    def test_frame_held_once(self):
        """A frame whose wire bytes are built keeps no second copy of its payload, and still reads it back."""
        from relayd.ws.frames import Frame

        payload = b"p" * 70_000
        frame = Frame(payload, True)
        self.assertEqual(frame.payload, payload)
        wire = frame.wire
        self.assertIsNone(frame._payload)
        self.assertEqual(frame.payload, payload)
        self.assertEqual(len(wire), 70_000 + 10)


def _buffered(transport) -> int:
    from relayd._internals import buffered_bytes

    return buffered_bytes(transport)


class AddressRateTests(TestCase):
    """What one client address's connections may send together (relayd.ws.ratelimit.AddressRates)."""

    def _reading(self, h, server):
        events = []
        self.patch(server.transport, "pauseProducing", lambda: events.append("paused"))
        self.patch(server.transport, "resumeProducing", lambda: events.append("resumed"))
        return events

    def test_an_address_over_its_rate_is_paused_until_it_is_back_within_it(self):
        """Reads that take an address past address_byte_burst pause reading its connection for as long as the debt takes to repay at address_byte_rate; messages read are still handled, and nothing is closed."""
        h = _backlog_harness("address_byte_rate = 100K\naddress_byte_burst = 100K\n")
        first, second = h.ws("/echo"), h.ws("/echo")
        servers = h.service.listeners["main"].tracker.websockets()
        events = {s: self._reading(h, s) for s in servers}
        for _ in range(3):
            first.send_text("a" * 30_000)
        h.flush()
        self.assertEqual(sum(events.values(), []), [])  # 90 KB: within the burst
        second.send_text("b" * 30_000)  # the same address: 120 KB, 20 KB of debt
        h.flush()
        paused = [s for s, e in events.items() if e == ["paused"]]
        self.assertEqual(len(paused), 1)
        self.assertEqual(len(first.messages) + len(second.messages), 4)  # handled all the same
        h.advance(0.15)  # 20 KB at 100 KB/s is 0.2 s (plus the frame headers)
        self.assertEqual(events[paused[0]], ["paused"])
        h.advance(0.1)
        self.assertEqual(events[paused[0]], ["paused", "resumed"])
        self.assertFalse(first.closed or second.closed)
        self.assertEqual(h.service.metrics.registry.get_sample_value(
            "relayd_address_throttled_total", {"app": "testee"}), 1)

    def test_addresses_do_not_share(self):
        """Another address has its own share."""
        from relayd.ws.ratelimit import AddressRates

        rates = AddressRates(100_000, 100_000)
        self.assertEqual(rates.spend("192.0.2.1", 150_000, 0.0), 0.5)
        self.assertEqual(rates.spend("192.0.2.2", 90_000, 0.0), 0.0)
        self.assertEqual(rates.spend("192.0.2.1", 0, 0.5), 0.0)  # repaid

    def test_zero_turns_it_off(self):
        """address_byte_rate = 0 leaves an address unbounded."""
        h = _backlog_harness("address_byte_rate = 0\n")
        self.assertIsNone(h.service.address_rates)
        c = h.ws("/echo")
        for _ in range(3):
            c.send_text("a" * 60_000)
        h.flush()
        self.assertEqual(len(c.messages), 3)
