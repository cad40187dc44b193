"""The installed twistd plugin, as an operator runs it (subprocesses, outside the checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def run_twistd(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    # run outside the checkout, so only the installed package can provide the plugin
    return subprocess.run(
        [TWISTD, *args], cwd=cwd or tempfile.mkdtemp(prefix="relayd-cwd-"), capture_output=True, text=True, timeout=60
    )


class PluginTests(TestCase):
    def test_twistd_lists_relayd(self):
        """After the README's install, `twistd --help` lists the relayd plugin."""
        result = run_twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"\n\s+relayd\s+")

    def test_broken_config_one_line_non_zero(self):
        """A broken config makes twistd exit non-zero with one line naming file, section and key."""
        path = os.path.join(tempfile.mkdtemp(), "broken.ini")
        with open(path, "w") as f:
            f.write("[listener:main]\nendpoint = tcp:8080\n[limits]\nrate_limit = lots\n")
        result = run_twistd("-n", "relayd", "--config", path)
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(lines, [f"relayd: {path}: [limits] rate_limit: 'lots' is not a number"])

    def test_check_option(self):
        """--check validates the shipped config and exits 0 without starting."""
        result = run_twistd("-n", "relayd", "--config", os.path.join(ROOT, "etc", "relayd.ini"), "--check")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("OK", result.stdout)
