// Type declarations for relayd-gameroom.js (served at <mount>/client.d.ts).

/** A master packet: one closed turn, the same bytes for every client (docs/protocols/gameroom.md). */
export interface MasterPacket {
  type: "turn";
  turn: number;
  execute_at: number;
  /** Every player's commands for this turn, in the room's fixed order. */
  commands: Array<[playerId: string, commands: unknown[]]>;
  turn_ms: number;
  iterations: number;
  hash_ok: boolean;
  hashes: Record<string, [hashTurn: number, hash: string]>;
  timing?: { turn_ms: number; iterations: number; from_turn: number };
  substituted?: string[];
}

export interface PlayerInfo {
  player_id: string;
  name: string;
  user_id: string;
  connected: boolean;
  ready: boolean;
  dropped: boolean;
}

export interface LockstepOptions<S> {
  /** ws(s)://host/<mount>/play/<room id> to play, .../watch/<room id> to spectate. */
  url: string;
  /** The starting state, from the room's seed, setup and player order. */
  init(seed: number | string, setup: Record<string, unknown>, order: string[]): S;
  /** Run one master packet: its commands, then master.iterations engine iterations. Deterministic. */
  step(state: S, master: MasterPacket): S;
  /** The state's hash, identical on every machine for the same state. */
  hash(state: S): string;
  name?: string;
  userId?: string;
  /** Where the session token survives a page reload, e.g. sessionStorage. */
  storage?: Pick<Storage, "getItem" | "setItem" | "removeItem">;
  /** A WebSocket implementation (in Node, the ws package's). */
  WebSocket?: typeof WebSocket;
  /** Monotonic milliseconds (performance.now). */
  now?: () => number;
}

export interface LockstepEvents<S> {
  connection: { open: boolean; code?: number; reason?: string };
  reconnecting: { in_ms: number };
  welcome: Record<string, unknown>;
  players: { players: PlayerInfo[] };
  setup: { setup: Record<string, unknown>; version: number; by: string };
  start: Record<string, unknown>;
  turn: { turn: number; master: MasterPacket; state: S; hash: string };
  timing: { turn_ms: number; iterations: number; from_turn: number };
  substituted: { turn: number; players: string[] };
  state: { state: string; turn: number; away: string[]; lagging: string[] };
  lag: { players: string[]; turn: number };
  waiting: { away: string[]; lagging: string[] };
  halted: { turn: number; diverged: string[]; reference: string; state: string };
  finished: { reason: string; turn: number; results: Record<string, unknown> };
  error: { error: string; message: string };
}

export declare class LockstepClient<S = unknown> extends EventTarget {
  constructor(options: LockstepOptions<S>);
  readonly roomId: string;
  readonly spectator: boolean;
  readonly playerId: string | null;
  readonly order: string[] | null;
  readonly roomState: string | null;
  readonly state: S | null;
  /** The last turn run. */
  readonly executed: number;
  readonly hashes: Map<number, string>;
  readonly latencyMs: number;
  readonly frameMs: number;
  readonly turnMs: number | null;
  readonly waitingFor: string[];
  readonly ended: Record<string, unknown> | null;
  connect(): this;
  /** Queue a command for the next packet. */
  command(command: unknown): void;
  setup(changes: Record<string, unknown>): void;
  ready(ready?: boolean): void;
  finish(result: unknown): void;
  close(): void;
  forget(): void;
  addEventListener<K extends keyof LockstepEvents<S>>(
    type: K, listener: (event: CustomEvent<LockstepEvents<S>[K]>) => void): void;
}
