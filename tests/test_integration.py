"""
Integration tests on real sockets, 127.0.0.1 port 0: the plugin's makeService from a config file, a
TLS listener with a test CA verified by service-identity, ALPN as browsers offer it, drain, a taken
port, and a reader that stops reading.
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet import defer, reactor, ssl
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from relayd import tap
from relayd.listener import StartupError
from relayd.ws import closecodes
from tests.live import Daemon, later, until, write_config
from tests.tlsutil import TestCA


TESTEE = """
[listener:main]
endpoint = tcp:0:interface=127.0.0.1

[limits]
rate_limit = 0
byte_rate = 0

[app:testee]
listeners = main
path = /echo
"""


class PluginTests(TestCase):
    @defer.inlineCallbacks
    def test_make_service_from_config_file(self):
        """The plugin's makeService starts from a file; /healthz, /metrics and a WebSocket echo work over TCP."""
        daemon = Daemon(self, TESTEE)
        agent = Agent(reactor)
        response = yield agent.request(b"GET", f"http://127.0.0.1:{daemon.port()}/healthz".encode())
        self.assertEqual(response.code, 200)
        yield readBody(response)
        response = yield agent.request(b"GET", f"http://127.0.0.1:{daemon.port()}/metrics".encode())
        body = yield readBody(response)
        self.assertIn(b"relayd_connections_open", body)
        client = yield daemon.connect("/echo")
        client.send_text("over a real socket")
        messages = yield client.messages_at_least(1)
        self.assertEqual(messages, ["over a real socket"])
        client.sendClose(1000)
        yield client.when_closed
        self.assertTrue(os.path.isdir(os.path.join(daemon.directory, "state")))

    def test_taken_port_fails_start(self):
        """A port already in use stops start-up with one line naming the listener."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        directory = tempfile.mkdtemp(prefix="relayd-test-")
        options = tap.Options()
        options.parseOptions(["--config", write_config(directory, TESTEE.replace("tcp:0", f"tcp:{taken.getsockname()[1]}"))])
        service = tap.makeService(options, reactor=reactor)
        with self.assertRaises(StartupError) as caught:
            service.privilegedStartService()
        self.assertIn("listener main: cannot listen on", caught.exception.message)
        self.assertIn("in use", caught.exception.message)

    @defer.inlineCallbacks
    def test_drain_closes_100_websockets_with_1001(self):
        """With 100 WebSockets open, a stop closes all of them with 1001 within the drain timeout."""
        daemon = Daemon(self, TESTEE)
        clients = yield defer.gatherResults([daemon.connect("/echo") for _ in range(100)])
        started = reactor.seconds()
        yield daemon.stop()
        codes = yield defer.gatherResults([c.when_closed for c in clients])
        self.assertEqual(set(codes), {closecodes.GOING_AWAY})
        self.assertLess(reactor.seconds() - started, 5)

    @defer.inlineCallbacks
    def test_non_reading_client_is_disconnected_others_keep_receiving(self):
        """A client that stops reading is closed by the slow-consumer policy while another keeps its echo."""
        daemon = Daemon(self, TESTEE + "max_send_backlog = 256K\nmax_send_backlog_age = 2\n")
        stuck = yield daemon.connect("/echo")
        healthy = yield daemon.connect("/echo")
        stuck.transport.pauseProducing()  # stop reading from the socket
        chunk = "z" * 60000
        for _ in range(400):  # 24 MB of echoes for a reader that takes none
            stuck.send_text(chunk)
        healthy.send_text("ping")
        yield healthy.messages_at_least(1)
        server_side = [ws for ws in daemon.service.listeners["main"].tracker.websockets()]
        for _ in range(200):
            if len(daemon.service.listeners["main"].tracker.websockets()) < len(server_side):
                break
            yield later(0.05)
        self.assertEqual(len(daemon.service.listeners["main"].tracker.websockets()), 1)
        sample = daemon.service.metrics.registry.get_sample_value(
            "relayd_protocol_errors_total", {"app": "testee", "kind": "slow_consumer"}
        )
        self.assertEqual(sample, 1.0)
        healthy.send_text("still served")
        messages = yield healthy.messages_at_least(2)
        self.assertEqual(messages, ["ping", "still served"])
        stuck.transport.abortConnection()


class TLSTests(TestCase):
    def _daemon(self, ca: TestCA, extra=""):
        key, cert = ca.issue("localhost")
        body = f"""
[listener:main]
endpoint = tcp:0:interface=127.0.0.1

[listener:secure]
endpoint = ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}:extraCertChain={ca.chain_path}
health = no
metrics = no

[app:testee]
listeners = secure
path = /echo
{extra}"""
        return Daemon(self, body)

    def _client_options(self, ca: TestCA, hostname="localhost"):
        return ssl.optionsForClientTLS(
            hostname,
            trustRoot=ssl.Certificate.loadPEM(ca.root_pem()),
            acceptableProtocols=[b"h2", b"http/1.1"],
        )

    @defer.inlineCallbacks
    def test_wss_with_browser_alpn_and_chain(self):
        """A wss client offering ALPN h2,http/1.1 and verifying the name through the chain completes and echoes 70 KB."""
        ca = TestCA(tempfile.mkdtemp(prefix="relayd-ca-"))
        daemon = self._daemon(ca, "max_message_size = 1M\nmax_frame_size = 1M\n")
        client = yield daemon.connect("/echo", listener="secure", tls_options=self._client_options(ca))
        self.assertEqual(client.transport.negotiatedProtocol, b"http/1.1")
        payload = "w" * 70000
        client.send_text(payload)
        messages = yield client.messages_at_least(1)
        self.assertEqual(messages, [payload])
        client.sendClose(1000)
        code = yield client.when_closed
        self.assertEqual(code, 1000)

    @defer.inlineCallbacks
    def test_wrong_name_fails_verification(self):
        """A client verifying a different host name than the certificate's fails the handshake."""
        ca = TestCA(tempfile.mkdtemp(prefix="relayd-ca-"))
        daemon = self._daemon(ca)
        try:
            yield daemon.connect("/echo", listener="secure", tls_options=self._client_options(ca, "wrong.example"))
        except Exception as e:
            failure = e
        else:
            self.fail("a certificate for another name was accepted")
        self.assertIn("closed before open", str(failure))  # the client refused the TLS session
        self.assertEqual(daemon.service.listeners["secure"].tracker.websockets(), [])

    @defer.inlineCallbacks
    def test_reload_serves_renewed_certificate(self):
        """After reload, new connections get the renewed certificate while the listener keeps running."""
        ca = TestCA(tempfile.mkdtemp(prefix="relayd-ca-"))
        daemon = self._daemon(ca)
        first = yield daemon.connect("/echo", listener="secure", tls_options=self._client_options(ca))
        serial_before = first.transport.getPeerCertificate().get_serial_number()
        ca.issue("localhost")  # overwrites server.key / server.crt with a new pair
        daemon.service.reload()
        second = yield daemon.connect("/echo", listener="secure", tls_options=self._client_options(ca))
        self.assertNotEqual(second.transport.getPeerCertificate().get_serial_number(), serial_before)
        for c in (first, second):
            c.sendClose(1000)
            yield c.when_closed

    @defer.inlineCallbacks
    def test_failed_reload_is_not_reported_as_reloaded(self):
        """A reload whose files are broken keeps serving the previous certificate and is logged as not reloaded, never as reloaded."""
        from twisted.logger import globalLogPublisher

        ca = TestCA(tempfile.mkdtemp(prefix="relayd-ca-"))
        daemon = self._daemon(ca)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        with open(ca.issue("localhost")[1], "w") as f:
            f.write("not a certificate\n")
        daemon.service.reload()
        said = [e["log_format"] for e in events if e.get("log_namespace") == "relayd.service"]
        self.assertEqual(len(said), 1, said)
        self.assertIn("were not reloaded", said[0])
        client = yield daemon.connect("/echo", listener="secure", tls_options=self._client_options(ca))
        client.sendClose(1000)
        yield client.when_closed


# a client in its own process that sends its whole request before it reads the answer, as many HTTP
# libraries do: a 4 MB body, then the answer's first line and how the stream ended
_UPLOADER = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(20)
body = b"x" * (4 * 1024 * 1024)
try:
    s.sendall(b"POST /groovejet/rooms HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    received, ended = b"", None
    while ended is None:
        data = s.recv(65536)
        received += data
        ended = None if data else "eof"
except OSError as e:
    received, ended = b"", type(e).__name__
print(received.split(b"\\r\\n")[0].decode() if received else "-")
print(ended)
"""


class RefusedBodyTests(TestCase):
    @defer.inlineCallbacks
    def test_413_arrives_and_the_close_is_not_a_reset(self):
        """A client that sends its whole 4 MB body before reading (its own process, as many HTTP libraries do) reads the 413 relayd answered before the body, then a clean end of stream, not a connection reset: relayd throws the rest of the body away before it closes."""
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        daemon = Daemon(self, TESTEE + """
[app:groovejet]
listeners = main
path = /groovejet
""")
        yield until(lambda: daemon.service.ready, "relayd to finish starting (groovejet loads its rooms)")
        out, err, code = yield getProcessOutputAndValue(sys.executable, ["-c", _UPLOADER, str(daemon.port())],
                                                        env=os.environ)
        self.assertEqual(code, 0, err)
        first_line, ended = out.decode().split("\n")[:2]
        self.assertEqual((first_line, ended), ("HTTP/1.1 413 Payload Too Large", "eof"))
