"""A fast smoke run of the benchmark suite: every server starts, the generator drives it, nothing is lost."""

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
        """bench/run.py --smoke drives relayd and the peers end to end and every delivery arrives."""
        missing = None
        if shutil.which("node") is None:
            missing = "node is not installed"
        elif not os.path.isdir(os.path.join(TOP, "bench", "node_modules", "ws")):
            missing = "the benchmark's npm packages are not installed (npm ci in bench)"
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
            self.assertEqual((r["lost"], r["closed_early"]), (0, 0), r)
            self.assertGreater(r["deliveries_per_s"], 0)
