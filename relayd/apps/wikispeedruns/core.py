"""
wikispeedruns, sans IO: lobby prompt waiting groups, leaderboard and lobby-prompt subscriptions.

Ids are kept exactly as the JSON carried them: 10 and "10" are different keys, and null is a key of
its own (a run finished outside a lobby). Every delivery goes through the bus; a group or a
subscription channel exists only while it has members.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import struct
from typing import Any, Callable

import attr
from twisted.internet import defer

from relayd import jsonutil
from relayd.apps.wikispeedruns.roster import IRoster, MemoryRoster, Roster
from relayd.backplane import codec
from relayd.bus import IBus
from relayd.errors import ProtocolError
from relayd.ws import closecodes
from relayd.ws.frames import Frame

REFRESH = Frame.text("refresh")
START = Frame.json({"type": "start"})


def _bad(message: str) -> ProtocolError:
    return ProtocolError("malformed_message", message, close=True, code=closecodes.POLICY)


def _id(message: dict, key: str) -> Any:
    if key not in message:
        raise _bad(f"missing key {key}")
    value = message[key]
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _bad(f"{key} must be an integer, a string or null")


def key_of(*ids: Any) -> str:
    """A channel key that keeps JSON types apart: [10,5] and ["10",5] differ."""
    return json.dumps(list(ids), separators=(",", ":"), ensure_ascii=True)


def parse(payload: bytes) -> dict:
    """A frame as a JSON object with a string type, or ProtocolError."""
    try:
        return jsonutil.loads_typed(payload)
    except jsonutil.BadJSON as e:
        raise _bad(str(e)) from None


@attr.s(frozen=True, auto_attribs=True)
class HostToken:
    user: str
    lobby_id: Any
    prompt_id: Any
    host: bool
    exp: float


class TokenVerifier:
    """
    Tokens the main site signs: base64url(JSON payload) "." base64url(HMAC-SHA256(secret, first part)),
    with payload {"user", "lobby_id", "prompt_id", "host", "exp"} (exp in Unix seconds).
    """

    def __init__(self, secret: bytes):
        self.secret = secret

    def sign(self, user: str, lobby_id: Any, prompt_id: Any, host: bool, exp: float) -> str:
        body = json.dumps(
            {"user": user, "lobby_id": lobby_id, "prompt_id": prompt_id, "host": host, "exp": exp},
            separators=(",", ":"),
        ).encode()
        head = base64.urlsafe_b64encode(body).rstrip(b"=")
        mac = base64.urlsafe_b64encode(hmac.new(self.secret, head, hashlib.sha256).digest()).rstrip(b"=")
        return (head + b"." + mac).decode("ascii")

    def verify(self, token: Any, now: float) -> HostToken:
        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
            raise ProtocolError("invalid_token", "the token is not a relayd host token", close=True, code=closecodes.POLICY)
        head, mac = token.encode("ascii", "replace").split(b".")
        expected = base64.urlsafe_b64encode(hmac.new(self.secret, head, hashlib.sha256).digest()).rstrip(b"=")
        if not hmac.compare_digest(mac, expected):
            raise ProtocolError("invalid_token", "the token's signature does not verify", close=True, code=closecodes.POLICY)
        try:
            fields = json.loads(base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4)))
            parsed = HostToken(
                user=fields["user"], lobby_id=fields["lobby_id"], prompt_id=fields["prompt_id"],
                host=bool(fields["host"]), exp=float(fields["exp"]),
            )
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("invalid_token", "the token's payload is malformed", close=True, code=closecodes.POLICY) from None
        if parsed.exp < now:
            raise ProtocolError("expired_token", "the token has expired", close=True, code=closecodes.POLICY)
        return parsed


class RosterUpdate:
    """A group's names as one bus message: its version lets each node drop an update older than one it has seen."""

    __slots__ = ("version", "frame")

    def __init__(self, version: int, frame: Frame):
        self.version = version
        self.frame = frame

    @classmethod
    def of(cls, roster: Roster) -> "RosterUpdate":
        return cls(roster.version, Frame.json({"type": "update", "users": list(roster.names)}))

    def to_bus(self) -> bytes:
        return struct.pack("!Q", self.version) + self.frame.payload

    @classmethod
    def from_bus(cls, data: bytes) -> "RosterUpdate":
        if len(data) < 8:
            raise ValueError("a roster update needs its 8-byte version")
        return cls(struct.unpack("!Q", data[:8])[0], Frame(data[8:]))


codec.register(b"w", RosterUpdate, RosterUpdate.to_bus, RosterUpdate.from_bus)


class Waiter:
    """One connection waiting in a lobby prompt group; it hears the group once its join is done."""

    __slots__ = ("group", "member", "name", "receiver", "host", "token_exp")

    def __init__(self, group: "Group", member: str, receiver: Callable[[Frame], None], host: bool, token_exp):
        self.group = group
        self.member = member
        self.name: str | None = None
        self.receiver = receiver
        self.host = host
        self.token_exp = token_exp


class Group:
    """The waiters of one group on this node, and the one bus subscription that feeds them."""

    __slots__ = ("key", "channel", "waiters", "subscription", "version", "last_update",
                 "pending", "published", "next_publish", "timer")

    def __init__(self, key: str):
        self.key = key
        self.channel = "wikispeedruns:wait:" + key
        self.waiters: list[Waiter] = []
        self.subscription = None
        self.version = 0
        self.last_update: Frame | None = None
        # this node's own roster changes, sent at most once per roster_interval (the newest wins)
        self.pending: RosterUpdate | None = None
        self.published = 0
        self.next_publish = float("-inf")
        self.timer = None

    def deliver(self, message) -> None:
        if isinstance(message, RosterUpdate):
            if message.version <= self.version:
                return
            self.version = message.version
            self.last_update = frame = message.frame
            latest = ROSTER
        else:
            frame, latest = message, None
        for waiter in list(self.waiters):
            if waiter.name is not None:
                waiter.receiver(frame, latest)


# a roster update replaces an older one still queued for a slow reader: only the newest names matter
ROSTER = "roster"


class WikiSpeedruns:
    """
    Lobby groups are bounded: names at most max_name_length characters as sent, at most
    max_group_size waiters in a group on this node, and a group's roster goes out at most once per
    roster_interval seconds and within roster_bytes_per_second of writing (the newest names; the
    first change at once), so joins and leaves cost the others a bounded rate of writes however
    fast they come.
    """

    def __init__(self, bus: IBus, verifier: TokenVerifier | None = None, roster: IRoster | None = None,
                 new_member: Callable[[], str] | None = None, *, clock=None, max_name_length: int = 64,
                 max_group_size: int = 500, roster_interval: float = 0.1,
                 roster_bytes_per_second: float = 2 * 1024 * 1024):
        self.bus = bus
        self.verifier = verifier
        self.roster = roster if roster is not None else MemoryRoster()
        self.groups: dict[str, Group] = {}
        self._new_member = new_member or (lambda: secrets.token_hex(8))
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.max_name_length = max_name_length
        self.max_group_size = max_group_size
        self.roster_interval = roster_interval
        self._stopped = False
        self.roster_bytes_per_second = roster_bytes_per_second

    # ---- lobby prompt start ------------------------------------------------------------------

    def wait_start(self, message: dict, receiver: Callable[[Frame], None], now: float) -> defer.Deferred:
        """Fires with the Waiter once it is in the group (and it and the group have the new names)."""
        user = message.get("user")
        if not isinstance(user, str):
            raise _bad("wait_start needs user as a string")
        if len(user) > self.max_name_length:
            raise _bad(f"user is longer than {self.max_name_length} characters")
        lobby_id, prompt_id = _id(message, "lobby_id"), _id(message, "prompt_id")
        host, token_exp = False, None
        if self.verifier is not None and "token" in message:
            token = self.verifier.verify(message["token"], now)
            if (token.user, key_of(token.lobby_id, token.prompt_id)) != (user, key_of(lobby_id, prompt_id)):
                raise ProtocolError("invalid_token", "the token is for another user or lobby prompt", close=True)
            host, token_exp = token.host, token.exp
        key = key_of(lobby_id, prompt_id)
        group = self.groups.get(key)
        if group is not None and len(group.waiters) >= self.max_group_size:
            raise ProtocolError("group_full", f"this lobby prompt has {self.max_group_size} waiting already",
                                close=True, code=closecodes.POLICY)
        if group is None:
            group = self.groups[key] = Group(key)
            group.subscription = self.bus.subscribe(group.channel, group.deliver)
        waiter = Waiter(group, self._new_member(), receiver, host, token_exp)
        group.waiters.append(waiter)

        def joined(result):
            name, roster = result
            waiter.name = name
            update = RosterUpdate.of(roster)
            if update.version > group.version:
                self._publish_roster(group, update)
            elif group.last_update is not None:
                # a newer roster (which has this waiter in it) arrived before the join's answer
                receiver(group.last_update, ROSTER)
            return waiter

        def failed(failure):
            self._forget(waiter)
            return failure

        return self.roster.join(key, waiter.member, user).addCallbacks(joined, failed)

    def start(self, waiter: Waiter, now: float) -> None:
        if self.verifier is not None:
            if not waiter.host:
                raise ProtocolError("not_host", "only the lobby host can start this prompt")
            if waiter.token_exp is not None and waiter.token_exp < now:
                raise ProtocolError("expired_token", "the host token has expired")
        self.bus.publish(waiter.group.channel, START)

    def leave(self, waiter: Waiter) -> defer.Deferred:
        """Take the waiter out; fires once the roster knows (the others then get the new names)."""
        if not self._forget(waiter):
            return defer.succeed(None)
        group = waiter.group

        def left(roster):
            if roster is not None:
                self._publish_roster(group, RosterUpdate.of(roster))

        return self.roster.leave(group.key, waiter.member).addCallback(left)

    def _publish_roster(self, group: Group, update: RosterUpdate) -> None:
        if update.version <= group.published or (group.pending is not None and update.version <= group.pending.version):
            return
        if self._stopped or self.groups.get(group.key) is not group:
            # the app is stopping, or nobody here waits in the group any more: nothing to pace
            group.published = update.version
            self.bus.publish(group.channel, update)
            return
        group.pending = update
        if group.timer is not None:
            return  # the send already scheduled takes the newest
        wait = group.next_publish - self.clock.seconds()
        if wait <= 0:
            self._flush_roster(group)
        else:
            group.timer = self.clock.callLater(wait, self._flush_roster, group)

    def _flush_roster(self, group: Group) -> None:
        group.timer = None
        update, group.pending = group.pending, None
        if update is None:
            return
        # what this roster costs to send to everyone here sets how long until the next one may go
        cost = len(update.frame.wire) * len(group.waiters)
        group.next_publish = self.clock.seconds() + max(self.roster_interval, cost / self.roster_bytes_per_second)
        group.published = update.version
        self.bus.publish(group.channel, update)

    def shutdown(self) -> None:
        """The daemon is stopping: what waits for its roster_interval goes now, and nothing is paced after."""
        self._stopped = True
        for group in list(self.groups.values()):
            if group.timer is not None and group.timer.active():
                group.timer.cancel()
                self._flush_roster(group)

    def _forget(self, waiter: Waiter) -> bool:
        group = waiter.group
        if waiter not in group.waiters:
            return False
        group.waiters.remove(waiter)
        if not group.waiters:
            if group.timer is not None and group.timer.active():
                group.timer.cancel()
            group.timer = None
            group.subscription.cancel()
            if self.groups.get(group.key) is group:
                del self.groups[group.key]
        return True

    # ---- leaderboard and lobby prompt list refresh --------------------------------------------

    @staticmethod
    def leaderboard_channel(message: dict) -> str:
        return "wikispeedruns:leaderboard:" + key_of(_id(message, "lobby_id"), _id(message, "prompt_id"))

    @staticmethod
    def lobby_prompts_channel(message: dict) -> str:
        return "wikispeedruns:lobby_prompts:" + key_of(_id(message, "lobby_id"))

    def subscribe(self, channel: str, receiver: Callable[[Frame], None]):
        return self.bus.subscribe(channel, receiver)

    def refresh(self, channel: str) -> int:
        return self.bus.publish(channel, REFRESH)

    def room_count(self) -> int:
        return len(self.groups)
