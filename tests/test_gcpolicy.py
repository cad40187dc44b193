"""The daemon's garbage-collector policy (relayd.gcpolicy): start-up objects frozen once the reactor runs."""

from __future__ import annotations

import gc

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import TestCase

from relayd.gcpolicy import FreezeStartup


class _Cycle:
    def __init__(self):
        self.me = self


class FreezeStartupTests(TestCase):
    def setUp(self):
        self.addCleanup(gc.unfreeze)

    def test_frozen_once_the_reactor_runs_and_later_objects_still_collected(self):
        """Nothing is frozen before the reactor runs; then what exists is frozen, and garbage made later is still collected."""
        reactor = MemoryReactor()
        service = FreezeStartup(reactor)
        before = gc.get_freeze_count()
        service.startService()
        self.assertEqual(gc.get_freeze_count(), before)
        reactor.running = True
        for call, args, kwargs in reactor.whenRunningHooks:
            call(*args, **kwargs)
        self.assertGreater(gc.get_freeze_count(), 1000)
        self.assertGreaterEqual(service.frozen, gc.get_freeze_count())  # frozen objects may still be freed by refcount
        _Cycle()  # unreachable once made: a cycle only the collector frees
        self.assertGreaterEqual(gc.collect(), 1)
