"""
relayd as a process under adversity, on the shipped configuration (only what each test names is
changed): readers that never read, a wall clock that steps, a full disk, a low descriptor limit.
Each test starts its own relayd on 127.0.0.1 (tests.processes), is bounded in time, and says what
it waited for.
"""

from __future__ import annotations

import os
import resource
import tempfile

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, TestCase

from tests import attacks, processes


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
        figures = attacks.deaf_phones(relayd, addresses=6, phones_per_address=4, frame_size=256 * 1024,
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
            f.write(attacks.CLOCK_DOUBLE)
        relayd = processes.start(self, env={"PYTHONPATH": double})
        figures = attacks.stepped_clock(relayd)
        self.assertIn(figures["connection"], ("closed", "reset"), figures)
        self.assertLess(figures["seconds_until_cut"], 10, figures)
        self.assertEqual(figures["healthz"], 200)


class FullDiskTests(TestCase):
    def _tmpfs(self, size: str) -> str:
        path, why = processes.mount_tmpfs(size)
        if path is None:
            if os.environ.get("RELAYD_REQUIRE_PRIVILEGED"):
                self.fail(f"cannot mount a tmpfs: {why}")
            raise SkipTest(f"cannot mount a tmpfs here (needs root): {why}")
        self.addCleanup(processes.unmount, path)
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
        figures = attacks.full_disk(relayd, disk)
        self.assertEqual(figures["register_before"], "REGISTERED", figures)
        self.assertEqual(figures["refused_with"], "ERROR unavailable the score store is unreachable; retry", figures)
        self.assertEqual(figures["close_code"], 1013, figures)
        self.assertEqual(figures["readyz_while_full"][0], 503, figures)
        self.assertIn("store: writes failing (disk_full", figures["readyz_while_full"][1])
        self.assertLess(figures["seconds_to_ready_after_freeing"], 15, figures)
        self.assertEqual(figures["register_after"], "REGISTERED", figures)
        self.assertIn(figures["store_log_lines"], (1, 2), figures)
        self.assertEqual(figures["tracebacks"], 0, figures)


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
        figures = attacks.low_descriptor_limit(relayd, 400)
        self.assertEqual(len(figures["lowered"]), 1, figures)
        self.assertIn("descriptor limit 256", figures["lowered"][0])
        self.assertGreater(figures["served"], 100, figures)
        self.assertGreater(figures["refused"], 0, figures)
        self.assertEqual(figures["healthz"] + figures["metrics"], [200] * 10, figures)
        self.assertEqual(figures["emfile_lines"], 0, figures)
        self.assertLess(figures["log_lines"], 40, figures)


class SecondProcessTests(TestCase):
    def test_a_second_relayd_on_one_state_dir_is_refused(self):
        """A second relayd started on a running one's state dir exits non-zero with one line naming the lock and the first's pid; the first serves on."""
        first = processes.start(self)
        port = processes.free_port()
        with open(os.path.join(first.directory, "relayd.ini")) as f:
            config = f.read().replace(f"tcp:{first.port}:", f"tcp:{port}:")
        directory = tempfile.mkdtemp(prefix="relayd-second-")
        path = os.path.join(directory, "relayd.ini")
        with open(path, "w") as f:
            f.write(config)
        second = processes.Relayd(path, port, directory=directory)
        self.addCleanup(second.stop)
        self.assertNotEqual(second.process.wait(30), 0)
        self.assertIn(f"is held by another relayd (pid {first.pid})", second.log())
        self.assertEqual(first.get("/readyz")[0], 200)


class RedisPersistenceTests(TestCase):
    @defer.inlineCallbacks
    def test_kill_9_of_redis_and_the_node_loses_nothing_acknowledged_with_persistence(self):
        """
        With Redis run as docs/scaling.md says (appendonly yes, appendfsync always), kill -9 of Redis and
        of the relayd node that acknowledged 40 devices' scores, then both restarted (the node on an
        empty state dir, so only Redis can have kept them): every device keeps its identity and a
        judge sees every acknowledged score.
        """
        import signal

        from tests.redis import RedisServer

        redis = RedisServer(self, appendonly=True)
        redis.fsync_always = True
        yield redis.start()
        bus = f"\n[bus]\nbackend = redis\nurl = {redis.url}\n"
        node = processes.start(self, apps=bus)
        devices = {}
        for n in range(40):
            device = processes.WebSocket(node.port, "/clicker/ws")
            device.send("REGISTER")
            _, reply = device.receive()
            _, device_id, secret = reply.decode().split(" ")
            device.send(f"SCORE {1000 + n} {n * 3}")
            self.assertEqual(device.receive()[1], f"SCORED {1000 + n}".encode())
            devices[device_id] = (secret, f"SCORE {1000 + n} {device_id} {n * 3}")
            device.close()
        os.kill(node.pid, signal.SIGKILL)
        node.process.wait(10)
        redis.kill()
        yield redis.start()  # the same port and directory: it reads its append-only file
        again = processes.start(self, apps=bus)
        judge = processes.WebSocket(again.port, "/clicker/ws")
        judge.send("LISTEN " + " ".join(devices))
        seen = set()
        while len(seen) < len(devices) + 1:
            seen.add(judge.receive()[1].decode())
        self.assertEqual({line for line in seen if line.startswith("SCORE")}, {score for _, score in devices.values()})
        device_id, (secret, _) = next(iter(devices.items()))
        device = processes.WebSocket(again.port, "/clicker/ws")
        device.send(f"REGISTER {secret}")
        self.assertEqual(device.receive()[1].decode().split(" ")[:2], ["REGISTERED", device_id])
