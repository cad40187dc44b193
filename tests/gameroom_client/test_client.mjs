// Unit tests of the gameroom client library's turn logic, in Node, with a fake WebSocket:
//   node --test tests/gameroom_client/
import { test } from "node:test";
import assert from "node:assert/strict";
import { LockstepClient } from "../../relayd/web/gameroom/relayd-gameroom.js";

class FakeSocket {
  static last = null;
  constructor(url) { this.url = url; this.sent = []; this.readyState = 0; FakeSocket.last = this; }
  open() { this.readyState = 1; this.onopen(); }
  send(data) { this.sent.push(JSON.parse(data)); }
  deliver(message) { this.onmessage({ data: JSON.stringify(message) }); }
  close(code = 1000) { this.readyState = 3; this.onclose({ code, reason: "" }); }
}

const game = {
  init: (seed, setup, order) => ({ seed, sum: 0, order }),
  step: (state, master) => ({ ...state, sum: state.sum + 1 }),
  hash: (state) => `h${state.sum}`,
};

function master(turn, extra = {}) {
  return { type: "turn", turn, execute_at: turn + 2, commands: [["p1", []], ["p2", []]], turn_ms: 0,
           iterations: 4, hash_ok: true, hashes: {}, ...extra };
}

function client(url = "ws://x/gameroom/play/room1", options = {}) {
  let clock = 0;
  const c = new LockstepClient({ url, ...game, WebSocket: FakeSocket, now: () => clock, ...options });
  c.connect();
  const socket = FakeSocket.last;
  socket.open();
  return { c, socket, tick: (ms) => { clock += ms; } };
}

function started(c, socket) {
  socket.deliver({ type: "welcome", player_id: "p1", session: "tok", state: "setup", turn: 0, turn_ms: 0,
                   iterations: 4, order: null, seed: 7, setup: {} });
  socket.deliver({ type: "start", order: ["p1", "p2"], seed: 7, setup: {}, turn: 0, turn_ms: 0, iterations: 4,
                   state: "running.iterating" });
}

test("joins, then sends the first packet without a hash, the next with the hash of the turn it ran", () => {
  const { c, socket } = client();
  assert.deepEqual(socket.sent[0], { type: "join" });
  started(c, socket);
  const first = socket.sent.at(-1);
  assert.equal(first.type, "commands");
  assert.equal(first.turn, 0);
  assert.equal("hash" in first, false);
  socket.deliver(master(0));
  const second = socket.sent.at(-1);
  assert.equal(second.turn, 1);
  assert.equal(second.hash, "h1");
  assert.equal(second.hash_turn, 0);
  assert.equal(c.executed, 0);
});

test("queued commands travel in the next packet", () => {
  const { c, socket } = client();
  started(c, socket);
  c.command({ dir: "up" });
  socket.deliver(master(0));
  assert.deepEqual(socket.sent.at(-1).commands, [{ dir: "up" }]);
});

test("a repeat is ignored and a gap asks for catch-up", () => {
  const { c, socket } = client();
  started(c, socket);
  socket.deliver(master(0));
  const sent = socket.sent.length;
  socket.deliver(master(0));
  assert.equal(socket.sent.length, sent);
  socket.deliver(master(3));
  assert.deepEqual(socket.sent.at(-1), { type: "catchup", from: 1 });
  assert.equal(c.executed, 0);
});

test("after a drop it rejoins with its session from the next turn and resends what was unanswered", async () => {
  const { c, socket } = client();
  started(c, socket);
  socket.deliver(master(0));
  const unanswered = socket.sent.at(-1);
  socket.close(1006);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const again = FakeSocket.last;
  assert.notEqual(again, socket);
  again.open();
  assert.deepEqual(again.sent[0], { type: "join", session: "tok", from_turn: 1 });
  again.deliver({ type: "welcome", player_id: "p1", state: "running.iterating", turn: 1, turn_ms: 0,
                  iterations: 4, order: ["p1", "p2"], seed: 7, setup: {} });
  assert.deepEqual(again.sent.at(-1), unanswered);
  c.close();
});

test("a reloaded page replays the game from turn 0 and sends only once caught up", () => {
  const store = new Map([["relayd-gameroom:room1", "tok"]]);
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v), removeItem: (k) => store.delete(k) };
  const { c, socket } = client("ws://x/gameroom/play/room1", { storage });
  assert.deepEqual(socket.sent[0], { type: "join", session: "tok", from_turn: 0 });
  socket.deliver({ type: "welcome", player_id: "p1", state: "running.iterating", turn: 3, turn_ms: 0,
                   iterations: 4, order: ["p1", "p2"], seed: 7, setup: {} });
  assert.equal(socket.sent.length, 1);
  for (const turn of [0, 1, 2]) socket.deliver(master(turn));
  assert.equal(c.executed, 2);
  const commands = socket.sent.filter((m) => m.type === "commands");
  assert.deepEqual(commands.map((m) => m.turn), [3]);
  assert.equal(commands[0].hash_turn, 2);
});

test("a spectator sends no join and no packets, and runs every master packet", () => {
  const { c, socket } = client("ws://x/gameroom/watch/room1");
  assert.equal(socket.sent.length, 0);
  socket.deliver({ type: "welcome", player_id: null, spectator: true, state: "running.iterating", turn: 2,
                   turn_ms: 0, iterations: 4, order: ["p1", "p2"], seed: 7, setup: {} });
  for (const turn of [0, 1]) socket.deliver(master(turn));
  assert.equal(c.executed, 1);
  assert.equal(socket.sent.length, 0);
});

test("events: substitution, lag and the end", () => {
  const { c, socket } = client();
  started(c, socket);
  const seen = [];
  for (const kind of ["substituted", "lag", "halted"]) c.addEventListener(kind, (e) => seen.push([kind, e.detail]));
  socket.deliver(master(0, { substituted: ["p2"] }));
  socket.deliver({ type: "state", state: "running.paused.lagging", turn: 1, away: [], lagging: ["p2"] });
  socket.deliver({ type: "halted", turn: 0, diverged: ["p2"], reference: "p1", state: "running.halted" });
  assert.deepEqual(seen.map(([k]) => k), ["substituted", "lag", "halted"]);
  assert.deepEqual(c.waitingFor, ["p2"]);
  socket.deliver(master(1));
  assert.equal(socket.sent.filter((m) => m.turn === 2).length, 0, "no packets after the game halted");
});

test("latency is the round trip of a turn's packet; a slower one counts at once", () => {
  const { c, socket, tick } = client();
  started(c, socket);
  tick(40);
  socket.deliver(master(0));
  assert.equal(c.latencyMs, 40);
  tick(10);
  socket.deliver(master(1));
  assert.equal(c.latencyMs, 40 * 0.8 + 10 * 0.2);
});

test("catching up runs the missed turns at once and then plays at the room's pace", () => {
  const { c, socket, tick } = client();
  try {
    started(c, socket);
    for (let turn = 0; turn < 10; turn++) socket.deliver(master(turn, { turn_ms: 100 }));
    assert.equal(c.executed, 7, "all but the last two at once");
    c._pump();
    assert.equal(c.executed, 7, "the last two wait for their time");
    tick(100);
    c._pump();
    assert.equal(c.executed, 8);
    tick(100);
    c._pump();
    assert.equal(c.executed, 9);
  } finally {
    c.close();
  }
});
