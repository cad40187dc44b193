"""
clicker over WebSocket: RopeScore protocol draft-1, and the later firmware's framing.

Text frames at <mount>/ws only; tokens separated by spaces; verbs case-insensitive.

Sending clients (scoring devices):
  REGISTER [secret]            -> REGISTERED <id> <secret>
      a known secret gets its identity back (also after a restart); a missing or unknown one gets
      a new secret and a new six-digit id. A second REGISTER on a connection is ignored. A newer
      connection with the same secret takes the identity; the older one is closed with 4001.
  SCORE <timestamp> <score>           -> SCORED <timestamp>
  SCORE <msgId> <timestamp> <score>   -> SCORED <msgId> <timestamp>        (later firmware)
      SCORED is sent once the score is stored durably as the device's latest and handed to every
      current listener. A retry of an accepted score (same device and timestamp) is acknowledged
      again and not delivered twice. Timestamps and scores are 64-bit signed integers.

Receiving clients (judges' screens):
  LISTEN <ids>     -> CONNECT <ids of them connected now>, then SCORE <ts> <id> <score> for each
                      listened device's latest score; later CONNECT <id>, DISCONNECT <id> and
                      SCORE <timestamp> <id> <score> as they happen.
  SUBSCRIBE <ids>  -> the same, with scores framed SCORE <timestamp> <score> <id>  (later firmware)
  <ids> are separated by spaces and/or commas (sent space-separated), at most max_listen_ids.

Errors are a line `ERROR <kind> <message>` and never disconnect: a malformed SCORE (no SCORED, so the
device keeps it and retries), an unknown verb, bad ids, a binary frame, and (on several nodes) a
command that needs Redis while it is unreachable (`ERROR unavailable ...`).

With [bus] backend = redis identities, latest scores and who is connected are shared by every node
(relayd.apps.clicker.cluster).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from relayd.apps.base import App
from relayd.apps.clicker.cluster import RedisState
from relayd.apps.clicker.core import ClickerCore, Event, device_channel, parse_ids, parse_score, split_command
from relayd.apps.clicker.state import LocalState
from relayd.backplane.cluster import Unavailable
from relayd.errors import ProtocolError
from relayd.quota import AddressQuota
from relayd.ws import closecodes
from relayd.ws.frames import Frame
from relayd.ws.protocol import RelaydProtocol

_log = Logger()

MAX_PENDING = 256


class ClickerProtocol(RelaydProtocol):
    role: str | None = None
    device: str | None = None
    subscribe_format = False

    def opened(self) -> None:
        self.subscriptions: dict[str, object] = {}
        self._pending = 0
        self._chain = self.factory.app.when_ready()

    def send(self, line: str | Frame) -> None:
        self.send_frame(line if isinstance(line, Frame) else Frame.text(line))

    def binary(self, payload: bytes) -> None:
        raise ProtocolError("binary_frame", "binary frames are not part of this protocol")

    def report(self, error: ProtocolError) -> None:
        if error.close:
            self.close(error.code, error.message)
        else:
            self.send(f"ERROR {error.kind} {error.message}")

    def received(self, payload: bytes, is_binary: bool) -> None:
        # commands run one after another, each after the previous one's store write
        if self._pending >= MAX_PENDING:
            raise ProtocolError("too_many_pending", "too many commands waiting", close=True)
        self._pending += 1
        line = payload.decode("utf-8")
        self._chain.addCallback(lambda _: self._handle(line))
        self._chain.addErrback(self._failed)
        self._chain.addBoth(self._done)

    def _done(self, _):
        self._pending -= 1

    def _failed(self, failure):
        if failure.check(ProtocolError):
            self._protocol_error(failure.value)
        elif failure.check(Unavailable):
            # several nodes, Redis away: nothing was stored, so the device keeps its score and retries
            self._protocol_error(ProtocolError("unavailable", "the score store is unreachable; retry"))
        else:
            self._log.failure("clicker: command failed", failure)
            self._internal_error()

    def _handle(self, line: str):
        verb, args = split_command(line)
        if verb == "REGISTER":
            if self.role == "device":
                self.factory.metrics.dropped("second_register")
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
            return self._listen(parse_ids(args, self.factory.app.options["max_listen_ids"]), verb == "SUBSCRIBE")
        raise ProtocolError("unknown_command", f"unknown command {verb[:32]}")

    @defer.inlineCallbacks
    def _register(self, secret: str | None):
        app: ClickerApp = self.factory.app
        address = self.client_address or "unknown"
        # known devices register freely; minting a new identity spends the address's quota
        device, secret, minted = yield app.state.identify(secret, may_mint=app.registrations.has(address))
        if minted:
            app.registrations.take(address)
        if self.state != self.STATE_OPEN:
            return
        previous, was_connected = yield app.state.attach(device, self)
        if self.state != self.STATE_OPEN:
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
        self.close(closecodes.REPLACED, "replaced by a newer connection for this device")

    @defer.inlineCallbacks
    def _score(self, score):
        app: ClickerApp = self.factory.app
        device = self.device
        if device is None:
            return
        if (yield app.state.score(device, score)):
            app.bus.publish(device_channel(device), Event("score", device, score.timestamp, score.score))
        if score.msg_id is None:
            self.send(f"SCORED {score.timestamp}")
        else:
            self.send(f"SCORED {score.msg_id} {score.timestamp}")

    @defer.inlineCallbacks
    def _listen(self, ids: list[str], subscribe_format: bool):
        app: ClickerApp = self.factory.app
        limit = app.options["max_listen_ids"]
        fresh = [i for i in ids if i not in self.subscriptions]
        if len(self.subscriptions) + len(fresh) > limit:
            raise ProtocolError("too_many_ids", f"at most {limit} device ids per connection")
        # each id newly followed spends the address's listen quota, so sweeping the id space is slow
        if fresh and not app.listens.take(self.client_address or "unknown", len(fresh)):
            raise ProtocolError("quota", "too many device ids listened to from this address; try again later")
        self.role = "listener"
        self.subscribe_format = subscribe_format
        for device in fresh:
            self.subscriptions[device] = app.bus.subscribe(device_channel(device), self._event)
        # subscribed first, then the snapshot: a change in between is heard (perhaps twice), never missed
        yield defer.gatherResults([app.bus.when_subscribed(device_channel(d)) for d in fresh])
        connected, latest = yield app.state.snapshot(ids)
        if self.state != self.STATE_OPEN:
            return
        self.send(" ".join(["CONNECT", *connected]))
        for device in ids:
            if device in latest:
                timestamp, score = latest[device]
                self.send(Event("score", device, timestamp, score).frame(subscribe_format))

    def _event(self, event: Event) -> None:
        self.send(event.frame(self.subscribe_format))

    def closed(self) -> None:
        app: ClickerApp = self.factory.app
        for subscription in getattr(self, "subscriptions", {}).values():
            subscription.cancel()
        self.subscriptions = {}
        device, self.device = self.device, None
        if device is not None:
            app.state.detach(device, self).addCallbacks(
                lambda gone: gone and app.bus.publish(device_channel(device), Event("disconnect", device)),
                lambda f: self._log.failure("clicker: marking {device} disconnected failed", f, device=device),
            )


class ClickerApp(App):
    protocol = ClickerProtocol

    def __init__(self, ctx):
        super().__init__(ctx)
        self.core = ClickerCore()
        o = self.options
        self.registrations = AddressQuota(o["registrations_per_address"], o["registration_window"], self.reactor)
        self.listens = AddressQuota(o["listen_ids_per_address"], o["listen_window"], self.reactor)
        if self.cluster is None:
            self.state = LocalState(self.core, self.store, self.reactor)
        else:
            self.state = RedisState(self.core, self.cluster, self.bus, self.store, clock=self.reactor)
        if o["identity_ttl"]:
            self.every("identity expiry", 3600.0, self._expire, now=True)
        self._ready = False
        self._waiting: list[defer.Deferred] = []

    @defer.inlineCallbacks
    def _expire(self):
        gone = yield self.state.expire(self.options["identity_ttl"] * 86400.0)
        if gone:
            _log.info("clicker: removed {count} identities unused for {days} days", count=gone,
                      days=self.options["identity_ttl"])
            self.metrics.dropped("identity_expired", gone)

    @defer.inlineCallbacks
    def start(self):
        yield self.state.start()
        self._ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stop(self):
        return self.state.stop()

    def when_ready(self) -> defer.Deferred:
        if self._ready:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def accepts_websocket_path(self, postpath) -> bool:
        return postpath == [b"ws"]

    def room_count(self) -> int:
        return len(self.core.connections)
