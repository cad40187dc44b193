"""groovejet: both protocol generations, signals, reconnection, migration, snapshots, expiry, bad input."""

import json

from twisted.trial.unittest import TestCase

from relayd.store import MemoryStore
from relayd.ws import closecodes
from tests.support import Harness, make_config

APP = """
[app:groovejet]
listeners = main
path = /groovejet
reconnect_grace = 30
room_expiry = 300
max_rooms = 50
{extra}
"""


def harness(extra: str = "", store=None) -> Harness:
    return Harness(make_config(APP.format(extra=extra)), store=store).start()


def frames(client):
    return client.json_messages()


def last(client):
    return frames(client)[-1]


def types(client):
    return [m["type"] for m in frames(client)]


def post_room(h):
    status, headers, body = h.http("POST", "/groovejet/rooms", headers={"Origin": "https://game.example"})
    assert status == 200, (status, body)
    return json.loads(body)["code"], headers


def gen2_host(h):
    host = h.ws("/groovejet")
    host.send_json({"type": "createRoom"})
    h.flush()
    return host, last(host)["data"]["roomCode"]


def gen2_guest(h, code, can_host=False):
    guest = h.ws("/groovejet")
    guest.send_json({"type": "joinRoom", "data": {"roomCode": code, "canHost": can_host}})
    h.flush()
    return guest


def identity(client):
    return frames(client)[0]["data"]


class MessageGenerationTests(TestCase):
    """The original repository's own test cases, and the rest of the message generation."""

    def test_identity_first(self):
        """Every connection first receives identity with a server-made uuid4 clientId and a reconnect token."""
        h = harness()
        c = h.ws("/groovejet")
        first = frames(c)[0]
        self.assertEqual(first["type"], "identity")
        self.assertRegex(first["data"]["clientId"], r"^[0-9a-f-]{36}$")
        self.assertGreaterEqual(len(first["data"]["reconnectToken"]), 40)

    def test_created_room(self):
        """createRoom answers createdRoom with a 5-character [0-9a-z] code."""
        h = harness()
        host, code = gen2_host(h)
        self.assertEqual(types(host), ["identity", "createdRoom"])
        self.assertRegex(code, r"^[0-9a-z]{5}$")

    def test_join_as_guest(self):
        """joinRoom to a hosted room answers joinedRoom isHost false."""
        h = harness()
        _, code = gen2_host(h)
        guest = gen2_guest(h, code)
        self.assertEqual(last(guest), {"type": "joinedRoom", "data": {"isHost": False, "reconnected": False}})

    def test_join_as_host_with_can_host(self):
        """joinRoom with canHost to a room without host makes the joiner host."""
        h = harness()
        code, _ = post_room(h)
        joiner = gen2_guest(h, code, can_host=True)
        self.assertEqual(last(joiner)["data"]["isHost"], True)

    def test_no_room_found(self):
        """joinRoom to an unknown code answers noRoomFound and keeps the connection."""
        h = harness()
        c = gen2_guest(h, "zzzzz")
        self.assertEqual(last(c)["errorType"], "noRoomFound")
        self.assertFalse(c.closed)

    def test_host_disconnected(self):
        """joinRoom without canHost to a room without host answers hostDisconnected."""
        h = harness()
        code, _ = post_room(h)
        c = gen2_guest(h, code)
        self.assertEqual(last(c)["errorType"], "hostDisconnected")

    def test_only_join_or_create_before_joining(self):
        """Before joining only join/create (and resume) are accepted."""
        h = harness()
        c = h.ws("/groovejet")
        c.send_json({"type": "guestOfferSignal", "data": {"offerSignal": "x"}})
        h.flush()
        self.assertEqual(last(c)["errorType"], "notInRoom")


class QueryGenerationTests(TestCase):
    def test_post_rooms_with_cors(self):
        """POST /rooms answers {"code"} with CORS for any origin; the preflight is answered too."""
        h = harness()
        code, headers = post_room(h)
        self.assertRegex(code, r"^[0-9a-z]{5}$")
        self.assertEqual(headers["access-control-allow-origin"], "*")
        status, headers, _ = h.http("OPTIONS", "/groovejet/rooms", headers={
            "Origin": "https://x.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        self.assertEqual(status, 204)
        self.assertIn("POST", headers["access-control-allow-methods"])

    def test_offer_answer_routing(self):
        """guestOfferSignal reaches the host with clientId added; hostAnswerSignal reaches only that guest."""
        h = harness()
        code, _ = post_room(h)
        host = h.ws("/groovejet/", query={"host": "true", "code": code})
        guest = h.ws("/groovejet/", query={"code": code})
        other = h.ws("/groovejet/", query={"code": code})
        offer = {"type": "offer", "sdp": "v=0..."}
        guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": offer, "clientId": "spoofed"}})
        h.flush()
        guest_id = identity(guest)["clientId"]
        self.assertEqual(last(host), {"type": "guestOfferSignal", "data": {"offerSignal": offer, "clientId": guest_id}})
        host.send_json({"type": "hostAnswerSignal", "data": {"answerSignal": {"type": "answer", "sdp": "a"}, "clientId": guest_id}})
        h.flush()
        self.assertEqual(last(guest), {"type": "hostAnswerSignal", "data": {"answerSignal": {"type": "answer", "sdp": "a"}}})
        self.assertEqual(types(other), ["identity"])

    def test_host_presence_means_host(self):
        """`?host` with any value, even false, connects as host, as the original did."""
        h = harness()
        code, _ = post_room(h)
        host = h.ws("/groovejet/", query=f"host=false&code={code}")
        guest = h.ws("/groovejet/", query={"code": code})
        guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": 1}})
        h.flush()
        self.assertEqual(last(host)["type"], "guestOfferSignal")

    def test_errors_then_close(self):
        """Each first-generation error is sent and followed by a close."""
        h = harness()
        code, _ = post_room(h)
        cases = [
            ("host=true", "missingRoomCode"),
            (f"code={code}&code={code}", "missingRoomCode"),
            ("code=zzzzz", "noRoomFound"),
            (f"code={code}", "hostDisconnected"),
        ]
        for query, expected in cases:
            c = h.ws("/groovejet/", query=query)
            self.assertEqual(types(c), ["identity", "error"], query)
            self.assertEqual(last(c)["errorType"], expected)
            self.assertTrue(c.closed)
        h.ws("/groovejet/", query=f"host&code={code}")
        second = h.ws("/groovejet/", query=f"host=true&code={code}")
        self.assertEqual(last(second)["errorType"], "hostAlreadyExists")
        self.assertTrue(second.closed)


class SignalTests(TestCase):
    def test_trickle_ice_both_ways(self):
        """ICE candidates go guest -> host with clientId added and host -> the named guest without it."""
        h = harness()
        host, code = gen2_host(h)
        guest = gen2_guest(h, code)
        gid = identity(guest)["clientId"]
        cand = {"candidate": "candidate:1 1 udp 2122 127.0.0.1 5000 typ host", "sdpMid": "0"}
        guest.send_json({"type": "iceCandidate", "data": {"candidate": cand}})
        h.flush()
        self.assertEqual(last(host), {"type": "iceCandidate", "data": {"candidate": cand, "clientId": gid}})
        host.send_json({"type": "iceCandidate", "data": {"candidate": cand, "clientId": gid}})
        h.flush()
        self.assertEqual(last(guest), {"type": "iceCandidate", "data": {"candidate": cand}})

    def test_bad_input_keeps_connection_and_other_rooms(self):
        """Malformed JSON, missing data, unknown types, unknown guests and oversized SDP get errors; nothing closes."""
        h = harness("max_signal_size = 1K")
        host, code = gen2_host(h)
        guest = gen2_guest(h, code)
        other_host, other_code = gen2_host(h)
        other_guest = gen2_guest(h, other_code)
        guest.send_text("{nope")
        guest.send_json({"type": "guestOfferSignal"})
        guest.send_json({"type": "dance", "data": {}})
        guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": "s" * 2000}})
        host.send_json({"type": "hostAnswerSignal", "data": {"answerSignal": "a", "clientId": "nobody"}})
        host.send_json({"type": "hostAnswerSignal", "data": "not an object"})
        h.flush()
        self.assertEqual([m["errorType"] for m in frames(guest) if m["type"] == "error"],
                         ["invalidMessage", "invalidMessage", "unknownType", "tooLarge"])
        self.assertEqual([m["errorType"] for m in frames(host) if m["type"] == "error"],
                         ["unknownClient", "invalidMessage"])
        self.assertFalse(guest.closed or host.closed)
        other_guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": "ok"}})
        h.flush()
        self.assertEqual(last(other_host)["type"], "guestOfferSignal")


class ReconnectTests(TestCase):
    def test_host_reconnects_with_token_guests_told(self):
        """Guests hear hostLeft and hostReturned; the host resumes its clientId and role with its token."""
        h = harness()
        host, code = gen2_host(h)
        guest = gen2_guest(h, code)
        host_identity = identity(host)
        host.sendClose(1000)
        h.flush()
        self.assertEqual(last(guest)["type"], "hostLeft")
        h.advance(10)
        back = h.ws("/groovejet", query={"resume": host_identity["reconnectToken"]})
        self.assertEqual(frames(back)[0]["data"]["clientId"], host_identity["clientId"])
        self.assertEqual(last(back), {"type": "resumed", "data": {"roomCode": code, "isHost": True,
                                                                  "clientId": host_identity["clientId"]}})
        self.assertEqual(last(guest)["type"], "hostReturned")
        guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": "again"}})
        h.flush()
        self.assertEqual(last(back)["data"]["offerSignal"], "again")

    def test_guest_resumes_by_message_host_told(self):
        """A guest resumes with a resume message; the host heard guestLeft and guestReturned."""
        h = harness()
        host, code = gen2_host(h)
        guest = gen2_guest(h, code)
        gid = identity(guest)
        guest.sendClose(1000)
        h.flush()
        self.assertEqual(last(host), {"type": "guestLeft", "data": {"clientId": gid["clientId"]}})
        back = h.ws("/groovejet")
        back.send_json({"type": "resume", "data": {"token": gid["reconnectToken"]}})
        h.flush()
        self.assertEqual(last(back)["data"]["clientId"], gid["clientId"])
        self.assertEqual(last(host)["type"], "guestReturned")
        host.send_json({"type": "hostAnswerSignal", "data": {"answerSignal": "x", "clientId": gid["clientId"]}})
        h.flush()
        self.assertEqual(last(back)["type"], "hostAnswerSignal")

    def test_token_expires_after_grace(self):
        """After the grace period the token no longer resumes."""
        h = harness()
        host, code = gen2_host(h)
        gen2_guest(h, code)
        token = identity(host)["reconnectToken"]
        host.sendClose(1000)
        h.flush()
        h.advance(31)
        late = h.ws("/groovejet", query={"resume": token})
        self.assertEqual(last(late)["errorType"], "invalidToken")

    def test_half_dead_connection_replaced(self):
        """Resuming while the old connection still looks open closes the old one with 4001."""
        h = harness()
        host, code = gen2_host(h)
        back = h.ws("/groovejet", query={"resume": identity(host)["reconnectToken"]})
        self.assertEqual(last(back)["type"], "resumed")
        self.assertEqual(host.close_code, closecodes.REPLACED)
        guest = gen2_guest(h, code)
        guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": 1}})
        h.flush()
        self.assertEqual(last(back)["type"], "guestOfferSignal")


def older_and_newer_guest(can_host_older: bool, can_host_newer: bool):
    """A room whose host leaves for good after two guests joined a second apart: (h, older, newer, code)."""
    h = harness()
    host, code = gen2_host(h)
    older = gen2_guest(h, code, can_host=can_host_older)
    h.advance(1)
    newer = gen2_guest(h, code, can_host=can_host_newer)
    host.sendClose(1000)
    h.flush()
    h.advance(31)
    return h, older, newer, code


class MigrationTests(TestCase):
    def test_longest_connected_guest_promoted(self):
        """Without the host back in time, the longest-connected guest that joined with canHost is promoted with the guest list."""
        h, first, second, _ = older_and_newer_guest(True, True)
        promoted = last(first)
        self.assertEqual(promoted["type"], "promoted")
        self.assertEqual(promoted["data"]["guests"], [identity(second)["clientId"]])
        self.assertEqual(last(second), {"type": "hostChanged", "data": {"clientId": identity(first)["clientId"]}})
        second.send_json({"type": "guestOfferSignal", "data": {"offerSignal": "to new host"}})
        h.flush()
        self.assertEqual(last(first)["data"]["offerSignal"], "to new host")

    def test_pearls_guests_are_never_promoted(self):
        """
        pearl's flow: guests join with canHost false; the host leaves for good. No guest is promoted (none
        gets `promoted`, which pearl's guest cannot handle), the room stays hostless, and a late player
        opening the old invite is answered hostDisconnected, not a joinedRoom it would wait on forever.
        """
        h, early, also_early, code = older_and_newer_guest(False, False)
        for guest in (early, also_early):
            self.assertNotIn("promoted", types(guest))
            self.assertEqual(types(guest)[-1], "hostLeft")
        late = gen2_guest(h, code, can_host=False)
        self.assertEqual(last(late)["type"], "error")
        self.assertEqual(last(late)["errorType"], "hostDisconnected")
        self.assertNotIn("joinedRoom", types(late))

    def test_a_first_generation_guest_is_never_promoted(self):
        """A guest that joined by query string (the first generation cannot host) is not promoted when the host leaves for good."""
        h = harness()
        host, code = gen2_host(h)
        guest = h.ws("/groovejet", query=f"code={code}")
        host.sendClose(1000)
        h.flush()
        h.advance(31)
        self.assertNotIn("promoted", types(guest))
        self.assertEqual(types(guest)[-1], "hostLeft")

    def test_a_guest_with_can_host_is_promoted_before_older_guests_without(self):
        """Among the guests, only those that joined with canHost count: a newer one with it is promoted over an older one without."""
        h, older, newer, _ = older_and_newer_guest(False, True)
        self.assertEqual(last(newer)["type"], "promoted")
        self.assertEqual(last(older), {"type": "hostChanged", "data": {"clientId": identity(newer)["clientId"]}})

    def test_named_successor_promoted(self):
        """A successor named by the host is promoted instead of the longest connected guest."""
        h = harness()
        host, code = gen2_host(h)
        first, second = gen2_guest(h, code), gen2_guest(h, code)
        host.send_json({"type": "setSuccessor", "data": {"clientId": identity(second)["clientId"]}})
        host.sendClose(1000)
        h.flush()
        h.advance(31)
        self.assertEqual(last(second)["type"], "promoted")
        self.assertEqual(last(first)["type"], "hostChanged")

    def test_migration_can_be_switched_off(self):
        """With host_migration off nobody is promoted; a canHost join takes the host seat."""
        h = harness("host_migration = no")
        host, code = gen2_host(h)
        guest = gen2_guest(h, code)
        host.sendClose(1000)
        h.flush()
        h.advance(31)
        self.assertEqual(last(guest)["type"], "hostLeft")
        newcomer = gen2_guest(h, code, can_host=True)
        self.assertTrue(last(newcomer)["data"]["isHost"])


class SnapshotAndExpiryTests(TestCase):
    def test_snapshot_handed_to_returning_and_promoted_host(self):
        """The newest snapshot goes to a returning host and to a promoted guest."""
        h = harness()
        host, code = gen2_host(h)
        guest = gen2_guest(h, code, can_host=True)
        host.send_json({"type": "snapshot", "data": {"turn": 1}})
        host.send_json({"type": "snapshot", "data": {"turn": 2}})
        h.flush()
        self.assertEqual(types(host)[-2:], ["snapshotStored", "snapshotStored"])
        host.sendClose(1000)
        h.flush()
        h.advance(31)
        self.assertEqual(last(guest)["data"]["snapshot"], {"turn": 2})

    def test_resuming_host_gets_the_snapshot_after_resumed(self):
        """A host resuming its seat gets identity, resumed and then the room's snapshot; its guest hears hostReturned."""
        h = harness()
        host, code = gen2_host(h)
        guest = gen2_guest(h, code)
        host.send_json({"type": "snapshot", "data": {"turn": 5}})
        h.flush()
        token = host.json_messages()[0]["data"]["reconnectToken"]
        host.sendClose(1000)
        h.flush()
        back = h.ws(f"/groovejet/?resume={token}")
        h.flush()
        self.assertEqual([m["type"] for m in back.json_messages()], ["identity", "resumed", "snapshot"])
        self.assertEqual(back.json_messages()[2]["data"], {"turn": 5})
        self.assertEqual(types(guest)[-1], "hostReturned")

    def test_snapshot_survives_restart(self):
        """Snapshots are in the durable store: after a restart a canHost joiner gets the room and its snapshot."""
        store = MemoryStore()
        h = harness(store=store)
        host, code = gen2_host(h)
        host.send_json({"type": "snapshot", "data": {"world": [1, 2, 3]}})
        h.flush()
        h2 = harness(store=store)  # a new daemon over the same store: everyone crashed out
        joiner = gen2_guest(h2, code, can_host=True)
        self.assertEqual([m for m in frames(joiner) if m["type"] == "snapshot"], [{"type": "snapshot", "data": {"world": [1, 2, 3]}}])
        self.assertTrue(last(joiner)["data"]["isHost"])

    def test_snapshot_size_and_host_only(self):
        """Snapshots above max_snapshot_size and snapshots from guests are refused."""
        h = harness("max_snapshot_size = 1K")
        host, code = gen2_host(h)
        guest = gen2_guest(h, code)
        host.send_json({"type": "snapshot", "data": "x" * 2000})
        guest.send_json({"type": "snapshot", "data": 1})
        h.flush()
        self.assertEqual(last(host)["errorType"], "tooLarge")
        self.assertEqual(last(guest)["errorType"], "notHost")

    def test_room_expires_and_store_forgets(self):
        """A room without host and clients is deleted after room_expiry, and leaves the store."""
        store = MemoryStore()
        h = harness(store=store)
        host, code = gen2_host(h)
        host.sendClose(1000)
        h.flush()
        h.advance(31)
        self.assertEqual(h.app("groovejet").room_count(), 1)
        h.advance(301)
        self.assertEqual(h.app("groovejet").room_count(), 0)
        self.assertEqual(store.data, {})
        self.assertEqual(h.service.bus.channel_count(), 0)

    def test_unjoined_room_expires(self):
        """A room created over HTTP that nobody joins is deleted after room_expiry."""
        h = harness()
        post_room(h)
        h.advance(301)
        self.assertEqual(h.app("groovejet").room_count(), 0)

    def test_max_rooms(self):
        """Beyond max_rooms, createRoom answers tooManyRooms and POST /rooms 503."""
        h = harness("rooms_per_address = 0")  # the node's bound, not the address's, is tested
        for _ in range(50):
            post_room(h)
        host = h.ws("/groovejet")
        host.send_json({"type": "createRoom"})
        h.flush()
        self.assertEqual(last(host)["errorType"], "tooManyRooms")
        self.assertEqual(h.http("POST", "/groovejet/rooms")[0], 503)


class HostAwayJoinTests(TestCase):
    """A host within its reconnect grace does not count as present for joins (pearl's GroovejetClient)."""

    def _room_with_host_away(self, h):
        host, code = gen2_host(h)
        token = identity(host)["reconnectToken"]
        host.sendClose(1000)
        h.flush()
        return code, token

    def test_guest_join_gets_host_disconnected(self):
        """joinRoom without canHost while the host is away: hostDisconnected, never joinedRoom as guest."""
        h = harness()
        code, _ = self._room_with_host_away(h)
        guest = gen2_guest(h, code)
        self.assertEqual(types(guest), ["identity", "error"])
        self.assertEqual(last(guest)["errorType"], "hostDisconnected")

    def test_first_generation_guest_gets_host_disconnected_and_close(self):
        """A query-string guest while the host is away gets hostDisconnected and is closed."""
        h = harness()
        code, _ = self._room_with_host_away(h)
        guest = h.ws("/groovejet", query={"code": code})
        self.assertEqual(last(guest)["errorType"], "hostDisconnected")
        self.assertTrue(guest.closed)

    def test_can_host_joiner_takes_the_seat(self):
        """With canHost the joiner becomes host; connected guests hear hostChanged; the old token finds nothing."""
        h = harness()
        host, code = gen2_host(h)
        token = identity(host)["reconnectToken"]
        guest = gen2_guest(h, code)
        host.sendClose(1000)
        h.flush()
        newcomer = gen2_guest(h, code, can_host=True)
        self.assertEqual(last(newcomer), {"type": "joinedRoom", "data": {"isHost": True, "reconnected": False}})
        self.assertEqual(last(guest), {"type": "hostChanged", "data": {"clientId": identity(newcomer)["clientId"]}})
        guest.send_json({"type": "guestOfferSignal", "data": {"offerSignal": {"type": "offer", "sdp": "v=0"}}})
        h.flush()
        self.assertEqual(last(newcomer)["data"]["offerSignal"], {"type": "offer", "sdp": "v=0"})
        old = h.ws("/groovejet", query={"resume": token})
        self.assertEqual(last(old)["errorType"], "invalidToken")

    def test_query_string_host_takes_the_seat(self):
        """A first-generation host connecting while the old host is away becomes host (no hostAlreadyExists)."""
        h = harness()
        code, _ = self._room_with_host_away(h)
        host = h.ws("/groovejet", query={"host": "true", "code": code})
        self.assertFalse(host.closed)
        self.assertNotIn("error", types(host))

    def test_host_back_within_grace_keeps_its_seat(self):
        """Nobody took the seat: the host resumes it with its token, as before."""
        h = harness()
        code, token = self._room_with_host_away(h)
        back = h.ws("/groovejet", query={"resume": token})
        self.assertEqual(last(back)["data"]["isHost"], True)
        self.assertEqual(last(gen2_guest(h, code))["type"], "joinedRoom")


class AnonymousRoomTests(TestCase):
    """Rooms anyone may create are bounded per client address and vanish when nobody takes them."""

    def test_quota_per_address(self):
        """POST rooms past rooms_per_address from one address is 429 with the wait; another address is not affected."""
        h = harness("rooms_per_address = 3\ncreate_window = 60")
        for _ in range(3):
            post_room(h)
        status, _, body = h.http("POST", "/groovejet/rooms")
        self.assertEqual(status, 429)
        self.assertEqual(json.loads(body)["error"], "tooManyRooms")
        host = h.ws("/groovejet")
        host.send_json({"type": "createRoom"})
        h.flush()
        self.assertEqual(last(host)["errorType"], "tooManyRooms")
        h.advance(20)  # a third of the window gives one room back
        post_room(h)

    def test_a_create_refused_for_capacity_gives_the_quota_back(self):
        """A create refused because the node is full does not spend its address's quota: the address may create once there is room."""
        h = Harness(make_config(APP.replace("max_rooms = 50", "max_rooms = 1").format(
            extra="rooms_per_address = 2\ncreate_window = 3600"))).start()
        post_room(h)
        for _ in range(3):
            self.assertEqual(h.http("POST", "/groovejet/rooms")[0], 503)
            host = h.ws("/groovejet")
            host.send_json({"type": "createRoom"})
            h.flush()
            self.assertEqual(last(host)["errorType"], "tooManyRooms")
        app = h.app("groovejet")
        app.core.rooms.clear()  # the room is gone
        post_room(h)  # the second of the address's two

    def test_room_nobody_took_expires_within_seconds(self):
        """A created room whose host never connects is gone after unclaimed_expiry; a claimed one stays."""
        h = harness()
        unclaimed, _ = post_room(h)
        claimed, _ = post_room(h)
        host = h.ws("/groovejet", query={"host": "true", "code": claimed})
        h.advance(31)
        self.assertNotIn(unclaimed, h.app("groovejet").core.rooms)
        self.assertIn(claimed, h.app("groovejet").core.rooms)
        self.assertFalse(host.closed)

    def test_create_token_guards_http_creates(self):
        """With create_token, POST rooms needs it (401 without) and its bearer is outside the quota."""
        token = "groovejet-create-token-0123"
        h = harness(f"create_token = {token}\nrooms_per_address = 1")
        self.assertEqual(h.http("POST", "/groovejet/rooms")[0], 401)
        for _ in range(5):
            status, _, _ = h.http("POST", "/groovejet/rooms", headers={"Authorization": f"Bearer {token}"})
            self.assertEqual(status, 200)


class StartRaceTests(TestCase):
    def test_a_stored_record_never_replaces_a_live_room(self):
        """A room created while the store is still read at start is not replaced by its own stored record."""
        h = harness()
        host, code = gen2_host(h)
        core = h.app("groovejet").core
        live = core.rooms[code]
        core.restore_room(code, {"created": 0, "snapshot": None, "claimed": True})
        self.assertIs(core.rooms[code], live)
        host.sendClose(1000)
        h.flush()
        core.shutdown()
        self.assertFalse(any(s.grace_timer and s.grace_timer.active() for s in [live.host, *live.guests.values()] if s))

    def test_no_timer_after_shutdown(self):
        """A connection that goes after the app stopped starts no grace timer (nothing outlives the daemon)."""
        h = harness()
        host, code = gen2_host(h)
        core = h.app("groovejet").core
        core.shutdown()
        host.sendClose(1000)
        h.flush()
        self.assertEqual([c for c in h.reactor.getDelayedCalls() if c.func == core._grace_over], [])
