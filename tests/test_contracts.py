"""
One contract per state interface, run over each implementation: one node's (in memory, or the
daemon's store) and the cluster's (Redis, a private redis-server), as centrifuge's broker tests run
over its memory and Redis brokers. A behaviour that differs between them fails here.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from relayd.apps.carparty.core import MemoryCodes
from relayd.apps.gameroom.core import GameRoom, Settings, merge_progress
from relayd.apps.gameroom.roomstore import LocalRoomStore
from relayd.bus import MemoryBus
from relayd.store import MemoryStore
from tests.test_cluster import ClusterTestCase


class CodesContract:
    """carparty's ICodes. make_codes() fires with an implementation."""

    @defer.inlineCallbacks
    def test_a_code_is_held_once(self):
        """The first claim of a code holds it; a second is refused; the code exists."""
        codes = yield self.make_codes()
        self.assertFalse((yield codes.exists("ABCD")))
        self.assertTrue((yield codes.claim("ABCD")))
        self.assertFalse((yield codes.claim("ABCD")))
        self.assertTrue((yield codes.exists("ABCD")))

    @defer.inlineCallbacks
    def test_a_released_code_is_free_again(self):
        """Once released (and what release returns has fired), a code does not exist and can be claimed again."""
        codes = yield self.make_codes()
        yield codes.claim("WXYZ")
        yield defer.maybeDeferred(codes.release, "WXYZ")
        self.assertFalse((yield codes.exists("WXYZ")))
        self.assertTrue((yield codes.claim("WXYZ")))

    @defer.inlineCallbacks
    def test_codes_are_independent(self):
        """Holding one code says nothing of another."""
        codes = yield self.make_codes()
        yield codes.claim("AAAA")
        self.assertFalse((yield codes.exists("BBBB")))
        self.assertTrue((yield codes.claim("BBBB")))


class MemoryCodesTests(CodesContract, TestCase):
    def make_codes(self):
        return defer.succeed(MemoryCodes())


class LeasedCodesTests(CodesContract, ClusterTestCase):
    @defer.inlineCallbacks
    def make_codes(self):
        yield self.start_cluster(1)
        return self.nodes[0].service.apps["carparty"].core.codes


def _written_room(turns: int):
    """A running room as gameroom writes it: (meta, progress, chunks of its log)."""
    core = GameRoom(MemoryBus(), Settings())
    room = core.create({"engine": "counter@1", "seed": 7, "players": 1}, 0.0)
    room.log = [f'{{"turn":{n}}}'.encode() for n in range(turns)]
    room.turn = turns
    size = room.log_chunk
    chunks = {i: [p.decode() for p in room.log[i * size:(i + 1) * size]] for i in range((turns + size - 1) // size)}
    return room, room.meta(), room.progress(), chunks


class RoomStoreContract:
    """gameroom's IRoomStore. make_store() fires with (store, hold): hold(room_id) makes this node the room's owner."""

    @defer.inlineCallbacks
    def test_a_room_reads_back_as_written(self):
        """A room's meta, progress and log chunks read back as its meta brought up to its progress, and its whole log in order."""
        store, hold = yield self.make_store()
        room, meta, progress, chunks = _written_room(70)
        yield hold(room.id)
        yield store.save([(meta, progress, chunks)], set())
        loaded_meta, log = yield store.load(room.id)
        self.assertEqual(loaded_meta, merge_progress(meta, progress))
        self.assertEqual(log, [p.decode() for p in room.log])

    @defer.inlineCallbacks
    def test_progress_alone_moves_a_room_on(self):
        """A later write with progress and new chunks but no meta (unchanged) reads back at the new turn."""
        store, hold = yield self.make_store()
        room, meta, progress, chunks = _written_room(40)
        yield hold(room.id)
        yield store.save([(meta, progress, chunks)], set())
        room.log += [f'{{"turn":{n}}}'.encode() for n in range(40, 50)]
        room.turn = 50
        size = room.log_chunk
        later = {i: [p.decode() for p in room.log[i * size:(i + 1) * size]] for i in range(40 // size, 50 // size + 1)}
        yield store.save([(None, room.progress(), later)], set())
        loaded_meta, log = yield store.load(room.id)
        self.assertEqual(loaded_meta["turn"], 50)
        self.assertEqual(len(log), 50)

    @defer.inlineCallbacks
    def test_a_deleted_room_is_gone(self):
        """A room saved, then deleted, loads as None."""
        store, hold = yield self.make_store()
        room, meta, progress, chunks = _written_room(10)
        yield hold(room.id)
        yield store.save([(meta, progress, chunks)], set())
        yield store.save([], {room.id})
        self.assertIsNone((yield store.load(room.id)))

    @defer.inlineCallbacks
    def test_an_unknown_room_is_none(self):
        """A room never stored loads as None."""
        store, _ = yield self.make_store()
        self.assertIsNone((yield store.load("nosuchroom")))


class LocalRoomStoreTests(RoomStoreContract, TestCase):
    def make_store(self):
        return defer.succeed((LocalRoomStore(MemoryStore()), lambda room_id: defer.succeed(True)))


class RedisRoomStoreTests(RoomStoreContract, ClusterTestCase):
    @defer.inlineCallbacks
    def make_store(self):
        yield self.start_cluster(1)
        placement = self.nodes[0].service.apps["gameroom"].placement
        return placement.store, placement.leases.claim


class RosterContract:
    """wikispeedruns' IRoster. make_roster() fires with an implementation."""

    @defer.inlineCallbacks
    def test_members_get_unique_names_and_every_change_a_newer_version(self):
        """Joins with one wanted name get distinct names; each join and leave gives a roster with a higher version; the last leave empties the group."""
        roster = yield self.make_roster()
        first_name, first = yield roster.join("lobby:1", "m1", "dan")
        second_name, second = yield roster.join("lobby:1", "m2", "dan")
        self.assertEqual(first_name, "dan")
        self.assertNotEqual(second_name, "dan")
        self.assertEqual(sorted(second.names), sorted([first_name, second_name]))
        self.assertGreater(second.version, first.version)
        after = yield roster.leave("lobby:1", "m1")
        self.assertEqual(list(after.names), [second_name])
        self.assertGreater(after.version, second.version)
        self.assertIsNone((yield roster.leave("lobby:1", "m2")))

    @defer.inlineCallbacks
    def test_groups_are_independent(self):
        """A name taken in one group is free in another."""
        roster = yield self.make_roster()
        yield roster.join("lobby:1", "m1", "ana")
        name, other = yield roster.join("lobby:2", "m2", "ana")
        self.assertEqual((name, list(other.names)), ("ana", ["ana"]))


class MemoryRosterTests(RosterContract, TestCase):
    def make_roster(self):
        from relayd.apps.wikispeedruns.roster import MemoryRoster

        return defer.succeed(MemoryRoster())


class RedisRosterTests(RosterContract, ClusterTestCase):
    @defer.inlineCallbacks
    def make_roster(self):
        yield self.start_cluster(1)
        return self.nodes[0].service.apps["wikispeedruns"].core.roster


class ClickerStateContract:
    """clicker's IClickerState. make_state() fires with an implementation."""

    @defer.inlineCallbacks
    def test_identities(self):
        """A REGISTER without a secret mints an id; its secret gives the same id back unminted; without may_mint nothing is minted."""
        from relayd.errors import ProtocolError

        state = yield self.make_state()
        device, secret, minted = yield state.identify(None)
        self.assertTrue(minted)
        self.assertRegex(device, r"^\d{6}$")
        again, same_secret, minted_again = yield state.identify(secret)
        self.assertEqual((again, same_secret, minted_again), (device, secret, False))
        with self.assertRaises(ProtocolError):
            yield state.identify(None, may_mint=False)

    @defer.inlineCallbacks
    def test_latest_score_and_retries(self):
        """A score is the device's latest once it fires True; the same score again is a retry (False); the snapshot has the newest."""
        from relayd.apps.clicker.core import Score

        state = yield self.make_state()
        device, _, _ = yield state.identify(None)
        self.assertTrue((yield state.score(device, Score(1000, 5, None))))
        self.assertFalse((yield state.score(device, Score(1000, 5, None))))
        self.assertTrue((yield state.score(device, Score(2000, 9, None))))
        _, latest = yield state.snapshot([device])
        self.assertEqual(tuple(latest[device]), (2000, 9))

    @defer.inlineCallbacks
    def test_who_is_connected(self):
        """A device attached is in the snapshot's connected ids until it is detached."""
        state = yield self.make_state()
        device, _, _ = yield state.identify(None)
        connection = object()
        yield state.attach(device, connection)
        connected, _ = yield state.snapshot([device])
        self.assertEqual(list(connected), [device])
        self.assertTrue((yield state.detach(device, connection)))
        connected, _ = yield state.snapshot([device])
        self.assertEqual(list(connected), [])


class LocalClickerStateTests(ClickerStateContract, TestCase):
    def make_state(self):
        from tests.support import Harness, make_config

        h = Harness(make_config("[app:clicker]\nlisteners = main\npath = /clicker\n")).start()
        return defer.succeed(h.app("clicker").state)


class RedisClickerStateTests(ClickerStateContract, ClusterTestCase):
    @defer.inlineCallbacks
    def make_state(self):
        yield self.start_cluster(1)
        return self.nodes[0].service.apps["clicker"].state
