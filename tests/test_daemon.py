"""The daemon service in memory: health, readiness, metrics, drain."""

from twisted.trial.unittest import TestCase

from relayd.ws import closecodes
from tests.support import Harness, make_config

TESTEE = """
[app:testee]
listeners = main
path = /echo
"""


class HealthTests(TestCase):
    def test_healthz_and_readyz(self):
        """/healthz answers 200 and /readyz answers 200 once started."""
        h = Harness(make_config(TESTEE)).start()
        self.assertEqual(h.http("GET", "/healthz")[0], 200)
        self.assertEqual(h.http("GET", "/readyz")[0], 200)

    def test_readyz_before_start(self):
        """/readyz answers 503 before the daemon is started."""
        h = Harness(make_config(TESTEE))
        h.service.privilegedStartService()
        self.assertEqual(h.http("GET", "/readyz")[0], 503)

    def test_metrics_exposition(self):
        """/metrics serves Prometheus text with per-app connection and message counters."""
        h = Harness(make_config(TESTEE)).start()
        c = h.ws("/echo")
        c.send_text("x")
        h.flush()
        status, headers, body = h.http("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("text/plain", headers["content-type"])
        text = body.decode()
        self.assertIn('relayd_connections_open{app="testee"} 1.0', text)
        self.assertIn('relayd_messages_received_total{app="testee"} 1.0', text)
        self.assertIn('relayd_messages_sent_total{app="testee"} 1.0', text)
        self.assertIn("relayd_rooms", text)

    def test_closes_counted_by_code(self):
        """Closes are counted by close code."""
        h = Harness(make_config(TESTEE)).start()
        c = h.ws("/echo")
        c.sendClose(1000)
        h.flush()
        self.assertEqual(
            h.service.metrics.registry.get_sample_value("relayd_closes_total", {"app": "testee", "code": "1000"}), 1.0
        )
        self.assertEqual(
            h.service.metrics.registry.get_sample_value("relayd_connections_open", {"app": "testee"}), 0.0
        )

    def test_health_paths_can_be_switched_off(self):
        """A listener with health and metrics off answers 404 there."""
        config = make_config(
            TESTEE,
            base="""
[relayd]
state_dir = {state_dir}
[listener:main]
endpoint = tcp:0
health = no
metrics = no
[limits]
{limits}
""",
        )
        h = Harness(config).start()
        self.assertEqual(h.http("GET", "/healthz")[0], 404)
        self.assertEqual(h.http("GET", "/metrics")[0], 404)


class DrainTests(TestCase):
    def test_stop_sends_1001_to_every_websocket(self):
        """A stop sends close 1001 to every open WebSocket, and finishes once they are closed."""
        h = Harness(make_config(TESTEE)).start()
        clients = [h.ws("/echo") for _ in range(100)]
        done = []
        d = h.service.stopService()
        d.addCallback(done.append)
        h.flush()
        self.assertTrue(all(c.closed for c in clients))
        self.assertEqual({c.close_code for c in clients}, {closecodes.GOING_AWAY})
        self.assertEqual(done, [None])

    def test_readyz_503_and_upgrades_refused_while_draining(self):
        """While draining, /readyz answers 503 and new WebSocket upgrades are refused with 503."""
        h = Harness(make_config(TESTEE)).start()
        stuck = h.ws("/echo")
        # the client will not answer the close: the drain has to wait for its timeout
        stuck.sendCloseFrame = lambda *a, **k: None
        stuck.onCloseFrame = lambda *a, **k: None
        h.service.stopService()
        h.flush()
        self.assertEqual(h.http("GET", "/readyz")[0], 503)
        late = h.ws("/echo")
        self.assertFalse(late.opened)

    def test_drain_timeout_aborts_what_is_left(self):
        """Connections still open at the drain timeout are aborted and the stop completes."""
        h = Harness(make_config(TESTEE)).start()
        stuck = h.ws("/echo")
        stuck.onCloseFrame = lambda *a, **k: None  # never answers the close handshake
        stuck.factory.closeHandshakeTimeout = 0
        h.service.listeners["main"].tracker.websockets()[0].closeHandshakeTimeout = 0
        done = []
        h.service.stopService().addCallback(done.append)
        h.flush()
        self.assertEqual(done, [])
        h.advance(11)
        self.assertEqual(done, [None])
        self.assertEqual(len(h.service.listeners["main"].tracker), 0)


class StateLockTests(TestCase):
    def test_a_second_daemon_on_one_state_store_is_refused(self):
        """A second RelaydService on a state dir whose store another holds stops start-up with one line naming the lock and its holder's pid; once the first is stopped, a new one starts."""
        import os
        import tempfile

        from relayd.listener import StartupError
        from relayd.service import RelaydService
        from tests.support import make_config

        state = tempfile.mkdtemp(prefix="relayd-state-")
        config = make_config(state_dir=state)
        first = RelaydService(config)
        with self.assertRaises(StartupError) as refused:
            RelaydService(config)
        self.assertIn(os.path.join(state, "relayd.sqlite3.lock"), refused.exception.message)
        self.assertIn(f"pid {os.getpid()}", refused.exception.message)
        return first._close_store().addCallback(lambda _: RelaydService(config)._close_store())
