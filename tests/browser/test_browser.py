"""
End to end with the client relayd's users have: headless Chromium (Debian's chromium, driven by
playwright-core) against a relayd started by the test with twistd on loopback, over ws and wss, using
each app's demo page. Screenshots of the demo pages are kept in tests/browser/artifacts/.

Without Chromium or the npm packages the tests skip and say why; .ci/run sets RELAYD_REQUIRE_BROWSER=1,
which turns that skip into a failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SkipTest, TestCase

from tests.live import free_port
from tests.tlsutil import TestCA

HERE = os.path.dirname(os.path.abspath(__file__))
ARTIFACTS = os.path.join(HERE, "artifacts")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TOKEN = "browser-create-token-0123456789"

CONFIG = """
[relayd]
state_dir = {state}
drain_timeout = 2

[listener:main]
endpoint = tcp:{http}:interface=127.0.0.1

[listener:secure]
endpoint = ssl:{https}:interface=127.0.0.1:privateKey={key}:certKey={cert}:extraCertChain={chain}
health = no
metrics = no

[app:testee]
listeners = secure
path = /echo
demo = yes
allowed_origins = https://localhost:{https}
max_message_size = 1M
max_frame_size = 1M

[app:wikispeedruns]
listeners = main
path = /wikispeedruns
demo = yes

[app:groovejet]
listeners = main
path = /groovejet
demo = yes

[app:carparty]
listeners = main
path = /carparty
demo = yes

[app:gameroom]
listeners = main
path = /gameroom
demo = yes
create_token = {token}
lag_tolerance = 2
"""


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not os.path.isdir(os.path.join(HERE, "node_modules", "playwright-core")):
        return "playwright-core is not installed (npm ci in tests/browser)"
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return "cannot make a network namespace (unshare -n) to keep the browser on loopback"
    return None


def _spki(cert_path: str) -> str:
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class BrowserTests(TestCase):
    timeout = 180

    def setUp(self):
        missing = _missing()
        if missing:
            if os.environ.get("RELAYD_REQUIRE_BROWSER"):
                self.fail(f"browser tests required but cannot run: {missing}")
            raise SkipTest(missing)
        directory = tempfile.mkdtemp(prefix="relayd-browser-")
        ca = TestCA(directory)
        key, cert = ca.issue("localhost")
        self.http, self.https = free_port(), free_port()
        path = os.path.join(directory, "relayd.ini")
        with open(path, "w") as f:
            f.write(CONFIG.format(state=os.path.join(directory, "state"), http=self.http, https=self.https,
                                  key=key, cert=cert, chain=ca.chain_path, token=TOKEN))
        self.config_path = path
        self.spki = _spki(cert)
        os.makedirs(ARTIFACTS, exist_ok=True)

    def drive(self, case: str, timeout: float = 100) -> dict:
        config = {"http": f"http://127.0.0.1:{self.http}", "https": f"https://localhost:{self.https}",
                  "spki": self.spki, "token": TOKEN, "artifacts": ARTIFACTS}
        # relayd and Chromium share a network namespace of their own with loopback only
        command = ["unshare", "-n", "bash", os.path.join(HERE, "netns.sh"), TWISTD, self.config_path, str(self.http),
                   "node", os.path.join(HERE, "run.mjs"), case, json.dumps(config)]
        done = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        self.assertTrue(lines, done.stderr[-2000:])
        result = json.loads(lines[-1])
        self.assertTrue(result["ok"], json.dumps({k: result.get(k) for k in ("error", "pageLogs", "console")})[-6000:])
        return result

    def test_wss_large_messages_and_origin(self):
        """Over wss a page echoes 70 KB and closes 1000; a page from an origin not on the list is refused."""
        result = self.drive("wss")
        self.assertTrue(result["echoed"])
        self.assertEqual(result["closeCode"], 1000)
        self.assertFalse(result["foreign"]["opened"])
        self.assertEqual(result["foreign"]["closeCode"], 1006)

    def test_wikispeedruns_lobby_and_leaderboard(self):
        """Two lobby pages start on the host's start; a leaderboard page refreshes on an open-send-close trigger."""
        result = self.drive("wikispeedruns")
        self.assertEqual(result["users"], ["host", "guest"])
        self.assertEqual(result["started"], [True, True])
        self.assertEqual(result["refreshes"], 1)

    def test_groovejet_webrtc_data_channel_and_resume(self):
        """Host and guest pages signal through relayd and open a real RTCDataChannel; a reloaded host resumes."""
        result = self.drive("groovejet")
        self.assertIn("hello from guest", result["hostReceived"])
        self.assertIn("hello from host", result["guestReceived"])
        self.assertTrue(result["resumed"]["isHost"])
        self.assertTrue(result["sameClientId"])

    def test_carparty_targeted_and_broadcast_in_order(self):
        """One game page and three phones: broadcast and targeted frames arrive where they should, in order."""
        result = self.drive("carparty")
        self.assertEqual(result["phones"][0], [{"b": 1}, {"b": 2}])
        self.assertEqual(result["phones"][1], [{"b": 1}, {"receiver_id": "2", "t": 1}, {"b": 2}])
        self.assertEqual(result["phones"][2], [{"b": 1}, {"b": 2}])
        self.assertIn({"steer": 1, "client_id": "1"}, result["server"])
        self.assertEqual(sorted(f["client_id"] for f in result["server"] if f.get("action") == "connect"), ["1", "2", "3"])

    def test_gameroom_four_pages_play_30_seconds_and_agree(self):
        """Four pages play 30 s of the snakes demo on the client library and agree; a reloaded page and a spectator agree too."""
        result = self.drive("gameroom", timeout=170)
        self.assertEqual(result["reloadedAs"], "p2")
        self.assertEqual(len(set(result["hashes"])), 1, result["hashes"])
        self.assertIsNotNone(result["hashes"][0])
        self.assertIsNone(result["halted"])

    def test_gameroom_a_stalled_page_is_shown_lagging_then_substituted(self):
        """A page whose uplink stalls is shown to the other as lagging, then its empty commands stand in."""
        result = self.drive("gameroom_lag")
        self.assertIn(result["slow"], result["lagging"])
        self.assertIn(result["slow"], result["substituted"])

    def test_gameroom_a_tampering_page_halts_the_room_naming_itself(self):
        """A page that changes its own state halts the room; both pages name that page."""
        result = self.drive("gameroom_tamper")
        for halted in result["halted"]:
            self.assertEqual(halted["diverged"], [result["cheat"]])
