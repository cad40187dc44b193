"""The bus and the store seams."""

import os
import tempfile

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from relayd.bus import MemoryBus
from relayd.store import MemoryStore, SqliteStore


class BusTests(TestCase):
    def test_publish_in_order_to_subscribers(self):
        """Every subscriber of a channel receives each message, in publish order; others do not."""
        bus = MemoryBus()
        a, b, other = [], [], []
        bus.subscribe("room", a.append)
        bus.subscribe("room", b.append)
        bus.subscribe("elsewhere", other.append)
        self.assertEqual(bus.publish("room", 1), 2)
        bus.publish("room", 2)
        self.assertEqual((a, b, other), ([1, 2], [1, 2], []))

    def test_empty_channel_disappears(self):
        """A channel whose last subscription is cancelled is removed, so channels never leak."""
        bus = MemoryBus()
        sub = bus.subscribe("room", lambda m: None)
        self.assertEqual(bus.channel_count(), 1)
        sub.cancel()
        sub.cancel()
        self.assertEqual(bus.channel_count(), 0)
        self.assertEqual(bus.publish("room", 1), 0)

    def test_failing_receiver_does_not_stop_others(self):
        """A receiver that raises is logged; the others still receive."""
        bus = MemoryBus()
        got = []

        def broken(message):
            raise RuntimeError("boom")

        bus.subscribe("room", broken)
        bus.subscribe("room", got.append)
        self.assertEqual(bus.publish("room", "x"), 1)
        self.assertEqual(got, ["x"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cancel_during_delivery(self):
        """A receiver that cancels another's subscription during delivery is honoured at once."""
        bus = MemoryBus()
        got = []
        second = None

        def first(message):
            second.cancel()

        bus.subscribe("room", first)
        second = bus.subscribe("room", got.append)
        bus.publish("room", "x")
        self.assertEqual(got, [])


class StoreContract:
    def make_store(self):
        raise NotImplementedError

    @defer.inlineCallbacks
    def test_writes_and_deletes_apply_in_the_order_made(self):
        """Puts and deletes of the same keys made back to back end as the last of them says."""
        store = self.make_store()
        writes = [store.put_many([("ns", "a", 1), ("ns", "b", 1)]), store.delete_many([("ns", "a")]),
                  store.put_many([("ns", "a", 3)]), store.delete_many([("ns", "b")]), store.put_many([("ns", "c", 4)])]
        yield defer.gatherResults(writes)
        self.assertEqual((yield store.items("ns")), [("a", 3), ("c", 4)])
        if hasattr(store, "close"):
            yield store.close()

    @defer.inlineCallbacks
    def test_put_get_delete_items(self):
        """Values round-trip as JSON by namespace and key; delete removes; items lists a namespace."""
        store = self.make_store()
        yield store.put("ns", "a", {"x": [1, 2]})
        yield store.put("ns", "b", "two")
        yield store.put("other", "a", 3)
        self.assertEqual((yield store.get("ns", "a")), {"x": [1, 2]})
        self.assertEqual((yield store.items("ns")), [("a", {"x": [1, 2]}), ("b", "two")])
        yield store.delete("ns", "a")
        self.assertIsNone((yield store.get("ns", "a")))
        yield store.put("ns", "b", "replaced")
        self.assertEqual((yield store.get("ns", "b")), "replaced")
        yield store.close()

    @defer.inlineCallbacks
    def test_put_many_delete_many(self):
        """Several entries are written, and removed, in one call."""
        store = self.make_store()
        yield store.put_many([("log", "r:1", [1]), ("log", "r:2", [2]), ("meta", "r", {"turn": 2})])
        self.assertEqual((yield store.items("log")), [("r:1", [1]), ("r:2", [2])])
        yield store.delete_many([("log", "r:1"), ("log", "r:2")])
        self.assertEqual((yield store.items("log")), [])
        self.assertEqual((yield store.get("meta", "r")), {"turn": 2})
        yield store.close()


class MemoryStoreTests(StoreContract, TestCase):
    def make_store(self):
        return MemoryStore()


class SqliteStoreTests(StoreContract, TestCase):
    def make_store(self):
        self.path = os.path.join(tempfile.mkdtemp(), "sub", "state.sqlite3")
        return SqliteStore(self.path)

    @defer.inlineCallbacks
    def test_survives_reopen(self):
        """What was written is there after the store is closed and opened again (a restart)."""
        store = self.make_store()
        yield store.put("ids", "secret", {"id": "000042"})
        yield store.close()
        again = SqliteStore(self.path)
        self.assertEqual((yield again.get("ids", "secret")), {"id": "000042"})
        yield again.close()


class _HeldPool:
    """Stands in for adbapi: each transaction waits until the test lets it finish, and is recorded."""

    def __init__(self):
        self.transactions: list[list] = []
        self.running: list[defer.Deferred] = []

    def runInteraction(self, write):
        rows = []

        class Cursor:
            def execute(self, sql, args):
                rows.append(args)

            def executemany(self, sql, many):
                rows.extend(tuple(args) for args in many)

        write(Cursor())
        self.transactions.append(rows)
        d = defer.Deferred()
        self.running.append(d)
        return d

    def finish_one(self):
        self.running.pop(0).callback(None)

    def close(self):
        pass


class StoreFairnessTests(TestCase):
    def setUp(self):
        self.store = SqliteStore(os.path.join(tempfile.mkdtemp(), "fair.sqlite3"))
        self.store._pool.close()
        self.pool = self.store._pool = _HeldPool()

    def test_a_flood_in_one_namespace_does_not_delay_another(self):
        """Behind 500 queued snapshot writes, a clicker write is in the next transaction, not the eighth."""
        for n in range(500):
            self.store.put("groovejet.rooms", f"room{n}", {"snapshot": "s" * 100})
        scored = []
        self.store.put("clicker.latest", "004211", {"score": 1}).addCallback(scored.append)
        self.pool.finish_one()  # the first snapshot, alone in the transaction that was running
        self.assertIn(("clicker.latest", "004211", '{"score":1}'), self.pool.transactions[1])
        self.assertEqual(sum(1 for ns, _, _ in self.pool.transactions[1] if ns == "groovejet.rooms"), 64)
        self.pool.finish_one()
        self.assertEqual(scored, [None])

    def test_waiting_puts_to_one_key_are_written_once(self):
        """Puts to one key that have not started are coalesced: one row, the newest value, every caller told."""
        self.store.put("groovejet.rooms", "busy", 0)
        done = []
        for n in range(100):
            self.store.put("groovejet.rooms", "k", n).addCallback(done.append)
        self.pool.finish_one()
        self.assertEqual(self.pool.transactions[1], [("groovejet.rooms", "k", "99")])
        self.pool.finish_one()
        self.assertEqual(len(done), 100)

    def test_reads_see_waiting_writes(self):
        """A get after a put that is still queued answers the queued value."""
        self.store.put("ns", "busy", 0)
        self.store.put("ns", "k", {"v": 2})
        got = []
        self.store.get("ns", "k").addCallback(got.append)
        self.assertEqual(got, [{"v": 2}])
