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
        """--check validates the shipped config, prints each app's effective limits per listener, and exits 0."""
        import relayd

        result = run_twistd("-n", "relayd", "--config", os.path.join(ROOT, "etc", "relayd.ini"), "--check")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"relayd {relayd.__version__}: ", result.stdout)
        self.assertIn("OK", result.stdout)
        self.assertIn("  carparty at /carparty: message 1M, frame 1M,", result.stdout)
        self.assertIn("    server: 3000 messages/s burst 6000; 16M bytes/s burst 32M", result.stdout)
        self.assertIn("  groovejet at /groovejet: message 512K, frame 512K, keepalive 10/10 s", result.stdout)
        self.assertIn("trusted proxies 127.0.0.1/32, ::1/128", result.stdout)

    def test_version(self):
        """`twistd relayd --version` prints relayd's version."""
        import relayd

        result = run_twistd("relayd", "--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"relayd {relayd.__version__}\n")

    def test_endpoint_typo_is_one_line_at_check(self):
        """A misspelt endpoint keyword fails --check with one line naming it, not a traceback at start."""
        path = os.path.join(tempfile.mkdtemp(), "typo.ini")
        with open(path, "w") as f:
            f.write("[listener:main]\nendpoint = tcp:8080:interfce=127.0.0.1\n")
        for extra in (("--check",), ()):
            result = run_twistd("-n", "relayd", "--config", path, *extra)
            self.assertNotEqual(result.returncode, 0)
            self.assertEqual(result.stderr.strip().splitlines(), [
                f"relayd: {path}: [listener:main] endpoint: 'tcp:8080:interfce=127.0.0.1:backlog=1024': "
                "unknown option 'interfce'"])

    def test_port_in_use_leaves_no_pid_file(self):
        """A start that fails on a port in use exits with one line and leaves no twistd.pid behind."""
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            cwd = tempfile.mkdtemp(prefix="relayd-cwd-")
            path = os.path.join(cwd, "relayd.ini")
            with open(path, "w") as f:
                f.write(f"[listener:main]\nendpoint = tcp:{port}:interface=127.0.0.1\n")
            result = run_twistd("-n", "relayd", "--config", path, cwd=cwd)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("cannot listen on", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertFalse(os.path.exists(os.path.join(cwd, "twistd.pid")))


class DuplicateDefinitionLintTests(TestCase):
    def test_lint_finds_a_class_defined_twice(self):
        """.ci/duplicate_definitions.py names a test class or method defined twice, and passes the repository."""
        import importlib.util

        spec = importlib.util.spec_from_file_location("lint", os.path.join(ROOT, ".ci", "duplicate_definitions.py"))
        lint = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lint)
        source = "class A:\n    def t(self): pass\n    def t(self): pass\nclass A:\n    pass\n"
        self.assertEqual(lint.duplicates(source, "x.py"), [
            "x.py:3: A.t defined again (first at line 2)", "x.py:4: A defined again (first at line 1)"])
        self.assertEqual(lint.main([os.path.join(ROOT, "tests"), os.path.join(ROOT, "relayd")]), 0)
