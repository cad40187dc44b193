"""Keepalive on one timer (relayd.ws.keepalive): silent connections are pinged and dropped if they stay silent."""

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from relayd.ws.keepalive import Keepalive
from tests.support import Client, Harness, make_config

TESTEE = """
[app:testee]
listeners = main
path = /echo
"""

BASE = """
[relayd]
state_dir = {state_dir}

[listener:main]
endpoint = tcp:0:interface=127.0.0.1

[limits]
{limits}
"""


def seconds(clock, n):
    """Advance second by second, as the reactor would run the one-second tick."""
    for _ in range(n):
        clock.advance(1)


class FakeConnection:
    def __init__(self):
        self.pings = 0
        self.expired = False

    def keepalive_ping(self):
        self.pings += 1
        return True

    def keepalive_expired(self):
        self.expired = True


class WheelTests(TestCase):
    def test_silent_connection_pinged_then_dropped(self):
        """A connection silent for an interval is pinged, and expires when the timeout passes without an answer."""
        clock = Clock()
        keepalive = Keepalive(clock, interval=10, timeout=5)
        conn = FakeConnection()
        keepalive.watch(conn)
        seconds(clock, 10)  # first visit: it was heard when it opened
        self.assertEqual(conn.pings, 0)
        seconds(clock, 10)
        self.assertEqual(conn.pings, 1)
        seconds(clock, 4)
        self.assertFalse(conn.expired)
        seconds(clock, 1)
        self.assertTrue(conn.expired)

    def test_answering_connection_kept(self):
        """A connection that answers every ping is pinged once per interval and never expires."""
        clock = Clock()
        keepalive = Keepalive(clock, interval=10, timeout=5)
        conn = FakeConnection()
        keepalive.watch(conn)
        for _ in range(100):
            before = conn.pings
            seconds(clock, 1)
            if conn.pings != before:
                conn.heard = True  # the pong
        self.assertFalse(conn.expired)
        self.assertIn(conn.pings, (8, 9))

    def test_chatty_connection_never_pinged(self):
        """A connection heard from between visits costs no ping."""
        clock = Clock()
        keepalive = Keepalive(clock, interval=10, timeout=5)
        conn = FakeConnection()
        keepalive.watch(conn)
        for _ in range(60):
            conn.heard = True
            seconds(clock, 1)
        self.assertEqual((conn.pings, conn.expired), (0, False))

    def test_timeout_longer_than_interval(self):
        """With a timeout longer than the interval a pinged connection is not pinged again before its deadline."""
        clock = Clock()
        keepalive = Keepalive(clock, interval=2, timeout=5)
        conn = FakeConnection()
        keepalive.watch(conn)
        seconds(clock, 4)
        self.assertEqual(conn.pings, 1)
        seconds(clock, 4)
        self.assertEqual((conn.pings, conn.expired), (1, False))
        seconds(clock, 1)
        self.assertTrue(conn.expired)

    def test_timer_runs_only_while_watching(self):
        """The one timer starts with the first connection and stops with the last."""
        clock = Clock()
        keepalive = Keepalive(clock, interval=10, timeout=5)
        a, b = FakeConnection(), FakeConnection()
        self.assertEqual(clock.getDelayedCalls(), [])
        keepalive.watch(a)
        keepalive.watch(b)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        keepalive.forget(a)
        keepalive.forget(a)
        self.assertEqual(len(keepalive), 1)
        keepalive.forget(b)
        self.assertEqual(clock.getDelayedCalls(), [])


class Deaf(Client):
    def onPing(self, payload):
        pass  # never answers


class ConnectionKeepaliveTests(TestCase):
    def harness(self):
        config = make_config(TESTEE, base=BASE, limits="auto_ping_interval = 5\nauto_ping_timeout = 3")
        return Harness(config).start()

    def test_client_that_answers_stays(self):
        """A client answering pings stays open through a minute of silence; one that never answers is dropped."""
        h = self.harness()
        good = h.ws("/echo")
        deaf = h.ws("/echo")
        deaf.onPing = Deaf.onPing.__get__(deaf)
        h.advance(1)
        for _ in range(60):
            h.advance(1)
        self.assertFalse(good.closed)
        self.assertTrue(deaf.closed)
        good.send_text("still here")
        h.flush()
        self.assertEqual(good.messages, ["still here"])
        errors = h.service.metrics.registry.get_sample_value(
            "relayd_protocol_errors_total", {"app": "testee", "kind": "keepalive_timeout"})
        self.assertEqual(errors, 1.0)
