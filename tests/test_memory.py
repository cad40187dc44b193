"""Memory given back to the system after large buffers are freed (relayd.memory)."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SkipTest, TestCase

from relayd import memory
from relayd.ws.backlog import Backlogs
from relayd.ws.frames import Frame

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 800 distinct frames of 0.5 to 1 MiB (an inbound payload, then the frame's header plus it, as relayd
# builds them; the payload freed), interleaved with small objects that stay; then the frames freed
_BURST = """
import os, sys
from relayd import memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
if sys.argv[1] == "tuned":
    assert memory.tune_allocator()
before = rss()
held, kept = [], []
for i in range(800):
    payload = os.urandom(16) * (32768 + (i * 7919) % 32768)
    held.append(b"\\x82\\x7f" + payload)
    del payload
    kept.append([i] * 20)
peak = rss()
del held
print(before, peak, rss())
"""


class AllocatorTests(TestCase):
    def _burst(self, mode: str) -> tuple[int, int, int]:
        out = subprocess.run([sys.executable, "-c", _BURST, mode], capture_output=True, text=True, timeout=120,
                             cwd=_ROOT, env={**os.environ, "PYTHONPATH": _ROOT})
        self.assertEqual(out.returncode, 0, out.stderr)
        return tuple(int(n) for n in out.stdout.split())

    def test_large_frames_are_returned_after_they_are_freed(self):
        """With the allocator tuned, RSS falls back within 16 MB of its level before a 600 MB burst of frames; untuned, glibc keeps over 48 MB of it (71 MB measured: the reason for the tuning)."""
        if memory._LIBC is None:
            raise SkipTest("not glibc: relayd.memory does nothing here")
        before, peak, after = self._burst("tuned")
        self.assertGreater(peak - before, 500 << 20)
        self.assertLess(after - before, 16 << 20)
        before, peak, after = self._burst("untuned")
        self.assertGreater(after - before, 48 << 20)


class GiveBackTests(TestCase):
    def test_trims_once_enough_was_released(self):
        """Once closed connections let go of TRIM_AFTER bytes since the last trim (not before, and once for them; frames written are not counted) dead connections are collected, then the heap is trimmed."""
        trims = []
        backlogs = Backlogs(1 << 30, 0)
        give_back = memory.GiveBack(backlogs, trimmer=lambda: trims.append("trim"), collect=lambda: trims.append("collect"))

        class Connection:
            client_address = "192.0.2.1"
            backlog_held = 0
            backlog_key = None

        connection = Connection()
        frames = [Frame(b"x" * (1 << 20)) for _ in range(20)]
        for frame in frames:
            backlogs.queued(connection, frame)
        give_back()
        self.assertEqual(trims, [])
        for frame in frames[:10]:
            backlogs.dequeued(connection, frame)  # written: freed as it went, nothing to collect
        give_back()
        self.assertEqual(trims, [])
        for frame in frames[10:18]:
            backlogs.dequeued(connection, frame, dropped=True)
        give_back()
        self.assertEqual(trims, [])  # 8 MiB let go by a closed connection: not worth a walk of the heap
        for frame in frames[18:]:
            backlogs.dequeued(connection, frame, dropped=True)
        backlogs.buffered(connection, 6 << 20)
        backlogs.buffered(connection, -(6 << 20), dropped=True)
        give_back()
        self.assertEqual(trims, ["collect", "trim"])  # 16 MiB in all since the last trim
        give_back()
        self.assertEqual(trims, ["collect", "trim"])


class DefaultBoundTests(TestCase):
    def test_auto_total_follows_the_machine(self):
        """max_total_backlog = auto is 1/32 of the machine's memory in whole MiB, at least 64 MiB and at most 1 GiB."""
        from relayd.ws.backlog import default_total

        self.assertEqual(default_total(24 * 2**30), 768 * 2**20)
        self.assertEqual(default_total(1 * 2**30), 64 * 2**20)
        self.assertEqual(default_total(256 * 2**30), 1024 * 2**20)
        self.assertEqual(default_total(0), 256 * 2**20)  # the platform does not say
        self.assertEqual(default_total(24 * 2**30 + 12345) % 2**20, 0)
