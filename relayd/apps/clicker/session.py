"""
One clicker connection: a scoring device (REGISTER, SCORE) or a judge's screen (LISTEN, SUBSCRIBE);
docs/protocols/clicker.md.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from relayd.apps.clicker.core import Event, device_channel, parse_ids, parse_score, split_command
from relayd.errors import ProtocolError
from relayd.session import ISession, handle_failure, unavailable
from relayd.ws import closecodes
from relayd.ws.frames import Frame

_log = Logger()


# a device's scores written at once before its next commands wait (the Runner holds those, up to
# MAX_HELD); devices keep a handful unacknowledged
MAX_SCORES_WRITING = 64


class _Ack:
    """A score being written, to be answered SCORED once durable."""

    __slots__ = ("score", "done", "failed")

    def __init__(self, score):
        self.score = score
        self.done = False
        self.failed = False


@implementer(ISession)
class ClickerSession:
    # several nodes, Redis away: nothing was stored, so the device keeps its score and retries
    unavailable = unavailable("the score store is unreachable; retry")
    too_many_held = ProtocolError("too_many_pending", "too many commands waiting", close=True)

    def __init__(self, app, conn):
        self.app = app
        self.conn = conn
        self.role: str | None = None  # device or listener
        self.device: str | None = None
        self.subscribe_format = False
        self.subscriptions: dict[str, object] = {}
        self._acks: deque[_Ack] = deque()  # scores being written, in the order they came
        self._room: defer.Deferred | None = None  # fires when fewer than MAX_SCORES_WRITING are

    def opened(self):
        # commands wait until the app has loaded its state, then run one after another, each after
        # the previous one's store write
        return self.app.when_ready()

    def send(self, line: str | Frame) -> None:
        self.conn.send(line if isinstance(line, Frame) else Frame.text(line))

    def report(self, error: ProtocolError) -> None:
        self.send(f"ERROR {error.kind} {error.message}")
        if error.close:
            self.conn.close(error.code, error.message)

    def received(self, payload: bytes, is_binary: bool):
        if is_binary:
            raise ProtocolError("binary_frame", "binary frames are not part of this protocol")
        return self._handle(payload.decode("utf-8"))

    def _handle(self, line: str):
        verb, args = split_command(line)
        if verb == "REGISTER":
            if self.role == "device":
                self.app.metrics.dropped("second_register")
                return None
            if self.role == "listener":
                raise ProtocolError("wrong_role", "a listening connection cannot REGISTER")
            return self._register(args[0] if args and args[0] else None)
        if verb == "SCORE":
            if self.role != "device":
                raise ProtocolError("not_registered", "REGISTER before sending SCORE")
            return self._score(parse_score(args))
        if verb in ("LISTEN", "SUBSCRIBE"):
            if self.role == "device":
                raise ProtocolError("wrong_role", "a registered device cannot listen")
            return self._listen(parse_ids(args, self.app.options["max_listen_ids"]), verb == "SUBSCRIBE")
        raise ProtocolError("unknown_command", f"unknown command {verb[:32]}")

    @defer.inlineCallbacks
    def _register(self, secret: str | None):
        app = self.app
        address = self.conn.client_address or "unknown"
        # known devices register freely; minting a new identity spends the address's quota, taken
        # before the store is asked (registrations in flight together cannot overdraw it) and given
        # back when no identity was minted after all
        reserved = app.registrations.take(address)
        try:
            device, secret, minted = yield app.state.identify(secret, may_mint=reserved)
        except BaseException:
            if reserved:
                app.registrations.give_back(address)
            raise
        if reserved and not minted:
            app.registrations.give_back(address)
        if not self.conn.still_open():
            return
        previous, was_connected = yield app.state.attach(device, self)
        if not self.conn.still_open():
            # gone while attaching: if it had taken over a live connection, the device is now away
            if (yield app.state.detach(device, self)) and was_connected:
                app.bus.publish(device_channel(device), Event("disconnect", device))
            return
        self.role, self.device = "device", device
        self.send(f"REGISTERED {device} {secret}")
        if previous is not None:
            # the identity moves without a disconnect/connect flap for listeners
            previous.replaced()
        elif not was_connected:
            app.bus.publish(device_channel(device), Event("connect", device))

    def replaced(self) -> None:
        self.device = None
        self.conn.close(closecodes.REPLACED, "replaced by a newer connection for this device")

    def _score(self, score):
        # the device's next commands do not wait for this score to be durable: up to
        # MAX_SCORES_WRITING are written at once (the store commits them together), and each SCORED
        # goes out, in the order the scores came, once its score is durable
        device = self.device
        if device is None:
            return None
        ack = _Ack(score)
        self._acks.append(ack)
        self.app.state.score(device, score).addCallbacks(self._durable, self._not_durable,
                                                         callbackArgs=(ack, device), errbackArgs=(ack,))
        if len(self._acks) >= MAX_SCORES_WRITING and self._room is None:
            self._room = defer.Deferred()  # the Runner holds the next commands until one is answered
            return self._room
        return None

    def _durable(self, accepted: bool, ack: "_Ack", device: str) -> None:
        if accepted:
            score = ack.score
            self.app.bus.publish(device_channel(device), Event("score", device, score.timestamp, score.score))
        ack.done = True
        self._answer()

    def _not_durable(self, failure, ack: "_Ack") -> None:
        ack.done = ack.failed = True
        self._answer()
        handle_failure(self.conn, self, failure, "clicker")

    def _answer(self) -> None:
        acks = self._acks
        while acks and acks[0].done:
            ack = acks.popleft()
            if ack.failed:
                continue
            score = ack.score
            self.send(f"SCORED {score.timestamp}" if score.msg_id is None else f"SCORED {score.msg_id} {score.timestamp}")
        room = self._room
        if room is not None and len(acks) < MAX_SCORES_WRITING:
            self._room = None
            room.callback(None)

    @defer.inlineCallbacks
    def _listen(self, ids: list[str], subscribe_format: bool):
        app = self.app
        limit = app.options["max_listen_ids"]
        fresh = [i for i in ids if i not in self.subscriptions]
        if len(self.subscriptions) + len(fresh) > limit:
            raise ProtocolError("too_many_ids", f"at most {limit} device ids per connection")
        # each id newly followed spends the address's listen quota, so sweeping the id space is slow
        if fresh and not app.listens.take(self.conn.client_address or "unknown", len(fresh)):
            raise ProtocolError("quota", "too many device ids listened to from this address; try again later")
        self.role = "listener"
        self.subscribe_format = subscribe_format
        for device in fresh:
            self.subscriptions[device] = app.bus.subscribe(device_channel(device), self._event)
        # subscribed first, then the snapshot: a change in between is heard (perhaps twice), never missed
        yield defer.gatherResults([app.bus.when_subscribed(device_channel(d)) for d in fresh])
        connected, latest = yield app.state.snapshot(ids)
        if not self.conn.still_open():
            return
        self.send(" ".join(["CONNECT", *connected]))
        for device in ids:
            if device in latest:
                timestamp, score = latest[device]
                self.send(Event("score", device, timestamp, score).frame(subscribe_format))

    def _event(self, event: Event) -> None:
        self.send(event.frame(self.subscribe_format))

    def closed(self) -> None:
        app = self.app
        room, self._room = self._room, None
        if room is not None:
            room.callback(None)  # nothing more comes from this client: the Runner holds nothing
        for subscription in self.subscriptions.values():
            subscription.cancel()
        self.subscriptions = {}
        device, self.device = self.device, None
        if device is not None:
            app.state.detach(device, self).addCallbacks(
                lambda gone: gone and app.bus.publish(device_channel(device), Event("disconnect", device)),
                lambda f: _log.failure("clicker: marking {device} disconnected failed", f, device=device),
            )
