"""A fast smoke run of the benchmark suite: every server starts, the generator drives every scenario, nothing is lost."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchSmokeTests(TestCase):
    def test_smoke_run(self):
        """bench/run.py --smoke drives relayd and the peers through every scenario, 1 to 3 relayd nodes on Redis included, and every delivery arrives."""
        missing = None
        if shutil.which("node") is None:
            missing = "node is not installed"
        elif shutil.which("cc") is None:
            missing = "a C compiler (cc) is needed to build the generator"
        elif not os.path.isdir(os.path.join(TOP, "bench", "node_modules", "ws")):
            missing = "the benchmark's npm packages are not installed (npm ci in bench)"
        elif shutil.which("redis-server") is None:
            missing = "redis-server is not installed (the cluster scenario starts one)"
        servers = ["relayd", "ws"]
        try:
            import picows  # noqa: F401

            servers.append("picows")
        except ImportError:
            pass
        if missing:
            if os.environ.get("RELAYD_REQUIRE_BENCH"):
                self.fail(f"benchmark smoke run required but cannot run: {missing}")
            raise SkipTest(missing)
        out = tempfile.mkdtemp(prefix="relayd-bench-")
        done = subprocess.run([sys.executable, os.path.join(TOP, "bench", "run.py"), "--smoke", "--servers",
                               ",".join(servers), "--out", out], capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        with open(os.path.join(out, "results.jsonl")) as f:
            results = [json.loads(line) for line in f]
        self.assertEqual({r["server"] for r in results}, set(servers))
        for r in results:
            self.assertNotIn("error", r)
            self.assertEqual((r.get("lost", 0), r.get("closed_early", 0), r["errors"]), (0, 0, 0), r)
        kinds = {r["scenario"].split(" ")[0] for r in results}
        self.assertEqual(kinds, {"fan-out", "latency", "connections", "churn", "gameroom", "cluster"})
        self.assertEqual(sorted(r["nodes"] for r in results if r["scenario"].startswith("cluster")), [1, 2, 3])
        for app in ("wikispeedruns refresh", "clicker scores"):
            self.assertEqual({r["server"] for r in results if r["scenario"].endswith(f"({app})")}, set(servers))
        for r in results:
            if r["scenario"].startswith(("fan-out", "cluster")):
                self.assertGreater(r["deliveries_per_s"], 0)
            elif r["scenario"].startswith("latency"):
                self.assertGreater(r["latency_samples"], 0)
            elif r["scenario"].startswith("connections"):
                self.assertEqual(r["handshakes"], r["connections"])
            elif r["scenario"].startswith("churn"):
                self.assertGreater(r["cycles"], 0)
            else:
                self.assertEqual(r["started_players"], r["players"])
                self.assertGreater(r["turns_received"], 0)
                self.assertEqual(r["game_errors"], 0)


class ReaderBenchSmokeTests(TestCase):
    def test_reader_bench_runs(self):
        """bench/readers.py drives Autobahn's parser and relayd's readers over the same frames and reports each as a ratio."""
        done = subprocess.run([sys.executable, os.path.join(TOP, "bench", "readers.py"), "--rounds", "1", "--frames", "640"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("| autobahn | ", done.stdout)
        self.assertIn("| python twin | ", done.stdout)
