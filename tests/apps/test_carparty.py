"""carparty: logins, relaying, routing, silent drops, bursts and slow phones, in memory."""

import json

from twisted.trial.unittest import TestCase

from tests.support import Harness, make_config

APP = """
[app:carparty]
listeners = main
path = /carparty
"""


def harness(limits: str = "") -> Harness:
    return Harness(make_config(APP, limits=limits)).start()


def server(h, code="SNEK"):
    s = h.ws("/carparty/ws")
    s.send_json({"action": "login_server", "server_code": code})
    h.flush()
    return s


def phone(h, client_id, code="SNEK", extra=None):
    c = h.ws("/carparty/ws")
    message = {"action": "login_client", "server_code": code, "client_id": client_id}
    message.update(extra or {})
    c.send_json(message)
    h.flush()
    return c


def phones_server_side(h):
    from relayd.apps.carparty.core import ClientSession

    return [ws for ws in h.service.listeners["main"].tracker.websockets() if isinstance(ws.session.seat, ClientSession)]


def dropped(h, reason):
    return h.service.metrics.registry.get_sample_value(
        "relayd_dropped_total", {"app": "carparty", "reason": reason}
    )


class RelayTests(TestCase):
    def test_connect_notice_and_client_frames_stamped(self):
        """The server hears connect per phone; phone frames reach it with client_id overwritten."""
        h = harness()
        s = server(h)
        p = phone(h, "467123746", extra={"ignored": True})
        p.send_json({"steer": 0.5, "client_id": "spoofed"})
        p.send_text("[1,2]")
        h.flush()
        self.assertEqual(
            [json.loads(m) for m in s.messages],
            [{"action": "connect", "client_id": "467123746"}, {"steer": 0.5, "client_id": "467123746"}, [1, 2]],
        )
        self.assertEqual(p.messages, [])

    def test_server_broadcast_never_back_to_server(self):
        """Server frames go to every phone, never back to the server; non-objects go as they are."""
        h = harness()
        s = server(h)
        a, b = phone(h, "1"), phone(h, "2")
        s.send_text('{"state": 1}')
        s.send_text("plain text")
        h.flush()
        self.assertEqual(a.messages, ['{"state": 1}', "plain text"])
        self.assertEqual(b.messages, a.messages)
        self.assertEqual(len(s.messages), 2)  # the two connect notices only

    def test_receiver_id_exact_string_match(self):
        """receiver_id reaches only phones with that id as a string, unchanged; a number reaches nobody."""
        h = harness()
        s = server(h)
        a1, a2, b = phone(h, "42"), phone(h, "42"), phone(h, "7")
        s.send_text('{"receiver_id": "42", "x": 1}')
        s.send_text('{"receiver_id": 42, "x": 2}')
        s.send_text('{"receiver_id": "nobody", "x": 3}')
        h.flush()
        self.assertEqual(a1.messages, ['{"receiver_id": "42", "x": 1}'])
        self.assertEqual(a2.messages, a1.messages)
        self.assertEqual(b.messages, [])
        self.assertFalse(s.closed)
        self.assertEqual(dropped(h, "receiver_id_not_string"), 1.0)

    def test_disconnect_notice_once_per_connection(self):
        """Two phones sharing an id each produce their own connect and disconnect."""
        h = harness()
        s = server(h)
        a, b = phone(h, "9"), phone(h, "9")
        a.sendClose(1000)
        b.sendClose(1000)
        h.flush()
        actions = [json.loads(m)["action"] for m in s.messages]
        self.assertEqual(actions, ["connect", "connect", "disconnect", "disconnect"])

    def test_server_leaving_closes_phones_and_frees_code(self):
        """When the server leaves its phones are closed and its code can be taken again."""
        h = harness()
        s = server(h)
        a, b = phone(h, "1"), phone(h, "2")
        s.sendClose(1000)
        h.flush()
        self.assertTrue(a.closed and b.closed)
        again = server(h)
        self.assertFalse(again.closed)
        self.assertEqual(h.app("carparty").room_count(), 1)
        self.assertEqual(h.service.bus.subscribers("carparty:clients:SNEK"), 0)

    def test_frames_while_no_phone_is_connected(self):
        """A server frame with no phone connected is fine: the server stays (the original dropped it)."""
        h = harness()
        s = server(h)
        s.send_text('{"track": "chunk"}')
        h.flush()
        self.assertFalse(s.closed)
        p = phone(h, "1")
        s.send_text("after")
        h.flush()
        self.assertEqual(p.messages, ["after"])

    def test_codes_are_separate(self):
        """Two servers with different codes do not see each other's phones."""
        h = harness()
        server(h, "AAAA")
        s2 = server(h, "BBBB")
        p1 = phone(h, "1", code="AAAA")
        s2.send_text("for B")
        h.flush()
        self.assertEqual(p1.messages, [])
        self.assertEqual(len(s2.messages), 0)


class SilentDropTests(TestCase):
    def test_each_silent_drop_closes_without_a_word_and_is_counted(self):
        """Every drop the protocol defines closes the connection, sends nothing, and counts its reason."""
        h = harness()
        server(h)
        cases = {
            "unknown_action": '{"action": "dance", "server_code": "SNEK"}',
            "missing_code": '{"action": "login_client", "client_id": "1"}',
            "missing_client_id": '{"action": "login_client", "server_code": "SNEK"}',
            "unknown_code": '{"action": "login_client", "server_code": "NOPE", "client_id": "1"}',
            "code_in_use": '{"action": "login_server", "server_code": "SNEK"}',
            "login_not_json": "{nope",
            "login_not_object": "[]",
        }
        for reason, payload in cases.items():
            c = h.one_frame("/carparty/ws", payload)
            self.assertTrue(c.closed, reason)
            self.assertEqual(c.messages, [], reason)
            self.assertEqual(dropped(h, reason), 1.0, reason)
        c = h.one_frame("/carparty/ws", b"\x00", binary=True)
        self.assertTrue(c.closed)
        self.assertEqual(dropped(h, "login_binary"), 1.0)

    def test_invalid_json_from_phone_disconnects_that_phone_only(self):
        """A phone sending invalid JSON is disconnected; the server and other phones stay."""
        h = harness()
        s = server(h)
        bad, good = phone(h, "1"), phone(h, "2")
        bad.send_text("{broken")
        h.flush()
        self.assertTrue(bad.closed)
        self.assertFalse(good.closed or s.closed)
        self.assertEqual(json.loads(s.messages[-1]), {"action": "disconnect", "client_id": "1"})

    def test_binary_from_phone_ignored(self):
        """A binary frame from a phone is ignored and counted; the phone stays."""
        h = harness()
        s = server(h)
        p = phone(h, "1")
        p.sendMessage(b"\x01", True)
        h.flush()
        self.assertFalse(p.closed)
        self.assertEqual(len(s.messages), 1)
        self.assertEqual(dropped(h, "client_binary_frame"), 1.0)


class DeliveryTests(TestCase):
    def test_burst_in_order_and_complete(self):
        """A burst of 500 frames, some large, reaches every phone complete and in order."""
        h = harness()
        s = server(h)
        phones = [phone(h, str(i)) for i in range(3)]
        sent = []
        for i in range(500):
            body = json.dumps({"seq": i, "chunk": "t" * (5000 if i % 10 == 0 else 10)})
            sent.append(body)
            s.send_text(body)
        h.flush()
        for p in phones:
            self.assertEqual(p.messages, sent)

    def test_large_frame_allowed(self):
        """Frames up to 1 MiB are relayed in both directions."""
        h = harness()
        s = server(h)
        p = phone(h, "1")
        big = "x" * (1024 * 1024 - 100)
        s.send_text(big)
        p.send_json({"blob": "y" * 500000})
        h.flush()
        self.assertEqual(p.messages, [big])
        self.assertEqual(len(json.loads(s.messages[-1])["blob"]), 500000)

    def test_non_reading_phone_does_not_hold_up_others(self):
        """A phone whose transport is full is queued and then cut off; the server and other phones go on."""
        h = harness(limits="max_send_backlog = 64K\n")
        s = server(h)
        slow, fast = phone(h, "slow"), phone(h, "fast")
        slow_server_side = [ws for ws in phones_server_side(h) if ws.session.seat.client_id == "slow"][0]
        slow_server_side.pauseProducing()  # its socket buffer is full: it stopped reading
        for i in range(100):
            s.send_text(json.dumps({"seq": i, "pad": "p" * 1000}))
        h.flush()
        self.assertEqual(len(fast.messages), 100)
        self.assertTrue(slow.closed)
        self.assertFalse(s.closed)
        self.assertEqual(json.loads(s.messages[-1]), {"action": "disconnect", "client_id": "slow"})

    def test_broadcast_encoded_once(self):
        """One server frame is encoded once for all its receivers: every phone writes the same bytes object."""
        h = harness()
        s = server(h)
        phone(h, "1"), phone(h, "2")
        written = []
        for ws in phones_server_side(h):
            original = ws.transport.write
            ws.transport.write = lambda data, _o=original: (written.append(data), _o(data))
        s.send_text("shared")
        h.flush()
        self.assertEqual(len(written), 2)
        self.assertIs(written[0], written[1])


class BatchingTests(TestCase):
    def test_frames_of_one_read_go_out_in_one_write_before_a_close(self):
        """Frames relayed from one inbound read reach each phone in one write, and a close never overtakes them."""
        h = harness()
        s = server(h)
        phones = [phone(h, str(i)) for i in range(2)]
        writes = []
        for ws in phones_server_side(h):
            original = ws.transport.write
            ws.transport.write = lambda data, _o=original: (writes.append(data), _o(data))
        for i in range(10):
            s.send_text(f"frame {i}")  # all ten arrive in one read on the server side
        s.sendClose(1000)
        h.flush()
        for p in phones:
            self.assertEqual(p.messages, [f"frame {i}" for i in range(10)])
            self.assertTrue(p.closed)
        self.assertEqual(len([w for w in writes if b"frame 0" in w]), 2)
        self.assertTrue(all(b"frame 9" in w for w in writes if b"frame 0" in w))


class SlowCodes:
    """Codes whose answers come when the test says, as from Redis on several nodes."""

    def __init__(self):
        from relayd.apps.carparty.core import MemoryCodes

        self.inner = MemoryCodes()
        self.waiting = []

    def _later(self, value):
        from twisted.internet import defer

        d = defer.Deferred()
        self.waiting.append((d, value))
        return d

    def claim(self, code):
        return self._later(self.inner.claim(code).result)

    def exists(self, code):
        return self._later(code in self.inner.codes)

    def release(self, code):
        self.inner.release(code)

    def answer_all(self):
        waiting, self.waiting = self.waiting, []
        for d, value in waiting:
            d.callback(value)


class SlowLoginTests(TestCase):
    def test_frames_sent_before_the_login_is_answered_follow_it_in_order(self):
        """Frames a server and a phone send right after logging in wait for the answer and are then relayed in order."""
        h = harness()
        codes = h.app("carparty").core.codes = SlowCodes()
        s = h.ws("/carparty/ws")
        s.send_json({"action": "login_server", "server_code": "SNEK"})
        h.flush()
        codes.answer_all()
        c = h.ws("/carparty/ws")
        c.send_json({"action": "login_client", "server_code": "SNEK", "client_id": "1"})
        for n in range(3):
            c.send_json({"n": n})
        h.flush()
        self.assertEqual(s.json_messages(), [])  # nothing before the phone's login is answered
        codes.answer_all()
        h.flush()
        self.assertEqual(s.json_messages(), [
            {"action": "connect", "client_id": "1"},
            {"n": 0, "client_id": "1"}, {"n": 1, "client_id": "1"}, {"n": 2, "client_id": "1"},
        ])

    def test_server_gone_before_its_claim_is_answered_frees_the_code(self):
        """A game server that disconnects while its code is being claimed leaves the code free and holds nothing."""
        h = harness()
        core = h.app("carparty").core
        codes = core.codes = SlowCodes()
        s = h.ws("/carparty/ws")
        s.send_json({"action": "login_server", "server_code": "SNEK"})
        h.flush()
        s.sendClose(1000)
        h.flush()
        codes.answer_all()
        h.flush()
        self.assertEqual((core.servers, codes.inner.codes, h.app("carparty").bus.channel_count()), ({}, set(), 0))

    def test_too_many_frames_before_the_login_is_answered(self):
        """A connection that floods while its login is answered is dropped, counted, and holds nothing afterwards."""
        from relayd.session import MAX_HELD as MAX_EARLY_FRAMES

        h = harness(limits=f"rate_burst = {MAX_EARLY_FRAMES * 2}")  # the hold's bound, not the rate's, is tested
        core = h.app("carparty").core
        codes = core.codes = SlowCodes()
        codes.inner.claim("SNEK")
        c = h.ws("/carparty/ws")
        c.send_json({"action": "login_client", "server_code": "SNEK", "client_id": "1"})
        for n in range(MAX_EARLY_FRAMES + 1):
            c.send_json({"n": n})
        h.flush()
        self.assertTrue(c.closed)
        codes.answer_all()
        h.flush()
        self.assertEqual((core.clients, h.app("carparty").bus.channel_count()), ({}, 0))
        self.assertIn('relayd_dropped_total{app="carparty",reason="too_many_frames_before_login"} 1.0',
                      h.http("GET", "/metrics")[2].decode())
