"""
The WebSocket connection every app adapter builds on.

It owns what is the same for every app: the inbound rate and byte budgets, metrics and logging,
guarding Autobahn's callbacks (Autobahn swallows errors raised in onConnect/onOpen), the drain close
(1001), and the one outbound path with the slow-consumer policy. It is the IConnection of
relayd.session: the app's per-client logic is an ISession (session_class, or make_session()) that
a Runner drives; the protocol itself holds none.

Outbound flow control: the connection registers itself as the transport's streaming producer. While
the transport's buffer is full (the peer is not reading), frames wait in a per-connection queue
instead of the transport; the queue is bounded by bytes (max_send_backlog) and by time: a connection
whose transport stays blocked, or whose queue stays above an eighth of max_send_backlog however much
it reads now and then, for max_send_backlog_age seconds is closed. Past either bound, or when the
process's backlogs shed it (relayd.ws.backlog: the process's and one address's share), the
connection is closed with SLOW_CONSUMER and aborted, so stuck readers cost bounded memory and never
delay others.

An app's protocol subclass names its session_class and, where the protocol needs it, parses the
upgrade request in connecting(request) and passes what it found to the session in make_session().
"""

from __future__ import annotations

from collections import deque

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relayd._internals import buffered_bytes, lean_after_open, lean_connection_made
from relayd.config.model import Rate
from relayd.errors import ProtocolError
from relayd.session import IConnection, Runner, handle_failure
from relayd.ws import closecodes
from relayd.ws.backlog import Backlogs
from relayd.ws.frames import Frame
from relayd.ws.ratelimit import Budget
from relayd.ws._writes import BATCH, write_now
from relayd.ws.keepalive import PING
from relayd.ws import reader as _events
from relayd.ws.wire import FrameReader

_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSING = WebSocketProtocol.STATE_CLOSING
_CLOSED = WebSocketProtocol.STATE_CLOSED
_TEXT, _BINARY, _CLOSE, _PING, _PONG = _events.TEXT, _events.BINARY, _events.CLOSE, _events.PING, _events.PONG

# the longest frame header: what a message of the largest size is sent with beyond its payload
_FRAME_HEADER_MAX = 14

# what each close code the frame reader fails a connection with is counted as
_WIRE_ERRORS = {1002: "websocket_protocol", 1007: "invalid_utf8", 1009: "message_too_big"}


class _Latest:
    """A queued frame that a newer one of the same key replaces in place (RelaydProtocol.send_frame)."""

    __slots__ = ("frame", "key")

    def __init__(self, frame: Frame, key: str):
        self.frame = frame
        self.key = key

    def __len__(self) -> int:
        return len(self.frame)


@implementer(IPushProducer, IConnection)
class RelaydProtocol(WebSocketServerProtocol):
    _log = Logger()

    # True where the app's protocol defines binary messages; otherwise binary() decides
    accepts_binary = False

    slot = None  # the listener's connection slot, handed over from the HTTP channel
    client_address = None  # the client's address, behind a trusted proxy the one it names (relayd.web.proxy)
    websocket_open = False
    request = None
    sends_as = "client"  # the role whose rate limits apply (AppSpec.roles)
    session_class = None  # the app's ISession (relayd.session), made when the connection opens
    session = None
    runner = None
    ignored = 0  # messages that arrived after relayd decided to close this connection
    error_counts = None  # protocol errors by kind, made at the first
    _latest = None  # latest key -> its _Latest in the send queue, made when one waits
    rate_limited = False
    heard = True  # anything read since keepalive last looked
    keepalive_slot = None
    # outbound flow control (see the module docstring): the queue exists only while frames wait
    _queue: deque | None = None
    _queued_bytes = 0
    _blocked = False
    _blocked_timer = None  # closes the connection once it has been stuck for max_send_backlog_age
    _in_transport = 0  # bytes in Twisted's buffer when the transport paused us
    backlog_held = 0  # what relayd.ws.backlog counts for this connection
    backlog_key = None  # the address it counts against there
    _throttle = None  # while its address sends above address_byte_rate: the call that reads again
    throttled_before = False  # its first pause is logged, the rest counted
    _wskey = None  # the client's key, once its opening handshake is parsed (Autobahn sets it then)

    # ---- Autobahn entry points -------------------------------------------------------------

    reader = None  # relayd.ws.wire.FrameReader, once the WebSocket is open

    def dataReceived(self, data):
        # Autobahn's dataReceived formats a debug log line per read, even with debug logging off;
        # frames this read produces for any receiver are written together once it is handled
        self.heard = True
        backlogs = self._backlogs
        backlogs.reading = self  # a sender is not shed for what its own broadcast queues at others
        try:
            with BATCH:
                if self.reader is not None:
                    self._frames(data)
                else:
                    self._dataReceived(data)  # the opening handshake is Autobahn's
        finally:
            backlogs.reading = None

    def consumeData(self):
        # Autobahn calls this with what it buffered, also right after the handshake with any bytes
        # the client sent behind its request; from the open on, frames are the reader's
        if self.state == _OPEN or self.state == _CLOSING:
            data, self.data = self.data, b""
            self._frames(data)
        elif self.state == _CONNECTING and self._wskey is not None:
            # the request was parsed (relayd.web.upgrade) and onConnect has not decided yet: what the
            # client sends meanwhile waits for the open, up to what one message may be
            limit = self.maxMessagePayloadSize
            if limit and len(self.data) > limit + _FRAME_HEADER_MAX:
                self.factory.metrics.protocol_error("message_too_big")
                self._log.info("{app}: {peer} sent {size} bytes before its connection opened; dropping it",
                               app=self.factory.app_name, peer=self.peer, size=len(self.data))
                self.data = b""
                self.dropConnection(abort=True)
        else:
            super().consumeData()

    def _frames(self, data: bytes) -> None:
        """Bytes of an open (or closing) WebSocket: the reader's events, handled as Autobahn would."""
        if self.state == _CLOSED:
            return  # read after relayd dropped the connection: nothing in them is acted on
        reader = self.reader
        if reader is None:
            reader = self.reader = FrameReader(self.maxFramePayloadSize, self.maxMessagePayloadSize)
        events = reader.feed(data)
        # every message of this read arrived now: the rate budgets are refilled once for all of them
        now = self._clock.seconds()
        self._budget.refill(now)
        rates = self._address_rates
        if rates is not None:
            wait = rates.spend(self.backlog_key or Backlogs.key_of(self), len(data), now)
            if wait and self._throttle is None:
                self._throttled(wait)
        for i in range(0, len(events), 2):
            if self.state == _CLOSED:
                return
            kind = events[i]
            if kind == _TEXT:
                self.onMessage(events[i + 1], False)
            elif kind == _BINARY:
                self.onMessage(events[i + 1], True)
            elif kind == _PING:
                self.onPing(events[i + 1])  # Autobahn's: a pong while open
            elif kind == _PONG:
                self.onPong(events[i + 1])
            elif kind == _CLOSE:
                payload = events[i + 1]
                # the close handshake (code and reason checks, the reply, the drop) stays Autobahn's
                self.onCloseFrame(int.from_bytes(payload[:2], "big") if len(payload) > 1 else None,
                                  payload[2:] if len(payload) > 2 else None)
            else:
                self._wire_error(*events[i + 1])

    def _wire_error(self, code: int, reason: str) -> None:
        """The client broke RFC 6455: closed with code, the reader frames on for the peer's close."""
        kind = _WIRE_ERRORS.get(code, "websocket_protocol")
        self.factory.metrics.protocol_error(kind)
        self._log.info("{app}: {peer} broke the WebSocket protocol ({kind}: {reason}); closing with {code}",
                       app=self.factory.app_name, peer=self.peer, kind=kind, reason=reason, code=code)
        self.failedByMe = True
        if self.state == _OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8")[:123])
        else:
            self.dropConnection(abort=False)  # relayd was closing already: nothing more to wait for

    def _throttled(self, wait: float) -> None:
        """Its address sent above address_byte_rate: this connection is not read for `wait` seconds."""
        if not self.throttled_before:
            self.throttled_before = True
            self._log.info("{app}: {address} sends above address_byte_rate; reading {peer} paused {wait:.3f} s "
                           "(logged once a connection)", app=self.factory.app_name, address=self.backlog_key,
                           peer=self.peer, wait=wait)
        self.factory.metrics.throttled()
        self.transport.pauseProducing()
        self._throttle = self._clock.callLater(wait, self._read_again)

    def _read_again(self) -> None:
        self._throttle = None
        if self.transport is not None and self.state != _CLOSED:
            self.transport.resumeProducing()

    def sendData(self, data, sync=False, chopsize=None):
        # Autobahn's own frames (close, ping, pong) must not overtake frames still gathered for us
        BATCH.flush_one(self)
        super().sendData(data, sync, chopsize)

    def connectionMade(self):
        lean_connection_made(self)  # Autobahn's connectionMade without what relayd never reads
        factory = self.factory
        self._metrics = factory.metrics
        self._clock = factory.reactor
        self._backlogs = factory.backlogs
        self._address_rates = factory.address_rates
        self._budget = Budget(factory.limits.rate(), self._clock.seconds())
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass
        self.transport.registerProducer(self, True)

    def onConnect(self, request):
        # the Origin policy ran on the HTTP request already (relayd.web.resources.AppMount)
        try:
            self.request = request
            return self.connecting(request)
        except ConnectionDeny:
            raise
        except ProtocolError as e:
            self.factory.metrics.protocol_error(e.kind)
            raise ConnectionDeny(400, e.message)
        except Exception:
            self._log.failure("{app}: connecting failed", app=self.factory.app_name)
            raise ConnectionDeny(500, "internal error")

    def onOpen(self):
        metrics = self.factory.metrics
        try:
            self.websocket_open = True
            metrics.connections.inc()
            metrics.connections_open.inc()
            if self.slot is not None:
                self.slot.websocket = self
            if self.factory.keepalive is not None:
                self.factory.keepalive.watch(self)
            lean_after_open(self)
            self.session = self.make_session()
            self.runner = Runner(self, self.session, name=self.factory.app_name)
            self.runner.opened()
        except ProtocolError as e:
            self._protocol_error(e)
        except Exception:
            self._log.failure("{app}: opening failed", app=self.factory.app_name)
            self._internal_error()

    def onMessage(self, payload, isBinary):
        metrics = self.factory.metrics
        if self.state != _OPEN:
            # relayd is closing this connection (rate, a protocol error, a drain): Autobahn still reads
            # frames until the peer's close frame, but nothing more from it is relayed or acted on
            self.ignored += 1
            metrics.dropped("after_close")
            return
        metrics.messages_in += 1
        metrics.bytes_in += len(payload)
        if not self._budget.spend(len(payload)) and not self._promoted(len(payload)):
            metrics.protocol_error("rate_limited")
            self.rate_limited = True  # logged once, with what followed, when the connection is gone
            self.close(closecodes.RATE_LIMITED, "rate limit exceeded")
            return
        try:
            if isBinary and not self.accepts_binary:
                self.binary(payload)
            else:
                self.runner.received(payload, isBinary)
        except Exception:
            # the Runner's one guard, as for the session's own steps (here: binary on a text protocol)
            handle_failure(self, self.session, Failure(), self.factory.app_name)

    def onClose(self, wasClean, code, reason):
        metrics = self.factory.metrics
        self._cancel_blocked_timer()
        if self._throttle is not None and self._throttle.active():
            self._throttle.cancel()
        # Autobahn leaves these pending after the connection is gone
        for name in ("closeHandshakeTimeoutCall", "serverConnectionDropTimeoutCall"):
            call = getattr(self, name, None)
            if call is not None:
                call.cancel()
                setattr(self, name, None)
        self._drop_queue()
        if self.factory.keepalive is not None:
            self.factory.keepalive.forget(self)
        if self.slot is not None:
            self.slot.release()
        if not self.websocket_open:
            return
        self.websocket_open = False
        errors = self.error_counts
        if errors and sum(errors.values()) > len(errors):
            self._log.info(
                "{app}: {peer} caused {count} protocol errors in all ({kinds})",
                app=self.factory.app_name, peer=self.peer, count=sum(errors.values()),
                kinds=", ".join(f"{kind} x{n}" for kind, n in sorted(errors.items())),
            )
        if self.rate_limited:
            self._log.info(
                "{app}: closed {peer} ({role}) for exceeding its rate limit; {count} messages after that were not acted on",
                app=self.factory.app_name, peer=self.peer, role=self.sends_as, count=self.ignored,
            )
        elif self.ignored:
            self._log.info(
                "{app}: {peer} sent {count} messages after relayd decided to close it; none was acted on",
                app=self.factory.app_name, peer=self.peer, count=self.ignored,
            )
        metrics.connections_open.dec()
        sent = self.localCloseCode if self.closedByMe else None
        metrics.closed(sent if sent is not None else (code if code is not None else 1006))
        if self.runner is not None:
            self.runner.closed()

    def use_role(self, role: str) -> None:
        """This connection now sends as `role` (a game server, a host): its rate limits follow."""
        self.sends_as = role
        self._budget.use(self.factory.limits.rate(role))

    def _promoted(self, size: int) -> bool:
        # asked only when the budget runs out, so a role that changed (a guest promoted to host) costs
        # nothing per message and is still honoured before anything is refused
        role = self.rate_role()
        if role == self.sends_as:
            return False
        self.use_role(role)
        return self._budget.take(self._clock.seconds(), size)

    # ---- hooks for adapters ------------------------------------------------------------------

    def make_session(self):
        """This client's ISession (relayd.session); by default the protocol's session_class(app, connection)."""
        return self.session_class(self.factory.app, self)

    def rate_role(self) -> str:
        """The role whose rate limits this connection sends under now (see AppSpec.roles)."""
        return self.sends_as

    def connecting(self, request):
        """Inspect the upgrade request; raise ProtocolError or ConnectionDeny to refuse it."""
        return None

    def binary(self, payload: bytes) -> None:
        """A binary message on a text protocol: closed with 1003 unless the adapter says otherwise."""
        raise ProtocolError("binary_frame", "binary messages are not part of this protocol", close=True,
                            code=closecodes.UNSUPPORTED_DATA)

    def report(self, error: ProtocolError) -> None:
        """Put a ProtocolError on the wire in the protocol's own form: the session's."""
        if self.session is not None:
            self.session.report(error)
        elif error.close:
            self.close(error.code, error.message)

    # ---- outbound ---------------------------------------------------------------------------

    def send_frame(self, frame: Frame, latest: str | None = None) -> None:
        """
        The one outbound path: write now, or queue while the peer is not reading. A frame sent with
        `latest` (a state that supersedes the one before, such as a lobby roster) replaces the
        queued frame of the same `latest` instead of queueing behind it.
        """
        if self.state != _OPEN:
            return
        if self._blocked or self._queue:
            backlogs = self._backlogs
            if latest is not None:
                held = self._latest.get(latest) if self._latest else None
                if held is not None:
                    self._queued_bytes += len(frame) - len(held.frame)
                    backlogs.dequeued(self, held.frame)
                    held.frame = frame
                    backlogs.queued(self, frame)
                    return
                if self._latest is None:
                    self._latest = {}
                queued = self._latest[latest] = _Latest(frame, latest)
            else:
                queued = frame
            if self._queue is None:
                self._queue = deque()
            self._queue.append(queued)
            self._queued_bytes += len(frame)
            backlogs.queued(self, frame)  # may shed this connection, with others, when a bound is passed
            if self._queue is None:
                return
            limits = self.factory.limits
            if self._queued_bytes > limits.max_send_backlog:
                self._slow_consumer("size")
            elif self._blocked_timer is None and self._queued_bytes > limits.max_send_backlog // 8:
                self._arm_blocked_timer()
            return
        self._write(frame)

    def _write(self, frame: Frame) -> None:
        # once per receiver of every frame relayd relays: BATCH.add inlined, the wire bytes read without
        # the property once they are built
        wire = frame._wire or frame.wire
        batch = BATCH
        if batch.depth:
            wires = batch.pending.get(self)
            if wires is None:
                batch.pending[self] = [wire]
            else:
                wires.append(wire)
        else:
            self._write_wire(wire)
        metrics = self._metrics
        metrics.messages_out += 1
        metrics.bytes_out += len(wire)

    def _write_wire(self, wire: bytes) -> None:
        if self.transport is None or self.state == WebSocketProtocol.STATE_CLOSED:
            return
        if self.send_queue:
            super().sendData(wire)  # Autobahn is writing chopped data: stay behind it
        else:
            write_now(self.transport, wire)

    # ---- keepalive (relayd.ws.keepalive) -------------------------------------------------------

    def keepalive_ping(self) -> bool:
        """Ping a silent connection; False when it is not pinged (not open, or its writes are blocked)."""
        if self.state != _OPEN or self._blocked or self._queue:
            return False  # a reader that is not reading is the slow-consumer policy's to close
        BATCH.flush_one(self)
        self._write_wire(PING)
        return True

    def keepalive_expired(self) -> None:
        if self.state != _OPEN:
            return
        self.factory.metrics.protocol_error("keepalive_timeout")
        self._log.info("{app}: no answer to keepalive from {peer}; dropping it", app=self.factory.app_name, peer=self.peer)
        self.wasNotCleanReason = "keepalive timeout"
        self.dropConnection(abort=True)

    def pauseProducing(self):
        if not self._blocked:
            self._blocked = True
            if self._blocked_timer is None:
                self._arm_blocked_timer()
            if self.transport is not None:
                held = self._in_transport = buffered_bytes(self.transport)
                if held:
                    self._backlogs.buffered(self, held)

    def resumeProducing(self):
        if not self._blocked:
            return
        self._blocked = False
        if self._in_transport:
            self._backlogs.buffered(self, -self._in_transport)
            self._in_transport = 0
        queue = self._queue
        backlogs = self._backlogs
        # writing may block the transport again, which calls pauseProducing and stops this loop
        while queue and not self._blocked and self.state == _OPEN:
            frame = queue.popleft()
            if type(frame) is _Latest:
                del self._latest[frame.key]
                frame = frame.frame
            self._queued_bytes -= len(frame)
            backlogs.dequeued(self, frame)
            self._write(frame)
        if self._blocked and self._queued_bytes > self.factory.limits.max_send_backlog // 8:
            return  # it read a little and holds as much as before: its age goes on from when it began
        # it caught up (or is at least below the low mark): a new block is aged from now
        self._cancel_blocked_timer()
        if self._blocked:
            self._arm_blocked_timer()

    def stopProducing(self):
        self._cancel_blocked_timer()
        self._drop_queue()

    def _arm_blocked_timer(self):
        self._blocked_timer = self._clock.callLater(
            self.factory.limits.max_send_backlog_age, self._slow_consumer, "age"
        )

    def _drop_queue(self):
        queue, self._queue = self._queue, None
        self._latest = None
        self._queued_bytes = 0
        backlogs = self._backlogs
        if queue:
            for frame in queue:
                backlogs.dequeued(self, frame.frame if type(frame) is _Latest else frame, dropped=True)
        if self._in_transport:
            backlogs.buffered(self, -self._in_transport, dropped=True)
            self._in_transport = 0

    def shed(self, why: str) -> None:
        """The process's backlogs are over a bound and this connection holds the most (relayd.ws.backlog)."""
        self._slow_consumer(why)

    def _cancel_blocked_timer(self):
        timer, self._blocked_timer = getattr(self, "_blocked_timer", None), None
        if timer is not None and timer.active():
            timer.cancel()

    def _slow_consumer(self, why: str) -> None:
        self._cancel_blocked_timer()
        if self.state != _OPEN:
            return
        self.factory.metrics.protocol_error("slow_consumer")
        self.factory.metrics.slow_consumer(why)
        self._log.info(
            "{app}: disconnecting slow consumer {peer} ({why}, {queued} bytes held)",
            app=self.factory.app_name, peer=self.peer, why=why, queued=self.backlog_held,
        )
        self._drop_queue()
        self.close(closecodes.SLOW_CONSUMER, "slow consumer: send backlog exceeded")
        # the peer is not reading, so its close frame would never come: do not wait for it
        self.dropConnection(abort=True)

    # ---- closing ----------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Close with any code, including 1001 and 1011 which Autobahn's sendClose refuses."""
        if self.state == _OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8")[:123])
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.dropConnection(abort=True)

    def going_away(self) -> None:
        """Drain: tell the client the server is going away."""
        self.close(closecodes.GOING_AWAY, "server shutting down")

    # ---- IConnection (relayd.session) ---------------------------------------------------------

    send = send_frame

    def still_open(self) -> bool:
        return self.state == _OPEN

    def listen(self, bus, channel: str):
        return bus.subscribe(channel, self.send_frame)

    def drop(self) -> None:
        self.dropConnection(abort=False)

    def internal_error(self) -> None:
        self._internal_error()

    def count_error(self, error: ProtocolError) -> bool:
        """Counted and (the first of its kind) logged; False once it closed the connection for too many."""
        factory = self.factory
        factory.metrics.protocol_error(error.kind)
        # the first of each kind is logged; the rest are counted and summed up when the connection ends
        counts = self.error_counts
        if counts is None:
            counts = self.error_counts = {}
            limit = factory.limits.max_protocol_errors
            # max_protocol_errors in any minute: a message budget without bytes
            self._error_budget = Budget(Rate(limit / 60.0, limit, 0, 1), self._clock.seconds())
        seen = counts.get(error.kind, 0)
        counts[error.kind] = seen + 1
        if not seen:
            self._log.info(
                "{app}: protocol error from {peer}: {kind}: {message}",
                app=factory.app_name, peer=self.peer, kind=error.kind, message=error.message,
            )
        if not self._error_budget.take(self._clock.seconds(), 0) and self.state == _OPEN:
            factory.metrics.protocol_error("too_many_errors")
            self.close(closecodes.POLICY, "too many invalid messages")
            return False
        return True

    def _protocol_error(self, error: ProtocolError) -> None:
        if not self.count_error(error):
            return
        try:
            self.report(error)
        except Exception:
            self._log.failure("{app}: reporting a protocol error failed", app=self.factory.app_name)
            self._internal_error()

    def _internal_error(self) -> None:
        self.factory.metrics.protocol_error("internal")
        self.close(closecodes.INTERNAL_ERROR, "internal error")
