"""Periodic work: one error policy, in the service tree, and no loop that stops for good."""

import os
import re

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from relayd.periodic import Periodic, guarded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PeriodicTests(TestCase):
    def test_an_exception_does_not_stop_it(self):
        """A call that raises is logged and counted; the next call comes on time."""
        clock, calls, errors = Clock(), [], []

        def work():
            calls.append(clock.seconds())
            if len(calls) == 1:
                raise RuntimeError("boom")

        periodic = Periodic("test work", 5, work, clock=clock, on_error=lambda: errors.append(1))
        periodic.startService()
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(calls, [0, 5, 10])
        self.assertEqual(errors, [1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        return periodic.stopService()

    def test_a_failed_deferred_does_not_stop_it(self):
        """A call whose Deferred fails is treated like one that raised."""
        clock, calls = Clock(), []

        def work():
            calls.append(1)
            return defer.fail(ValueError("later"))

        periodic = Periodic("test work", 1, work, clock=clock)
        periodic.startService()
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(len(calls), 3)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 3)
        return periodic.stopService()

    def test_now_false_waits_a_step_and_it_restarts(self):
        """With now=False the first call is one interval after start; stopped and started again, it runs again."""
        clock, calls = Clock(), []
        periodic = Periodic("test work", 2, lambda: calls.append(clock.seconds()), clock=clock, now=False)
        periodic.startService()
        self.assertEqual(calls, [])
        clock.advance(2)
        self.assertEqual(calls, [2])
        periodic.stopService()
        clock.advance(10)
        periodic.startService()
        clock.advance(2)
        self.assertEqual(calls, [2, 14])
        return periodic.stopService()

    def test_guarded_returns_the_value(self):
        """guarded passes a good result through unchanged."""
        self.assertEqual(guarded("x", lambda: 3)(), 3)

    def test_every_loop_of_the_daemon_uses_the_policy(self):
        """LoopingCall appears only in periodic work's own module and in the two loops that run on demand through guarded."""
        allowed = {"relayd/periodic.py", "relayd/apps/gameroom/scheduler.py", "relayd/ws/keepalive.py"}
        found = set()
        for directory, _, files in os.walk(os.path.join(ROOT, "relayd")):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path) as f:
                        if re.search(r"\bLoopingCall\(", f.read()):
                            found.add(os.path.relpath(path, ROOT))
        self.assertLessEqual(found, allowed - {"relayd/periodic.py"})
        for path in found:
            with open(os.path.join(ROOT, path)) as f:
                self.assertIn("guarded(", f.read(), path)

    def test_app_loops_are_children_of_the_daemon(self):
        """An app's periodic work hangs below the daemon's service, so it starts and stops with it."""
        from twisted.internet.testing import MemoryReactorClock

        from relayd.service import RelaydService
        from relayd.store import MemoryStore
        from tests.support import make_config

        service = RelaydService(make_config("[app:gameroom]\nlisteners = main\npath = /g\n"),
                                reactor=MemoryReactorClock(), store=MemoryStore())
        app = service.apps["gameroom"]
        self.assertIn(app.services, list(service))
        self.assertEqual(sorted(p.name for p in app.services), ["gameroom housekeeping", "gameroom persistence"])


class CountedTests(TestCase):
    def test_every_periodic_job_is_counted_in_metrics(self):
        """A Periodic made without any wiring (as the cluster modules make theirs) has its failures in relayd_periodic_errors_total{task}."""
        from relayd.metrics import Metrics

        clock, metrics = Clock(), Metrics()

        def work():
            raise RuntimeError("boom")

        before = metrics.registry.get_sample_value("relayd_periodic_errors_total", {"task": "unwired upkeep"}) or 0
        periodic = Periodic("unwired upkeep", 1, work, clock=clock)
        periodic.startService()
        clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(metrics.registry.get_sample_value("relayd_periodic_errors_total", {"task": "unwired upkeep"}),
                         before + 2)
        return periodic.stopService()
