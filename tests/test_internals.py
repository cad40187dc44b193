"""
The Autobahn, txaio and Twisted internals relayd relies on, checked against the installed versions so
that an upgrade which changes them fails here, loudly, first.
"""

import inspect

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web import http

from relayd._internals import batched_timer, install_clock


class AutobahnInternalsTests(TestCase):
    def test_batched_timer_runs_on_injected_clock(self):
        """txaio's batched timer, built on an injected clock, fires when that clock advances."""
        clock = Clock()
        fired = []
        batched_timer(clock).call_later(5, fired.append, 1)
        clock.advance(4)
        self.assertEqual(fired, [])
        clock.advance(2)
        self.assertEqual(fired, [1])

    def test_factory_timer_attribute(self):
        """Autobahn schedules protocol timeouts on factory._batched_timer; install_clock puts one on our clock there."""
        factory = WebSocketServerFactory()
        self.assertTrue(hasattr(factory, "_batched_timer"))
        clock, fired = Clock(), []
        install_clock(factory, clock)
        factory._batched_timer.call_later(1, fired.append, "timeout")
        clock.advance(2)
        self.assertEqual(fired, ["timeout"])
        import autobahn.websocket.protocol as p

        self.assertIn("self.factory._batched_timer.call_later", inspect.getsource(p))

    def test_send_close_frame_accepts_any_code(self):
        """sendCloseFrame sends 1001 and 1011 on an open connection; sendClose refuses them as a client-chosen code."""
        from autobahn.websocket.protocol import WebSocketProtocol

        proto = WebSocketServerProtocol()
        sent = []
        proto.state = WebSocketProtocol.STATE_OPEN
        proto.sendFrame = lambda opcode, payload=b"", **kw: sent.append((opcode, payload))
        proto.closeHandshakeTimeout = 0
        proto.factory = WebSocketServerFactory()
        proto.sendCloseFrame(1001, b"bye")
        self.assertEqual(sent, [(8, b"\x03\xe9bye")])
        proto.state = WebSocketProtocol.STATE_OPEN
        with self.assertRaises(Exception) as caught:
            proto.sendClose(1001)
        self.assertIn("invalid close code 1001", str(caught.exception))

    def test_close_timers_named_as_expected(self):
        """The close-handshake timers relayd cancels on close exist under these names."""
        import autobahn.websocket.protocol as p

        source = inspect.getsource(p)
        self.assertIn("self.closeHandshakeTimeoutCall", source)
        self.assertIn("self.serverConnectionDropTimeoutCall", source)
        self.assertIn("self.is_open = txaio.create_future()", source)


class TwistedWebInternalsTests(TestCase):
    def test_http_channel_hooks(self):
        """HTTPChannel still has the hooks relayd's channel and upgrade use."""
        for name in ("_respondToBadRequestAndDisconnect", "allHeadersReceived", "requestDone", "_dataBuffer",
                     "totalHeadersSize", "MAX_LENGTH", "_handlingRequest"):
            self.assertTrue(
                hasattr(http.HTTPChannel, name) or name in inspect.getsource(http.HTTPChannel), name
            )

    def test_endpoint_service_port(self):
        """StreamServerEndpointService keeps the listening port's Deferred as _waitingForPort."""
        from twisted.application.internet import StreamServerEndpointService

        self.assertIn("self._waitingForPort", inspect.getsource(StreamServerEndpointService))


class TCPInternalsTests(TestCase):
    def test_tcp_server_write_state(self):
        """relayd.ws._writes reads tcp.Server's write buffer state under these names."""
        from twisted.internet import abstract, tcp

        source = inspect.getsource(abstract.FileDescriptor)
        for name in ("self.dataBuffer", "self.offset", "self._tempDataLen", "self._writeDisconnected"):
            self.assertIn(name, source)
        self.assertTrue(hasattr(tcp.Server, "writeSomeData"))

    def test_autobahn_data_received_only_forwards(self):
        """Autobahn's Twisted dataReceived only logs and calls _dataReceived, which relayd calls directly."""
        from autobahn.twisted.websocket import WebSocketAdapterProtocol

        self.assertIn("self._dataReceived(data)", inspect.getsource(WebSocketAdapterProtocol.dataReceived))


    def test_tcp_server_socket(self):
        """relayd.ws._writes sends around a tcp.Server to the socket it names transport.socket."""
        from twisted.internet import tcp

        self.assertIn("self.socket.send", inspect.getsource(tcp.Connection.writeSomeData))


class FrameReaderInternalsTests(TestCase):
    """relayd.ws.protocol hands an open connection's bytes to relayd's frame reader at these seams."""

    def test_bytes_reach_consume_data(self):
        """Autobahn buffers a read in self.data and calls consumeData, also with bytes left after the handshake."""
        import autobahn.websocket.protocol as p

        self.assertIn("self.data += data", inspect.getsource(p.WebSocketProtocol._dataReceived))
        self.assertIn("self.consumeData()", inspect.getsource(p.WebSocketProtocol._dataReceived))
        self.assertIn("self.consumeData()", inspect.getsource(p.WebSocketServerProtocol.succeedHandshake))

    def test_close_frames_reach_on_close_frame(self):
        """A close frame's code and raw reason go to onCloseFrame, which keeps the close handshake."""
        import autobahn.websocket.protocol as p

        self.assertIn("self.onCloseFrame(code, reasonRaw)", inspect.getsource(p.WebSocketProtocol.processControlFrame))
        self.assertEqual(list(inspect.signature(p.WebSocketProtocol.onCloseFrame).parameters), ["self", "code", "reasonRaw"])

    def test_failing_by_close_frame(self):
        """relayd fails a connection as Autobahn's _fail_connection does without failByDrop: failedByMe, then a close frame."""
        import autobahn.websocket.protocol as p

        source = inspect.getsource(p.WebSocketProtocol._fail_connection)
        self.assertIn("self.failedByMe = True", source)
        self.assertIn("self.sendCloseFrame(", source)


class LeanConnectionInternalsTests(TestCase):
    """What relayd._internals.lean_after_open drops or leaves to the class, checked against Autobahn."""

    HANDSHAKE_METHODS = {"processHandshake", "succeedHandshake", "processProxyConnect", "startHandshake",
                         "_actuallyStartHandshake", "failHandshake", "onConnect"}

    def _methods_reading(self, name):
        import autobahn.websocket.protocol as p

        readers = set()
        for cls in (p.WebSocketProtocol, p.WebSocketServerProtocol, p.WebSocketClientProtocol):
            for method, function in vars(cls).items():
                if not inspect.isfunction(function):
                    continue
                code = "\n".join(line.split("#", 1)[0] for line in inspect.getsource(function).splitlines())
                if f"self.{name}" in code:
                    readers.add(method)
        return readers

    def test_handshake_leftovers_are_read_only_by_the_handshake(self):
        """Every attribute dropped once open is read by no Autobahn method but the handshake's."""
        from relayd._internals import _HANDSHAKE_LEFTOVERS

        for name in _HANDSHAKE_LEFTOVERS:
            if name == "request":
                continue  # relayd's own, read only in connecting()
            self.assertLessEqual(self._methods_reading(name), self.HANDSHAKE_METHODS, name)

    def test_transport_details_are_read_only_while_opening(self):
        """Autobahn's transport details, dropped once open, are read by its server side only while the connection opens."""
        import autobahn.twisted.websocket as t

        readers = self._methods_reading("_transport_details")
        self.assertLessEqual(readers, {"__init__", "transport_details", "_actuallyStartHandshake", "startHandshake"})
        twisted_readers = {method for method, function in vars(t.WebSocketAdapterProtocol).items()
                           if inspect.isfunction(function) and "self._transport_details" in inspect.getsource(function)}
        self.assertEqual(twisted_readers, {"connectionMade", "_onOpen"})

    def test_parser_state_is_read_only_by_autobahns_parser(self):
        """The UTF-8 validator and the message event are used only by the parsing relayd's frame reader replaces."""
        parsing = {"onFrameBegin", "onFrameData", "onFrameEnd", "onMessageEnd", "_connectionMade", "__init__"}
        self.assertLessEqual(self._methods_reading("utf8validator"), parsing)
        self.assertLessEqual(self._methods_reading("fire("), parsing)

    def test_flag_defaults_are_autobahns(self):
        """The flags left to the class hold exactly the values Autobahn's _connectionMade gives every connection."""
        import autobahn.websocket.protocol as p

        from relayd._internals import AUTOBAHN_DEFAULTS

        source = inspect.getsource(p.WebSocketProtocol._connectionMade) + inspect.getsource(p.WebSocketServerProtocol.succeedHandshake) \
            + inspect.getsource(p.WebSocketServerProtocol.processHandshake)
        # the subprotocol in use is the one negotiated: None (the default left to the class) when none was
        negotiated = {"websocket_protocol_in_use": "self.websocket_protocol_in_use = protocol"}
        for name, value in AUTOBAHN_DEFAULTS.items():
            written = f"self.{name} = {value!r}" in source or (name == "send_state" and "self.send_state = WebSocketProtocol.SEND_STATE_GROUND" in source) \
                or negotiated.get(name, "\0") in source
            self.assertTrue(written, f"{name} = {value!r} is not what Autobahn sets")
        self.assertEqual(p.WebSocketProtocol.SEND_STATE_GROUND, 0)

    def test_nothing_queues_on_the_shared_send_queue(self):
        """Autobahn queues a send only when it is sync or chopped, and sends nothing sync or chopped itself."""
        import autobahn.websocket.protocol as p

        send_data = inspect.getsource(p.WebSocketProtocol.sendData)
        self.assertIn("if sync or len(self.send_queue) > 0:", send_data)
        self.assertIn("if chopsize and chopsize > 0:", send_data)
        module = inspect.getsource(p)
        self.assertNotIn("sync=True", module)

    def test_an_open_connection_keeps_only_what_it_reads(self):
        """An open phone holds no handshake leftovers, shares the send queue and traffic counters, and still works."""
        from relayd._internals import NO_SEND_QUEUE
        from tests.support import Harness, make_config

        h = Harness(make_config("[app:testee]\nlisteners = main\npath = /echo\n")).start()
        client = h.ws("/echo")
        server = h.service.listeners["main"].tracker.websockets()[-1]
        self.assertFalse({"http_headers", "http_request_data", "utf8validator", "send_queue", "trafficStats", "wasClean",
                          "_transport_details"} & set(vars(server)))
        self.assertIs(server.send_queue, NO_SEND_QUEUE)
        self.assertLess(len(vars(server)), 45)
        client.send_text("still echoes")
        h.flush()
        self.assertEqual(client.messages[-1], "still echoes")


class ConnectionSetupInternalsTests(TestCase):
    def test_debug_formatting_only_when_debugging(self):
        """
        Autobahn formats debug arguments with module-level pformat, hltype and hlval, and txaio drops
        its debug lines unless its global level is debug: relayd's formatters give Autobahn's exact text
        when debugging and format nothing otherwise.
        """
        import autobahn.twisted.websocket as t
        import autobahn.util as util
        import autobahn.websocket.protocol as p
        import txaio
        import txaio.tx

        from relayd._internals import debugging, quiet_debug_formatting

        self.assertIn("pformat(configAttrLog)", inspect.getsource(p.WebSocketProtocol._connectionMade))
        self.assertIn("func=hltype(self.dataReceived)", inspect.getsource(t.WebSocketAdapterProtocol.dataReceived))
        self.assertIn("func=hltype(self._connectionMade)", inspect.getsource(p.WebSocketServerProtocol._connectionMade))
        quiet_debug_formatting()
        level = txaio.tx._log_level
        self.addCleanup(txaio.set_global_log_level, level)
        txaio.set_global_log_level("info")
        self.assertFalse(debugging())
        self.assertIs(t.WebSocketServerProtocol.log.debug, txaio.tx._no_op)  # what makes skipping safe
        self.assertEqual((p.pformat([("a", 1)]), t.hltype(TestCase.run), p.hlval(42)), ("", "", ""))
        txaio.set_global_log_level("debug")
        self.assertTrue(debugging())
        self.assertEqual(p.pformat([("a", 1)]), "[('a', 1)]")
        for module in (t, p):
            self.assertEqual(module.hltype(TestCase.run), util.hltype(TestCase.run))
            self.assertEqual(module.hlval(42), util.hlval(42))

    def test_options_are_class_attributes(self):
        """Autobahn copies an option onto a connection only where the connection lacks it; relayd's have all of them."""
        import autobahn.websocket.protocol as p

        from tests.support import Harness, make_config

        self.assertIn("if not hasattr(self, configAttr)", inspect.getsource(p.WebSocketProtocol._connectionMade))
        h = Harness(make_config("[app:testee]\nlisteners = main\npath = /echo\n")).start()
        h.ws("/echo")
        server = h.service.listeners["main"].tracker.websockets()[-1]
        self.assertEqual(server.maxMessagePayloadSize, 64 * 1024)
        self.assertFalse(set(server.CONFIG_ATTRS) & set(vars(server)))
        # callables stay plain functions, not methods bound to the connection
        self.assertIs(server.perMessageCompressionAccept, server.factory.perMessageCompressionAccept)

    def test_browser_offering_compression_connects(self):
        """A client offering permessage-deflate, as every browser does, still gets its connection (no compression)."""
        from tests.support import Harness, make_config

        h = Harness(make_config("[app:testee]\nlisteners = main\npath = /echo\n")).start()
        c = h.ws("/echo", headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
        self.assertTrue(c.opened)
        c.send_text("hi")
        h.flush()
        self.assertEqual(c.messages, ["hi"])


class JSONTests(TestCase):
    def test_fast_path_agrees_with_the_rules(self):
        """orjson reads the common case; big integers, lone surrogates and non-JSON constants keep the strict rules."""
        from relayd.jsonutil import BadJSON, dumps, loads

        self.assertEqual(loads(b'{"a":[1,2.5,"\xc3\xa9",null,true]}'), {"a": [1, 2.5, "é", None, True]})
        self.assertEqual(loads(b"123456789012345678901234567890"), 123456789012345678901234567890)
        self.assertEqual(loads(b'"\\ud800"'), "\ud800")
        for bad in (b"NaN", b"[1e400]", b'{"a":1', b"\xff", b"[" * 5000):
            with self.assertRaises(BadJSON):
                loads(bad)
        self.assertEqual(dumps({"a": "é", 1: 2**70}), '{"a":"é","1":1180591620717411303424}'.encode())
        self.assertEqual(dumps({"s": "\ud800"}), b'{"s":"\\ud800"}')


class TwistedHAProxyInternalsTests(TestCase):
    def test_haproxy_wrapper_shape(self):
        """Twisted's HAProxy wrapper still parses on dataReceived into _proxyInfo, and its signatures are as relayd probes them."""
        from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper

        from relayd._internals import PROXY_HEADER_PROBE, PROXY_V1_SIGNATURE, PROXY_V2_SIGNATURE

        self.assertEqual(PROXY_V1_SIGNATURE, b"PROXY ")
        self.assertEqual(PROXY_V2_SIGNATURE, b"\r\n\r\n\x00\r\nQUIT\n")
        self.assertEqual(PROXY_HEADER_PROBE, 16)
        source = inspect.getsource(HAProxyProtocolWrapper)
        self.assertIn("self._proxyInfo, remaining = parser.feed(data)", source)
        self.assertIn("len(data) >= 16", source)
        self.assertIn("def getPeer(self)", source)



class UpgradeParsedOnceTests(TestCase):
    """
    relayd opens connections with lean_connection_made and open_upgraded instead of Autobahn's
    connectionMade and processHandshake: each is compared here with Autobahn's own, on the same input.
    """

    HEADERS = [(b"Host", b"relay.example:8080"), (b"Upgrade", b"websocket"), (b"Connection", b"keep-alive, Upgrade"),
               (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13"),
               (b"Sec-WebSocket-Protocol", b"chat, superchat"), (b"X-Custom", b"one"), (b"X-Custom", b"two"),
               (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits")]

    def setUp(self):
        from tests.support import Harness, make_config

        self.harness = Harness(make_config("[app:testee]\nlisteners = main\npath = /echo\n")).start()
        self.harness.ws("/echo")
        self.factory = self.harness.service.listeners["main"].tracker.websockets()[-1].factory

    def connection(self, made_by=None):
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        protocol = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4567))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4567))
        if made_by is None:
            protocol.makeConnection(transport)
        else:
            protocol.transport = transport
            made_by(protocol)
        return protocol, transport

    def request(self, headers, method=b"GET", uri=b"/echo?x=1&x=2&y=", version=b"HTTP/1.1"):
        """The same request as twisted.web parses it, and as bytes for Autobahn."""
        from twisted.internet.testing import StringTransport

        channel = http.HTTPChannel()
        channel.transport = StringTransport()
        request = http.Request(channel)
        request.method, request.uri, request.clientproto = method, uri, version
        for name, value in headers:
            request.requestHeaders.addRawHeader(name, value)
        raw = b"".join([method + b" " + uri + b" " + version + b"\r\n"]
                       + [name + b": " + value + b"\r\n" for name, value in headers] + [b"\r\n"])
        return request, raw

    def test_lean_connection_made_is_autobahns_without_what_relayd_never_reads(self):
        """Every attribute Autobahn's connectionMade sets is set alike or held alike by the class, but NOT_MADE."""
        from autobahn.twisted.websocket import WebSocketServerProtocol as Adapter

        from relayd._internals import NOT_MADE, lean_connection_made

        def made(by):
            protocol, _ = self.connection(lambda protocol: setattr(protocol, "before", dict(vars(protocol))))
            before = protocol.__dict__.pop("before")
            by(protocol)
            return protocol, {name: value for name, value in vars(protocol).items()
                              if name not in before or before[name] is not value}

        count = self.factory.countConnections
        autobahns, autobahn_set = made(Adapter.connectionMade)
        lean, lean_set = made(lean_connection_made)
        self.assertEqual(self.factory.countConnections, count + 2)
        self.assertIn("state", autobahn_set)
        for name, value in autobahn_set.items():
            if name in NOT_MADE:
                self.assertNotIn(name, lean_set)
            elif name == "openHandshakeTimeoutCall":
                self.assertEqual(type(getattr(lean, name)), type(value))
            else:
                self.assertEqual(getattr(lean, name), value, name)
        self.assertLessEqual(set(lean_set), set(autobahn_set))
        for call in (autobahns.openHandshakeTimeoutCall, lean.openHandshakeTimeoutCall):
            call.cancel()

    def test_open_upgraded_opens_as_processHandshake_does(self):
        """
        On twisted.web's parse of a request, the connection gets the same ConnectionRequest in
        onConnect and writes the same 101 as when Autobahn parses the request's bytes itself.
        """
        from relayd._internals import open_upgraded
        from relayd.web.upgrade import checked_upgrade

        request, raw = self.request(self.HEADERS)
        seen = []
        autobahns, autobahn_wire = self.connection()
        autobahns.connecting = seen.append
        autobahns.dataReceived(raw)
        lean, lean_wire = self.connection()
        lean.connecting = seen.append
        open_upgraded(lean, data=b"", **checked_upgrade(request, self.factory.versions))
        fields = ("peer", "headers", "host", "path", "params", "version", "origin", "protocols", "extensions")
        self.assertEqual([getattr(seen[1], f) for f in fields], [getattr(seen[0], f) for f in fields])
        self.assertEqual(seen[1].headers["x-custom"], "one, two")
        self.assertTrue(autobahn_wire.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(lean_wire.value(), autobahn_wire.value())
        self.assertEqual((lean.state, lean.websocket_open), (autobahns.state, True))

    def test_what_comes_before_the_open_waits_for_it_up_to_one_message(self):
        """
        While the app's onConnect answers later, a frame the client sends waits and is handled once
        the connection opens; more than one message's worth of bytes before the open aborts it.
        """
        from twisted.internet import defer

        from relayd._internals import open_upgraded
        from relayd.web.upgrade import checked_upgrade
        from tests.wire_streams import frame

        request, _ = self.request([h for h in self.HEADERS if h[0] != b"Sec-WebSocket-Protocol"])
        parts = checked_upgrade(request, self.factory.versions)
        waiting = defer.Deferred()
        patient, wire = self.connection()
        patient.connecting = lambda request: waiting
        open_upgraded(patient, data=b"", **parts)
        patient.dataReceived(frame(1, b"early"))
        self.assertEqual(wire.value(), b"")
        waiting.callback(None)
        self.assertTrue(wire.value().startswith(b"HTTP/1.1 101 "))
        self.assertTrue(wire.value().endswith(frame(1, b"early", mask=None)))  # the testee app echoes it
        flooding, wire = self.connection()
        flooding.connecting = lambda request: defer.Deferred()
        open_upgraded(flooding, data=b"", **parts)
        flooding.dataReceived(b"\x81" * (flooding.maxMessagePayloadSize + 100))
        self.assertTrue(wire.disconnecting or getattr(wire, "aborted", False))

    def test_bad_handshakes_are_answered_as_autobahn_answers_them(self):
        """Each request RFC 6455 refuses is refused by relayd's check with the status Autobahn's parser gives it."""
        from relayd.web.upgrade import Refused, checked_upgrade

        good = [h for h in self.HEADERS if h[0] != b"Sec-WebSocket-Extensions"]

        def without(name):
            return [h for h in good if h[0] != name]

        def replaced(name, value):
            return without(name) + [(name, value)]

        cases = {
            "no key": (without(b"Sec-WebSocket-Key"), {}),
            "short key": (replaced(b"Sec-WebSocket-Key", b"c2hvcnQ="), {}),
            "key not base64": (replaced(b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ!="), {}),
            "two keys": (good + [(b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")], {}),
            "version 7": (replaced(b"Sec-WebSocket-Version", b"7"), {}),
            "version not a number": (replaced(b"Sec-WebSocket-Version", b"13a"), {}),
            "no version": (without(b"Sec-WebSocket-Version"), {}),
            "duplicate protocols": (replaced(b"Sec-WebSocket-Protocol", b"chat, chat"), {}),
            "no connection upgrade": (replaced(b"Connection", b"keep-alive"), {}),
            "upgrade to something else": (replaced(b"Upgrade", b"websocketx"), {}),
            "no host": (without(b"Host"), {}),
            "two hosts": (good + [(b"Host", b"other.example")], {}),
            "POST": (good, {"method": b"POST"}),
            "HTTP/1.0": (good, {"version": b"HTTP/1.0"}),
            "a fragment": (good, {"uri": b"/echo#part"}),
        }
        for name, (headers, request_parts) in cases.items():
            request, raw = self.request(headers, **request_parts)
            autobahns, wire = self.connection()
            autobahns.dataReceived(raw)
            status = int(wire.value().split(b" ", 2)[1])
            self.assertNotEqual(status, 101, name)
            with self.assertRaises(Refused, msg=name) as refused:
                checked_upgrade(request, self.factory.versions)
            self.assertEqual(refused.exception.code, status, name)


class ReactorClockInternalsTests(TestCase):
    def test_a_reactor_reads_time_only_through_its_seconds(self):
        """A reactor given another clock (run_reactor_on) stamps its timers with it and runs them by it: a wall clock stepped back 30 s delays nothing."""
        import time as _time

        from twisted.internet.selectreactor import SelectReactor

        from relayd._internals import run_reactor_on
        from relayd.clock import SteadyClock

        wall = [1_000_000.0]
        steady = [50.0]
        clock = SteadyClock(wall=lambda: wall[0], monotonic=lambda: steady[0])
        reactor = SelectReactor()
        run_reactor_on(reactor, clock.seconds)
        self.patch(_time, "time", lambda: wall[0])
        fired = []
        call = reactor.callLater(5, fired.append, "due")
        self.assertEqual(call.getTime(), 1_000_005.0)
        wall[0] -= 30  # the system clock steps back
        steady[0] += 5
        self.assertEqual(reactor.timeout(), 0)
        reactor.runUntilCurrent()
        self.assertEqual(fired, ["due"])

    def test_steady_clock_reads_like_wall_time_and_moves_only_with_the_monotonic_clock(self):
        """SteadyClock starts at the wall time and advances by the monotonic clock alone."""
        from relayd.clock import SteadyClock

        wall, steady = [1_700_000_000.0], [10.0]
        clock = SteadyClock(wall=lambda: wall[0], monotonic=lambda: steady[0])
        self.assertEqual(clock.seconds(), 1_700_000_000.0)
        wall[0] += 3600
        steady[0] += 2
        self.assertEqual(clock.seconds(), 1_700_000_002.0)

    def test_twisted_write_buffer_fields(self):
        """buffered_bytes reads FileDescriptor's write buffer by the names Twisted keeps it under."""
        from twisted.internet.abstract import FileDescriptor

        for name in ("dataBuffer", "offset", "_tempDataLen", "_tempDataBuffer"):
            self.assertIn(f"self.{name}", inspect.getsource(FileDescriptor))


class TestedVersionsTests(TestCase):
    def test_installed_versions_are_the_ones_setup_cfg_admits(self):
        """Twisted, Autobahn and txaio, whose internals relayd uses, are installed at a version setup.cfg admits (the versions this suite passed on); another fails here first, naming it."""
        import configparser
        import os
        from importlib.metadata import version

        from packaging.requirements import Requirement

        parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
        parser.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg"))
        requirements = {}
        for line in parser["options"]["install_requires"].splitlines():
            line = line.strip()
            if line and not line.startswith(";"):
                requirement = Requirement(line)
                requirements[requirement.name.lower()] = requirement
        for name in ("twisted", "autobahn", "txaio"):
            installed = version(name)
            self.assertTrue(requirements[name].specifier.contains(installed),
                            f"{name} {installed} is installed; setup.cfg admits {requirements[name]}: run the suite "
                            f"on it, then widen the range and renew constraints.txt")
