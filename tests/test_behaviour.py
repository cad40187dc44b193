"""
The apps' behaviour, one set of test bodies run twice: on one node (memory bus), and spread over two
nodes sharing a private redis-server, where every pair of clients below sits on different nodes.
Real sockets on 127.0.0.1; each wait waits for a condition and says what it waited for.
"""

from __future__ import annotations

import json
from io import BytesIO

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody

from tests.gameroom_reference import ReferencePlayer
from tests.live import Daemon, LivePlayer, every_app, until
from tests.redis import RedisServer

APPS = every_app()
LISTENER = "[listener:main]\nendpoint = tcp:0:interface=127.0.0.1\n"


class BehaviourMixin:
    """Test bodies written against self.node(i): node 0 and node 1 are one node or two."""

    timeout = 60

    def connect(self, i: int, path: str) -> defer.Deferred:
        def opened(client):
            self.addCleanup(lambda: client.transport.abortConnection() if client.transport else None)
            return client

        return self.node(i).connect(path).addCallback(opened)

    @defer.inlineCallbacks
    def test_carparty_frames_both_ways(self):
        """A phone's frames reach its game screen with its client_id; the screen's reach the phone, in order."""
        screen = yield self.connect(0, "/carparty/ws")
        screen.send_json({"action": "login_server", "server_code": "BEHV"})
        yield until(lambda: self.holds_code("BEHV"), "the server code to be claimed")
        phone = yield self.connect(1, "/carparty/ws")
        phone.send_json({"action": "login_client", "server_code": "BEHV", "client_id": "42"})
        yield screen.messages_at_least(1)
        self.assertEqual(json.loads(screen.messages[0]), {"action": "connect", "client_id": "42"})
        phone.send_json({"steer": 1, "client_id": "forged"})
        for n in range(20):
            screen.send_json({"n": n})
        yield screen.messages_at_least(2)
        self.assertEqual(json.loads(screen.messages[1]), {"steer": 1, "client_id": "42"})
        yield phone.messages_at_least(20)
        self.assertEqual([json.loads(m)["n"] for m in phone.messages], list(range(20)))

    @defer.inlineCallbacks
    def test_wikispeedruns_roster_and_start(self):
        """Two users in one lobby prompt see both names (the second renamed) and both hear the start."""
        ann = yield self.connect(0, "/ws")
        ann.send_json({"type": "wait_start", "user": "ann", "lobby_id": 9, "prompt_id": 1})
        yield ann.messages_at_least(1)
        also = yield self.connect(1, "/ws")
        also.send_json({"type": "wait_start", "user": "ann", "lobby_id": 9, "prompt_id": 1})

        def roster(client):
            updates = [json.loads(m) for m in client.messages if '"update"' in m]
            return updates[-1]["users"] if updates else None

        yield until(lambda: roster(ann) == ["ann", "also ann"] and roster(also) == ["ann", "also ann"],
                    "both to see ann and also ann")
        ann.send_json({"type": "start"})
        yield until(lambda: all('{"type":"start"}' in c.messages for c in (ann, also)), "start at both")

    @defer.inlineCallbacks
    def test_clicker_score_reaches_a_listener(self):
        """A device's score is acknowledged and reaches a judge's screen listening to it."""
        device = yield self.connect(0, "/clicker/ws")
        device.send_text("REGISTER")
        yield device.messages_at_least(1)
        device_id = device.messages[0].split(" ")[1]
        judge = yield self.connect(1, "/clicker/ws")
        judge.send_text(f"LISTEN {device_id}")
        yield judge.messages_at_least(1)
        self.assertEqual(judge.messages[0], f"CONNECT {device_id}")
        device.send_text("SCORE 100 7")
        yield device.messages_at_least(2)
        self.assertEqual(device.messages[1], "SCORED 100")
        yield until(lambda: f"SCORE 100 {device_id} 7" in judge.messages, "the score at the judge")

    @defer.inlineCallbacks
    def test_groovejet_offer_and_answer(self):
        """A guest's offer reaches the host with the guest's id; the host's answer reaches the guest."""
        host = yield self.connect(0, "/groovejet")
        host.send_json({"type": "createRoom"})
        yield host.messages_at_least(2)
        code = json.loads(host.messages[1])["data"]["roomCode"]
        guest = yield self.connect(1, "/groovejet")
        guest.send_json({"type": "joinRoom", "data": {"roomCode": code}})
        yield until(lambda: any('"joinedRoom"' in m for m in guest.messages), "the guest to join")
        guest_id = json.loads(guest.messages[0])["data"]["clientId"]
        guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": {"type": "offer", "sdp": "v=0"}}})
        yield until(lambda: any('"guestOfferSignal"' in m for m in host.messages), "the offer at the host")
        offer = [json.loads(m) for m in host.messages if '"guestOfferSignal"' in m][0]
        self.assertEqual(offer["data"], {"offerSignal": {"type": "offer", "sdp": "v=0"}, "clientId": guest_id})
        host.send_json({"type": "hostAnswerSignal", "data": {"answerSignal": {"type": "answer"}, "clientId": guest_id}})
        yield until(lambda: any('"hostAnswerSignal"' in m for m in guest.messages), "the answer at the guest")

    @defer.inlineCallbacks
    def test_gameroom_players_agree(self):
        """Two players, one on each node, play 20 turns and agree on every hash."""
        body = json.dumps({"engine": "counter@1", "seed": 3, "players": 2}).encode()
        response = yield Agent(reactor).request(
            b"POST", f"http://127.0.0.1:{self.node(0).port()}/gameroom/create".encode(),
            bodyProducer=FileBodyProducer(BytesIO(body)))
        room = json.loads((yield readBody(response)))["id"]
        players = []
        for i in range(2):
            client = yield self.connect(i, f"/gameroom/play/{room}")
            player = LivePlayer(client, ReferencePlayer(name=f"p{i}"))
            client.send_json(player.player.join())
            players.append(player)
        yield until(lambda: all(p.player.executed >= 20 for p in players), "20 turns at both players")
        self.assertEqual(players[0].player.hashes[20], players[1].player.hashes[20])


class OneNodeBehaviourTests(BehaviourMixin, TestCase):
    def setUp(self):
        self.daemon = Daemon(self, LISTENER + APPS)

    def node(self, i: int) -> Daemon:
        return self.daemon

    def holds_code(self, code: str) -> bool:
        return code in self.daemon.service.apps["carparty"].core.servers


class TwoNodeBehaviourTests(BehaviourMixin, TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.redis = RedisServer(self)
        yield self.redis.start()
        bus = f"[bus]\nbackend = redis\nurl = {self.redis.url}\nmax_backoff = 0.2\n"
        self.nodes = [Daemon(self, LISTENER + bus + APPS) for _ in range(2)]
        for node in self.nodes:
            yield until(lambda node=node: not node.service.bus.problems(), "the node's bus to connect")

    def node(self, i: int) -> Daemon:
        return self.nodes[i]

    def holds_code(self, code: str) -> bool:
        return code in self.nodes[0].service.apps["carparty"].core.servers
