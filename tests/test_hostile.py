"""
Hostile input against the shipped configuration, in memory: deep JSON in every app, HTTP bodies
over the limit, and that one client's input never closes another.
"""

import json

from twisted.trial.unittest import TestCase

from relayd import jsonutil
from tests.test_shipped_config import create_gameroom, shipped


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


class DeepJSONTests(TestCase):
    def test_parse_time_bound(self):
        """JSON deeper than MAX_DEPTH is one BadJSON at parse time; MAX_DEPTH itself is accepted and re-encodes."""
        jsonutil.loads(nested(jsonutil.MAX_DEPTH))
        self.assertEqual(jsonutil.dumps(jsonutil.loads(nested(jsonutil.MAX_DEPTH))), nested(jsonutil.MAX_DEPTH).encode())
        for depth in (jsonutil.MAX_DEPTH + 1, 961, 1023, 5000):
            with self.assertRaises(jsonutil.BadJSON):
                jsonutil.loads(nested(depth))
        with self.assertRaises(jsonutil.BadJSON):
            jsonutil.loads('{"a":' * 100 + "1" + "}" * 100)

    def test_many_brackets_but_shallow_is_fine(self):
        """A wide document with thousands of brackets (a drawn path) is accepted."""
        path = json.dumps([[n, n] for n in range(5000)])
        self.assertEqual(len(jsonutil.loads(path)), 5000)

    def _internal_errors(self, h, app):
        return h.service.metrics.registry.get_sample_value(
            "relayd_protocol_errors_total", {"app": app, "kind": "internal"}) or 0

    def test_carparty_phone_and_server(self):
        """A phone's deep frame drops that phone (invalid JSON, as the protocol defines); the server stays."""
        h = shipped()
        server = h.ws("/carparty/ws")
        server.send_json({"action": "login_server", "server_code": "DEEP"})
        phone, other = h.ws("/carparty/ws"), h.ws("/carparty/ws")
        phone.send_json({"action": "login_client", "server_code": "DEEP", "client_id": "1"})
        other.send_json({"action": "login_client", "server_code": "DEEP", "client_id": "2"})
        h.flush()
        phone.send_text(nested(980))
        server.send_text('{"deep": ' + nested(980) + "}")
        h.flush()
        self.assertTrue(phone.closed)
        self.assertNotEqual(phone.close_code, 1011)
        self.assertFalse(server.closed)
        self.assertFalse(other.closed)
        self.assertEqual(self._internal_errors(h, "carparty"), 0)

    def test_groovejet_signal_and_snapshot(self):
        """Deep signals and snapshots get invalidMessage; host and guest stay connected."""
        h = shipped()
        host = h.ws("/groovejet")
        host.send_json({"type": "createRoom"})
        h.flush()
        code = host.json_messages()[-1]["data"]["roomCode"]
        guest = h.ws("/groovejet")
        guest.send_json({"type": "joinRoom", "data": {"roomCode": code}})
        h.flush()
        guest.send_text('{"type": "guestOfferSignal", "data": {"offerSignal": ' + nested(990) + "}}")
        host.send_text('{"type": "snapshot", "data": ' + nested(990) + "}")
        h.flush()
        self.assertEqual(guest.json_messages()[-1]["errorType"], "invalidMessage")
        self.assertEqual(host.json_messages()[-1]["errorType"], "invalidMessage")
        self.assertFalse(host.closed or guest.closed)
        self.assertEqual(self._internal_errors(h, "groovejet"), 0)

    def test_gameroom_commands_never_close_the_honest_player(self):
        """A deep command packet is refused to its sender; the player whose packet completes the turn is not closed."""
        from tests.gameroom_reference import ReferencePlayer
        from tests.apps.test_gameroom import Seat, play

        h = shipped()
        room = create_gameroom(h, 2)
        honest, hostile = Seat(h, room, ReferencePlayer(name="honest")), Seat(h, room, ReferencePlayer(name="hostile"))
        for seat in (honest, hostile):
            seat.send(seat.player.join())
        play(h, [honest, hostile], until=lambda: honest.player.executed >= 3)
        hostile.ws.send_text(json.dumps({"type": "commands", "turn": hostile.player.executed + 1})[:-1]
                             + ', "commands": [' + nested(961) + "]}")
        play(h, [honest, hostile], until=lambda: honest.player.executed >= 10)
        self.assertFalse(honest.ws.closed)
        self.assertGreaterEqual(honest.player.executed, 10)
        self.assertEqual(self._internal_errors(h, "gameroom"), 0)
        status, _, body = h.http("GET", f"/gameroom/archive/{room}")
        self.assertEqual(status, 200)
        json.loads(body)

    def test_wikispeedruns_and_gameroom_http(self):
        """Deep JSON bodies to the HTTP endpoints are 400s, not 500s."""
        h = shipped()
        status, _, _ = h.http("POST", "/gameroom/create", ('{"engine": "e", "seed": 1, "players": 1, "options": {"setup": '
                                                          + nested(500) + "}}").encode())
        self.assertEqual(status, 400)


class HTTPBodyTests(TestCase):
    def test_announced_body_over_the_limit_is_refused_before_it_is_read(self):
        """A Content-Length over max_body_size is answered 413 at once; the body is never read or spooled, only thrown away while the client still sends it, and the connection closes within the lingering time."""
        from relayd.web.site import LINGER_SECONDS

        h = shipped()
        raw = h.raw(b"POST /groovejet/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n" + b"x" * 1000)
        h.flush()
        status, _, _ = raw.response()
        self.assertEqual(status, 413)
        h.advance(LINGER_SECONDS)
        self.assertTrue(raw.lost)

    def test_chunked_body_is_capped_while_read(self):
        """A chunked body is refused with 413 as soon as it passes max_body_size."""
        from relayd.web.site import LINGER_SECONDS

        h = shipped()
        chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"y" * 16 * 1024)
        raw = h.raw(b"POST /gameroom/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 5)
        h.flush()
        self.assertEqual(raw.response()[0], 413)
        h.advance(LINGER_SECONDS)
        self.assertTrue(raw.lost)
        self.assertEqual(h.app("gameroom").core.rooms, {})

    def test_a_refused_body_is_thrown_away_up_to_a_bound(self):
        """After a 413 the rest of the body is read and discarded, LINGER_BYTES at most: past that the connection closes at once."""
        from relayd.web.site import LINGER_BYTES

        h = shipped()
        raw = h.raw(b"POST /groovejet/rooms HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n")
        h.flush()
        self.assertEqual(raw.response()[0], 413)
        raw.transport.write(b"x" * (LINGER_BYTES // 2))
        h.flush()
        self.assertFalse(raw.lost)
        raw.transport.write(b"x" * (LINGER_BYTES // 2 + 1))
        h.flush()
        self.assertTrue(raw.lost)

    def test_body_within_the_limit_works(self):
        """A normal create body still creates."""
        h = shipped()
        self.assertTrue(create_gameroom(h, 2))
