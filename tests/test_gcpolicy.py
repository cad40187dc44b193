"""The daemon's garbage-collector policy (relayd.gcpolicy): start-up objects frozen once the reactor runs, full collections rarer."""

from __future__ import annotations

import gc

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import TestCase

from relayd.gcpolicy import FULL_COLLECTION_EVERY, CollectorPolicy


class _Cycle:
    def __init__(self):
        self.me = self


class CollectorPolicyTests(TestCase):
    def setUp(self):
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.set_threshold, *gc.get_threshold())

    def test_frozen_once_the_reactor_runs_and_later_objects_still_collected(self):
        """
        Nothing is frozen before the reactor runs; then what exists is frozen, a full collection waits
        for FULL_COLLECTION_EVERY of the middle generation, and garbage made later is still collected.
        """
        reactor = MemoryReactor()
        service = CollectorPolicy(reactor)
        before = gc.get_freeze_count()
        service.startService()
        self.assertEqual(gc.get_freeze_count(), before)
        reactor.running = True
        for call, args, kwargs in reactor.whenRunningHooks:
            call(*args, **kwargs)
        self.assertGreater(gc.get_freeze_count(), 1000)
        self.assertEqual(gc.get_threshold()[2], FULL_COLLECTION_EVERY)
        self.assertGreaterEqual(service.frozen, gc.get_freeze_count())  # frozen objects may still be freed by refcount
        _Cycle()  # unreachable once made: a cycle only the collector frees
        self.assertGreaterEqual(gc.collect(), 1)
