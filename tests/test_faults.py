"""
Fault tests on real sockets: floods, a stop under load, and a hard kill with restart from the
durable store.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from io import BytesIO

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from tests.gameroom_reference import ReferencePlayer
from relayd.ws import closecodes
from tests.live import Daemon, LivePlayer, free_port, open_ws, port_open, until, write_config

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Raw(protocol.Protocol):
    def __init__(self):
        self.lost = defer.Deferred()
        self.data = b""

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(None)


def raw_connect(port: int, data: bytes = b"") -> defer.Deferred:
    d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw())

    def connected(p):
        if data:
            p.transport.write(data)
        return p

    return d.addCallback(connected)


ECHO = """
[listener:main]
endpoint = tcp:0:interface=127.0.0.1
max_connections_per_address = {per_address}

[limits]
rate_limit = 0
byte_rate = 0

[app:testee]
listeners = main
path = /echo
"""


class FloodTests(TestCase):
    @defer.inlineCallbacks
    def test_connection_flood_from_one_address_is_limited(self):
        """A flood from one address is cut at the per-address cap; another address still connects and is served."""
        daemon = Daemon(self, ECHO.format(per_address=20))
        port = daemon.port()
        flood = yield defer.gatherResults([raw_connect(port) for _ in range(40)])
        self.addCleanup(lambda: [p.transport.abortConnection() for p in flood])
        yield until(lambda: sum(p.lost.called for p in flood) >= 20, "the flood past the cap to be cut")
        self.assertEqual(sum(p.lost.called for p in flood), 20)
        other = yield open_ws(port, "/echo", bind="127.0.0.2")
        other.send_text("served")
        self.assertEqual((yield other.messages_at_least(1)), ["served"])
        with self.assertRaises(ConnectionError):
            yield open_ws(port, "/echo")
        other.sendClose(1000)
        yield other.when_closed

    @defer.inlineCallbacks
    def test_never_finishing_handshakes_do_not_block_others(self):
        """300 connections that never finish their request head do not keep a normal client from its echo."""
        daemon = Daemon(self, ECHO.format(per_address=0))
        port = daemon.port()
        flood = yield defer.gatherResults(
            [raw_connect(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n") for _ in range(300)]
        )
        self.addCleanup(lambda: [p.transport.abortConnection() for p in flood])
        client = yield open_ws(port, "/echo")
        client.send_text("still quick")
        self.assertEqual((yield client.messages_at_least(1)), ["still quick"])
        self.assertEqual(len(daemon.service.listeners["main"].tracker), 301)
        client.sendClose(1000)
        yield client.when_closed


CLICKER = """
[listener:main]
endpoint = tcp:0:interface=127.0.0.1

[limits]
rate_limit = 0
byte_rate = 0

[app:clicker]
listeners = main
path = /clicker
"""


class Device:
    """A scoring device that sends its next score as soon as the previous one is acknowledged."""

    def __init__(self, client):
        self.client = client
        self.acked = None
        self.ts = 0
        self.device_id = self.secret = None
        client.on_message = self.on_message
        client.send_text("REGISTER")

    def on_message(self, line):
        parts = line.split(" ")
        if parts[0] == "REGISTERED":
            self.device_id, self.secret = parts[1], parts[2]
            self.next()
        elif parts[0] == "SCORED":
            self.acked = int(parts[1])
            self.next()

    def next(self):
        self.ts += 1
        self.client.send_text(f"SCORE {self.ts} {self.ts * 10}")


class StopUnderLoadTests(TestCase):
    @defer.inlineCallbacks
    def test_stop_under_load_loses_no_acknowledged_score(self):
        """Stopping while devices score: every client gets 1001 and every acknowledged score is there after restart."""
        daemon = Daemon(self, CLICKER)
        clients = yield defer.gatherResults([daemon.connect("/clicker/ws") for _ in range(10)])
        devices = [Device(c) for c in clients]
        yield until(lambda: all(d.acked is not None and d.acked >= 20 for d in devices), "20 scores acknowledged each")
        yield daemon.stop()
        codes = yield defer.gatherResults([c.when_closed for c in clients])
        self.assertEqual(set(codes), {closecodes.GOING_AWAY})

        again = Daemon(self, CLICKER, directory=daemon.directory)
        for device in devices:
            self.assertIsNotNone(device.acked)
            client = yield again.connect("/clicker/ws")
            client.send_text(f"REGISTER {device.secret}")
            yield client.messages_at_least(1)
            self.assertEqual(client.messages[0], f"REGISTERED {device.device_id} {device.secret}")
            judge = yield again.connect("/clicker/ws")
            judge.send_text(f"LISTEN {device.device_id}")
            lines = yield judge.messages_at_least(2)
            stored_ts = int(lines[1].split(" ")[1])
            self.assertGreaterEqual(stored_ts, device.acked)
            for c in (client, judge):
                c.sendClose(1000)
                yield c.when_closed
        yield again.stop()


KILL_CONFIG = """
[listener:main]
endpoint = tcp:{port}:interface=127.0.0.1

[limits]
rate_limit = 0
byte_rate = 0

[app:clicker]
listeners = main
path = /clicker

[app:groovejet]
listeners = main
path = /groovejet

[app:gameroom]
listeners = main
path = /gameroom
create_token = kill-test-token-0123456789
persist_interval = 0.05
"""


class HardKillTests(TestCase):
    def _start(self, config_path, port):
        process = subprocess.Popen([TWISTD, "--nodaemon", "--pidfile=", "relayd", "--config", config_path],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   cwd=os.path.dirname(config_path))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    @defer.inlineCallbacks
    def _wait_port(self, port):
        yield until(lambda: port_open(port), "relayd to listen", timeout=10, step=0.05)

    @defer.inlineCallbacks
    def test_kill_9_and_restart(self):
        """After kill -9 and a restart, clicker identities, groovejet snapshots and gameroom games come back."""
        directory = tempfile.mkdtemp(prefix="relayd-kill-")
        port = free_port()
        config = write_config(directory, KILL_CONFIG.format(port=port))
        process = self._start(config, port)
        yield self._wait_port(port)

        device = yield open_ws(port, "/clicker/ws")
        device.send_text("REGISTER")
        _, device_id, secret = (yield device.messages_at_least(1))[0].split(" ")
        device.send_text("SCORE 5 7")
        self.assertEqual((yield device.messages_at_least(2))[1], "SCORED 5")

        host = yield open_ws(port, "/groovejet")
        host.send_json({"type": "createRoom"})
        room_code = json.loads((yield host.messages_at_least(2))[1])["data"]["roomCode"]
        host.send_json({"type": "snapshot", "data": {"world": 42}})
        self.assertEqual(json.loads((yield host.messages_at_least(3))[2])["type"], "snapshotStored")

        agent = Agent(reactor)
        body = json.dumps({"engine": "counter@1", "seed": 3, "players": 2}).encode()
        response = yield agent.request(
            b"POST", f"http://127.0.0.1:{port}/gameroom/create".encode(),
            Headers({b"authorization": [b"Bearer kill-test-token-0123456789"]}), FileBodyProducer(BytesIO(body)))
        room_id = json.loads((yield readBody(response)))["id"]
        players = []
        for i in range(2):
            client = yield open_ws(port, f"/gameroom/play/{room_id}")
            players.append(LivePlayer(client, ReferencePlayer(name=f"p{i}")))
            client.send_json(players[-1].player.join())
        yield until(lambda: all(p.player.executed >= 10 for p in players), "10 turns executed by both")
        for p in players:
            p.player.player_id = None  # stop sending, so the log stops growing
        # the players converge on the last closed turn once the master packets in flight arrive
        seen: list = []

        def settled():
            now = [p.player.executed for p in players]
            steady = len(set(now)) == 1 and now == seen
            seen[:] = now
            return steady

        yield until(settled, "both players on the same last turn")
        executed = max(p.player.executed for p in players)
        yield self._wait_persisted(os.path.join(directory, "state", "relayd.sqlite3"), room_id, executed + 1)

        process.send_signal(signal.SIGKILL)
        process.wait()
        for c in [device, host] + [p.client for p in players]:
            yield c.when_closed

        self._start(config, port)
        yield self._wait_port(port)
        again = yield open_ws(port, "/clicker/ws")
        again.send_text(f"REGISTER {secret}")
        self.assertEqual((yield again.messages_at_least(1))[0], f"REGISTERED {device_id} {secret}")
        judge = yield open_ws(port, "/clicker/ws")
        judge.send_text(f"LISTEN {device_id}")
        self.assertEqual((yield judge.messages_at_least(2))[1], f"SCORE 5 {device_id} 7")

        newhost = yield open_ws(port, "/groovejet")
        newhost.send_json({"type": "joinRoom", "data": {"roomCode": room_code, "canHost": True}})
        messages = [json.loads(m) for m in (yield newhost.messages_at_least(3))]
        self.assertIn({"type": "snapshot", "data": {"world": 42}}, messages)

        resumed = []
        for p in players:
            p.player.player_id = "rejoining"
            client = yield open_ws(port, f"/gameroom/play/{room_id}")
            resumed.append(LivePlayer(client, p.player))
            client.send_json(p.player.rejoin())
        target = executed + 10
        yield until(lambda: all(p.player.executed >= target for p in resumed), f"turn {target} at both players")
        self.assertEqual(resumed[0].player.hashes[target], resumed[1].player.hashes[target])
        for c in [again, judge, newhost] + [p.client for p in resumed]:
            c.sendClose(1000)
            yield c.when_closed

    @defer.inlineCallbacks
    def _wait_persisted(self, path, room_id, turn):
        def persisted():
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    row = db.execute("SELECT value FROM kv WHERE ns = 'gameroom.progress' AND key = ?", (room_id,)).fetchone()
            except sqlite3.Error:
                return False
            return bool(row) and json.loads(row[0])["turn"] >= turn

        yield until(persisted, f"turn {turn} of the game in the store", step=0.05)
