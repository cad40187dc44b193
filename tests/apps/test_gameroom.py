"""gameroom: whole lock-step games in memory, with the reference engine and player."""

import json
from collections import Counter

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from relayd.apps.gameroom import states
from tests.gameroom_reference import ReferencePlayer
from relayd.apps.gameroom.scheduler import TickScheduler
from relayd.store import MemoryStore
from tests.support import Harness, make_config

TOKEN = "create-token-0123456789"
APP = """
[app:gameroom]
listeners = main
path = /gameroom
create_token = {token}
tick_interval = 0.01
lag_tolerance = 2
away_timeout = 10
{extra}
"""


def harness(extra: str = "", store=None) -> Harness:
    return Harness(make_config(APP.format(token=TOKEN, extra=extra)), store=store).start()


def create(h, players=2, seed=7, options=None, token=TOKEN):
    body = {"engine": "counter@1", "seed": seed, "players": players, "options": options or {}}
    return h.http("POST", "/gameroom/create", json.dumps(body).encode(), {"Authorization": f"Bearer {token}"})


class Seat:
    """A WebSocket client driven by a ReferencePlayer."""

    def __init__(self, h, room_id, player=None, path="play"):
        self.h = h
        self.player = player or ReferencePlayer()
        self.ws = h.ws(f"/gameroom/{path}/{room_id}")
        self.seen = 0
        self.log = []

    def send(self, message):
        self.ws.send_json(message)

    def pump(self) -> bool:
        moved = False
        while self.seen < len(self.ws.messages):
            message = json.loads(self.ws.messages[self.seen])
            self.seen += 1
            self.log.append(message)
            for out in self.player.on_message(message):
                self.send(out)
                moved = True
        return moved


def play(h, seats, until=lambda: False, rounds=2000, step=0.01, idle_rounds=30):
    """
    Exchange messages until `until` holds or nothing has moved for `idle_rounds` rounds; each round
    is `step` seconds of play (turns may wait for the scheduler's next tick).
    """
    idle = 0
    for _ in range(rounds):
        h.advance(step)
        moved = False
        for seat in seats:
            moved = seat.pump() or moved
        idle = 0 if moved else idle + 1
        if until() or idle >= idle_rounds:
            break
    h.flush()
    for seat in seats:
        seat.pump()


def new_game(h, players=2, seed=7, options=None, plans=None):
    status, _, body = create(h, players, seed, options)
    assert status == 201, body
    room_id = json.loads(body)["id"]
    seats = []
    for i in range(players):
        seat = Seat(h, room_id, ReferencePlayer(name=f"player{i}", plan=(plans or {}).get(i)))
        seat.send(seat.player.join())
        seats.append(seat)
    return room_id, seats


class HTTPTests(TestCase):
    def test_create_needs_token(self):
        """POST create without the bearer token is 401; with it, 201 with id and play/watch URLs."""
        h = harness()
        self.assertEqual(create(h, token="wrong-token-000000000")[0], 401)
        status, _, body = create(h)
        self.assertEqual(status, 201)
        answer = json.loads(body)
        self.assertTrue(answer["play_url"].endswith(f"/gameroom/play/{answer['id']}"))
        self.assertTrue(answer["watch_url"].startswith("ws://"))

    def test_bad_create_bodies(self):
        """Bodies without engine, seed or a valid player count are refused with 400."""
        h = harness()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for body in [b"nope", b"[]", b'{"engine": "e", "seed": 1}', b'{"engine": "e", "seed": 1, "players": 0}',
                     b'{"engine": "e", "seed": 1.5, "players": 2}', b'{"engine": "e", "seed": 1, "players": 2, "options": {"bogus": 1}}']:
            self.assertEqual(h.http("POST", "/gameroom/create", body, auth)[0], 400, body)

    def test_room_info_and_unknown(self):
        """GET rooms/<id> gives public info; unknown ids are 404 over HTTP and WebSocket."""
        h = harness()
        room_id = json.loads(create(h)[2])["id"]
        status, _, body = h.http("GET", f"/gameroom/rooms/{room_id}")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["state"], "setup")
        self.assertEqual(h.http("GET", "/gameroom/rooms/nope")[0], 404)
        self.assertFalse(h.ws("/gameroom/play/nope").opened)


class SetupTests(TestCase):
    def test_welcome_setup_changes_and_readiness(self):
        """Welcome carries engine, seed and setup; changes are broadcast in full; a change resets readiness."""
        h = harness()
        room_id = json.loads(create(h, options={"setup": {"map": "island"}})[2])["id"]
        a = Seat(h, room_id, ReferencePlayer(name="ann", auto_ready=False))
        b = Seat(h, room_id, ReferencePlayer(auto_ready=False))
        a.send(a.player.join())
        b.send(b.player.join())
        play(h, [a, b])
        welcome = a.log[0]
        self.assertEqual((welcome["engine"], welcome["seed"], welcome["setup"]), ("counter@1", 7, {"map": "island"}))
        self.assertTrue(b.log[0]["players"][1]["name"].startswith("guest-"))
        a.send({"type": "ready", "ready": True})
        play(h, [a, b])
        b.send({"type": "setup", "changes": {"speed": 2, "map": None}})
        play(h, [a, b])
        setup = [m for m in a.log if m["type"] == "setup"][-1]
        self.assertEqual((setup["setup"], setup["version"], setup["by"]), ({"speed": 2}, 1, "p2"))
        players = [m for m in a.log if m["type"] == "players"][-1]["players"]
        self.assertEqual([p["ready"] for p in players], [False, False])

    def test_start_when_all_connected_and_ready(self):
        """The game starts only when the expected players are all connected and ready."""
        h = harness()
        room_id, seats = new_game(h, players=3)
        play(h, seats[:2])
        self.assertEqual(h.app("gameroom").core.rooms[room_id].state, states.SETUP)
        play(h, seats, until=lambda: seats[0].player.executed >= 3)
        self.assertTrue(states.is_running(h.app("gameroom").core.rooms[room_id].state))


class RunningTests(TestCase):
    def test_many_turns_hashes_agree(self):
        """Two players play 200 turns; master packets are identical for both and their hashes agree."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: all(s.player.executed >= 200 for s in seats))
        a, b = seats
        self.assertGreaterEqual(a.player.executed, 200)
        self.assertEqual(a.player.hashes[200], b.player.hashes[200])
        turns_a = [m for m in a.log if m["type"] == "turn"][:200]
        turns_b = [m for m in b.log if m["type"] == "turn"][:200]
        self.assertEqual(turns_a, turns_b)
        first = turns_a[0]
        self.assertEqual(first["execute_at"], 2)
        self.assertEqual([pid for pid, _ in first["commands"]], ["p1", "p2"])

    def test_turn_rate_is_capped(self):
        """However fast players answer, a room closes no more than max_turn_rate turns per second."""
        h = harness("max_turn_rate = 10")
        room_id, seats = new_game(h)
        play(h, seats, rounds=100, step=0.01)  # one second of play with instant answers
        executed = seats[0].player.executed
        self.assertGreaterEqual(executed, 5)
        self.assertLessEqual(executed, 11)

    def test_future_turn_rejected(self):
        """A packet for a turn that is not open is rejected as an error."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 2)
        seats[0].send({"type": "commands", "turn": 999, "commands": []})
        h.flush()
        seats[0].pump()
        self.assertEqual(seats[0].player.errors[-1]["error"], "turn_not_open")

    def test_dropped_packet_resent_idempotent(self):
        """A resent packet is idempotent; a resend for a closed turn is answered with its master packet."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 5)
        a = seats[0]
        room = h.app("gameroom").core.rooms[room_id]
        open_turn = room.turn
        a.send(a.player.sent[open_turn])  # a duplicate of the packet for the open turn
        old = dict(a.player.sent[3])
        a.send(old)  # a resend for a closed turn
        h.flush()
        a.pump()
        self.assertEqual(a.player.errors, [])
        self.assertEqual([m["turn"] for m in a.log if m["type"] == "turn"].count(3), 2)

    def test_lagging_player_then_substitution(self):
        """A late player puts the room in paused.lagging; after the tolerance empty commands stand in."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 3)
        a, b = seats
        b.player.player_id = None  # b stops sending packets but stays connected
        play(h, seats)
        h.advance(0.5)
        a.pump()
        self.assertEqual([m for m in a.log if m["type"] == "state"][-1]["state"], states.LAGGING)
        h.advance(2.1)
        play(h, [a])
        substituted = [m for m in a.log if m["type"] == "turn" and m.get("substituted")]
        self.assertEqual(substituted[0]["substituted"], ["p2"])

    def test_wait_policy_keeps_waiting(self):
        """With on_lag = wait the room stays paused and closes no turn without the late player."""
        h = harness("on_lag = wait")
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 3)
        seats[1].player.player_id = None
        play(h, seats)
        turn = h.app("gameroom").core.rooms[room_id].turn
        h.advance(30)
        self.assertEqual(h.app("gameroom").core.rooms[room_id].turn, turn)
        self.assertEqual(h.app("gameroom").core.rooms[room_id].state, states.LAGGING)

    def test_timing_adapts_at_announced_turn(self):
        """Slow frames lengthen the turn, announced for a future turn in a master packet."""
        h = harness()
        room_id, seats = new_game(h)
        seats[1].player.frame_ms = 60.0  # 4 iterations of 60 ms need 240 ms turns
        play(h, seats, until=lambda: seats[0].player.executed >= 20)
        timed = [m for m in seats[0].log if m["type"] == "turn" and "timing" in m]
        self.assertTrue(timed)
        timing = timed[0]["timing"]
        self.assertEqual(timing["turn_ms"], 240)
        self.assertEqual(timing["from_turn"], timed[0]["turn"] + 3)
        later = [m for m in seats[0].log if m["type"] == "turn" and m["turn"] >= timing["from_turn"]]
        self.assertEqual(later[0]["turn_ms"], 240)

    def test_divergence_halts(self):
        """Different hashes for the same turn halt the game; everyone is told who diverged; the archive has it."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 5)
        seats[1].player.engine.acc += 1  # b's engine goes wrong
        play(h, seats, until=lambda: seats[0].player.halted is not None)
        for seat in seats:
            self.assertEqual(seat.player.halted["diverged"], ["p2"])
            self.assertEqual(seat.player.halted["reference"], "p1")
        archive = json.loads(h.http("GET", f"/gameroom/archive/{room_id}")[2])
        self.assertEqual(archive["state"], states.HALTED)
        self.assertIn("diverged", [e["event"] for e in archive["events"]])

    def test_spectator_receives_master_packets(self):
        """A spectator gets every master packet from the start; a late player joins as spectator."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 5)
        watcher = Seat(h, room_id, path="watch")
        late = Seat(h, room_id)
        late.send({"type": "join", "name": "late"})
        play(h, seats + [watcher, late], until=lambda: seats[0].player.executed >= 10)
        self.assertTrue(watcher.log[0]["spectator"])
        self.assertEqual(watcher.player.hashes[10], seats[0].player.hashes[10])
        self.assertTrue(late.log[0]["spectator"])

    def test_archive_is_the_whole_log(self):
        """The archive holds setup, every master packet with hashes, and the events."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 10)
        archive = json.loads(h.http("GET", f"/gameroom/archive/{room_id}")[2])
        self.assertGreaterEqual(len(archive["packets"]), 11)
        self.assertEqual([p["turn"] for p in archive["packets"]], list(range(len(archive["packets"]))))
        self.assertIn("hashes", archive["packets"][5])
        self.assertEqual(archive["seed"], 7)

    def test_finish(self):
        """When every player reports finish the game is finished and everyone is told."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 3)
        for seat in seats:
            seat.send({"type": "finish", "result": {"winner": "p1"}})
        play(h, seats)
        self.assertEqual(seats[0].player.finished["reason"], "players")
        self.assertEqual(h.app("gameroom").core.rooms[room_id].state, states.FINISHED)


class IdentityTests(TestCase):
    def test_spoofed_session_refused(self):
        """A session token that is not a player's is refused and the connection closed."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 2)
        intruder = Seat(h, room_id)
        intruder.send({"type": "join", "session": "forged-token"})
        h.flush()
        intruder.pump()
        self.assertEqual(intruder.player.errors[-1]["error"], "invalid_session")
        self.assertTrue(intruder.ws.closed)

    def test_reconnect_with_catch_up(self):
        """A dropped player reconnects with its token, gets every missed master packet, and play resumes."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 5)
        a, b = seats
        b.ws.sendClose(1000)
        play(h, [a])
        self.assertEqual(h.app("gameroom").core.rooms[room_id].state, states.WAITING)
        self.assertIn(states.WAITING, [m.get("state") for m in a.log if m["type"] == "state"])
        back = Seat(h, room_id, b.player)
        back.send(b.player.rejoin())
        play(h, [a, back], until=lambda: a.player.executed >= 30)
        self.assertGreaterEqual(b.player.executed, 29)
        self.assertEqual(a.player.hashes[25], b.player.hashes[25])
        self.assertEqual(h.app("gameroom").core.rooms[room_id].state, states.ITERATING)

    def test_away_player_dropped_after_timeout(self):
        """The room waits for an away player up to away_timeout, then plays on with empty commands."""
        h = harness()
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 3)
        a, b = seats
        b.ws.sendClose(1000)
        play(h, [a])
        turn = h.app("gameroom").core.rooms[room_id].turn
        h.advance(5)
        self.assertEqual(h.app("gameroom").core.rooms[room_id].turn, turn)
        h.advance(6)
        play(h, [a], until=lambda: a.player.executed >= turn + 5)
        self.assertGreaterEqual(a.player.executed, turn + 5)


class RestartTests(TestCase):
    def test_restart_resumes_from_store(self):
        """A new daemon over the same store restores the running game; players rejoin and play on."""
        store = MemoryStore()
        h = harness(store=store)
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 20)
        stopping = h.service.stopService()
        h.flush()
        self.assertTrue(stopping.called)
        h2 = harness(store=store)
        room = h2.app("gameroom").core.rooms[room_id]
        self.assertEqual(room.state, states.WAITING)
        self.assertEqual(len(room.log), room.turn)
        back = [Seat(h2, room_id, s.player) for s in seats]
        for seat in back:
            seat.send(seat.player.rejoin())
        target = seats[0].player.executed + 20
        play(h2, back, until=lambda: all(s.player.executed >= target for s in back))
        self.assertEqual(back[0].player.hashes[target], back[1].player.hashes[target])

    def test_logs_stored_in_either_chunk_size_restore_whole(self):
        """A room whose record names no chunk size (stored in chunks of 256) restores its whole log, as does one in today's chunks."""
        from relayd.apps.gameroom.core import LOG_CHUNK, STORED_LOG_CHUNK, merge_progress
        from relayd.apps.gameroom.roomstore import LOG, META, PROGRESS

        store = MemoryStore()
        h = harness(store=store)
        room_id, seats = new_game(h)
        play(h, seats, until=lambda: seats[0].player.executed >= 3 * LOG_CHUNK + 5, rounds=20000)
        h.service.stopService()
        h.flush()
        room = h.app("gameroom").core.rooms[room_id]
        log = [p.decode() for p in room.log]
        self.assertGreater(len(log), 3 * LOG_CHUNK)
        stored = [key for (ns, key) in store.data if ns == LOG and key.startswith(room_id)]
        self.assertEqual(len(stored), (len(log) + LOG_CHUNK - 1) // LOG_CHUNK)
        # the same room as it was stored before chunks had a size in the record, and before progress
        # records: one meta with everything
        old = MemoryStore()
        meta = merge_progress(json.loads(store.data[(META, room_id)]), json.loads(store.data[(PROGRESS, room_id)]))
        del meta["log_chunk"]
        old.put_many([(META, room_id, meta)] + [(LOG, f"{room_id}:{i:08d}", log[i * STORED_LOG_CHUNK:(i + 1) * STORED_LOG_CHUNK])
                                                for i in range((len(log) + 255) // 256)])
        for stored_in in (store, old):
            loaded = harness(store=stored_in).app("gameroom").core.rooms[room_id]
            self.assertEqual([p.decode() for p in loaded.log], log[:loaded.turn])
            self.assertEqual(loaded.turn, room.turn)


class ProgressRecordTests(TestCase):
    def test_a_running_room_writes_its_progress_and_new_packets_not_its_meta(self):
        """
        Once stored, a running room's writes carry its progress (turn, timing, hashes) and its new
        packets; its meta is written again only when more than that changed (a player leaving), and
        a restart restores the room at the turn its progress names.
        """
        from relayd.apps.gameroom.roomstore import META, PROGRESS

        store = MemoryStore()
        h = harness(store=store)

        def written():  # a whole persist_interval, in steps its eighths are written at
            for _ in range(20):
                h.advance(0.01)

        room_id, seats = new_game(h)
        # played on without a pause (a pause is a state change, which the meta records)
        play(h, seats, until=lambda: seats[0].player.executed >= 30, rounds=20000)
        meta_before = store.data[(META, room_id)]
        play(h, seats, until=lambda: seats[0].player.executed >= 80, rounds=20000)
        self.assertEqual(store.data[(META, room_id)], meta_before)
        room = h.app("gameroom").core.rooms[room_id]
        self.assertGreaterEqual(json.loads(store.data[(PROGRESS, room_id)])["turn"], 60)
        self.assertLess(json.loads(meta_before)["turn"], 40)
        seats[1].ws.sendClose(1000)
        h.flush()
        written()
        self.assertNotEqual(store.data[(META, room_id)], meta_before)
        turn = room.turn
        h.service.stopService()
        h.flush()
        self.assertEqual(harness(store=store).app("gameroom").core.rooms[room_id].turn, turn)


class RecordTests(TestCase):
    def test_stored_records_hold_every_field(self):
        """A player's and a room's settings' stored records carry every field their classes have, as attrs would write them."""
        import attr

        from relayd.apps.gameroom.core import Player, Settings, _settings_record

        player = Player("p1", "Ann", "u1", "digest", ready=True, away_since=3.5, latency_ms=12.0, finished={"won": 1})
        self.assertEqual(player.record(), attr.asdict(player))
        settings = Settings(command_delay=3)
        self.assertEqual(_settings_record(settings), attr.asdict(settings))


class SchedulerTests(TestCase):
    def test_tick_errors_do_not_stop_the_scheduler(self):
        """A tick that raises is logged and counted; the next tick still runs."""
        clock, calls, errors = Clock(), [], []

        def tick(now):
            calls.append(now)
            if len(calls) == 1:
                raise RuntimeError("boom")

        scheduler = TickScheduler(clock, 0.01, tick, on_error=lambda: errors.append(1))
        scheduler.start()
        clock.advance(0.01)
        clock.advance(0.01)
        self.assertEqual(len(calls), 2)
        self.assertEqual(errors, [1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        scheduler.stop()

    def test_lateness_measured(self):
        """A tick that runs late reports how late."""
        clock, late = Clock(), []
        scheduler = TickScheduler(clock, 0.01, lambda now: None, lateness=late.append)
        scheduler.start()
        clock.advance(0.015)
        self.assertAlmostEqual(late[0], 0.005, places=6)
        scheduler.stop()


class DeadlineQueueTests(TestCase):
    """The tick serves only rooms whose deadline passed; turns close at their gate; grids are spread."""

    def _started(self, h, rooms):
        """`rooms` one-player rooms, each started with its turn 0 packet in, no clock time spent."""
        games = [new_game(h, players=1) for _ in range(rooms)]
        core = h.app("gameroom").core
        for _ in range(10):
            h.flush()
            for _, seats in games:
                for seat in seats:
                    seat.pump()
            if len(core.running) == rooms and all(room.packets for room in core.running.values()):
                break
        h.flush()
        self.assertEqual(len(core.running), rooms)
        return games

    def test_rooms_with_nothing_due_cost_the_tick_nothing(self):
        """Forty running rooms whose players have not answered are not visited by ticks before their turns are late."""
        h = harness()
        app = h.app("gameroom")
        self._started(h, 40)
        self.assertEqual(len(app.core.running), 40)
        for _ in range(15):
            h.advance(0.01)  # every room's turn 0 closes at its gate (within one turn of the start)
        self.assertTrue(all(r.turn == 1 for r in app.core.running.values()))
        served = []
        real = app.core._serve
        app.core._serve = lambda room, now: (served.append(room.id), real(room, now))
        # the players hold back turn 1: nothing is due before it is late, command_delay turns after it opened
        late_after = min(r.deadline() for r in app.core.running.values()) - h.reactor.seconds()
        self.assertGreater(late_after, 0.04)
        for _ in range(4):
            h.advance(0.01)
        self.assertEqual(served, [])
        h.advance(0.2)
        self.assertEqual(sorted(set(served)), sorted(app.core.running))  # each room once its turn is late
        self.assertTrue(all(r.state == states.LAGGING for r in app.core.running.values()))

    def test_a_held_turn_closes_at_its_gate(self):
        """A turn complete before max_turn_rate allows closes at the first tick after its gate; the delay is measured."""
        h = harness("max_turn_rate = 10")
        app = h.app("gameroom")
        delays = []
        app.core.close_delay = delays.append
        room_id, seats = new_game(h, players=1)
        # 1 ms steps, and patience for a whole turn: the first turn waits for its room's grid offset
        play(h, seats, until=lambda: seats[0].player.executed >= 4, step=0.001, rounds=5000, idle_rounds=200)
        self.assertGreaterEqual(len(delays), 4)
        # ticks every 10 ms: a held turn waits at most one tick past its gate
        self.assertTrue(all(0 <= d <= 0.0101 for d in delays), delays)
        self.assertEqual(app.core.rooms[room_id].turn, len(delays))

    def test_rooms_are_written_a_slice_at_a_time_and_all_within_the_interval(self):
        """Forty changed rooms are written an eighth at a time, every one within persist_interval."""
        from relayd.apps.gameroom.roomstore import PROGRESS

        store = MemoryStore()
        h = harness(store=store)
        games = self._started(h, 40)
        ids = {room_id for room_id, _ in games}
        store.data.clear()
        app = h.app("gameroom")
        app.core.dirty.update(ids)
        interval = app.options["persist_interval"]

        def written():
            return {key for (ns, key) in store.data if ns == PROGRESS} & ids

        counts = []
        for _ in range(8):
            h.advance(interval / 8)
            counts.append(len(written()))
        self.assertEqual(written(), ids)  # every changed room within one interval
        steps = [b - a for a, b in zip([0, *counts], counts)]
        # an eighth at a time, about 5 of the 40 each (ids decide the eighth): never all in one write
        self.assertLessEqual(max(steps), 20, steps)
        self.assertGreaterEqual(sum(1 for n in steps if n), 4, steps)

    def test_rooms_started_together_do_not_close_together(self):
        """Rooms started in the same instant get rate grids spread over a turn, not one shared grid."""
        h = harness("max_turn_rate = 10")
        app = h.app("gameroom")
        self._started(h, 50)
        now = h.reactor.seconds()
        # each room's first close waits a fraction of a turn (0.1 s) decided by its id
        waits = sorted(room.gate() - now for room in app.core.running.values())
        self.assertTrue(all(0 <= w < 0.1 for w in waits), waits)
        # one shared grid would put all 50 in one 10 ms window; spread, about 5 share one (for
        # uniform offsets, more than 15 in any window happens about once in 10,000 runs)
        per_window = Counter(int(w / 0.01) for w in waits)
        self.assertLessEqual(max(per_window.values()), 15, per_window)
        self.assertGreater(waits[-1] - waits[0], 0.05)


class IdleSchedulerTests(TestCase):
    def test_ticks_run_only_while_a_game_runs(self):
        """No tick wakes the reactor while no game runs; ticks start with a game and stop once it is over."""
        h = harness()
        app = h.app("gameroom")
        room_id, seats = new_game(h, players=1)
        h.flush()
        self.assertFalse(app.scheduler.running)  # joined, not started
        play(h, seats, until=lambda: seats[0].player.executed >= 3)
        self.assertTrue(app.scheduler.running)
        seats[0].send({"type": "finish", "result": {"score": 1}})
        play(h, seats, until=lambda: not app.core.running)
        h.advance(0.05)
        self.assertEqual((app.core.running, app.scheduler.running), ({}, False))


class ArchiveBoundsTests(TestCase):
    """A room's game history costs its size and no more, and is bounded per room and in total."""

    BIG = [{"add": 1, "pad": "x" * 3000}]

    def _game(self, extra=""):
        h = harness("max_command_bytes = 8192\n" + extra)
        room_id, seats = new_game(h, plans={0: lambda t: self.BIG, 1: lambda t: self.BIG})
        return h, room_id, seats

    def test_memory_per_turn_is_the_master_packets_size(self):
        """Held master packets are allocated at their own size (orjson's output keeps 2-4x capacity)."""
        import gc
        import tracemalloc

        h, room_id, seats = self._game()
        play(h, seats, until=lambda: seats[0].player.executed >= 20)
        room = h.app("gameroom").core.rooms[room_id]
        gc.collect()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before, turns = tracemalloc.take_snapshot(), len(room.log)
        play(h, seats, until=lambda: seats[0].player.executed >= 120)
        after = tracemalloc.take_snapshot()
        added = room.log[turns:]
        held = sum(stat.size_diff for stat in after.compare_to(before, "filename")
                   if stat.traceback[0].filename.endswith(("gameroom/core.py", "ws/frames.py", "jsonutil.py")))
        self.assertLess(held, 1.25 * sum(len(p) for p in added) + 64 * len(added))

    def test_a_room_past_max_archive_bytes_finishes(self):
        """A game whose history reaches max_archive_bytes ends with reason archive_full."""
        h, room_id, seats = self._game("max_archive_bytes = 64K\n")
        play(h, seats, until=lambda: any(m.get("type") == "finished" for m in seats[0].log))
        finished = [m for m in seats[0].log if m.get("type") == "finished"]
        self.assertEqual(finished[0]["reason"], "archive_full")
        self.assertLessEqual(h.app("gameroom").core.rooms[room_id].log_bytes, 64 * 1024 + 8192)

    def test_total_bound_removes_the_oldest_finished_archive(self):
        """Past max_archive_total the oldest finished archive goes before its archive_ttl, and creates are refused."""
        h = harness("max_command_bytes = 8192\nmax_archive_bytes = 40K\nmax_archive_total = 60K\n")
        core = h.app("gameroom").core
        first, seats = new_game(h, plans={0: lambda t: self.BIG, 1: lambda t: self.BIG})
        play(h, seats, until=lambda: core.rooms[first].ended is not None)
        second, seats = new_game(h, plans={0: lambda t: self.BIG, 1: lambda t: self.BIG})
        play(h, seats, until=lambda: core.rooms[second].ended is not None)
        h.advance(1.5)  # housekeeping
        self.assertNotIn(first, core.rooms)
        self.assertIn(second, core.rooms)
        self.assertLessEqual(core.archive_bytes, 60 * 1024)

    def test_deleting_an_archive_reads_only_that_room(self):
        """An expired archive is deleted by its own keys; no other room's log is read."""
        store = CountingStore()
        h = Harness(make_config(APP.format(token=TOKEN, extra="archive_ttl = 5")), store=store).start()
        core = h.app("gameroom").core
        room_id, seats = new_game(h, players=1)
        play(h, seats, until=lambda: seats[0].player.executed >= 5)
        core.rooms[room_id].ended = h.reactor.seconds()  # as if it had just finished
        store.reads.clear()
        h.advance(7)
        self.assertNotIn(room_id, core.rooms)
        self.assertNotIn(("items", "gameroom.log"), store.reads)


class CountingStore(MemoryStore):
    def __init__(self):
        super().__init__()
        self.reads = []

    def items(self, namespace):
        self.reads.append(("items", namespace))
        return super().items(namespace)


class TurnLengthTests(TestCase):
    def test_a_slow_player_gets_at_least_its_frame_budget(self):
        """One player reporting 60 ms frames at 4 iterations: the announced turn reaches 240 ms, not less."""
        h = harness("min_turn_ms = 50\nmax_turn_ms = 1000\nturn_ms = 100")
        slow = ReferencePlayer(name="slow", frame_ms=60.0, latency_ms=1.0)
        fast = ReferencePlayer(name="fast", frame_ms=1.0, latency_ms=1.0)
        status, _, body = create(h, 2)
        room_id = json.loads(body)["id"]
        seats = [Seat(h, room_id, p) for p in (slow, fast)]
        for seat in seats:
            seat.send(seat.player.join())
        play(h, seats, until=lambda: seats[0].player.executed >= 40, step=0.02, rounds=20000)
        room = h.app("gameroom").core.rooms[room_id]
        self.assertGreaterEqual(room.turn_ms, 240)

    def test_malformed_join_keeps_the_connection(self):
        """A join with a bad name is an error that keeps the connection; a good join after it works."""
        h = harness()
        status, _, body = create(h, 2)
        ws = h.ws(f"/gameroom/play/{json.loads(body)['id']}")
        ws.send_json({"type": "join", "name": ""})
        h.flush()
        self.assertEqual(ws.json_messages()[-1]["error"], "malformed_join")
        self.assertFalse(ws.closed)
        ws.send_json({"type": "join", "name": "ann"})
        h.flush()
        self.assertEqual(ws.json_messages()[-1]["type"], "welcome")


class DivergenceTests(TestCase):
    def _diverge(self, wrong: list[int], players: int = 3):
        h = harness()
        room_id, seats = new_game(h, players=players)
        play(h, seats, until=lambda: all(s.player.executed >= 5 for s in seats))
        for n in wrong:
            seats[n].player.engine.acc += 1  # the same wrong state for each of them
        play(h, seats, until=lambda: seats[0].player.halted is not None)
        return h, room_id, seats

    def test_the_first_player_can_be_the_odd_one_out(self):
        """When the first player alone is wrong, it is named; the majority is the reference."""
        _, _, seats = self._diverge([0])
        self.assertEqual(seats[1].player.halted["diverged"], ["p1"])
        self.assertEqual(seats[1].player.halted["reference"], "p2")

    def test_every_player_that_differs_is_named(self):
        """Two of four players with the same wrong hash are both named, not only the first of them."""
        _, room_id, seats = self._diverge([1, 3], players=4)
        self.assertEqual(seats[0].player.halted["diverged"], ["p2", "p4"])

    def test_the_archive_records_every_hash(self):
        """The divergence event in the archive holds the hash each player reported for that turn."""
        h, room_id, seats = self._diverge([2])
        archive = json.loads(h.http("GET", f"/gameroom/archive/{room_id}")[2])
        [event] = [e for e in archive["events"] if e["event"] == "diverged"]
        self.assertEqual(sorted(event["hashes"]), ["p1", "p2", "p3"])

    def test_binary_frame_is_the_daemons_rule(self):
        """A binary frame gets binary_frame and close 1003."""
        h = harness()
        status, _, body = create(h, 2)
        ws = h.ws(f"/gameroom/play/{json.loads(body)['id']}")
        ws.sendMessage(b"\x00\x01", True)
        h.flush()
        self.assertEqual(ws.json_messages()[-1]["error"], "binary_frame")
        self.assertEqual(ws.close_code, 1003)


class HashTurnTests(TestCase):
    def _started(self):
        h = harness()
        room_id, seats = new_game(h, players=1)
        play(h, seats, until=lambda: seats[0].player.executed >= 2)
        return h, seats[0]

    def test_hash_turn_rules(self):
        """A hash needs hash_turn of 0 or more, for a turn that can have run already; each refusal says why."""
        h, seat = self._started()
        open_turn = seat.player.executed + 1
        for hash_turn, words in ((-1, "send no hash"), (open_turn, "cannot have run")):
            seat.ws.send_json({"type": "commands", "turn": open_turn, "commands": [], "hash": "x",
                               "hash_turn": hash_turn})
            h.flush()
            error = seat.ws.json_messages()[-1]
            self.assertEqual(error["error"], "malformed_packet")
            self.assertIn(words, error["message"])


class AnonymousRoomBoundsTests(TestCase):
    """One address cannot hold gameroom's rooms: a cap on its live rooms, and archives that make way."""

    def _anonymous(self, extra: str) -> Harness:
        return Harness(make_config(APP.format(token="", extra=extra))).start()

    def _create(self, h):
        body = json.dumps({"engine": "counter@1", "seed": 7, "players": 2}).encode()
        return h.http("POST", "/gameroom/create", body)[0]

    def test_live_rooms_per_address(self):
        """Past rooms_per_address live rooms, an address's creates answer 429 (its create quota not spent); a room of its that is abandoned frees a place."""
        h = self._anonymous("rooms_per_address = 3\ncreates_per_address = 4\ncreate_window = 3600\nunjoined_timeout = 60\n")
        for _ in range(3):
            self.assertEqual(self._create(h), 201)
        for _ in range(5):
            self.assertEqual(self._create(h), 429)
        app = h.app("gameroom")
        self.assertEqual(len(app.core.rooms), 3)
        h.advance(61)  # nobody joined: abandoned, an archive now
        self.assertEqual(self._create(h), 201)

    def test_finished_archives_make_way_at_max_rooms(self):
        """At max_rooms the oldest finished (or abandoned) room is deleted for a new one; only when every room is live is a create refused 503."""
        h = self._anonymous("rooms_per_address = 0\ncreates_per_address = 0\nmax_rooms = 3\nunjoined_timeout = 60\n")
        for _ in range(3):
            self.assertEqual(self._create(h), 201)
        self.assertEqual(self._create(h), 503)  # all three are live
        h.advance(61)  # abandoned: archives now
        core = h.app("gameroom").core
        oldest = min(core.rooms.values(), key=lambda r: r.ended).id
        self.assertEqual(self._create(h), 201)
        self.assertNotIn(oldest, core.rooms)
        self.assertEqual(len(core.rooms), 3)
