"""
A tiny deterministic engine and a reference player for gameroom, used by the tests and the
benchmark to play whole games through relayd.

CounterEngine: every player has a counter; a command {"add": k} adds k to its sender's counter;
each iteration mixes the whole state into an accumulator with a linear congruential step seeded by
the room's seed. Same seed and same master packets give the same hash on every machine.

ReferencePlayer is sans IO: feed it every message from the server, send what it returns. It joins,
commits readiness, and answers each master packet with its packet for the next turn, carrying the
hash of its state after executing that master packet.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable


def _seed_int(seed: Any) -> int:
    if isinstance(seed, int):
        return seed % 2**31
    return int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:4], "big")


class CounterEngine:
    def __init__(self, seed: Any, order: list[str]):
        self.tick = 0
        self.acc = _seed_int(seed)
        self.values = {pid: 0 for pid in order}

    def execute(self, master: dict) -> None:
        for pid, commands in master["commands"]:
            for command in commands:
                if isinstance(command, dict) and isinstance(command.get("add"), int):
                    self.values[pid] = self.values.get(pid, 0) + command["add"]
        for _ in range(master["iterations"]):
            self.tick += 1
            self.acc = (self.acc * 1103515245 + 12345 + sum(self.values.values())) % 2**31

    def hash(self) -> str:
        state = json.dumps({"tick": self.tick, "acc": self.acc, "values": self.values}, sort_keys=True)
        return hashlib.sha256(state.encode()).hexdigest()[:16]


class ReferencePlayer:
    def __init__(self, name: str | None = None, plan: Callable[[int], list] | None = None,
                 auto_ready: bool = True, latency_ms: float = 20.0, frame_ms: float = 5.0):
        self.name = name
        self.plan = plan or (lambda turn: [{"add": 1}] if turn % 3 == 0 else [])
        self.auto_ready = auto_ready
        self.latency_ms = latency_ms
        self.frame_ms = frame_ms
        self.player_id: str | None = None
        self.session: str | None = None
        self.engine: CounterEngine | None = None
        self.executed = -1
        self.hashes: dict[int, str] = {}
        self.halted: dict | None = None
        self.finished: dict | None = None
        self.errors: list[dict] = []
        self.sent: dict[int, dict] = {}

    def join(self) -> dict:
        message: dict[str, Any] = {"type": "join"}
        if self.name is not None:
            message["name"] = self.name
        return message

    def rejoin(self) -> dict:
        return {"type": "join", "session": self.session, "from_turn": self.executed + 1}

    def packet(self, turn: int) -> dict:
        packet = {"type": "commands", "turn": turn, "commands": self.plan(turn),
                  "latency_ms": self.latency_ms, "frame_ms": self.frame_ms}
        if self.executed >= 0:
            packet["hash"] = self.hashes[self.executed]
            packet["hash_turn"] = self.executed
        self.sent[turn] = packet
        return packet

    def on_message(self, message: dict) -> list[dict]:
        kind = message.get("type")
        if kind == "welcome":
            if message.get("player_id"):
                self.player_id = message["player_id"]
            if message.get("session"):
                self.session = message["session"]
            if message["state"] == "setup" and self.auto_ready:
                return [{"type": "ready", "ready": True}]
            if message.get("order") and self.engine is None:
                self.engine = CounterEngine(message["seed"], message["order"])
            if self.player_id and message.get("order"):
                # back after a drop: resend what no master packet answered, or send the packet due
                return [self.sent.get(self.executed + 1) or self.packet(self.executed + 1)]
        elif kind == "setup" and self.auto_ready:
            return [{"type": "ready", "ready": True}]
        elif kind == "start":
            self.engine = CounterEngine(message["seed"], message["order"])
            return [self.packet(0)] if self.player_id else []
        elif kind == "turn":
            turn = message["turn"]
            if turn != self.executed + 1 or self.engine is None:
                return []  # a repeat, or a gap the caller fills with catchup
            self.engine.execute(message)
            self.executed = turn
            self.hashes[turn] = self.engine.hash()
            return [self.packet(turn + 1)] if self.player_id and self.halted is None else []
        elif kind == "halted":
            self.halted = message
        elif kind == "finished":
            self.finished = message
        elif kind == "error":
            self.errors.append(message)
        return []
