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

Errors are a line `ERROR <kind> <message>` and do not disconnect: a malformed SCORE (no SCORED, so the
device keeps it and retries), an unknown verb, bad ids, a binary frame. On several nodes, a command
that needs Redis while it is unreachable gets `ERROR unavailable ...` and close 1013.

With [bus] backend = redis identities, latest scores and who is connected are shared by every node
(relayd.apps.clicker.cluster).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from relayd.apps.base import App
from relayd.apps.clicker.cluster import RedisState
from relayd.apps.clicker.core import ClickerCore
from relayd.apps.clicker.session import ClickerSession
from relayd.apps.clicker.state import LocalState
from relayd.quota import AddressQuota
from relayd.ws.protocol import RelaydProtocol

_log = Logger()


class ClickerProtocol(RelaydProtocol):
    """A device's or a judge's screen's WebSocket: its logic is a ClickerSession."""

    accepts_binary = True  # answered with an error line, as the protocol says
    session_class = ClickerSession


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
