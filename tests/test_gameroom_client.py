"""The gameroom browser client library's unit tests (tests/gameroom_client/, node:test), run from the suite."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, TestCase

HERE = os.path.dirname(os.path.abspath(__file__))


class GameroomClientLibraryTests(TestCase):
    def test_library_turn_logic_in_node(self):
        """node --test over tests/gameroom_client/: joining, packets and hashes, catch-up, reconnect, spectating, events."""
        node = shutil.which("node")
        if node is None:
            if os.environ.get("RELAYD_REQUIRE_BROWSER"):
                self.fail("node is required for the client library's tests but is not installed")
            raise SkipTest("node is not installed")
        done = subprocess.run([node, "--test", os.path.join(HERE, "gameroom_client", "test_client.mjs")],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout[-4000:] + done.stderr[-2000:])
        self.assertIn("# fail 0", done.stdout)
