"""clicker: both framings, identities across restarts, takeover, retries, catch-up, bad input."""

import os
import re
import tempfile

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from relayd.store import MemoryStore, SqliteStore
from relayd.ws import closecodes
from tests.support import Harness, make_config

APP = """
[app:clicker]
listeners = main
path = /clicker
max_listen_ids = 5
"""

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def harness(store=None) -> Harness:
    return Harness(make_config(APP), store=store).start()


def device(h, secret=None):
    c = h.ws("/clicker/ws")
    c.send_text("REGISTER" + (f" {secret}" if secret else ""))
    h.flush()
    reply = c.messages[-1].split(" ")
    assert reply[0] == "REGISTERED", c.messages
    c.device_id, c.secret = reply[1], reply[2]
    return c


def listener(h, line):
    c = h.ws("/clicker/ws")
    c.send_text(line)
    h.flush()
    return c


class DeviceTests(TestCase):
    def test_register_without_secret(self):
        """REGISTER gets a six-digit id and a new UUID v4 secret."""
        h = harness()
        d = device(h)
        self.assertRegex(d.device_id, r"^\d{6}$")
        self.assertRegex(d.secret, UUID)

    def test_known_secret_gets_identity_back_unknown_gets_new(self):
        """A known secret gets its id back (and the secret echoed); an unknown one gets a new identity."""
        h = harness()
        first = device(h)
        first.sendClose(1000)
        h.flush()
        again = device(h, first.secret)
        self.assertEqual((again.device_id, again.secret), (first.device_id, first.secret))
        stranger = device(h, "6f1c2a8e-8d9b-4c5e-9a7b-1234567890ab")
        self.assertNotEqual(stranger.device_id, first.device_id)
        self.assertNotEqual(stranger.secret, "6f1c2a8e-8d9b-4c5e-9a7b-1234567890ab")

    def test_verbs_case_insensitive_and_second_register_ignored(self):
        """Verbs are case-insensitive; a second REGISTER on one connection is ignored."""
        h = harness()
        c = h.ws("/clicker/ws")
        c.send_text("register")
        c.send_text("REGISTER")
        h.flush()
        self.assertEqual(len(c.messages), 1)
        c.send_text("score 5 1")
        h.flush()
        self.assertEqual(c.messages[-1], "SCORED 5")

    def test_both_score_framings(self):
        """draft-1 SCORE <ts> <score> -> SCORED <ts>; later SCORE <msgId> <ts> <score> -> SCORED <msgId> <ts>."""
        h = harness()
        d = device(h)
        d.send_text("SCORE -2147483000 12")
        d.send_text("SCORE m-17 1000 13")
        h.flush()
        self.assertEqual(d.messages[1:], ["SCORED -2147483000", "SCORED m-17 1000"])

    def test_only_ws_path(self):
        """Only <mount>/ws is a WebSocket endpoint."""
        h = harness()
        self.assertFalse(h.ws("/clicker").opened)
        self.assertFalse(h.ws("/clicker/other").opened)
        self.assertTrue(h.ws("/clicker/ws").opened)


class ListenerTests(TestCase):
    def test_listen_connect_reply_and_events(self):
        """LISTEN answers CONNECT with the connected ids; later connect, score and disconnect arrive."""
        h = harness()
        a = device(h)
        ids = f"{a.device_id},000001 000002"
        judge = listener(h, f"LISTEN {ids}")
        self.assertEqual(judge.messages, [f"CONNECT {a.device_id}"])
        a.send_text("SCORE 100 1")
        h.flush()
        self.assertEqual(judge.messages[-1], f"SCORE 100 {a.device_id} 1")
        a.sendClose(1000)
        h.flush()
        self.assertEqual(judge.messages[-1], f"DISCONNECT {a.device_id}")
        b = device(h, a.secret)
        self.assertEqual(judge.messages[-1], f"CONNECT {b.device_id}")

    def test_listen_none_connected(self):
        """With none of the ids connected the reply is a bare CONNECT."""
        h = harness()
        judge = listener(h, "listen 000001")
        self.assertEqual(judge.messages, ["CONNECT"])

    def test_subscribe_framing(self):
        """SUBSCRIBE listeners receive SCORE <ts> <score> <id>."""
        h = harness()
        a = device(h)
        judge = listener(h, f"SUBSCRIBE {a.device_id}")
        a.send_text("SCORE 5 42")
        h.flush()
        self.assertEqual(judge.messages[-1], f"SCORE 5 42 {a.device_id}")

    def test_catch_up_latest_score(self):
        """Right after CONNECT a listener gets the latest score of each listened device that has one."""
        h = harness()
        a, b = device(h), device(h)
        a.send_text("SCORE 10 3")
        a.send_text("SCORE 11 4")
        h.flush()
        judge = listener(h, f"LISTEN {a.device_id} {b.device_id}")
        self.assertEqual(judge.messages[0].split(" ")[0], "CONNECT")
        self.assertEqual(judge.messages[1:], [f"SCORE 11 {a.device_id} 4"])

    def test_retry_acknowledged_not_delivered_twice(self):
        """A retried score (same device and timestamp) is acknowledged again but delivered once."""
        h = harness()
        a = device(h)
        judge = listener(h, f"LISTEN {a.device_id}")
        a.send_text("SCORE 77 9")
        a.send_text("SCORE 77 9")
        h.flush()
        self.assertEqual(a.messages[1:], ["SCORED 77", "SCORED 77"])
        self.assertEqual([m for m in judge.messages if m.startswith("SCORE")], [f"SCORE 77 {a.device_id} 9"])

    def test_listen_cap(self):
        """One connection may follow at most max_listen_ids devices."""
        h = harness()
        judge = listener(h, "LISTEN 000001 000002 000003 000004 000005 000006")
        self.assertTrue(judge.messages[-1].startswith("ERROR too_many_ids"))
        self.assertFalse(judge.closed)


class TakeoverTests(TestCase):
    def test_newer_connection_takes_identity_without_flap(self):
        """A second live connection with one secret takes over; the older closes 4001; listeners see no flap."""
        h = harness()
        old = device(h)
        judge = listener(h, f"LISTEN {old.device_id}")
        new = device(h, old.secret)
        self.assertEqual(new.device_id, old.device_id)
        self.assertTrue(old.closed)
        self.assertEqual(old.close_code, closecodes.REPLACED)
        self.assertEqual(judge.messages, [f"CONNECT {old.device_id}"])
        new.send_text("SCORE 1 1")
        h.flush()
        self.assertEqual(judge.messages[-1], f"SCORE 1 {old.device_id} 1")


class BadInputTests(TestCase):
    def test_malformed_score_gets_error_not_scored(self):
        """Malformed SCOREs get an ERROR line and no SCORED; the connection stays."""
        h = harness()
        d = device(h)
        for line in ["SCORE", "SCORE 1", "SCORE x 1", "SCORE 1 y", "SCORE 1 2 3 4", "SCORE 99999999999999999999 1",
                     "SCORE 1.5 2", "SCORE id\x01 1 2"]:
            d.send_text(line)
        h.flush()
        self.assertFalse(d.closed)
        replies = d.messages[1:]
        self.assertEqual(len(replies), 8)
        self.assertTrue(all(r.startswith("ERROR malformed_score") for r in replies), replies)

    def test_unknown_verb_binary_and_order_errors_do_not_disconnect(self):
        """Unknown verbs, binary frames, SCORE before REGISTER and bad ids get ERROR lines only."""
        h = harness()
        c = h.ws("/clicker/ws")
        c.send_text("DANCE now")
        c.sendMessage(b"\x00\xff", True)
        c.send_text("SCORE 1 1")
        c.send_text("LISTEN 12345")
        h.flush()
        kinds = [m.split(" ")[1] for m in c.messages]
        self.assertEqual(kinds, ["unknown_command", "binary_frame", "not_registered", "malformed_ids"])
        self.assertFalse(c.closed)

    def test_other_devices_unaffected(self):
        """A device sending garbage does not affect another device's scores."""
        h = harness()
        bad, good = device(h), device(h)
        judge = listener(h, f"LISTEN {good.device_id}")
        bad.send_text("SCORE garbage")
        good.send_text("SCORE 3 3")
        h.flush()
        self.assertEqual(judge.messages[-1], f"SCORE 3 {good.device_id} 3")


class PersistenceTests(TestCase):
    """A restart is a new service over the same store file."""

    def _service(self, path):
        h = Harness(make_config(APP), store=SqliteStore(path))
        h.start()
        return h

    @defer.inlineCallbacks
    def _until(self, h, condition, what):
        """The store answers from its thread through the real reactor; the connections are in memory."""
        from twisted.internet import reactor

        deadline = reactor.seconds() + 10
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield task.deferLater(reactor, 0.01, lambda: None)
            h.flush()

    @defer.inlineCallbacks
    def test_identity_and_latest_score_survive_restart(self):
        """After a restart a device re-registering with its secret gets its id, and listeners its latest score."""
        path = os.path.join(tempfile.mkdtemp(), "relayd.sqlite3")
        first = self._service(path)
        yield self._until(first, lambda: first.app("clicker")._ready, "the first service to load its state")
        d = first.ws("/clicker/ws")
        d.send_text("REGISTER")
        yield self._until(first, lambda: d.messages, "REGISTERED")
        _, device_id, secret = d.messages[-1].split(" ")
        d.send_text("SCORE 500 21")
        yield self._until(first, lambda: len(d.messages) == 2, "SCORED")
        self.assertEqual(d.messages[-1], "SCORED 500")
        stopping = first.service.stopService()
        yield self._until(first, lambda: stopping.called, "the first service to stop")

        second = self._service(path)
        yield self._until(second, lambda: second.app("clicker")._ready, "the second service to load its state")
        again = second.ws("/clicker/ws")
        again.send_text(f"REGISTER {secret}")
        judge = second.ws("/clicker/ws")
        judge.send_text(f"LISTEN {device_id}")
        yield self._until(second, lambda: again.messages and len(judge.messages) == 2, "REGISTERED and the catch-up")
        self.assertEqual(again.messages, [f"REGISTERED {device_id} {secret}"])
        self.assertEqual(judge.messages, [f"CONNECT {device_id}", f"SCORE 500 {device_id} 21"])
        again.send_text("SCORE 500 21")  # the retry of an acknowledged score
        yield self._until(second, lambda: len(again.messages) == 2, "the retry's SCORED")
        self.assertEqual(again.messages[-1], "SCORED 500")
        self.assertEqual(len(judge.messages), 2)
        stopping = second.service.stopService()
        yield self._until(second, lambda: stopping.called, "the second service to stop")

    def test_scored_only_after_store_write(self):
        """SCORED waits for the store: a write that has not finished yet has not been acknowledged."""
        store = SlowStore()
        h = harness(store=store)
        d = h.ws("/clicker/ws")
        d.send_text("REGISTER")
        h.flush()
        store.release()
        h.flush()
        d.send_text("SCORE 9 9")
        h.flush()
        self.assertEqual(d.messages[-1].split(" ")[0], "REGISTERED")
        store.release()
        h.flush()
        self.assertEqual(d.messages[-1], "SCORED 9")


class SlowStore(MemoryStore):
    """A store whose writes complete only when the test says so."""

    def __init__(self):
        super().__init__()
        self.pending = []

    def put(self, namespace, key, value):
        d = defer.Deferred()
        self.pending.append((d, namespace, key, value))
        return d

    def release(self, count=None):
        """Complete the oldest `count` writes waiting (all by default), in the order they were made."""
        count = len(self.pending) if count is None else count
        pending, self.pending = self.pending[:count], self.pending[count:]
        for d, namespace, key, value in pending:
            MemoryStore.put(self, namespace, key, value)
            d.callback(None)

    def fail(self, count=1):
        """Fail the oldest `count` writes waiting: nothing of them is stored."""
        pending, self.pending = self.pending[:count], self.pending[count:]
        for d, *_ in pending:
            d.errback(OSError("disk full"))


class PipelineTests(TestCase):
    """A device's scores are written without each waiting for the one before, and answered in order."""

    def setUp(self):
        self.store = SlowStore()
        self.h = harness(store=self.store)
        self.device = self.h.ws("/clicker/ws")
        self.device.send_text("REGISTER")
        self.h.flush()
        self.store.release()
        self.h.flush()
        self.device_id, self.secret = self.device.messages[-1].split(" ")[1:3]
        self.judge = listener(self.h, f"LISTEN {self.device_id}")

    def scored(self):
        return [m for m in self.device.messages if m.startswith("SCORED")]

    def test_scores_are_written_together_and_answered_in_order_once_durable(self):
        """Five scores sent at once are all being written at once; each SCORED waits for its own write, in order."""
        for i in range(1, 6):
            self.device.send_text(f"SCORE {i} {i * 10}")
        self.h.flush()
        self.assertEqual(len(self.store.pending), 5)
        self.assertEqual(self.scored(), [])
        self.store.release(2)
        self.h.flush()
        self.assertEqual(self.scored(), ["SCORED 1", "SCORED 2"])
        self.store.release()
        self.h.flush()
        self.assertEqual(self.scored(), [f"SCORED {i}" for i in range(1, 6)])
        self.assertEqual([m.split(" ")[-1] for m in self.judge.messages[1:]], [str(i * 10) for i in range(1, 6)])

    def test_a_retry_of_a_score_being_written_waits_for_it(self):
        """A retry sent while its score is being written is answered only once that is durable, and heard once."""
        self.device.send_text("SCORE 7 70")
        self.device.send_text("SCORE 7 70")
        self.h.flush()
        self.assertEqual((len(self.store.pending), self.scored()), (1, []))
        self.store.release()
        self.h.flush()
        self.assertEqual(self.scored(), ["SCORED 7", "SCORED 7"])
        self.assertEqual(len(self.judge.messages), 2)  # CONNECT, then the one score

    def test_past_the_bound_the_next_commands_wait(self):
        """Beyond MAX_SCORES_WRITING scores being written the device's next commands wait, then go on in order."""
        from relayd.apps.clicker.session import MAX_SCORES_WRITING

        for i in range(1, MAX_SCORES_WRITING + 11):
            self.device.send_text(f"SCORE {i} {i}")
        self.h.flush()
        self.assertEqual(len(self.store.pending), MAX_SCORES_WRITING)
        self.store.release(5)
        self.h.flush()
        self.assertEqual(len(self.store.pending), MAX_SCORES_WRITING)
        while self.store.pending:
            self.store.release()
            self.h.flush()
        self.assertEqual(self.scored(), [f"SCORED {i}" for i in range(1, MAX_SCORES_WRITING + 11)])
        self.assertFalse(self.device.closed)

    def test_a_failed_write_is_not_acknowledged_and_its_retry_is_a_new_score(self):
        """
        A score whose write failed is never acknowledged (the connection closes with 1011); sent again
        on a new connection it is written as a new score, not taken for a retry of one accepted.
        """
        self.device.send_text("SCORE 8 80")
        self.h.flush()
        self.store.fail()
        self.h.flush()
        self.assertEqual(self.scored(), [])
        self.assertEqual(self.device.close_code, closecodes.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        again = self.h.ws("/clicker/ws")
        again.send_text(f"REGISTER {self.secret}")
        self.h.flush()
        self.store.release()
        self.h.flush()
        again.send_text("SCORE 8 80")
        self.h.flush()
        self.assertEqual(len(self.store.pending), 1)
        self.store.release()
        self.h.flush()
        self.assertEqual(again.messages[-1], "SCORED 8")


class IdentityBoundsTests(TestCase):
    """Anonymous REGISTER and LISTEN cannot exhaust or sweep the six-digit id space quickly."""

    def test_new_identities_per_address(self):
        """Past registrations_per_address new identities, REGISTER answers ERROR quota; known secrets still work."""
        h = Harness(make_config(APP + "registrations_per_address = 2\nregistration_window = 3600\n")).start()
        secrets = []
        for _ in range(2):
            d = h.ws("/clicker/ws")
            d.send_text("REGISTER")
            h.flush()
            secrets.append(d.take()[0].split(" ")[2])
        third = h.ws("/clicker/ws")
        third.send_text("REGISTER")
        h.flush()
        self.assertEqual(third.take()[0].split(" ")[:2], ["ERROR", "quota"])
        again = h.ws("/clicker/ws")
        again.send_text(f"REGISTER {secrets[0]}")
        h.flush()
        self.assertTrue(again.take()[0].startswith("REGISTERED "))
        other = h.ws("/clicker/ws", host="10.9.8.7")
        other.send_text("REGISTER")
        h.flush()
        self.assertTrue(other.take()[0].startswith("REGISTERED "))

    def test_registrations_in_flight_cannot_overdraw_the_quota(self):
        """Sixteen REGISTERs from one address in flight together (the store slow to answer) mint as many identities as the quota holds, no more; a failed write gives its token back."""
        store = SlowStore()
        h = Harness(make_config(APP + "registrations_per_address = 3\nregistration_window = 3600\n"), store=store).start()
        devices = [h.ws("/clicker/ws") for _ in range(16)]
        for d in devices:
            d.send_text("REGISTER")
        h.flush()
        self.assertEqual(len(store.pending), 3)  # only three identities were even written
        store.fail(1)
        store.release()
        h.flush()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)  # that device is closed 1011
        replies = [d.take()[0].split(" ")[0] for d in devices if d.messages]
        self.assertEqual(replies.count("REGISTERED"), 2)
        self.assertEqual(replies.count("ERROR"), 13)
        late = h.ws("/clicker/ws")
        late.send_text("REGISTER")  # the failed write's token is back
        h.flush()
        store.release()
        h.flush()
        self.assertTrue(late.take()[0].startswith("REGISTERED "))

    def test_listen_quota_per_address(self):
        """Following more ids than listen_ids_per_address from one address is refused with ERROR quota."""
        h = Harness(make_config(APP.replace("max_listen_ids = 5", "max_listen_ids = 100")
                                + "listen_ids_per_address = 150\n")).start()
        first = h.ws("/clicker/ws")
        first.send_text("LISTEN " + " ".join(f"{n:06d}" for n in range(100)))
        second = h.ws("/clicker/ws")
        second.send_text("LISTEN " + " ".join(f"{n:06d}" for n in range(100, 200)))
        h.flush()
        self.assertTrue(first.take()[0].startswith("CONNECT"))
        self.assertEqual(second.take()[0].split(" ")[:2], ["ERROR", "quota"])

    def test_unused_identities_expire(self):
        """An identity unused for identity_ttl days is removed; one that scored is kept."""
        h = Harness(make_config(APP + "identity_ttl = 1\n")).start()
        idle, busy = h.ws("/clicker/ws"), h.ws("/clicker/ws")
        idle.send_text("REGISTER")
        busy.send_text("REGISTER")
        h.flush()
        idle_secret = idle.take()[0].split(" ")[2]
        idle.sendClose(1000)
        h.advance(20 * 3600)
        busy.send_text("SCORE 1 1")
        h.advance(6 * 3600)
        core = h.app("clicker").core
        self.assertEqual(len(core.ids), 1)
        back = h.ws("/clicker/ws")
        back.send_text(f"REGISTER {idle_secret}")
        h.flush()
        self.assertNotEqual(back.take()[0].split(" ")[2], idle_secret)


class ProtocolErrorFloodTests(TestCase):
    def test_unknown_verbs_are_logged_once_then_closed_past_the_bound(self):
        """Unknown verbs: one log line for the first, the rest counted; past max_protocol_errors a minute, 1008."""
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = harness()
        c = h.ws("/clicker/ws")
        for n in range(49):
            c.send_text(f"BOGUS{n}")
        h.flush()
        self.assertFalse(c.closed)
        h.advance(60)
        for n in range(60):
            c.send_text(f"BOGUS{n}")
        h.flush()
        self.assertEqual(c.close_code, 1008)
        lines = [e for e in events if e.get("kind") == "unknown_command"]
        self.assertEqual(len(lines), 1)
        summary = [e for e in events if "protocol errors in all" in e.get("log_format", "")]
        self.assertEqual(len(summary), 1)
