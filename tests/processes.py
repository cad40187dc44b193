"""
relayd as a process of its own, for the tests and figures whose behaviour is a process's (memory,
descriptors, the clock, the disk): the checkout's code under twistd, the shipped configuration with
only what a test names changed, and plain blocking clients that speak WebSocket byte by byte.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "etc", "relayd.ini")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_config(directory: str, port: int, relayd: str = "", limits: str = "", apps: str = "") -> str:
    """etc/relayd.ini with its port, its state dir in `directory`, and the lines given added to sections."""
    with open(SHIPPED) as f:
        text = f.read()
    text = text.replace("endpoint = tcp:8080:interface=127.0.0.1", f"endpoint = tcp:{port}:interface=127.0.0.1")
    text = text.replace("state_dir = var/relayd", f"state_dir = {os.path.join(directory, 'state')}\n{relayd}")
    text = text.replace("[limits]\n", f"[limits]\n{limits}\n")
    text += apps
    path = os.path.join(directory, "relayd.ini")
    with open(path, "w") as f:
        f.write(text)
    return path


class Relayd:
    """`twistd -n relayd --config CONFIG` on the checkout's code; stopped (SIGTERM, then SIGKILL) by stop()."""

    def __init__(self, config: str, port: int, *, env: dict | None = None, preexec_fn=None, directory: str | None = None):
        self.port = port
        self.directory = directory or os.path.dirname(config)
        self.log_path = os.path.join(self.directory, "relayd.log")
        self._log = open(self.log_path, "wb")
        environment = {**os.environ, **(env or {})}
        # the checkout's relayd and its twisted/plugins dropin (found on sys.path), not an installed copy
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (environment.get("PYTHONPATH", ""), ROOT) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "--pidfile=", "relayd", "--config", config],
            cwd=self.directory, stdout=self._log, stderr=subprocess.STDOUT, env=environment, preexec_fn=preexec_fn,
        )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200; fails saying what the log says when it does not within timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"relayd exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"relayd not ready within {timeout} s:\n{self.log()}")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels) -> float:
        """The value of one sample of /metrics (0 when it is not there)."""
        text = self.get("/metrics")[1]
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
            if match and match.group(1) == name and ",".join(sorted((match.group(2) or "").split(","))) == want:
                return float(match.group(3))
        return 0.0

    def rss(self) -> int:
        """Resident memory of the process, in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def start(testcase, relayd: str = "", limits: str = "", apps: str = "", **kwargs) -> Relayd:
    """The shipped configuration with the lines given, started and ready; stopped when the test ends."""
    directory = tempfile.mkdtemp(prefix="relayd-process-")
    port = free_port()
    daemon = Relayd(shipped_config(directory, port, relayd, limits, apps), port, directory=directory, **kwargs)
    testcase.addCleanup(daemon.stop)
    daemon.wait_ready()
    return daemon


# ---- a WebSocket client in plain blocking sockets --------------------------------------------------


class WebSocket:
    """A client connection: the handshake, masked frames out (a zero mask: servers do not check it), frames in."""

    def __init__(self, port: int, path: str, *, source: str = "127.0.0.1", receive_buffer: int = 0,
                 timeout: float = 10.0):
        self.sock = socket.socket()
        if receive_buffer:
            # a deaf reader's socket: the kernel holds little for it before the sender blocks
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(1)  # byte by byte: nothing of a first frame is read with the head
            if not data:
                raise ConnectionError(f"closed during the handshake: {head!r}")
            head += data
        self.status = int(head.split(b" ", 2)[1])
        self._buffer = b""

    def send(self, payload: bytes | str, binary: bool = False) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        first = 0x82 if binary else 0x81
        n = len(data)
        if n < 126:
            header = bytes((first, 0x80 | n))
        elif n < 65536:
            header = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
        self.sock.sendall(header + b"\0\0\0\0" + data)

    def send_json(self, value) -> None:
        self.send(json.dumps(value))

    def receive(self) -> tuple[int, bytes]:
        """The next frame's (opcode, payload); a close frame's opcode is 8."""
        def need(count):
            while len(self._buffer) < count:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self._buffer += data
            taken, self._buffer = self._buffer[:count], self._buffer[count:]
            return taken

        first, second = need(2)
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(need(2), "big")
        elif n == 127:
            n = int.from_bytes(need(8), "big")
        return first & 0x0F, need(n)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def mount_tmpfs(size: str) -> tuple[str | None, str]:
    """A fresh tmpfs of `size` mounted on a new directory: (its path, '') or (None, why it could not be)."""
    path = tempfile.mkdtemp(prefix="relayd-tmpfs-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return None, mounted.stderr.strip() or f"mount exited {mounted.returncode}"
    return path, ""


def unmount(path: str) -> None:
    subprocess.run(["umount", "-l", path], capture_output=True)
