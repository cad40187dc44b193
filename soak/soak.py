"""
Soak: many connections across all five apps with realistic traffic, for a set time, against a relayd
started as an operator would (twistd, the plugin, a config file) on loopback.

Reports messages sent, delivered, lost and out of order for every flow whose protocol promises
delivery and order, relayd's peak and final resident memory (sampled every second), its open file
descriptors before, during and after, and the protocol errors it counted. Exits non-zero when
anything was lost or reordered, or file descriptors leaked.

    soak/run [--seconds 60] [--scale 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)

from tests.gameroom_reference import ReferencePlayer  # noqa: E402

TOKEN = "soak-create-token-0123456789"
CONFIG = """
[relayd]
state_dir = {state}
drain_timeout = 5

[listener:main]
endpoint = tcp:{port}:interface=127.0.0.1
max_connections_per_address = 0

[app:wikispeedruns]
listeners = main
path = /wikispeedruns

[app:clicker]
listeners = main
path = /clicker

[app:groovejet]
listeners = main
path = /groovejet

[app:gameroom]
listeners = main
path = /gameroom
create_token = {token}

[app:carparty]
listeners = main
path = /carparty
"""


class Stats:
    def __init__(self):
        self.sent = defaultdict(int)
        self.delivered = defaultdict(int)
        self.expected = defaultdict(int)
        self.out_of_order = defaultdict(int)
        self.notes = []


STATS = Stats()


class Peer(WebSocketClientProtocol):
    handler = None

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        if self.handler is not None:
            self.handler(payload.decode("utf-8"))

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"{code} {reason}"))

    def text(self, text):
        if self.state == self.STATE_OPEN:
            self.sendMessage(text.encode("utf-8"), False)

    def send_json(self, value):
        self.text(json.dumps(value))


def connect(port, path) -> defer.Deferred:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}", reactor=reactor)
    factory.setProtocolOptions(autoPingInterval=0)
    factory.protocol = Peer
    factory.opened = defer.Deferred()
    TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory).addErrback(factory.opened.errback)
    return factory.opened


class Ordered:
    """Checks that one stream of sequence numbers arrives complete and in order."""

    def __init__(self, flow):
        self.flow = flow
        self.next = 0

    def got(self, seq):
        STATS.delivered[self.flow] += 1
        if seq != self.next:
            STATS.out_of_order[self.flow] += 1
        self.next = seq + 1


@defer.inlineCallbacks
def settle(*flows, timeout=15.0):
    """Wait until every expected delivery of these flows arrived (or timeout): late is not lost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(STATS.delivered[f] < STATS.expected[f] for f in flows):
        yield task.deferLater(reactor, 0.1, lambda: None)


# ---- the five apps' traffic ------------------------------------------------------------------

@defer.inlineCallbacks
def carparty(port, game, phones, loops):
    server = yield connect(port, "/carparty/ws")
    code = f"S{game:03d}"
    server.send_json({"action": "login_server", "server_code": code})
    yield task.deferLater(reactor, 0.2, lambda: None)
    from_phone = defaultdict(lambda: None)
    peers = []
    for i in range(phones):
        phone = yield connect(port, "/carparty/ws")
        order = Ordered("carparty server->phone")
        phone.handler = lambda text, order=order: order.got(json.loads(text)["seq"])
        phone.send_json({"action": "login_client", "server_code": code, "client_id": str(i)})
        peers.append(phone)
    yield task.deferLater(reactor, 0.2, lambda: None)

    def at_server(text):
        message = json.loads(text)
        if "seq" in message:
            cid = message["client_id"]
            if from_phone[cid] is None:
                from_phone[cid] = Ordered("carparty phone->server")
            from_phone[cid].got(message["seq"])

    server.handler = at_server
    for seq in range(loops):
        server.send_json({"seq": seq, "track": "t" * 200})
        STATS.sent["carparty server->phone"] += 1
        STATS.expected["carparty server->phone"] += phones
        for phone in peers:
            phone.send_json({"seq": seq, "steer": 0.1})
            STATS.sent["carparty phone->server"] += 1
            STATS.expected["carparty phone->server"] += 1
        yield task.deferLater(reactor, 0.05, lambda: None)
    yield settle("carparty server->phone", "carparty phone->server")
    for peer in peers + [server]:
        peer.sendClose(1000)


@defer.inlineCallbacks
def wikispeedruns(port, lobby, viewers, loops):
    peers = []
    for _ in range(viewers):
        viewer = yield connect(port, "/wikispeedruns")
        viewer.handler = lambda text: STATS.delivered.__setitem__("wikispeedruns refresh", STATS.delivered["wikispeedruns refresh"] + 1)
        viewer.send_json({"type": "leaderboard", "lobby_id": lobby, "prompt_id": 1})
        peers.append(viewer)
    yield task.deferLater(reactor, 0.2, lambda: None)
    for _ in range(loops // 10):
        trigger = yield connect(port, "/wikispeedruns")
        trigger.send_json({"type": "leaderboard_update", "lobby_id": lobby, "prompt_id": 1})
        trigger.sendClose(1000)  # open, send, close at once, as the deployed page does
        STATS.sent["wikispeedruns refresh"] += 1
        STATS.expected["wikispeedruns refresh"] += viewers
        yield task.deferLater(reactor, 0.5, lambda: None)
    yield settle("wikispeedruns refresh")
    for peer in peers:
        peer.sendClose(1000)


@defer.inlineCallbacks
def clicker(port, devices, loops):
    registered = []
    for _ in range(devices):
        device = yield connect(port, "/clicker/ws")
        reply = defer.Deferred()
        device.handler = lambda text, reply=reply: reply.called or reply.callback(text)
        device.text("REGISTER")
        line = yield reply
        registered.append((device, line.split(" ")[1]))
    judge = yield connect(port, "/clicker/ws")
    streams = {device_id: Ordered("clicker score->judge") for _, device_id in registered}
    first = defer.Deferred()

    def at_judge(text):
        parts = text.split(" ")
        if parts[0] == "CONNECT" and not first.called:
            first.callback(None)
        elif parts[0] == "SCORE":
            streams[parts[2]].got(int(parts[1]) - 1)

    judge.handler = at_judge
    judge.text("LISTEN " + ",".join(device_id for _, device_id in registered))
    yield first
    acked = defaultdict(int)
    for device, device_id in registered:
        device.handler = lambda text, device_id=device_id: acked.__setitem__(device_id, acked[device_id] + 1)
    for ts in range(1, loops + 1):
        for device, _ in registered:
            device.text(f"SCORE {ts} {ts * 3}")
            STATS.sent["clicker score->judge"] += 1
            STATS.expected["clicker score->judge"] += 1
        yield task.deferLater(reactor, 0.1, lambda: None)
    deadline = time.monotonic() + 15
    while sum(acked.values()) < devices * loops and time.monotonic() < deadline:
        yield task.deferLater(reactor, 0.1, lambda: None)
    yield settle("clicker score->judge")
    STATS.delivered["clicker SCORED"] += sum(acked.values())
    STATS.expected["clicker SCORED"] += devices * loops
    STATS.sent["clicker SCORED"] += devices * loops
    for peer in [judge] + [d for d, _ in registered]:
        peer.sendClose(1000)


@defer.inlineCallbacks
def groovejet(port, guests, loops):
    host = yield connect(port, "/groovejet")
    created = defer.Deferred()
    host.handler = lambda text: json.loads(text)["type"] == "createdRoom" and not created.called and created.callback(json.loads(text)["data"]["roomCode"])
    host.send_json({"type": "createRoom"})
    code = yield created
    offers = {}

    def at_host(text):
        message = json.loads(text)
        if message["type"] == "guestOfferSignal":
            data = message["data"]
            offers.setdefault(data["clientId"], Ordered("groovejet offer->host")).got(data["offerSignal"]["seq"])
            host.send_json({"type": "hostAnswerSignal", "data": {"clientId": data["clientId"], "answerSignal": {"seq": data["offerSignal"]["seq"]}}})
            STATS.sent["groovejet answer->guest"] += 1
            STATS.expected["groovejet answer->guest"] += 1

    host.handler = at_host
    peers = []
    for _ in range(guests):
        guest = yield connect(port, "/groovejet")
        answers = Ordered("groovejet answer->guest")
        guest.handler = lambda text, answers=answers: json.loads(text)["type"] == "hostAnswerSignal" and answers.got(json.loads(text)["data"]["answerSignal"]["seq"])
        guest.send_json({"type": "joinRoom", "data": {"roomCode": code}})
        peers.append(guest)
    yield task.deferLater(reactor, 0.3, lambda: None)
    for seq in range(loops // 2):
        for guest in peers:
            guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": {"type": "offer", "sdp": "v=0 " * 50, "seq": seq}}})
            STATS.sent["groovejet offer->host"] += 1
            STATS.expected["groovejet offer->host"] += 1
        yield task.deferLater(reactor, 0.1, lambda: None)
    yield settle("groovejet offer->host", "groovejet answer->guest")
    for peer in peers + [host]:
        peer.sendClose(1000)


@defer.inlineCallbacks
def gameroom(port, seconds):
    agent = Agent(reactor)
    body = json.dumps({"engine": "counter@1", "seed": 11, "players": 2}).encode()
    from io import BytesIO

    response = yield agent.request(b"POST", f"http://127.0.0.1:{port}/gameroom/create".encode(),
                                   Headers({b"authorization": [f"Bearer {TOKEN}".encode()]}),
                                   FileBodyProducer(BytesIO(body)))
    room_id = json.loads((yield readBody(response)))["id"]
    players = []
    for i in range(2):
        peer = yield connect(port, f"/gameroom/play/{room_id}")
        player = ReferencePlayer(name=f"soak{i}")
        player.turns_seen = []

        def handle(text, peer=peer, player=player):
            message = json.loads(text)
            if message["type"] == "turn":
                player.turns_seen.append(message["turn"])
            for out in player.on_message(message):
                # paced like a real client: the next packet when the next turn starts
                reactor.callLater(0.1 if out["type"] == "commands" else 0, peer.send_json, out)

        peer.handler = handle
        peer.send_json(player.join())
        players.append((peer, player))
    yield task.deferLater(reactor, seconds, lambda: None)
    a, b = players[0][1], players[1][1]
    common = min(a.executed, b.executed)
    STATS.sent["gameroom master packets"] += 2 * (common + 1)
    STATS.expected["gameroom master packets"] += 2 * (common + 1)
    for player in (a, b):
        # a master packet may come twice (it acknowledges a resent packet): count each turn once
        first_seen = list(dict.fromkeys(player.turns_seen))
        STATS.delivered["gameroom master packets"] += len([t for t in first_seen if t <= common])
        STATS.out_of_order["gameroom master packets"] += sum(1 for x, y in zip(first_seen, first_seen[1:]) if y != x + 1)
    if common < 0 or a.hashes.get(common) != b.hashes.get(common) or a.halted or b.halted:
        STATS.notes.append(f"gameroom room {room_id}: hashes disagree or halted")
    for peer, player in players:
        player.player_id = None
        peer.sendClose(1000)


# ---- the server -----------------------------------------------------------------------------

def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@defer.inlineCallbacks
def main(args):
    directory = tempfile.mkdtemp(prefix="relayd-soak-")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = os.path.join(directory, "relayd.ini")
    with open(config, "w") as f:
        f.write(CONFIG.format(state=os.path.join(directory, "state"), port=port, token=TOKEN))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    server = subprocess.Popen([twistd, "--nodaemon", "--pidfile=", "relayd", "--config", config],
                              stdout=open(os.path.join(directory, "relayd.log"), "w"), stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
        except OSError:
            yield task.deferLater(reactor, 0.1, lambda: None)
    rss0, fds0 = sample(server.pid)
    samples = []
    monitor = task.LoopingCall(lambda: samples.append(sample(server.pid)))
    monitor.start(1.0)
    loops = int(args.seconds * 10)
    scale = args.scale
    started = time.monotonic()
    work = []
    work += [carparty(port, g, 8 * scale, loops) for g in range(5 * scale)]
    work += [wikispeedruns(port, lobby, 20 * scale, loops) for lobby in range(3 * scale)]
    work += [clicker(port, 10 * scale, loops) for _ in range(2 * scale)]
    work += [groovejet(port, 3, loops) for _ in range(5 * scale)]
    work += [gameroom(port, args.seconds) for _ in range(5 * scale)]
    yield defer.DeferredList(work, consumeErrors=False)
    elapsed = time.monotonic() - started
    yield task.deferLater(reactor, 2.0, lambda: None)
    monitor.stop()
    rss1, fds1 = sample(server.pid)
    response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
    metrics = (yield readBody(response)).decode()
    errors = sum(float(v) for v in re.findall(r'^relayd_protocol_errors_total\{[^}]*\} (\S+)$', metrics, re.M))
    peak_connections = max(float(v) for v in re.findall(r'^relayd_connections_total\{[^}]*\} (\S+)$', metrics, re.M) or ["0"])
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)

    flows = sorted(set(STATS.expected) | set(STATS.delivered))
    result = {
        "seconds": round(elapsed, 1), "scale": scale,
        "flows": {flow: {"sent": STATS.sent[flow], "expected": STATS.expected[flow], "delivered": STATS.delivered[flow],
                         "lost": STATS.expected[flow] - STATS.delivered[flow], "out_of_order": STATS.out_of_order[flow]}
                  for flow in flows},
        "rss_kib": {"start": rss0, "peak": max(s[0] for s in samples), "final": rss1},
        "fds": {"start": fds0, "peak": max(s[1] for s in samples), "final": fds1},
        "protocol_errors": errors, "connections_opened_by_largest_app": peak_connections, "notes": STATS.notes,
    }
    print(f"soak: {result['seconds']} s, scale {scale}")
    print("| flow | sent | expected deliveries | delivered | lost | out of order |")
    print("|---|---|---|---|---|---|")
    for flow, r in result["flows"].items():
        print(f"| {flow} | {r['sent']} | {r['expected']} | {r['delivered']} | {r['lost']} | {r['out_of_order']} |")
    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)][0] for q in (1, 2, 3, 4)]
    result["rss_kib"]["quarters"] = quarters
    print(f"resident memory KiB: start {rss0}, peak {result['rss_kib']['peak']}, final {rss1}; "
          f"at 1/4, 1/2, 3/4 and the end of the run: {', '.join(map(str, quarters))}")
    print(f"file descriptors: start {fds0}, peak {result['fds']['peak']}, final {fds1}")
    print(f"protocol errors counted: {errors:g}")
    for note in STATS.notes:
        print("note:", note)
    os.makedirs(os.path.join(TOP, "var", "soak"), exist_ok=True)
    with open(os.path.join(TOP, "var", "soak", "result.json"), "w") as f:
        json.dump(result, f, indent=2)

    bad = any(r["lost"] or r["out_of_order"] for r in result["flows"].values()) or STATS.notes or fds1 > fds0 + 2
    reactor.exit_code = 1 if bad else 0


def run():
    parser = argparse.ArgumentParser(description="relayd soak test")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    reactor.exit_code = 2

    def done(result):
        if reactor.running:
            reactor.stop()
        return result

    def failed(failure):
        failure.printTraceback()
        reactor.exit_code = 2

    reactor.callWhenRunning(lambda: main(args).addErrback(failed).addBoth(done))
    reactor.run()
    sys.exit(reactor.exit_code)


if __name__ == "__main__":
    run()
