"""
The twisted.web Site of one listener, hardened for the open internet.

- The request head (request line and headers) is capped at max_request_size and must arrive within
  open_handshake_timeout of the connection (or of the previous response): a client that trickles a
  never-ending head is cut off by time and by size, and its buffered bytes stay bounded.
- Connections are counted per listener and per client address (relayd.web.tracker); behind a
  trusted proxy, per the address the proxy names (relayd.web.proxy).
- ALPN only ever selects http/1.1: WebSocket over HTTP/2 is not served, and browsers that offer
  `h2,http/1.1` complete the TLS handshake on http/1.1.
"""

from __future__ import annotations

import socket
from io import BytesIO

from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.web import http, server

from relayd.logs import Sparse
from relayd.web.proxy import is_trusted, normal_address
from relayd.web.tracker import ConnectionTracker

_log = Logger()

HTTP_IDLE_TIMEOUT = 60
REFUSAL_LOG_INTERVAL = 10.0
# a refused request's client may still be sending its body: what is read and thrown away before the
# connection is closed, so that the close is a FIN and the client reads the answer (closing a socket
# with unread bytes sends a reset: a client still writing its body gets EPIPE or ECONNRESET instead of
# the answer). Reading and discarding costs a copy per byte; the bounds are nginx's order of magnitude.
LINGER_BYTES = 64 * 1024 * 1024
LINGER_SECONDS = 10.0


class RelaydChannel(http.HTTPChannel):
    slot = None
    _head_deadline = None
    _lingering = None  # bytes still to throw away once a refusal is answered
    _linger_timer = None

    def connectionMade(self):
        super().connectionMade()
        if self.site.send_buffer:
            _bound_send_buffer(self.transport, self.site.send_buffer)
        self._arm_head_deadline()

    def _arm_head_deadline(self):
        self._cancel_head_deadline()
        self._head_deadline = self.callLater(self.site.limits.open_handshake_timeout, self._head_timed_out)

    def _cancel_head_deadline(self):
        deadline, self._head_deadline = self._head_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _head_timed_out(self):
        self._head_deadline = None
        self.site.reject("request_head_timeout")
        _log.info(
            "listener {listener}: request head not complete in time from {peer}",
            listener=self.site.listener_name, peer=_peer(self.transport),
        )
        if self.transport is not None:
            self.transport.abortConnection()

    def allHeadersReceived(self):
        self._cancel_head_deadline()
        super().allHeadersReceived()

    def requestDone(self, request):
        super().requestDone(request)
        if self.transport is not None and not self._handlingRequest:
            self._arm_head_deadline()

    def _respondToBadRequestAndDisconnect(self):
        self.site.reject("bad_request")
        _log.info(
            "listener {listener}: bad or oversized HTTP request from {peer}",
            listener=self.site.listener_name, peer=_peer(self.transport),
        )
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        self.linger()

    def linger(self) -> None:
        """
        A refusal was written before the request was read to its end: read and discard what the
        client still sends (LINGER_BYTES at most, for LINGER_SECONDS at most) and close once it stops,
        as nginx's lingering close does. A plain TCP connection is half-closed at once (the client
        reads the answer, then the end), so a client that waits for the end stops sending.
        """
        if self._lingering is not None or self.transport is None:
            return
        self._lingering = LINGER_BYTES
        # nothing more of what was read is parsed: not the rest of this read, not what follows
        self._buffer = b""
        self.lineReceived = self.rawDataReceived = _ignore
        self._cancel_head_deadline()
        self.setTimeout(None)
        self._linger_timer = self.callLater(LINGER_SECONDS, self._stop_lingering)
        if not ISSLTransport.providedBy(self.transport) and hasattr(self.transport, "loseWriteConnection"):
            self.transport.loseWriteConnection()  # sent once the answer is written

    def dataReceived(self, data):
        if self._lingering is None:
            return super().dataReceived(data)
        self._lingering -= len(data)
        if self._lingering < 0:
            self._stop_lingering()

    def _stop_lingering(self):
        timer, self._linger_timer = self._linger_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self.transport is not None:
            self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        self._respondToBadRequestAndDisconnect()

    def hand_over(self):
        """The WebSocket protocol takes this connection: stop every timer and give up the slot."""
        self._cancel_head_deadline()
        self.setTimeout(None)
        slot, self.slot = self.slot, None
        return slot

    def connectionLost(self, reason):
        self._cancel_head_deadline()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        super().connectionLost(reason)


def _ignore(*args) -> None:
    return None


def _bound_send_buffer(transport, size: int) -> None:
    # a client that never reads pins the kernel's send buffer; auto-tuning grows it to megabytes
    try:
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except (AttributeError, OSError):
        pass  # not a socket (a test's transport, a UNIX pipe): nothing to bound


def _peer(transport) -> str:
    try:
        peer = transport.getPeer()
        return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
    except Exception:
        return "?"


class RelaydRequest(server.Request):
    """
    A request whose body is held in memory and capped at max_body_size: an announced body over the
    cap is answered 413 before a byte of it is read, a chunked one as soon as it passes the cap.
    twisted.web would spool a large body to a temporary file first.
    """

    refused = False

    def gotLength(self, length):
        if length is not None and length > self._cap():
            self._too_large()
            return
        self.content = BytesIO()

    def handleContentChunk(self, data):
        if self.refused:
            return
        if self.content.tell() + len(data) > self._cap():
            self._too_large()
            return
        self.content.write(data)

    def process(self):
        if not self.refused:
            super().process()

    def _cap(self) -> int:
        return self.channel.site.limits.max_body_size

    def _too_large(self):
        self.refused = True
        self.content = BytesIO()
        channel = self.channel
        channel.site.reject("body_too_large")
        _log.info(
            "listener {listener}: request body over {limit} bytes from {peer}",
            listener=channel.site.listener_name, limit=self._cap(), peer=_peer(channel.transport),
        )
        body = b"request body too large\n"
        channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        channel.linger()


class RelaydSite(server.Site):
    protocol = RelaydChannel
    requestFactory = RelaydRequest
    displayTracebacks = False

    def __init__(self, resource, *, reactor, tracker: ConnectionTracker, limits, metrics, listener_name: str,
                 trusted_proxies: tuple = (), proxies_only: bool = False, send_buffer: int = 0):
        super().__init__(resource, reactor=reactor, timeout=HTTP_IDLE_TIMEOUT)
        self.tracker = tracker
        self.trusted_proxies = trusted_proxies
        self.proxies_only = proxies_only  # a haproxy: listener: only its proxies may connect
        self.limits = limits
        self.metrics = metrics
        self.listener_name = listener_name
        self.send_buffer = send_buffer
        self._refusals = Sparse(reactor, REFUSAL_LOG_INTERVAL)
        self.noisy = False

    def buildProtocol(self, addr):
        address = normal_address(getattr(addr, "host", None) or "local")
        if is_trusted(address, self.trusted_proxies):
            # a proxy's connections count against the address of the client each one carries
            slot, reason = self.tracker.acquire(None)
        elif self.proxies_only:
            slot, reason = None, "not_a_trusted_proxy"
        else:
            slot, reason = self.tracker.acquire(address)
        if slot is None:
            self.refused(address, reason)
            return None
        channel = super().buildProtocol(addr)
        channel.slot = slot
        slot.channel = channel
        channel.totalHeadersSize = self.limits.max_request_size
        channel.MAX_LENGTH = self.limits.max_request_size
        return channel

    def reject(self, reason: str) -> None:
        self.metrics.rejected.labels(self.listener_name, reason).inc()

    def refused(self, address: str, reason: str) -> None:
        """A connection refused: counted, and one log line per reason per interval (a flood of them is one line)."""
        self.reject(reason)
        count = self._refusals.due(reason)
        if count:
            _log.warn("listener {listener}: refused {count} connection(s) ({reason}), the last from {address}",
                      listener=self.listener_name, count=count, reason=reason, address=address)

    def acceptableProtocols(self):
        return [b"http/1.1"]

    def log(self, request):
        """Access logging is left to the apps' own log lines and metrics."""
