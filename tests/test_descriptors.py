"""The descriptor limit against max_connections (relayd.descriptors)."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from relayd import descriptors
from relayd.web.tracker import RESERVE, ConnectionTracker
from tests.support import log_lines


class _Limits:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard):
        self.soft, self.hard = soft, hard

    def getrlimit(self, which):
        return self.soft, self.hard

    def setrlimit(self, which, values):
        soft, hard = values
        if soft > self.hard:
            raise ValueError("not allowed")
        self.soft = soft


class FitTests(TestCase):
    def setUp(self):
        self.lines = log_lines(self, "relayd.descriptors")

    def test_soft_limit_raised_to_what_is_needed(self):
        """A soft limit below what the listeners need is raised (within the hard limit); nothing is lowered or logged."""
        trackers = {"main": ConnectionTracker(10000, 256)}
        limits = _Limits(1024, 65536)
        self.assertEqual(descriptors.fit(trackers, limits), 10000 + RESERVE + descriptors.DAEMON_DESCRIPTORS)
        self.assertEqual(trackers["main"].max_connections, 10000)
        self.assertEqual(self.lines, [])

    def test_max_connections_lowered_to_fit_a_low_hard_limit(self):
        """When even the hard limit is short, max_connections is lowered, in proportion, so the daemon and the health reserve keep descriptors, and one line says what to raise."""
        trackers = {"main": ConnectionTracker(10000, 256), "admin": ConnectionTracker(100, 0)}
        limits = _Limits(256, 256)
        self.assertEqual(descriptors.fit(trackers, limits), 256)
        main, admin = trackers["main"].max_connections, trackers["admin"].max_connections
        self.assertLessEqual(main + admin + 2 * RESERVE + descriptors.DAEMON_DESCRIPTORS, 256)
        self.assertGreater(main, 50 * admin)
        self.assertEqual(admin, 1)
        self.assertEqual(len(self.lines), 1)
        self.assertIn("ulimit -n", self.lines[0]["log_format"])

    def test_enough_already(self):
        """A limit that holds everything is left as it is."""
        trackers = {"main": ConnectionTracker(100, 0)}
        limits = _Limits(65536, 65536)
        descriptors.fit(trackers, limits)
        self.assertEqual((limits.soft, trackers["main"].max_connections), (65536, 100))
