"""wikispeedruns: the deployed page's frame sequences, the extensions, and bad input, in memory."""

import json

from twisted.trial.unittest import TestCase

from relayd.apps.wikispeedruns.core import TokenVerifier
from tests.support import Harness, make_config

APP = """
[app:wikispeedruns]
listeners = main
path = /wikispeedruns
{options}
"""

SECRET = "0123456789abcdef0123"
TRIGGER = "trigger-token-0123456789"


def settle(h) -> None:
    """Deliver what was sent, then let a roster_interval pass: roster updates go out at most that often."""
    h.flush()
    h.advance(0.1)


def harness(options: str = "") -> Harness:
    return Harness(make_config(APP.format(options=options))).start()


def updates(client):
    return [m["users"] for m in client.json_messages() if m.get("type") == "update"]


class LobbyStartTests(TestCase):
    def test_wait_start_updates_everyone_including_newcomer(self):
        """After every join each waiting client, the newcomer included, gets the full user list."""
        h = harness()
        dan = h.ws("/wikispeedruns")
        dan.send_json({"type": "wait_start", "user": "dan", "lobby_id": 10, "prompt_id": 5})
        settle(h)
        ana = h.ws("/wikispeedruns")
        ana.send_json({"type": "wait_start", "user": "ana", "lobby_id": 10, "prompt_id": 5})
        settle(h)
        self.assertEqual(updates(dan), [["dan"], ["dan", "ana"]])
        self.assertEqual(updates(ana), [["dan", "ana"]])

    def test_duplicate_names_get_also_prefix(self):
        """A name already waiting is renamed with "also ", repeatedly."""
        h = harness()
        clients = []
        for _ in range(3):
            c = h.ws("/wikispeedruns")
            c.send_json({"type": "wait_start", "user": "dan", "lobby_id": 10, "prompt_id": 5})
            settle(h)
            clients.append(c)
        self.assertEqual(updates(clients[2])[-1], ["dan", "also dan", "also also dan"])

    def test_start_is_echoed_to_everyone_including_host(self):
        """start goes to the whole group as {"type": "start"}, the sender included."""
        h = harness()
        host, guest = h.ws("/wikispeedruns"), h.ws("/wikispeedruns")
        host.send_json({"type": "wait_start", "user": "host", "lobby_id": 10, "prompt_id": 5})
        guest.send_json({"type": "wait_start", "user": "guest", "lobby_id": 10, "prompt_id": 5})
        h.flush()
        host.send_json({"type": "start", "extra": "ignored"})
        h.flush()
        for c in (host, guest):
            self.assertEqual(c.json_messages()[-1], {"type": "start"})

    def test_leave_updates_the_rest_and_empty_group_disappears(self):
        """A leave sends the remaining users; the last leave removes the group."""
        h = harness()
        a, b = h.ws("/wikispeedruns"), h.ws("/wikispeedruns")
        a.send_json({"type": "wait_start", "user": "a", "lobby_id": 1, "prompt_id": 2})
        b.send_json({"type": "wait_start", "user": "b", "lobby_id": 1, "prompt_id": 2})
        settle(h)
        a.sendClose(1000)
        settle(h)
        self.assertEqual(updates(b)[-1], ["b"])
        self.assertEqual(h.app("wikispeedruns").room_count(), 1)
        b.sendClose(1000)
        settle(h)
        self.assertEqual(h.app("wikispeedruns").room_count(), 0)
        self.assertEqual(h.service.bus.channel_count(), 0)

    def test_integer_and_string_ids_are_different_groups(self):
        """10 and "10" are different keys, as in the original."""
        h = harness()
        a, b = h.ws("/wikispeedruns"), h.ws("/wikispeedruns")
        a.send_json({"type": "wait_start", "user": "a", "lobby_id": 10, "prompt_id": 5})
        b.send_json({"type": "wait_start", "user": "b", "lobby_id": "10", "prompt_id": 5})
        h.flush()
        self.assertEqual(updates(a), [["a"]])
        self.assertEqual(updates(b), [["b"]])

    def test_later_frames_of_other_types_are_ignored(self):
        """Frames other than start on a waiting connection are ignored, without error."""
        h = harness()
        a = h.ws("/wikispeedruns")
        a.send_json({"type": "wait_start", "user": "a", "lobby_id": 1, "prompt_id": 2})
        a.send_json({"type": "leaderboard_update", "lobby_id": 1, "prompt_id": 2})
        h.flush()
        self.assertFalse(a.closed)
        self.assertEqual(len(a.messages), 1)

    def test_malformed_frame_closes_only_that_connection_others_get_update(self):
        """A malformed frame closes its connection with 1008; the rest of its group gets the update."""
        h = harness()
        a, b = h.ws("/wikispeedruns"), h.ws("/wikispeedruns")
        a.send_json({"type": "wait_start", "user": "a", "lobby_id": 1, "prompt_id": 2})
        b.send_json({"type": "wait_start", "user": "b", "lobby_id": 1, "prompt_id": 2})
        h.flush()
        b.send_text("{not json")
        h.flush()
        self.assertEqual(b.close_code, 1008)
        self.assertIn("not JSON", b.close_reason)
        self.assertEqual(updates(a)[-1], ["a"])


class RefreshTests(TestCase):
    def test_leaderboard_update_open_send_close(self):
        """The trigger's open-send-close is delivered as `refresh` to subscribers, and closed 1000."""
        h = harness()
        viewer = h.ws("/wikispeedruns")
        viewer.send_json({"type": "leaderboard", "lobby_id": 10, "prompt_id": 5})
        h.flush()
        self.assertEqual(viewer.messages, [])
        trigger = h.ws("/wikispeedruns")
        trigger.send_json({"type": "leaderboard_update", "lobby_id": 10, "prompt_id": 5})
        trigger.sendClose(1000)
        h.flush()
        self.assertEqual(viewer.messages, ["refresh"])
        self.assertTrue(trigger.closed)

    def test_server_closes_trigger_with_1000(self):
        """A trigger connection that does not close itself is closed by the server with 1000."""
        h = harness()
        trigger = h.ws("/wikispeedruns")
        trigger.send_json({"type": "leaderboard_update", "lobby_id": 10, "prompt_id": 5})
        h.flush()
        self.assertEqual(trigger.close_code, 1000)

    def test_lobby_id_null_is_quiet(self):
        """lobby_id null (a run outside a lobby) is handled quietly: no error, nothing to other keys."""
        h = harness()
        viewer = h.ws("/wikispeedruns")
        viewer.send_json({"type": "leaderboard", "lobby_id": 10, "prompt_id": 5})
        trigger = h.ws("/wikispeedruns")
        trigger.send_json({"type": "leaderboard_update", "lobby_id": None, "prompt_id": 5})
        h.flush()
        self.assertEqual(trigger.close_code, 1000)
        self.assertEqual(viewer.messages, [])

    def test_lobby_prompts_refresh_includes_sender(self):
        """lobby_prompts_update refreshes every subscriber of the lobby, the sender included."""
        h = harness()
        host, guest, other = h.ws("/wikispeedruns"), h.ws("/wikispeedruns"), h.ws("/wikispeedruns")
        host.send_json({"type": "lobby_prompts", "lobby_id": 10})
        guest.send_json({"type": "lobby_prompts", "lobby_id": 10})
        other.send_json({"type": "lobby_prompts", "lobby_id": 11})
        h.flush()
        host.send_json({"type": "lobby_prompts_update"})
        h.flush()
        self.assertEqual(host.messages, ["refresh"])
        self.assertEqual(guest.messages, ["refresh"])
        self.assertEqual(other.messages, [])

    def test_mounted_at_root(self):
        """Mounted at / on its own listener, any path reaches it, as the original accepted any path."""
        config = make_config(APP.format(options="").replace("/wikispeedruns", "/"))
        h = Harness(config).start()
        viewer = h.ws("/")
        viewer.send_json({"type": "leaderboard", "lobby_id": 1, "prompt_id": 1})
        trigger = h.ws("/some/other/path")
        trigger.send_json({"type": "leaderboard_update", "lobby_id": 1, "prompt_id": 1})
        h.flush()
        self.assertEqual(viewer.messages, ["refresh"])


class BadInputTests(TestCase):
    def test_unknown_first_type(self):
        """An unknown first type closes 1000 with reason "invalid message type"."""
        c = harness().one_frame("/wikispeedruns", json.dumps({"type": "dance", "lobby_id": 1}))
        self.assertEqual((c.close_code, c.close_reason), (1000, "invalid message type"))

    def test_bad_inputs_close_1008_and_are_counted(self):
        """Non-objects, missing and mistyped keys, and JSON corners close 1008 and are counted."""
        h = harness()
        for payload in ["[1,2]", '"x"', "{}", '{"type": 5}', '{"type": "leaderboard"}',
                        '{"type": "wait_start", "lobby_id": 1, "prompt_id": 2}',
                        '{"type": "wait_start", "user": 5, "lobby_id": 1, "prompt_id": 2}',
                        '{"type": "leaderboard", "lobby_id": 1.5, "prompt_id": 2}',
                        '{"type": "leaderboard", "lobby_id": true, "prompt_id": 2}',
                        '{"type": "leaderboard", "lobby_id": 1e400, "prompt_id": 2}',
                        '{"type": "leaderboard", "lobby_id": NaN, "prompt_id": 2}',
                        "[" * 30000 + "]" * 30000,
                        '{"type": "leaderboard", "lobby_id": ' + "9" * 5000 + ', "prompt_id": 2}']:
            c = h.one_frame("/wikispeedruns", payload)
            self.assertEqual(c.close_code, 1008, payload[:60])
        self.assertEqual(
            h.service.metrics.registry.get_sample_value(
                "relayd_protocol_errors_total", {"app": "wikispeedruns", "kind": "malformed_message"}
            ),
            13.0,
        )

    def test_binary_frame_closes_1003(self):
        """A binary frame closes 1003."""
        c = harness().one_frame("/wikispeedruns", b"\x01\x02", binary=True)
        self.assertEqual(c.close_code, 1003)

    def test_oversized_frame_closes_1009(self):
        """A frame above the 64 KiB default closes 1009."""
        c = harness().one_frame("/wikispeedruns", json.dumps({"type": "leaderboard", "pad": "x" * 70000}))
        self.assertEqual(c.close_code, 1009)


class HostTokenTests(TestCase):
    def setUp(self):
        self.h = harness(f"secret = {SECRET}")
        self.verifier = TokenVerifier(SECRET.encode())
        self.exp = self.h.reactor.seconds() + 3600

    def _join(self, user, token=None):
        c = self.h.ws("/wikispeedruns")
        message = {"type": "wait_start", "user": user, "lobby_id": 10, "prompt_id": 5}
        if token is not None:
            message["token"] = token
        c.send_json(message)
        self.h.flush()
        return c

    def test_only_host_token_may_start(self):
        """With a secret, a guest's start gets a not_host error; the host's start reaches everyone."""
        host = self._join("host", self.verifier.sign("host", 10, 5, True, self.exp))
        guest = self._join("guest", self.verifier.sign("guest", 10, 5, False, self.exp))
        plain = self._join("plain")
        guest.send_json({"type": "start"})
        plain.send_json({"type": "start"})
        self.h.flush()
        self.assertEqual(guest.json_messages()[-1]["error"], "not_host")
        self.assertEqual(plain.json_messages()[-1]["error"], "not_host")
        self.assertFalse(guest.closed)
        self.assertNotIn({"type": "start"}, host.json_messages())
        host.send_json({"type": "start"})
        self.h.flush()
        for c in (host, guest, plain):
            self.assertEqual(c.json_messages()[-1], {"type": "start"})

    def test_forged_expired_and_mismatched_tokens_close(self):
        """A token with a bad signature, an expired one, or one for another prompt closes 1008."""
        forged = TokenVerifier(b"not-the-secret-at-all").sign("host", 10, 5, True, self.exp)
        expired = self.verifier.sign("host", 10, 5, True, self.h.reactor.seconds() - 1)
        other = self.verifier.sign("host", 10, 6, True, self.exp)
        for token in (forged, expired, other, "garbage"):
            c = self._join("host", token)
            self.assertEqual(c.close_code, 1008, token)

    def test_without_secret_anyone_starts(self):
        """Without a configured secret the original behaviour holds: anyone may start."""
        h = harness()
        c = h.ws("/wikispeedruns")
        c.send_json({"type": "wait_start", "user": "g", "lobby_id": 1, "prompt_id": 1})
        c.send_json({"type": "start"})
        h.flush()
        self.assertEqual(c.json_messages()[-1], {"type": "start"})


class TriggerEndpointTests(TestCase):
    def test_post_triggers_with_bearer_token(self):
        """POST leaderboard_update and lobby_prompts_update with the bearer token deliver refresh."""
        h = harness(f"trigger_token = {TRIGGER}")
        board, lobby = h.ws("/wikispeedruns"), h.ws("/wikispeedruns")
        board.send_json({"type": "leaderboard", "lobby_id": 10, "prompt_id": 5})
        lobby.send_json({"type": "lobby_prompts", "lobby_id": 10})
        h.flush()
        auth = {"Authorization": f"Bearer {TRIGGER}", "Content-Type": "application/json"}
        status, _, body = h.http("POST", "/wikispeedruns/leaderboard_update", b'{"lobby_id": 10, "prompt_id": 5}', auth)
        self.assertEqual((status, json.loads(body)), (200, {"delivered": 1}))
        status, _, body = h.http("POST", "/wikispeedruns/lobby_prompts_update", b'{"lobby_id": 10}', auth)
        self.assertEqual(status, 200)
        h.flush()
        self.assertEqual(board.messages, ["refresh"])
        self.assertEqual(lobby.messages, ["refresh"])

    def test_wrong_or_missing_token_401_nothing_delivered(self):
        """A wrong or missing bearer token answers 401 and delivers nothing."""
        h = harness(f"trigger_token = {TRIGGER}")
        board = h.ws("/wikispeedruns")
        board.send_json({"type": "leaderboard", "lobby_id": 10, "prompt_id": 5})
        h.flush()
        body = b'{"lobby_id": 10, "prompt_id": 5}'
        self.assertEqual(h.http("POST", "/wikispeedruns/leaderboard_update", body)[0], 401)
        self.assertEqual(h.http("POST", "/wikispeedruns/leaderboard_update", body, {"Authorization": "Bearer nope"})[0], 401)
        h.flush()
        self.assertEqual(board.messages, [])

    def test_trigger_without_configured_token_is_401(self):
        """Without trigger_token configured the endpoints refuse every request."""
        h = harness()
        self.assertEqual(h.http("POST", "/wikispeedruns/leaderboard_update", b"{}", {"Authorization": "Bearer "})[0], 401)

    def test_bad_body_400(self):
        """A body that is not a JSON object with the ids answers 400."""
        h = harness(f"trigger_token = {TRIGGER}")
        auth = {"Authorization": f"Bearer {TRIGGER}"}
        for body in (b"nope", b"[1]", b'{"lobby_id": 1}'):
            self.assertEqual(h.http("POST", "/wikispeedruns/leaderboard_update", body, auth)[0], 400, body)


class LobbyBoundsTests(TestCase):
    """A lobby keeps working for its members while someone floods it."""

    def test_join_flood_costs_the_members_a_bounded_rate_of_updates(self):
        """300 joins in one second: at most one roster per roster_interval, writes within the group's byte budget, the last complete."""
        h = harness()
        member = h.ws("/wikispeedruns")
        member.send_json({"type": "wait_start", "user": "real", "lobby_id": 1, "prompt_id": 1})
        settle(h)
        member.take()
        for n in range(300):
            c = h.ws("/wikispeedruns", host=f"10.0.{n // 200}.{n % 200 + 1}")
            c.send_json({"type": "wait_start", "user": f"flood{n}", "lobby_id": 1, "prompt_id": 1})
            h.advance(1 / 300)
        settle(h)
        h.advance(10)  # the budget may hold the last roster back a while; it still comes
        rosters = updates(member)
        self.assertLessEqual(len(rosters), 12)
        self.assertEqual(len(rosters[-1]), 301)
        self.assertFalse(member.closed)
        written = h.service.metrics.registry.get_sample_value("relayd_sent_bytes_total", {"app": "wikispeedruns"})
        self.assertLess(written, 2 * 1024 * 1024 * 12)  # 2 MiB/s over the ~11 s the flood and its tail took

    def test_long_names_and_full_groups_are_refused(self):
        """A name over max_name_length and a join past max_group_size close 1008; the group goes on."""
        h = harness("max_name_length = 8\nmax_group_size = 2")
        long = h.ws("/wikispeedruns")
        long.send_json({"type": "wait_start", "user": "x" * 9, "lobby_id": 1, "prompt_id": 1})
        settle(h)
        self.assertEqual(long.close_code, 1008)
        a, b, c = (h.ws("/wikispeedruns") for _ in range(3))
        for n, client in enumerate((a, b, c)):
            client.send_json({"type": "wait_start", "user": f"u{n}", "lobby_id": 1, "prompt_id": 1})
            settle(h)
        self.assertEqual(c.close_code, 1008)
        self.assertEqual(updates(a)[-1], ["u0", "u1"])

    def test_joins_per_address(self):
        """Past joins_per_address one address's next join is closed 1013; its earlier members stay."""
        h = harness("joins_per_address = 3\njoin_window = 60")
        clients = [h.ws("/wikispeedruns") for _ in range(4)]
        for n, c in enumerate(clients):
            c.send_json({"type": "wait_start", "user": f"u{n}", "lobby_id": 1, "prompt_id": 1})
            settle(h)
        self.assertEqual(clients[3].close_code, 1013)
        self.assertFalse(any(c.closed for c in clients[:3]))

    def test_a_join_refused_gives_its_quota_back(self):
        """A wait_start refused (a name over max_name_length) does not spend its address's join quota: the address's good joins after it are all served."""
        h = harness("joins_per_address = 3\njoin_window = 3600")
        for _ in range(5):
            bad = h.ws("/wikispeedruns")
            bad.send_json({"type": "wait_start", "user": "x" * 500, "lobby_id": 1, "prompt_id": 1})
            settle(h)
        clients = [h.ws("/wikispeedruns") for _ in range(3)]
        for n, c in enumerate(clients):
            c.send_json({"type": "wait_start", "user": f"u{n}", "lobby_id": 1, "prompt_id": 1})
            settle(h)
        self.assertFalse(any(c.closed for c in clients))
        self.assertEqual(updates(clients[0])[-1], ["u0", "u1", "u2"])

    def test_slow_member_gets_only_the_newest_roster(self):
        """A member that does not read holds one queued roster, the newest, not one per join."""
        h = harness()
        slow = h.ws("/wikispeedruns")
        slow.send_json({"type": "wait_start", "user": "slow", "lobby_id": 1, "prompt_id": 1})
        settle(h)
        [ws] = h.service.listeners["main"].tracker.websockets()
        ws.pauseProducing()  # its socket buffer is full
        for n in range(50):
            c = h.ws("/wikispeedruns")
            c.send_json({"type": "wait_start", "user": f"u{n}", "lobby_id": 1, "prompt_id": 1})
            settle(h)
        self.assertEqual(len(ws._queue), 1)
        slow.take()
        ws.resumeProducing()
        h.flush()
        self.assertEqual(len(updates(slow)), 1)
        self.assertEqual(len(updates(slow)[-1]), 51)


class ShutdownTests(TestCase):
    def test_stop_sends_what_waits_and_leaves_no_timer(self):
        """A roster waiting for its roster_interval goes out when the app stops; no timer outlives the daemon."""
        h = harness()
        a, b = h.ws("/wikispeedruns"), h.ws("/wikispeedruns")
        a.send_json({"type": "wait_start", "user": "a", "lobby_id": 1, "prompt_id": 2})
        h.flush()
        b.send_json({"type": "wait_start", "user": "b", "lobby_id": 1, "prompt_id": 2})
        h.flush()  # b's join waits for the interval
        core = h.app("wikispeedruns").core
        h.app("wikispeedruns").stop()
        h.flush()
        self.assertEqual(updates(a)[-1], ["a", "b"])
        self.assertEqual([c for c in h.reactor.getDelayedCalls() if c.func == core._flush_roster], [])
