"""
The durable store when writes fail (a full disk, an I/O error): nothing acknowledged, clients told
the app's unavailable answer, one log line per kind and interval, /readyz 503, and recovery by itself.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from relayd.errors import StoreUnavailable
from relayd.store import FAILURE_LOG_INTERVAL, SqliteStore
from tests.support import log_lines, Harness, make_config


class _Failing:
    """Stands in for the database thread: each transaction fails while `full` is set, else runs on SQLite."""

    def __init__(self, pool):
        self.pool = pool
        self.full = True

    def runInteraction(self, function, *args):
        if self.full:
            return defer.fail(sqlite3.OperationalError("database or disk is full"))
        return self.pool.runInteraction(function, *args)

    def runQuery(self, query, *args):
        return defer.succeed([])  # an empty database, read at once (the tests' reactor is a Clock)

    def __getattr__(self, name):
        return getattr(self.pool, name)


def _store(testcase, clock):
    store = SqliteStore(os.path.join(tempfile.mkdtemp(), "relayd.sqlite3"))
    store._clock = store._said.clock = clock  # when failures are logged: the test's time
    testcase.addCleanup(store._pool.close)
    failing = store._pool = _Failing(store._pool)
    return store, failing


class StoreFailureTests(TestCase):
    def setUp(self):
        self.lines = log_lines(self, "relayd.store")

    def test_failed_write_is_unavailable_and_logged_once_per_interval(self):
        """Writes that fail with a full disk fail as StoreUnavailable and leave the store failing; ten of them in one interval are one log line; the next interval's first is another."""
        clock = Clock()
        store, _ = _store(self, clock)
        for n in range(10):
            failure = self.failureResultOf(store.put("ns", f"k{n}", {"n": n}))
            failure.trap(StoreUnavailable)
        self.assertEqual(store.failing, "disk_full: database or disk is full")
        self.assertEqual(len(self.lines), 1)
        clock.advance(FAILURE_LOG_INTERVAL)
        self.failureResultOf(store.put("ns", "k", 1)).trap(StoreUnavailable)
        self.assertEqual(len(self.lines), 2)
        self.assertEqual([line["count"] for line in self.lines], [1, 10])  # failures each line speaks for

    @defer.inlineCallbacks
    def test_recovers_when_a_write_succeeds(self):
        """Once the disk has room again the next write succeeds, the store is not failing and says so once."""
        clock = Clock()
        store, failing = _store(self, clock)
        self.failureResultOf(store.put("ns", "k", 1)).trap(StoreUnavailable)
        failing.full = False
        yield store.probe()
        self.assertIsNone(store.failing)
        self.assertEqual(len(self.lines), 2)
        rows = yield store._pool.pool.runQuery("SELECT value FROM kv WHERE ns = '_relayd'")
        self.assertEqual(rows, [('{"at":0.0}',)])


class ReadinessTests(TestCase):
    def test_readyz_503_while_the_store_fails_and_200_after(self):
        """/readyz answers 503 naming the store while its writes fail, and 200 again once the daemon's probe write succeeds."""

        class Store:
            failing = "disk_full: database or disk is full"
            probes = 0

            def probe(self):
                self.probes += 1
                if self.probes >= 2:
                    self.failing = None
                    return defer.succeed(None)
                return defer.fail(StoreUnavailable("disk_full"))

            def close(self):
                return defer.succeed(None)

        store = Store()
        h = Harness(make_config(), store=store).start()
        status, _, body = h.http("GET", "/readyz")
        self.assertEqual(status, 503)
        self.assertIn(b"store: writes failing (disk_full", body)
        h.advance(2.0)
        self.assertEqual(h.http("GET", "/readyz")[0], 503)
        h.advance(2.0)
        self.assertEqual(h.http("GET", "/readyz")[0], 200)
        self.assertEqual(store.probes, 2)


class ClientAnswerTests(TestCase):
    def test_clicker_device_gets_the_unavailable_answer_not_an_internal_error(self):
        """A REGISTER whose identity cannot be written is answered with clicker's unavailable error and closed 1013 (try again later), not 1011, and no traceback is logged."""
        store, _ = _store(self, Clock())
        h = Harness(make_config("[app:clicker]\nlisteners = main\npath = /clicker\n"), store=store).start()
        device = h.ws("/clicker/ws")
        device.send_text("REGISTER")
        h.flush()
        self.assertEqual(device.messages, ["ERROR unavailable the score store is unreachable; retry"])
        self.assertEqual(device.close_code, 1013)
        self.assertEqual(self.flushLoggedErrors(), [])
