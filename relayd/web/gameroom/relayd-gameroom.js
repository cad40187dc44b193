// relayd-gameroom.js: the client's side of relayd's lock-step rooms (docs/protocols/gameroom.md).
// One ES module, no build step, no dependencies. relayd serves it at <mount>/client.js, with its
// type declarations at <mount>/client.d.ts.
//
// The game supplies a deterministic step(state, master) and hash(state), and the library does the
// protocol: joining, setup and readiness, a packet every turn with the hash of the turn it last
// executed, latency and frame-time measurement, resending what no master packet answered,
// catch-up, reconnecting with the session token after a network drop or a page reload,
// spectating, and events for lag, waiting, substitution, divergence and the end.

const RECONNECT_FIRST_MS = 250;
const RECONNECT_MAX_MS = 5000;
const NORMAL_CLOSES = new Set([1000, 1003, 1008, 4001]);

export class LockstepClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.url        ws(s)://.../gameroom/play/<id> or .../watch/<id>
   * @param {(seed: any, setup: object, order: string[]) => any} options.init   the starting state
   * @param {(state: any, master: object) => any} options.step   run one master packet (its commands
   *        for every player, in order, then master.iterations engine iterations); returns the new state
   * @param {(state: any) => string} options.hash   the state's hash, the same on every machine
   * @param {string} [options.name]   the player's name
   * @param {string} [options.userId]
   * @param {Storage} [options.storage]   where the session token survives a page reload (sessionStorage)
   * @param {typeof WebSocket} [options.WebSocket]   for Node: the ws package's WebSocket
   * @param {() => number} [options.now]   milliseconds, monotonic (performance.now)
   */
  constructor(options) {
    super();
    this.url = options.url;
    this.init = options.init;
    this.stepFn = options.step;
    this.hashFn = options.hash;
    this.name = options.name;
    this.userId = options.userId;
    this.storage = options.storage || null;
    this.WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    this.now = options.now || (() => globalThis.performance.now());
    this.spectator = /\/watch\//.test(this.url);
    this.roomId = this.url.split("/").filter(Boolean).pop().split("?")[0];
    this.playerId = null;
    this.session = this.storage ? this.storage.getItem(this._key()) : null;
    this.order = null;
    this.roomState = null;
    this.state = null;
    this.executed = -1;          // the last master packet run
    this.openTurn = 0;           // the turn the room has open, as far as this client knows
    this.hashes = new Map();     // turn -> hash after running it
    this.sent = new Map();       // turn -> the packet sent for it (resent after a reconnect)
    this._queue = [];            // master packets received, not run yet
    this._nextAt = 0;            // when the next master packet may run
    this._pumpTimer = null;
    this.pending = [];           // commands for the next packet
    this.sentAt = new Map();     // turn -> when its packet went, for latency
    this.latencyMs = 0;
    this.frameMs = 0;
    this.turnMs = null;
    this.iterations = null;
    this.waitingFor = [];        // players the room waits for (away or lagging)
    this.ended = null;
    this._socket = null;
    this._closing = false;
    this._retry = RECONNECT_FIRST_MS;
    this._reconnectTimer = null;
  }

  // ---- what a game calls ------------------------------------------------------------------------

  connect() {
    this._closing = false;
    const socket = new this.WebSocketImpl(this.url);
    this._socket = socket;
    socket.onopen = () => {
      this._retry = RECONNECT_FIRST_MS;
      this._emit("connection", { open: true });
      if (this.spectator) return;            // spectators need no join: the room talks to them at once
      if (this.session) {
        this._send({ type: "join", session: this.session, from_turn: this.executed + 1 });
      } else {
        const join = { type: "join" };
        if (this.name) join.name = this.name;
        if (this.userId) join.user_id = this.userId;
        this._send(join);
      }
    };
    socket.onmessage = (event) => this._receive(JSON.parse(event.data));
    socket.onclose = (event) => {
      this._emit("connection", { open: false, code: event.code, reason: event.reason });
      if (this._socket !== socket) return;
      this._socket = null;
      if (this._closing || this.ended || NORMAL_CLOSES.has(event.code)) return;
      this._scheduleReconnect();
    };
    return this;
  }

  /** A command for the next packet (executed command_delay turns after it is sent). */
  command(command) {
    this.pending.push(command);
  }

  /** Setup phase: change the shared configuration (null removes a key). */
  setup(changes) {
    this._send({ type: "setup", changes });
  }

  /** Setup phase: this player is (not) ready to start. */
  ready(ready = true) {
    this._send({ type: "ready", ready });
  }

  /** This player is done; the game ends once every player still in it said so. */
  finish(result) {
    this._send({ type: "finish", result });
  }

  close() {
    this._closing = true;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._pumpTimer);
    if (this._socket) this._socket.close(1000);
  }

  /** Forget the stored session (a new game in the same tab). */
  forget() {
    if (this.storage) this.storage.removeItem(this._key());
    this.session = null;
  }

  // ---- the protocol -------------------------------------------------------------------------------

  _receive(message) {
    switch (message.type) {
      case "welcome": return this._welcome(message);
      case "players": return this._emit("players", { players: message.players });
      case "setup": return this._emit("setup", message);
      case "start": return this._start(message);
      case "turn": return this._turn(message);
      case "state": return this._roomState(message);
      case "halted": this.ended = message; return this._emit("halted", message);
      case "finished": this.ended = message; this.forget(); return this._emit("finished", message);
      case "error": return this._error(message);
      default: return undefined;
    }
  }

  _welcome(message) {
    if (message.session) {
      this.session = message.session;
      if (this.storage) this.storage.setItem(this._key(), message.session);
    }
    this.playerId = message.player_id;
    this.spectator = message.spectator;
    this.roomState = message.state;
    this.turnMs = message.turn_ms;
    this.iterations = message.iterations;
    this.openTurn = message.turn;
    if (message.order && this.order === null) this._begin(message.seed, message.setup, message.order);
    this._emit("welcome", message);
    // back after a drop: the master packets it missed follow (the last of them sends the next packet);
    // with none missed, what no master packet answered goes again
    if (this.playerId && message.order && this.executed + 1 >= message.turn) this._sendPacket(this.executed + 1, true);
  }

  _start(message) {
    this.roomState = message.state;
    this.turnMs = message.turn_ms;
    this.iterations = message.iterations;
    this._begin(message.seed, message.setup, message.order);
    this.openTurn = 0;
    this._emit("start", message);
    if (this.playerId) this._sendPacket(0, false);
  }

  _begin(seed, setup, order) {
    this.order = order;
    this.state = this.init(seed, setup, order);
    this.executed = -1;
    this.hashes.clear();
    this._queue = [];
  }

  _turn(master) {
    if (this.order === null) return;
    const last = this._queue.length ? this._queue[this._queue.length - 1].turn : this.executed;
    if (master.turn <= last) return;                       // a repeat (the answer to a resend)
    if (master.turn > last + 1) {                          // a gap: ask for what is missing
      this._send({ type: "catchup", from: last + 1 });
      return;
    }
    this._queue.push(master);
    this._pump();
  }

  // Master packets are run one per turn length, so the game plays at the room's pace; a client
  // that is behind (back from a drop, a reloaded page) runs what it missed at once.
  _pump() {
    clearTimeout(this._pumpTimer);
    while (this._queue.length) {
      const now = this.now();
      const catchingUp = this._queue.length > 2;
      if (!catchingUp && now < this._nextAt) {
        this._pumpTimer = setTimeout(() => this._pump(), this._nextAt - now);
        return;
      }
      const master = this._queue.shift();
      // catching up owes no time to the turns it ran at once
      this._nextAt = (catchingUp ? now : Math.max(now, this._nextAt)) + master.turn_ms;
      this._run(master);
    }
  }

  _run(master) {
    const sentAt = this.sentAt.get(master.turn);
    if (sentAt !== undefined) {
      // the round trip of this turn's packet: a slower one counts at once, a faster one a fifth
      const rtt = this.now() - sentAt;
      this.latencyMs = Math.max(rtt, 0.8 * this.latencyMs + 0.2 * rtt);
      this.sentAt.delete(master.turn);
    }
    const started = this.now();
    this.state = this.stepFn(this.state, master);
    const perIteration = (this.now() - started) / Math.max(1, master.iterations);
    this.frameMs = Math.max(perIteration, 0.8 * this.frameMs + 0.2 * perIteration);
    this.executed = master.turn;
    this.hashes.set(master.turn, this.hashFn(this.state));
    this.sent.delete(master.turn);
    this.turnMs = master.turn_ms;
    if (master.timing) this._emit("timing", master.timing);
    if (master.substituted) this._emit("substituted", { turn: master.turn, players: master.substituted });
    this.openTurn = Math.max(this.openTurn, master.turn + 1);
    this._emit("turn", { turn: master.turn, master, state: this.state, hash: this.hashes.get(master.turn) });
    // catching up on closed turns sends nothing; the packet for the open turn goes once it is reached
    if (this.playerId && !this.ended && master.turn + 1 >= this.openTurn) this._sendPacket(master.turn + 1, true);
  }

  _roomState(message) {
    this.roomState = message.state;
    this.waitingFor = [...(message.away || []), ...(message.lagging || [])];
    this._emit("state", message);
    if (message.lagging && message.lagging.length) this._emit("lag", { players: message.lagging, turn: message.turn });
    this._emit("waiting", { away: message.away || [], lagging: message.lagging || [] });
  }

  _error(message) {
    if (message.error === "invalid_session") this.forget();
    this._emit("error", message);
  }

  _sendPacket(turn, resend) {
    let packet = resend ? this.sent.get(turn) : undefined;
    if (!packet) {
      packet = {
        type: "commands", turn, commands: this.pending.splice(0),
        latency_ms: Math.round(this.latencyMs), frame_ms: Math.round(this.frameMs * 100) / 100,
      };
      if (this.executed >= 0) {
        // the hash of the last turn run, and which turn that was
        packet.hash = this.hashes.get(this.executed);
        packet.hash_turn = this.executed;
      }
      this.sent.set(turn, packet);
    }
    this.sentAt.set(turn, this.now());
    this._send(packet);
  }

  _send(message) {
    if (this._socket && this._socket.readyState === 1) this._socket.send(JSON.stringify(message));
  }

  _scheduleReconnect() {
    const wait = this._retry;
    this._retry = Math.min(RECONNECT_MAX_MS, this._retry * 2);
    this._emit("reconnecting", { in_ms: wait });
    this._reconnectTimer = setTimeout(() => this.connect(), wait);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _key() {
    return `relayd-gameroom:${this.roomId}`;
  }
}
