"""
relayd as a process under adversity, on the shipped configuration (only what each test names is
changed): readers that never read, a wall clock that steps, a full disk, a low descriptor limit.
Each test starts its own relayd on 127.0.0.1 (tests.processes), is bounded in time, and says what
it waited for.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest, TestCase

from tests import processes
from tests.attacks import deaf_phones

MB = 2**20

# a stand-in for the system clock: time.time() stepped back 30 s at each SIGUSR2, the monotonic clock untouched
_CLOCK_DOUBLE = """
import signal, time
_wall = time.time
_offset = [0.0]
time.time = lambda: _wall() + _offset[0]
def _step(signum, frame):
    _offset[0] -= 30.0
signal.signal(signal.SIGUSR2, _step)
"""


def _wait(condition, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class DeafReaderTests(TestCase):
    def test_deaf_phones_stay_within_the_process_budget_and_memory_comes_back(self):
        """
        24 carparty phones on 6 addresses that never read (4 KB receive buffers), sent 100 MB of distinct
        frames by an anonymous game server within its rate: relayd's RSS rises by less than twice its
        32 MB max_total_backlog, the largest holders are closed 4008 (by the total or an address's
        share), a phone that reads gets every frame sent to it, and 8 s after it all ends RSS is within
        16 MB of where it started.
        """
        relayd = processes.start(self, relayd="max_total_backlog = 32M\n")
        figures = deaf_phones(relayd, addresses=6, phones_per_address=4, frame_size=256 * 1024,
                              frames_per_phone=16)
        rise = figures["rss_peak_mb"] - figures["rss_before_mb"]
        self.assertLess(rise, 64, figures)
        self.assertGreater(figures["slow_consumers_closed"]["total"] + figures["slow_consumers_closed"]["address"], 0,
                           figures)
        self.assertEqual(figures["reader_frames"], "16 of 16", figures)
        self.assertLess(figures["rss_after_mb"] - figures["rss_before_mb"], 16, figures)


class SteppedClockTests(TestCase):
    def test_a_wall_clock_stepped_back_does_not_stretch_a_timeout(self):
        """A connection that sends nothing is cut at the 5 s request-head deadline although the system clock was stepped back 30 s meanwhile (a stand-in for time.time(), stepped by a signal)."""
        double = tempfile.mkdtemp(prefix="relayd-clock-")
        with open(os.path.join(double, "sitecustomize.py"), "w") as f:
            f.write(_CLOCK_DOUBLE)
        relayd = processes.start(self, env={"PYTHONPATH": double})
        silent = socket.create_connection(("127.0.0.1", relayd.port))
        self.addCleanup(silent.close)
        opened = time.monotonic()
        time.sleep(0.5)
        os.kill(relayd.pid, signal.SIGUSR2)  # the wall clock goes back 30 s
        silent.settimeout(20)
        try:
            self.assertEqual(silent.recv(1), b"")  # closed by relayd
        except socket.timeout:
            self.fail("the silent connection was still open 20 s later")
        except ConnectionResetError:
            pass  # aborted: closed all the same
        self.assertLess(time.monotonic() - opened, 10)
        self.assertEqual(relayd.get("/healthz")[0], 200)


class FullDiskTests(TestCase):
    def _tmpfs(self, size: str) -> str:
        path = tempfile.mkdtemp(prefix="relayd-tmpfs-")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            if os.environ.get("RELAYD_REQUIRE_PRIVILEGED"):
                self.fail(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
            raise SkipTest(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", "-l", path], capture_output=True)
        return path

    def test_a_full_disk_is_unavailable_not_an_error_and_recovers(self):
        """
        With the state dir on a 2 MiB tmpfs that fills up: a clicker REGISTER that cannot be written is
        answered with clicker's unavailable error and closed 1013, /readyz turns 503 naming the store,
        the log says so in a line or two (not a traceback each), and once space is freed /readyz turns
        200 and REGISTER works again, without a restart.
        """
        disk = self._tmpfs("2m")
        relayd = processes.start(self, relayd=f"store = {os.path.join(disk, 'relayd.sqlite3')}\n")
        first = processes.WebSocket(relayd.port, "/clicker/ws")
        first.send("REGISTER")
        self.assertTrue(first.receive()[1].startswith(b"REGISTERED "))
        filler = os.path.join(disk, "filler")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass  # the disk is full
        answers = []
        for _ in range(50):  # until a write needs space the database does not have
            device = processes.WebSocket(relayd.port, "/clicker/ws")
            device.send("REGISTER")
            answers.append(device.receive())
            if answers[-1][1].startswith(b"ERROR"):
                self.assertEqual(device.receive()[1][:2], (1013).to_bytes(2, "big"))
                break
        self.assertEqual(answers[-1], (1, b"ERROR unavailable the score store is unreachable; retry"), answers[-3:])
        status, body = relayd.get("/readyz")
        self.assertEqual(status, 503)
        self.assertIn("store: writes failing (disk_full", body)
        os.unlink(filler)
        _wait(lambda: relayd.get("/readyz")[0] == 200, "/readyz 200 once the disk has room", 15)
        again = processes.WebSocket(relayd.port, "/clicker/ws")
        again.send("REGISTER")
        self.assertTrue(again.receive()[1].startswith(b"REGISTERED "))
        log = relayd.log()
        self.assertLessEqual(log.count("store: writes failing"), 2, log[-3000:])
        self.assertNotIn("Traceback", log)


class DescriptorLimitTests(TestCase):
    def test_health_and_metrics_answer_at_a_low_descriptor_limit(self):
        """
        Under `ulimit -n 256` relayd says in one line that max_connections is lowered to fit; 400
        WebSocket upgrades from two addresses are served or refused without EMFILE, /healthz and
        /metrics answer every time, and the log stays short.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1024:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024), hard))
        relayd = processes.start(self, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
        self.assertIn("descriptor limit 256", relayd.log())
        clients, refused = [], 0
        for n in range(400):
            try:
                ws = processes.WebSocket(relayd.port, "/clicker/ws", source=f"127.0.0.{2 + n % 2}", timeout=5)
            except (OSError, ConnectionError):
                refused += 1
                continue
            if ws.status == 101:
                clients.append(ws)
            else:
                refused += 1
                ws.close()
        self.addCleanup(lambda: [ws.close() for ws in clients])
        self.assertGreater(len(clients), 100)
        self.assertGreater(refused, 0)
        for _ in range(5):
            self.assertEqual(relayd.get("/healthz")[0], 200)
            self.assertEqual(relayd.get("/metrics")[0], 200)
        log = relayd.log()
        self.assertNotIn("EMFILE", log)
        self.assertLess(len(log.splitlines()), 40, log[-3000:])
