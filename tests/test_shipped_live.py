"""
The shipped configuration under real load: `twistd -n relayd` started from etc/relayd.ini with only
the port changed, in a process of its own, driven over real sockets on 127.0.0.1 by clients as the
deployed ones behave and by a reverse proxy's traffic (1000 users behind one address, by
X-Forwarded-For and by PROXY protocol).

Every wait here waits for a condition, bounded by a deadline that fails the test with what it
waited for.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.live import free_port, http_get, open_ws, paced, port_open, until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class ShippedDaemon:
    """relayd from the shipped etc/relayd.ini, port changed, in a working directory of its own."""

    def __init__(self):
        self.port = free_port()
        self.cwd = tempfile.mkdtemp(prefix="relayd-shipped-")
        with open(os.path.join(ROOT, "etc", "relayd.ini")) as f:
            text = f.read()
        assert "endpoint = tcp:8080:interface=127.0.0.1" in text
        with open(os.path.join(self.cwd, "relayd.ini"), "w") as f:
            f.write(text.replace("tcp:8080:", f"tcp:{self.port}:"))
        self.log = open(os.path.join(self.cwd, "relayd.log"), "w")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "relayd", "--config", "relayd.ini"],
            cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def ready(self) -> defer.Deferred:
        """Fires once /readyz answers 200; fails with relayd's output if it exits or never gets there."""

        def answered():
            if self.process.poll() is not None:
                raise AssertionError(f"relayd exited: {self.output()}")
            return port_open(self.port).addCallback(
                lambda up: up and http_get(self.port, "/readyz").addCallback(lambda answer: answer[0] == 200))

        return until(answered, "relayd to be ready", timeout=30, step=0.05)

    def output(self) -> str:
        self.log.flush()
        with open(os.path.join(self.cwd, "relayd.log")) as f:
            return f.read()[-4000:]

    def metric(self, name: str, labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(f"{name}{{{labels}}} "):
                    return float(line.split()[-1])
        return 0.0

    def post(self, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.cwd, ignore_errors=True)


def proxy_v1(source: str) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 40000 8080\r\n".encode()


def proxy_v2(source: str) -> bytes:
    body = ipaddress.ip_address(source).packed + ipaddress.ip_address("127.0.0.1").packed + struct.pack("!HH", 40000, 8080)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body




@defer.inlineCallbacks
def open_many(port: int, path: str, options: list[dict], batch: int = 100):
    clients = []
    for start in range(0, len(options), batch):
        opened = yield defer.gatherResults(
            [open_ws(port, path, **o) for o in options[start:start + batch]], consumeErrors=True)
        clients.extend(opened)
    return clients


class ShippedUnderLoadTests(TestCase):
    timeout = 240

    def setUp(self):
        self.daemon = ShippedDaemon()
        self.addCleanup(self.daemon.stop)
        self.clients = []
        self.addCleanup(self._close_clients)
        return self.daemon.ready()

    def _close_clients(self):
        for c in self.clients:
            if c.transport is not None:
                c.transport.abortConnection()

    @defer.inlineCallbacks
    def _broadcast_to(self, options: list[dict]):
        subscribers = yield open_many(self.daemon.port, "/wikispeedruns", options)
        self.clients.extend(subscribers)
        received = self.daemon.metric("relayd_messages_received_total", 'app="wikispeedruns"')
        for c in subscribers:
            c.send_json({"type": "leaderboard", "lobby_id": 77, "prompt_id": 1})
        yield until(lambda: self.daemon.metric("relayd_messages_received_total", 'app="wikispeedruns"')
                    >= received + len(subscribers), "relayd to read every subscription")
        trigger = yield open_ws(self.daemon.port, "/wikispeedruns")
        self.clients.append(trigger)
        trigger.send_json({"type": "leaderboard_update", "lobby_id": 77, "prompt_id": 1})
        yield until(lambda: all(c.messages == ["refresh"] for c in subscribers),
                    f"refresh at all {len(subscribers)} subscribers "
                    f"({sum(c.messages == ['refresh'] for c in subscribers)} so far)")
        self.assertFalse(any(c.closed for c in subscribers))

    @defer.inlineCallbacks
    def test_1000_users_through_one_proxy_by_x_forwarded_for(self):
        """1000 users arriving through one proxy on this host (X-Forwarded-For) all connect and get a broadcast."""
        options = [{"headers": {"X-Forwarded-For": f"198.51.{n // 250}.{n % 250 + 1}"}} for n in range(1000)]
        yield self._broadcast_to(options)

    @defer.inlineCallbacks
    def test_1000_users_through_one_proxy_by_proxy_protocol(self):
        """1000 users through one proxy speaking the PROXY protocol, v1 and v2, all connect and get a broadcast."""
        options = [{"preface": (proxy_v1 if n % 2 else proxy_v2)(f"203.0.{n // 250}.{n % 250 + 1}")}
                   for n in range(1000)]
        yield self._broadcast_to(options)

    @defer.inlineCallbacks
    def test_origins_of_devices_and_files_on_every_app(self):
        """Origin: Espruino and Origin: null open on every app of the shipped config."""
        status, created = self.daemon.post("/gameroom/create", {"engine": "counter@1", "seed": 1, "players": 2})
        self.assertEqual(status, 201, created)
        for path in ("/wikispeedruns", "/carparty/ws", "/clicker/ws", "/groovejet", f"/gameroom/watch/{created['id']}"):
            for origin in ("Espruino", "null"):
                c = yield open_ws(self.daemon.port, path, origin=origin)
                self.clients.append(c)
                self.assertTrue(c.opened, (path, origin))

    @defer.inlineCallbacks
    def test_carparty_game_server_at_frame_rate_then_a_track(self):
        """60 frames/s to 8 phones and 30 inputs/s back for 2 s, then 300 track chunks and a 100 KB frame, in order."""
        port = self.daemon.port
        server = yield open_ws(port, "/carparty/ws")
        self.clients.append(server)
        server.send_json({"action": "login_server", "server_code": "LIVE"})
        # nothing is ever sent back for a login: the room count says when the code is taken
        yield until(lambda: self.daemon.metric("relayd_rooms", 'app="carparty"') >= 1, "the server code to be taken")
        phones = yield open_many(port, "/carparty/ws", [{} for _ in range(8)])
        self.clients.extend(phones)
        for n, phone in enumerate(phones):
            phone.send_json({"action": "login_client", "server_code": "LIVE", "client_id": str(500 + n)})
        yield until(lambda: len(server.messages) >= 8, "the game server to hear 8 connects")
        expected = {n: [] for n in range(8)}
        inputs = 0

        def frame_to_every_phone(frame: int) -> None:
            nonlocal inputs
            for n in range(8):
                message = {"receiver_id": str(500 + n), "frame": frame, "state": "s" * 200}
                server.send_json(message)
                expected[n].append(message)
            if frame % 2 == 0:  # phones answer at half the frame rate: 30 inputs a second
                for phone in phones:
                    phone.send_json({"steer": frame})
                    inputs += 1

        yield paced(60, 120, frame_to_every_phone)  # two seconds at 60 frames a second
        for chunk in range(300):
            message = {"chunk": chunk, "data": "t" * 5000}
            server.send_json(message)
            for n in range(8):
                expected[n].append(message)
        big = {"big": "b" * 100_000}
        server.send_json(big)
        for n in range(8):
            expected[n].append(big)
        yield until(lambda: all(len(p.messages) >= len(expected[n]) for n, p in enumerate(phones)) or any(
            p.closed for p in phones) or server.closed, "every frame at every phone", timeout=60)
        self.assertFalse(server.closed, (server.close_code, server.close_reason))
        for n, phone in enumerate(phones):
            self.assertFalse(phone.closed, (phone.close_code, phone.close_reason))
            self.assertEqual(phone.json_messages(), expected[n])
        yield until(lambda: sum("steer" in m for m in server.json_messages()) >= inputs, "every phone input")

    @defer.inlineCallbacks
    def test_groovejet_100_kb_snapshot(self):
        """A host's 100 KB snapshot is stored (snapshotStored), not closed 1009."""
        host = yield open_ws(self.daemon.port, "/groovejet")
        self.clients.append(host)
        host.send_json({"type": "createRoom"})
        yield host.messages_at_least(2)
        host.send_json({"type": "snapshot", "data": {"world": "w" * 100_000}})
        yield until(lambda: {"type": "snapshotStored"} in host.json_messages() or host.closed, "snapshotStored")
        self.assertFalse(host.closed, (host.close_code, host.close_reason))

    @defer.inlineCallbacks
    def test_wikispeedruns_lobby_of_200(self):
        """200 users waiting in one lobby all end with the full roster."""
        users = yield open_many(self.daemon.port, "/wikispeedruns", [{} for _ in range(200)])
        self.clients.extend(users)
        for n, c in enumerate(users):
            c.send_json({"type": "wait_start", "user": f"runner{n}", "lobby_id": 3, "prompt_id": 9})

        def full(c):
            updates = c.json_messages()
            return bool(updates) and len(updates[-1]["users"]) == 200

        yield until(lambda: all(full(c) for c in users) or any(c.closed for c in users), "200 names at all 200")
        self.assertFalse(any(c.closed for c in users), [(c.close_code, c.close_reason) for c in users if c.closed][:3])

    @defer.inlineCallbacks
    def test_clicker_40_devices_5_judges(self):
        """40 devices at 10 scores/s for 2 s: every score acknowledged and seen by each of 5 judges' screens."""
        port = self.daemon.port
        devices = yield open_many(port, "/clicker/ws", [{} for _ in range(40)])
        self.clients.extend(devices)
        for d in devices:
            d.send_text("REGISTER")
        yield until(lambda: all(d.messages for d in devices), "REGISTERED at every device")
        ids = [d.messages[0].split(" ")[1] for d in devices]
        judges = yield open_many(port, "/clicker/ws", [{} for _ in range(5)])
        self.clients.extend(judges)
        for j in judges:
            j.send_text("LISTEN " + " ".join(ids))
        yield until(lambda: all(j.messages for j in judges), "CONNECT at every judge")
        def scores(tick: int) -> None:
            for n, d in enumerate(devices):
                d.send_text(f"SCORE {tick * 100} {tick + n}")

        yield paced(10, 20, scores)  # two seconds at 10 scores a second per device
        yield until(lambda: all(sum(m.startswith("SCORED") for m in d.messages) == 20 for d in devices),
                    "20 SCORED at every device")
        yield until(lambda: all(sum(m.startswith("SCORE ") for m in j.messages) >= 800 for j in judges),
                    "800 scores at every judge")

    @defer.inlineCallbacks
    def test_gameroom_8_players_at_the_maximum_turn_rate(self):
        """8 players answering at once play 120 turns in agreement, nobody closed."""
        from tests.gameroom_reference import ReferencePlayer
        from tests.live import LivePlayer

        status, created = self.daemon.post("/gameroom/create", {"engine": "counter@1", "seed": 5, "players": 8})
        self.assertEqual(status, 201, created)
        players = []
        for n in range(8):
            c = yield open_ws(self.daemon.port, f"/gameroom/play/{created['id']}")
            self.clients.append(c)
            player = LivePlayer(c, ReferencePlayer(name=f"p{n}"))
            c.send_json(player.player.join())
            players.append(player)
        yield until(lambda: all(p.player.executed >= 120 for p in players) or any(p.client.closed for p in players),
                    "120 turns executed by all 8", timeout=60)
        for p in players:
            self.assertFalse(p.client.closed, (p.client.close_code, p.client.close_reason))
        self.assertEqual(len({p.player.hashes[119] for p in players}), 1)
