"""
A private redis-server for the tests that need one: started on a free 127.0.0.1 port with nothing
kept on disk, killed and restarted on the same port by fault tests, stopped by the test's cleanup.

Without the redis-server binary those tests skip and say why; .ci/run sets RELAYD_REQUIRE_REDIS=1,
which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest

from tests.live import free_port, later


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        why = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("RELAYD_REQUIRE_REDIS"):
            raise AssertionError(why + ", and RELAYD_REQUIRE_REDIS is set")
        raise SkipTest(why)
    return binary


class RedisServer:
    """tls=(key file, certificate chain file) serves TLS only; password sets requirepass."""

    def __init__(self, testcase, tls: tuple[str, str] | None = None, password: str | None = None,
                 appendonly: bool = False):
        self.binary = redis_binary()
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="relayd-redis-")
        self.process: subprocess.Popen | None = None
        self.tls = tls
        self.password = password
        self.appendonly = appendonly
        self.fsync_always = False  # with appendonly: appendfsync always (every write on disk before the reply)
        testcase.addCleanup(self.kill)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _options(self) -> list[str]:
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                   "--appendfsync", "always" if self.fsync_always else "everysec", "--dir", self.directory,
                   "--logfile", os.path.join(self.directory, "redis.log")]
        if self.tls is None:
            options += ["--port", str(self.port)]
        else:
            key, chain = self.tls
            options += ["--port", "0", "--tls-port", str(self.port), "--tls-key-file", key, "--tls-cert-file", chain,
                        "--tls-auth-clients", "no"]
        if self.password is not None:
            options += ["--requirepass", self.password]
        return options

    @defer.inlineCallbacks
    def start(self):
        self.process = subprocess.Popen(
            [self.binary, *self._options()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(Protocol))
            except Exception:
                if self.process.poll() is not None:
                    raise AssertionError(f"redis-server exited with {self.process.returncode}")
                yield later(0.025)
            else:
                proto.transport.loseConnection()
                return
        raise AssertionError("redis-server did not start listening within 5 s")

    def kill(self):
        """SIGKILL: Redis vanishes as in a crash, connections reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None
