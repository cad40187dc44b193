"""
clicker, sans IO: the draft-1 line protocol, device identities, latest scores and listener events.

Nothing here touches the network or the disk: ClickerCore holds the state and says what to store
and what to publish; relayd.apps.clicker.state (LocalState, or the cluster's RedisState) does the
storing, and relayd.apps.clicker.session the publishing (through the bus).
"""

from __future__ import annotations

import hashlib
import re
import secrets as secrets_module
import uuid
from collections import deque
from typing import Callable

import attr

from relayd.backplane import codec
from relayd.errors import ProtocolError
from relayd.ws.frames import Frame

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RECENT_TIMESTAMPS = 64  # accepted timestamps remembered per device, for idempotent retries
_ID = re.compile(r"^\d{6}$")
_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_MSG_ID = re.compile(r"^[\x21-\x7e]{1,64}$")


def _error(kind: str, message: str) -> ProtocolError:
    return ProtocolError(kind, message)


def split_command(line: str) -> tuple[str, list[str]]:
    """The verb and its tokens. Tokens are separated by single spaces: two spaces make an empty token,
    which makes a SCORE malformed (no SCORED, so the device keeps the score)."""
    parts = line.strip().split(" ")
    return parts[0].upper(), parts[1:]


def parse_int64(text: str, what: str) -> int:
    if not re.fullmatch(r"-?\d{1,19}", text):
        raise _error("malformed_score", f"{what} must be a 64-bit signed integer")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _error("malformed_score", f"{what} must be a 64-bit signed integer")
    return value


@attr.s(frozen=True, auto_attribs=True)
class Score:
    timestamp: int
    score: int
    msg_id: str | None  # the later firmware's message id, echoed in SCORED


def parse_score(args: list[str]) -> Score:
    """`SCORE <ts> <score>` (draft-1) or `SCORE <msgId> <ts> <score>` (later firmware)."""
    if len(args) == 2:
        return Score(parse_int64(args[0], "timestamp"), parse_int64(args[1], "score"), None)
    if len(args) == 3:
        if not _MSG_ID.match(args[0]):
            raise _error("malformed_score", "message id must be 1 to 64 printable characters")
        return Score(parse_int64(args[1], "timestamp"), parse_int64(args[2], "score"), args[0])
    raise _error("malformed_score", "SCORE takes <timestamp> <score> or <msgId> <timestamp> <score>")


def parse_ids(args: list[str], limit: int) -> list[str]:
    """Ids separated by spaces and/or commas, six digits each, at most `limit`, duplicates folded."""
    ids: list[str] = []
    for part in re.split(r"[,\s]+", " ".join(args)):
        if not part:
            continue
        if not _ID.match(part):
            raise _error("malformed_ids", f"{part[:20]!r} is not a six-digit device id")
        if part not in ids:
            ids.append(part)
    if not ids:
        raise _error("malformed_ids", "name at least one device id")
    if len(ids) > limit:
        raise _error("too_many_ids", f"at most {limit} device ids per listen")
    return ids


def device_channel(device: str) -> str:
    """The bus channel of one device's events (connect, score, disconnect)."""
    return "clicker:device:" + device


def canonical_secret(secret: str | None) -> str | None:
    """A secret as identities are keyed by (a UUID4, lower case), or None when it cannot be one."""
    if secret is not None and _UUID4.match(secret.lower()):
        return secret.lower()
    return None


def secret_key(secret: str) -> str:
    """Secrets are never stored: the store keys identities by this digest."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@attr.s(auto_attribs=True)
class Latest:
    timestamp: int
    score: int
    recent: deque = attr.Factory(lambda: deque(maxlen=RECENT_TIMESTAMPS))

    def to_json(self) -> dict:
        return {"timestamp": self.timestamp, "score": self.score, "recent": list(self.recent)}

    @classmethod
    def from_json(cls, value: dict) -> "Latest":
        return cls(value["timestamp"], value["score"], deque(value.get("recent", ()), maxlen=RECENT_TIMESTAMPS))


class Event:
    """Something listeners of one device hear, framed lazily once per wire format."""

    __slots__ = ("kind", "device", "timestamp", "score", "_listen", "_subscribe")

    def __init__(self, kind: str, device: str, timestamp: int = 0, score: int = 0):
        self.kind = kind
        self.device = device
        self.timestamp = timestamp
        self.score = score
        self._listen: Frame | None = None
        self._subscribe: Frame | None = None

    def frame(self, subscribe_format: bool) -> Frame:
        if subscribe_format:
            if self._subscribe is None:
                self._subscribe = Frame.text(self._line(True))
            return self._subscribe
        if self._listen is None:
            self._listen = Frame.text(self._line(False))
        return self._listen

    def _line(self, subscribe_format: bool) -> str:
        if self.kind == "score":
            if subscribe_format:
                return f"SCORE {self.timestamp} {self.score} {self.device}"
            return f"SCORE {self.timestamp} {self.device} {self.score}"
        return f"{self.kind.upper()} {self.device}"


def _event_to_bus(event: Event) -> bytes:
    return f"{event.kind} {event.device} {event.timestamp} {event.score}".encode("ascii")


def _event_from_bus(data: bytes) -> Event:
    kind, device, timestamp, score = data.decode("ascii").split(" ")
    if kind not in ("connect", "disconnect", "score") or not _ID.match(device):
        raise ValueError("not a clicker event")
    return Event(kind, device, int(timestamp), int(score))


codec.register(b"c", Event, _event_to_bus, _event_from_bus)


REGISTRATION_QUOTA = ProtocolError("quota", "too many new devices registered from this address; try again later")


class ClickerCore:
    """Identities, which devices are connected, and each device's latest accepted score."""

    def __init__(self, random_id: Callable[[], str] | None = None, new_secret: Callable[[], str] | None = None):
        self.by_key: dict[str, str] = {}  # secret digest -> device id
        self.ids: set[str] = set()
        self.latest: dict[str, Latest] = {}
        self.connections: dict[str, object] = {}  # device id -> its one live connection
        self.seen: dict[str, float] = {}  # device id -> when it last registered or scored (the clock's seconds)
        self.random_id = random_id or (lambda: f"{secrets_module.randbelow(1_000_000):06d}")
        self.new_secret = new_secret or (lambda: str(uuid.uuid4()))

    def load(self, identities: list[tuple[str, dict]], latest: list[tuple[str, dict]], now: float = 0.0) -> None:
        for key, value in identities:
            self.by_key[key] = value["id"]
            self.ids.add(value["id"])
            self.seen[value["id"]] = max(self.seen.get(value["id"], 0.0), value.get("seen", now))
        for device, value in latest:
            self.latest[device] = Latest.from_json(value)
            self.seen[device] = max(self.seen.get(device, 0.0), value.get("seen", now))

    def unused_since(self, cutoff: float) -> list[tuple[str, list[str]]]:
        """Devices not seen since cutoff and not connected, each with its identity keys."""
        keys: dict[str, list[str]] = {}
        for key, device in self.by_key.items():
            keys.setdefault(device, []).append(key)
        return [(device, keys.get(device, [])) for device, seen in self.seen.items()
                if seen < cutoff and device not in self.connections]

    def forget(self, device: str, keys: list[str]) -> None:
        for key in keys:
            self.by_key.pop(key, None)
        self.ids.discard(device)
        self.latest.pop(device, None)
        self.seen.pop(device, None)

    def identify(self, secret: str | None, may_mint: bool = True) -> tuple[str, str, bool]:
        """(device id, secret, whether the identity is new and must be stored)."""
        secret = canonical_secret(secret)
        if secret is not None:
            device = self.by_key.get(secret_key(secret))
            if device is not None:
                return device, secret, False
        if not may_mint:
            raise REGISTRATION_QUOTA
        if len(self.ids) >= 900_000:
            raise _error("no_free_ids", "no free device ids left")
        secret = self.new_secret()
        device = self.random_id()
        while device in self.ids:
            device = self.random_id()
        self.by_key[secret_key(secret)] = device
        self.ids.add(device)
        return device, secret, True

    def attach(self, device: str, connection: object) -> object | None:
        """Make connection the device's live one; returns the connection it replaces, if any."""
        previous = self.connections.get(device)
        self.connections[device] = connection
        return previous

    def detach(self, device: str, connection: object) -> bool:
        """True when this was the device's live connection (it is now disconnected)."""
        if self.connections.get(device) is connection:
            del self.connections[device]
            return True
        return False

    def is_retry(self, device: str, timestamp: int, on: Latest | None = None) -> bool:
        """Whether timestamp was accepted already: as committed, or as of `on` (a state still being written)."""
        latest = on if on is not None else self.latest.get(device)
        return latest is not None and timestamp in latest.recent

    def propose(self, device: str, score: Score, on: Latest | None = None) -> Latest:
        """
        The device's state once this score is accepted, built on the committed state or on `on` (a
        state still being written); it takes effect with commit().
        """
        previous = on if on is not None else self.latest.get(device)
        recent = deque(previous.recent if previous else (), maxlen=RECENT_TIMESTAMPS)
        recent.append(score.timestamp)
        return Latest(score.timestamp, score.score, recent)

    def commit(self, device: str, latest: Latest) -> None:
        self.latest[device] = latest

    def connected(self, ids: list[str]) -> list[str]:
        return [i for i in ids if i in self.connections]
