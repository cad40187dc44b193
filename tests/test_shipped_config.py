"""
The shipped etc/relayd.ini as it is (only the port changed), in memory: the apps' heavy users and
the deployed clients' quirks work on it. Time is the memory reactor's, advanced at each workload's
real rate, so the rate limits see the traffic as they would live.
"""

import json
import os

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from relayd import config as relayd_config
from relayd.ws import closecodes
from tests.support import Harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shipped_text() -> str:
    with open(os.path.join(ROOT, "etc", "relayd.ini")) as f:
        text = f.read()
    assert "endpoint = tcp:8080:interface=127.0.0.1" in text
    return text.replace("endpoint = tcp:8080:", "endpoint = tcp:0:")


def shipped(extra_limits: str = "") -> Harness:
    text = shipped_text()
    if extra_limits:
        text = text.replace("[limits]\n", f"[limits]\n{extra_limits}\n", 1)
    return Harness(relayd_config.loads(text, path="relayd.ini")).start()


def create_gameroom(h, players: int) -> str:
    body = json.dumps({"engine": "counter@1", "seed": 7, "players": players}).encode()
    status, _, answer = h.http("POST", "/gameroom/create", body)
    assert status == 201, (status, answer)
    return json.loads(answer)["id"]


class OriginTests(TestCase):
    ORIGINS = ("Espruino", "null", "file://", "https://game.example", "chrome-extension://abcdef")

    def paths(self, h):
        return ("/wikispeedruns", "/carparty/ws", "/clicker/ws", "/groovejet", f"/gameroom/watch/{create_gameroom(h, 2)}")

    def test_every_origin_on_every_app(self):
        """With allowed_origins = * (shipped), any Origin opens on every app, non-URL values included."""
        h = shipped()
        for path in self.paths(h):
            for origin in self.ORIGINS:
                c = h.ws(path, origin=origin)
                self.assertTrue(c.opened, (path, origin))

    def test_a_list_matches_non_urls_only_literally(self):
        """With a list, Espruino matches only when listed; null and lookalikes are refused with 403."""
        h = shipped("allowed_origins = https://game.example, Espruino")
        refusals = 0
        for path in self.paths(h):
            self.assertTrue(h.ws(path, origin="Espruino").opened, path)
            self.assertTrue(h.ws(path, origin="https://game.example").opened, path)
            for refused in ("null", "espruino", "Espruino2", "https://evil.example"):
                c = h.ws(path, origin=refused)
                self.assertFalse(c.opened, (path, refused))
                refusals += 1
        rejected = h.service.metrics.registry.get_sample_value(
            "relayd_connections_rejected_total", {"listener": "main", "reason": "origin"})
        self.assertEqual(rejected, refusals)


class CarpartyTests(TestCase):
    def test_game_server_streams_then_sends_a_track_and_a_large_frame(self):
        """
        A game screen at 60 frames/s to each of 8 phones, phones at 30 inputs/s, then a 300-chunk track of
        5000 characters a chunk and a 100 KB frame: nobody is closed, every frame arrives in order.
        """
        h = shipped()
        server = h.ws("/carparty/ws")
        server.send_json({"action": "login_server", "server_code": "SNEK"})
        phones = []
        for n in range(8):
            phone = h.ws("/carparty/ws")
            phone.send_json({"action": "login_client", "server_code": "SNEK", "client_id": str(1000 + n)})
            phones.append(phone)
        h.flush()
        server.take()
        sent = {n: [] for n in range(8)}
        inputs = 0
        for frame in range(120):  # two seconds of play
            for n in range(8):
                message = {"receiver_id": str(1000 + n), "frame": frame, "state": "x" * 200}
                server.send_json(message)
                sent[n].append(message)
            if frame % 2 == 0:
                for phone in phones:
                    phone.send_json({"steer": frame})
                    inputs += 1
            h.advance(1 / 60)
        track = [{"chunk": i, "data": "t" * 5000} for i in range(300)]
        for chunk in track:
            server.send_json(chunk)
        big = {"big": "b" * 100_000}
        server.send_json(big)
        h.flush()
        self.assertFalse(server.closed, (server.close_code, server.close_reason))
        for n, phone in enumerate(phones):
            self.assertFalse(phone.closed, (n, phone.close_code, phone.close_reason))
            self.assertEqual(phone.json_messages(), sent[n] + track + [big])
        steering = [m for m in server.json_messages() if "steer" in m]
        self.assertEqual(len(steering), inputs)

    def test_flooding_phone_is_closed_and_nothing_after_is_relayed(self):
        """A phone past its rate is closed 4029; what it sends meanwhile never reaches the server; one log line each."""
        h = shipped()
        server = h.ws("/carparty/ws")
        server.send_json({"action": "login_server", "server_code": "SNEK"})
        phone = h.ws("/carparty/ws")
        phone.send_json({"action": "login_client", "server_code": "SNEK", "client_id": "7"})
        h.flush()
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for n in range(2000):
            phone.send_json({"n": n})
        h.flush()
        self.assertEqual(phone.close_code, closecodes.RATE_LIMITED)
        relayed = [m["n"] for m in server.json_messages() if "n" in m]
        self.assertEqual(relayed, list(range(len(relayed))))
        self.assertLess(len(relayed), 250)
        lines = [e for e in events if "carparty" in str(e.get("app", "")) and e.get("log_namespace", "").startswith("relayd")]
        self.assertEqual(len(lines), 1, [e.get("log_format") for e in lines])
        self.assertTrue(any(e.get("count", 0) > 1000 for e in lines), [e.get("log_format") for e in lines])


class GroovejetTests(TestCase):
    def test_100_kb_snapshot_is_stored(self):
        """A host's 100 KB snapshot (under max_snapshot_size) is stored, not closed 1009."""
        h = shipped()
        host = h.ws("/groovejet")
        host.send_json({"type": "createRoom"})
        h.flush()
        host.send_json({"type": "snapshot", "data": {"world": "w" * 100_000}})
        h.flush()
        self.assertFalse(host.closed, (host.close_code, host.close_reason))
        self.assertEqual(host.json_messages()[-1], {"type": "snapshotStored"})


class WikispeedrunsTests(TestCase):
    def test_lobby_of_200(self):
        """200 users join one lobby group; every one of them ends with the full roster."""
        h = shipped()
        users = []
        for n in range(200):
            c = h.ws("/wikispeedruns")
            c.send_json({"type": "wait_start", "user": f"user{n}", "lobby_id": 10, "prompt_id": 5})
            users.append(c)
            h.advance(0.02)
        h.advance(0.1)
        for c in users:
            self.assertFalse(c.closed, (c.close_code, c.close_reason))
            self.assertEqual(len(c.json_messages()[-1]["users"]), 200)


class ClickerTests(TestCase):
    def test_40_devices_at_10_scores_a_second_to_5_judges(self):
        """Every score of 40 devices at 10/s for 3 s is acknowledged and seen by all 5 judges' screens."""
        h = shipped()
        devices = []
        for _ in range(40):
            d = h.ws("/clicker/ws")
            d.send_text("REGISTER")
            devices.append(d)
        h.flush()
        ids = [d.take()[0].split(" ")[1] for d in devices]
        judges = []
        for _ in range(5):
            j = h.ws("/clicker/ws")
            j.send_text("LISTEN " + ",".join(ids))
            judges.append(j)
        h.flush()
        for j in judges:
            j.take()
        for tick in range(30):
            for n, d in enumerate(devices):
                d.send_text(f"SCORE {tick * 100} {tick + n}")
            h.advance(0.1)
        for n, d in enumerate(devices):
            self.assertEqual(d.take(), [f"SCORED {tick * 100}" for tick in range(30)])
        for j in judges:
            scores = [m for m in j.messages if m.startswith("SCORE ")]
            self.assertEqual(len(scores), 40 * 30)

    def test_empty_token_is_malformed(self):
        """SCORE with two spaces (an empty token) gets no SCORED, so the device keeps the score."""
        h = shipped()
        d = h.ws("/clicker/ws")
        d.send_text("REGISTER")
        h.flush()
        d.take()
        for line in ("SCORE  5 6", "SCORE 5  6", "SCORE 5 6 "):
            d.send_text(line)
        h.flush()
        replies = d.take()
        self.assertFalse(any(r.startswith("SCORED") for r in replies[:2]), replies)
        self.assertTrue(all(r.startswith("ERROR malformed_score") for r in replies[:2]), replies)


class GameroomTests(TestCase):
    def test_8_players_at_the_maximum_turn_rate(self):
        """A room of 8 players answering at once plays at max_turn_rate without anyone being closed."""
        from tests.gameroom_reference import ReferencePlayer
        from tests.apps.test_gameroom import Seat, play

        h = shipped()
        room = create_gameroom(h, 8)
        seats = [Seat(h, room, ReferencePlayer(name=f"p{n}")) for n in range(8)]
        for seat in seats:
            seat.send(seat.player.join())
        play(h, seats, until=lambda: seats[0].player.executed >= 300, step=1 / 120, rounds=5000)
        for seat in seats:
            self.assertFalse(seat.ws.closed, (seat.ws.close_code, seat.ws.close_reason))
            self.assertGreaterEqual(seat.player.executed, 300)
        self.assertEqual(len({seat.player.hashes[299] for seat in seats}), 1)


class HTTPTests(TestCase):
    def test_head_on_post_only_endpoints_is_405_with_allow(self):
        """HEAD where GET is not served: 405 with Allow, not a 500."""
        h = shipped()
        for path in ("/groovejet/rooms", "/gameroom/create", "/wikispeedruns/leaderboard_update",
                     "/wikispeedruns/lobby_prompts_update"):
            status, headers, _ = h.http("HEAD", path)
            self.assertEqual(status, 405, path)
            self.assertIn("POST", headers.get("allow", ""), path)

    def test_head_where_get_is_served_has_no_body(self):
        """HEAD on a GET resource answers as GET would, without the body."""
        h = shipped()
        room = create_gameroom(h, 2)
        for path in (f"/gameroom/rooms/{room}", "/healthz", "/metrics"):
            raw = h.raw(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            h.flush()
            status, _, body = raw.response()
            self.assertEqual((status, body), (200, b""), path)

    def test_gameroom_client_library_is_served(self):
        """The browser client library and its type declarations are at <mount>/client.js and client.d.ts."""
        h = shipped()
        status, headers, body = h.http("GET", "/gameroom/client.js")
        self.assertEqual((status, headers["content-type"]), (200, "text/javascript; charset=utf-8"))
        self.assertIn(b"export class LockstepClient", body)
        status, _, body = h.http("GET", "/gameroom/client.d.ts")
        self.assertEqual(status, 200)
        self.assertIn(b"export declare class LockstepClient", body)

    def test_disabled_demo_says_how_to_enable_it(self):
        """A demo page that is off answers 404 with the line that turns it on."""
        h = shipped()
        status, _, body = h.http("GET", "/carparty/demo")
        self.assertEqual(status, 404)
        self.assertEqual(body, b"the demo page is off: set demo = yes in [app:carparty] and restart relayd\n")

    def test_create_urls_do_not_echo_the_host_header(self):
        """gameroom's create answers with URLs of the listener, whatever Host the request carried."""
        h = shipped()
        body = json.dumps({"engine": "e", "seed": 1, "players": 2}).encode()
        raw = h.raw(b"POST /gameroom/create HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        h.flush()
        status, _, answer = raw.response()
        self.assertEqual(status, 201)
        self.assertNotIn("evil.example", answer.decode())
