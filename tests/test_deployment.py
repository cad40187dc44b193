"""
docs/deployment.md's nginx and HAProxy configurations, run as written (ports, certificate and
scratch paths put in) in front of relayd with the shipped proxy settings: a WebSocket opens
through each, and relayd sees the client's address (the client connects from 127.0.0.2), not the
proxy's. Needs the nginx and haproxy binaries; without them the tests skip and say so, unless
RELAYD_REQUIRE_PROXIES=1 (as in .ci/run) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from twisted.internet import defer, ssl
from twisted.trial.unittest import SkipTest, TestCase

from tests.live import Daemon, free_port, open_ws, port_open, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CERT = os.path.join(ROOT, "etc", "examples", "tls", "localhost.crt")
KEY = os.path.join(ROOT, "etc", "examples", "tls", "localhost.key")

RELAYD = """
[listener:main]
endpoint = tcp:{port}:interface=127.0.0.1
trusted_proxies = 127.0.0.1, ::1

[app:testee]
listeners = main
path = /echo
"""


def doc_block(language: str) -> str:
    with open(os.path.join(ROOT, "docs", "deployment.md")) as f:
        text = f.read()
    match = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert match, f"docs/deployment.md has no {language} block"
    return match.group(1)


def need(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        if os.environ.get("RELAYD_REQUIRE_PROXIES") == "1":
            raise AssertionError(f"{binary} is required (RELAYD_REQUIRE_PROXIES=1) but not installed")
        raise SkipTest(f"{binary} is not installed (apt-get install {binary})")
    return path


def listening(port: int, process: subprocess.Popen, what: str) -> defer.Deferred:
    """Fires once the proxy accepts connections on port; fails with its output if it exits first."""

    def up():
        if process.poll() is not None:
            raise AssertionError(f"{what} exited: {process.stdout.read() if process.stdout else ''}")
        return port_open(port)

    return until(up, f"{what} to listen on {port}", timeout=15, step=0.05)


class ProxyDeploymentTests(TestCase):
    timeout = 60

    def setUp(self):
        self.scratch = tempfile.mkdtemp(prefix="relayd-proxy-")
        self.addCleanup(shutil.rmtree, self.scratch, True)
        self.relayd_port = free_port()
        self.daemon = Daemon(self, RELAYD.format(port=self.relayd_port))
        self.front = free_port()

    def _start(self, argv: list[str], what: str) -> defer.Deferred:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def stop():
            process.terminate()
            process.wait(10)

        self.addCleanup(stop)
        return listening(self.front, process, what)

    def _client_tls(self):
        with open(CERT) as f:
            authority = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS("localhost", trustRoot=authority)

    @defer.inlineCallbacks
    def _check_through_proxy(self):
        client = yield open_ws(self.front, "/echo", tls_options=self._client_tls(), bind="127.0.0.2",
                               headers={"X-Forwarded-For": "192.0.2.66"})
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport else None)
        client.send_text("through the proxy")
        yield until(lambda: client.messages == ["through the proxy"], "the echo through the proxy")
        [websocket] = self.daemon.service.listeners["main"].tracker.websockets()
        # the client's own X-Forwarded-For is not believed: the address the proxy saw is
        self.assertEqual(websocket.client_address, "127.0.0.2")

    def test_nginx_header_path(self):
        """nginx as documented: the WebSocket works and relayd sees the client's address from X-Forwarded-For."""
        nginx = need("nginx")
        site = doc_block("nginx")
        site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{self.front} ssl;")
        site = site.replace("/etc/ssl/games.example/fullchain.pem", CERT).replace("/etc/ssl/games.example/privkey.pem", KEY)
        site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{self.relayd_port};")
        conf = os.path.join(self.scratch, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                f"daemon off;\npid {self.scratch}/nginx.pid;\nerror_log {self.scratch}/error.log;\n"
                f"events {{}}\nhttp {{\naccess_log off;\nclient_body_temp_path {self.scratch};\n"
                f"proxy_temp_path {self.scratch};\n{site}\n}}\n"
            )
        return self._start([nginx, "-c", conf, "-p", self.scratch], "nginx").addCallback(
            lambda _: self._check_through_proxy())

    def test_haproxy_proxy_protocol_path(self):
        """HAProxy as documented (PROXY v2): the WebSocket works and relayd sees the client's address."""
        haproxy = need("haproxy")
        pem = os.path.join(self.scratch, "games.pem")
        with open(pem, "w") as out:
            for path in (CERT, KEY):
                with open(path) as f:
                    out.write(f.read())
        conf = doc_block("haproxy")
        conf = conf.replace("bind :443 ssl crt /etc/haproxy/games.example.pem", f"bind 127.0.0.1:{self.front} ssl crt {pem}")
        conf = conf.replace("server relayd 127.0.0.1:8080", f"server relayd 127.0.0.1:{self.relayd_port}")
        path = os.path.join(self.scratch, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(conf)
        return self._start([haproxy, "-db", "-f", path], "haproxy").addCallback(
            lambda _: self._check_through_proxy())
