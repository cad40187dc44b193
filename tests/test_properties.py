"""
Property tests: arbitrary frames and arbitrary sequences of valid and invalid messages from several
clients never raise outside an app's error path, never leave state behind once everyone is gone, and
never disturb a room the fuzzed clients are not in.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from tests.support import Harness, make_config

SETTINGS = settings(max_examples=int(os.environ.get("RELAYD_PROPERTY_EXAMPLES", "40")), deadline=None, suppress_health_check=list(HealthCheck))

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

CORNERS = [
    "1e400", "-1e400", "NaN", "Infinity", '"\\ud800"', '{"type": "\\udfff"}', "[" * 2000 + "]" * 2000,
    "9" * 5000, '{"a": ' * 500 + "1" + "}" * 500, "", " ", "null", "{}", "[]", '{"type": null}',
    # just past and just inside the one nesting bound, and deep values inside each app's own messages
    "[" * 65 + "]" * 65, "[" * 64 + "]" * 64, "[" * 961 + "]" * 961,
    '{"type": "commands", "turn": 0, "commands": [' + "[" * 961 + "]" * 961 + "]}",
    '{"type": "snapshot", "data": ' + "[" * 990 + "]" * 990 + "}",
    '{"type": "guestOfferSignal", "data": {"offerSignal": ' + "[" * 990 + "]" * 990 + "}}",
    '{"type": "setup", "changes": {"a": ' + "[" * 980 + "]" * 980 + "}}",
    '{"action": "login_client", "server_code": "SNEK", "client_id": ' + "[" * 980 + "]" * 980 + "}",
    "SCORE  5 6", "SCORE 5  6", "REGISTER  x", "LISTEN " + ",".join(f"{n:06d}" for n in range(200)),
]


def frames(templates):
    """Valid messages of the app, valid messages with fields swapped for arbitrary JSON, and garbage."""
    def mutate(template_and_values):
        template, key, value = template_and_values
        if isinstance(template, str):
            return ("text", template)
        message = dict(template)
        if key is not None and message:
            message[sorted(message)[key % len(message)]] = value
        return ("text", json.dumps(message))

    mutated = st.tuples(st.sampled_from(templates), st.one_of(st.none(), st.integers(0, 10)), json_values).map(mutate)
    return st.one_of(
        st.sampled_from(templates).map(lambda m: ("text", json.dumps(m) if not isinstance(m, str) else m)),
        mutated,
        json_values.map(lambda v: ("text", json.dumps(v))),
        st.sampled_from(CORNERS).map(lambda s: ("text", s)),
        st.text(max_size=40).map(lambda s: ("text", s)),
        st.binary(max_size=40).map(lambda b: ("binary", b)),
        st.just(("close", None)),
    )


def actions(templates, clients=4):
    return st.lists(st.tuples(st.integers(0, clients - 1), frames(templates)), max_size=30)


class Fuzz:
    """Play actions from several clients of one app, then check what every app must keep true."""

    def __init__(self, testcase: TestCase, section: str):
        self.testcase = testcase
        self.h = Harness(make_config(section)).start()

    def run(self, path, script, connect=None):
        clients = {}
        for index, (kind, payload) in script:
            client = clients.get(index)
            if client is None or client.closed:
                client = clients[index] = self.h.ws(path() if callable(path) else path)
                if connect:
                    connect(client)
            if kind == "text":
                client.send_text(payload)
            elif kind == "binary":
                client.sendMessage(payload, True)
            else:
                client.sendClose(1000)
            self.h.flush()
        for client in clients.values():
            if not client.closed:
                client.sendClose(1000)
        self.h.flush()

    def assert_clean(self):
        registry = self.h.service.metrics.registry
        internal = [
            s for metric in registry.collect() if metric.name == "relayd_protocol_errors"
            for s in metric.samples if s.labels.get("kind") == "internal" and s.value
        ]
        self.testcase.assertEqual(internal, [])
        self.testcase.assertEqual(self.testcase.flushLoggedErrors(), [])
        self.testcase.assertEqual(len(self.h.service.listeners["main"].tracker), 0)


WIKI = "[app:wikispeedruns]\nlisteners = main\npath = /w\n"
WIKI_TEMPLATES = [
    {"type": "wait_start", "user": "dan", "lobby_id": 10, "prompt_id": 5},
    {"type": "start"},
    {"type": "leaderboard", "lobby_id": 10, "prompt_id": 5},
    {"type": "leaderboard_update", "lobby_id": 10, "prompt_id": 5},
    {"type": "lobby_prompts", "lobby_id": 10},
    {"type": "lobby_prompts_update"},
]

CARPARTY = "[app:carparty]\nlisteners = main\npath = /c\n"
CAR_TEMPLATES = [
    {"action": "login_server", "server_code": "SNEK"},
    {"action": "login_client", "server_code": "SNEK", "client_id": "1"},
    {"action": "login_client", "server_code": "SNEK", "client_id": "2"},
    {"receiver_id": "1", "x": 1},
    {"steer": 0.5},
    "[1,2]",
]

CLICKER = "[app:clicker]\nlisteners = main\npath = /k\n"
CLICKER_LINES = ["REGISTER", "REGISTER 6f1c2a8e-8d9b-4c5e-9a7b-1234567890ab", "SCORE 1 2", "SCORE m1 -5 7",
                 "LISTEN 000001,000002", "SUBSCRIBE 000001", "score x y", "DANCE", "LISTEN 12"]

GROOVE = "[app:groovejet]\nlisteners = main\npath = /g\n"
GROOVE_TEMPLATES = [
    {"type": "createRoom"},
    {"type": "joinRoom", "data": {"roomCode": "aaaaa", "canHost": True}},
    {"type": "guestOfferSignal", "data": {"offerSignal": {"type": "offer", "sdp": "x"}}},
    {"type": "hostAnswerSignal", "data": {"answerSignal": "a", "clientId": "nobody"}},
    {"type": "iceCandidate", "data": {"candidate": "c"}},
    {"type": "snapshot", "data": {"t": 1}},
    {"type": "setSuccessor", "data": {"clientId": "x"}},
    {"type": "resume", "data": {"token": "nope"}},
    {"type": "guestOfferSignal"},
]

GAMEROOM = "[app:gameroom]\nlisteners = main\npath = /r\ncreate_token = create-token-0123456789\n"
GAME_TEMPLATES = [
    {"type": "join", "name": "a"},
    {"type": "join", "session": "forged"},
    {"type": "setup", "changes": {"map": 1}},
    {"type": "ready", "ready": True},
    {"type": "commands", "turn": 0, "commands": [{"add": 1}], "hash": "h", "hash_turn": 0},
    {"type": "commands", "turn": 5, "commands": []},
    {"type": "catchup", "from": 0},
    {"type": "finish", "result": 1},
]


class PropertyTests(TestCase):
    @SETTINGS
    @given(actions(WIKI_TEMPLATES))
    def test_wikispeedruns(self, script):
        """Any frames from several wikispeedruns clients leave no group, no channel and no error behind."""
        fuzz = Fuzz(self, WIKI)
        control_a, control_b = fuzz.h.ws("/w"), fuzz.h.ws("/w")
        for c, user in ((control_a, "a"), (control_b, "b")):
            c.send_json({"type": "wait_start", "user": user, "lobby_id": "control", "prompt_id": 0})
        fuzz.h.flush()
        fuzz.run("/w", script)
        control_a.send_json({"type": "start"})
        fuzz.h.flush()
        self.assertEqual(control_b.json_messages()[-1], {"type": "start"})
        for c in (control_a, control_b):
            c.sendClose(1000)
        fuzz.h.flush()
        fuzz.assert_clean()
        self.assertEqual(fuzz.h.app("wikispeedruns").room_count(), 0)
        self.assertEqual(fuzz.h.service.bus.channel_count(), 0)

    @SETTINGS
    @given(actions(CAR_TEMPLATES))
    def test_carparty(self, script):
        """Any frames from several carparty clients leave no server code or channel behind, and another game is unaffected."""
        fuzz = Fuzz(self, CARPARTY)
        server, phone = fuzz.h.ws("/c"), fuzz.h.ws("/c")
        server.send_json({"action": "login_server", "server_code": "CTRL"})
        fuzz.h.flush()
        phone.send_json({"action": "login_client", "server_code": "CTRL", "client_id": "9"})
        fuzz.h.flush()
        fuzz.run("/c", script)
        server.send_text("still here")
        fuzz.h.flush()
        self.assertEqual(phone.messages[-1], "still here")
        server.sendClose(1000)
        fuzz.h.flush()
        fuzz.assert_clean()
        self.assertEqual(fuzz.h.app("carparty").room_count(), 0)
        self.assertEqual(fuzz.h.service.bus.channel_count(), 0)

    @SETTINGS
    @given(st.lists(st.tuples(st.integers(0, 3), st.one_of(
        st.sampled_from(CLICKER_LINES).map(lambda s: ("text", s)),
        st.text(max_size=40).map(lambda s: ("text", s)),
        st.binary(max_size=20).map(lambda b: ("binary", b)),
        st.just(("close", None)))), max_size=30))
    def test_clicker(self, script):
        """Any lines from several clicker clients leave no live device or subscription, and scores still flow."""
        fuzz = Fuzz(self, CLICKER)
        device = fuzz.h.ws("/k/ws")
        device.send_text("REGISTER")
        fuzz.h.flush()
        device_id = device.messages[-1].split(" ")[1]
        judge = fuzz.h.ws("/k/ws")
        judge.send_text(f"LISTEN {device_id}")
        fuzz.h.flush()
        fuzz.run("/k/ws", script)
        device.send_text("SCORE 42 1")
        fuzz.h.flush()
        self.assertEqual(judge.messages[-1], f"SCORE 42 {device_id} 1")
        for c in (device, judge):
            c.sendClose(1000)
        fuzz.h.flush()
        fuzz.assert_clean()
        self.assertEqual(fuzz.h.app("clicker").room_count(), 0)
        self.assertEqual(fuzz.h.service.bus.channel_count(), 0)

    @SETTINGS
    @given(actions(GROOVE_TEMPLATES))
    def test_groovejet(self, script):
        """Any frames from several groovejet clients leave no room or seat once grace and expiry pass."""
        fuzz = Fuzz(self, GROOVE)
        host = fuzz.h.ws("/g")
        host.send_json({"type": "createRoom"})
        fuzz.h.flush()
        code = host.json_messages()[-1]["data"]["roomCode"]
        guest = fuzz.h.ws("/g")
        guest.send_json({"type": "joinRoom", "data": {"roomCode": code}})
        fuzz.h.flush()
        fuzz.run("/g", script)
        guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": "ok"}})
        fuzz.h.flush()
        self.assertEqual(host.json_messages()[-1]["data"]["offerSignal"], "ok")
        for c in (host, guest):
            c.sendClose(1000)
        fuzz.h.flush()
        fuzz.h.advance(31)
        fuzz.h.advance(301)
        fuzz.assert_clean()
        self.assertEqual(fuzz.h.app("groovejet").room_count(), 0)
        self.assertEqual(fuzz.h.service.bus.channel_count(), 0)
        self.assertEqual(fuzz.h.app("groovejet").core.seats_by_token, {})

    @SETTINGS
    @given(actions(GAME_TEMPLATES))
    def test_gameroom(self, script):
        """Any frames from several gameroom clients raise nothing and leave no connection state behind."""
        fuzz = Fuzz(self, GAMEROOM)
        auth = {"Authorization": "Bearer create-token-0123456789"}
        body = json.dumps({"engine": "e", "seed": 1, "players": 2}).encode()
        room_id = json.loads(fuzz.h.http("POST", "/r/create", body, auth)[2])["id"]
        other_id = json.loads(fuzz.h.http("POST", "/r/create", body, auth)[2])["id"]
        watcher = fuzz.h.ws(f"/r/watch/{other_id}")
        fuzz.run(f"/r/play/{room_id}", script)
        self.assertFalse(watcher.closed)
        self.assertEqual(fuzz.h.app("gameroom").core.rooms[other_id].players, [])
        watcher.sendClose(1000)
        fuzz.h.flush()
        fuzz.assert_clean()
        self.assertEqual(fuzz.h.app("gameroom").live, {})
        self.assertEqual(fuzz.h.service.bus.channel_count(), 0)
