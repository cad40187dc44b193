"""
Every place relayd relies on Autobahn, txaio or Twisted internals, in one module (the Autobahn
protocol subclass, relayd.ws.protocol, also overrides and reads a few of Autobahn's attributes).

tests/test_internals.py checks each of these against the installed versions, so an upgrade
that changes them fails loudly there instead of subtly in production.
"""

from __future__ import annotations

from pprint import pformat

import autobahn.websocket.protocol as _ab_protocol
from txaio._common import _BatchedTimer


def batched_timer(clock, bucket_seconds: float = 0.2, chunk_size: int = 1000):
    """
    Autobahn schedules handshake, close and keepalive timeouts on its factory's batched timer, which
    txaio binds to the global reactor. relayd binds it to the injected clock instead, so every timeout
    runs on the daemon's reactor and tests drive them with Clock.advance.
    """
    return _BatchedTimer(
        bucket_seconds * 1000.0,
        chunk_size,
        seconds_provider=clock.seconds,
        delayed_call_creator=clock.callLater,
    )


def install_clock(factory, clock) -> None:
    factory._batched_timer = batched_timer(clock)


import txaio.tx as _txaio_tx  # noqa: E402

# txaio binds its loggers' debug (and trace) to a no-op below these levels: Autobahn's debug lines
# are then never written, and what they format is thrown away
_DEBUG_LEVELS = ("debug", "trace")


def debugging() -> bool:
    """Whether Autobahn's debug lines are written (txaio's global log level)."""
    return _txaio_tx._log_level in _DEBUG_LEVELS


def _when_debugging(format_function):
    """
    Autobahn pretty-prints its whole option table on every connection, its transport details on every
    handshake, and highlights function names and values (hltype, hlval) for debug lines that txaio
    drops unless debug logging is on: without this, about 40% of handshake CPU. Formatted exactly as
    before when debugging; otherwise nothing is formatted.
    """
    def formatted(*args, **kwargs) -> str:
        return format_function(*args, **kwargs) if debugging() else ""
    formatted.__wrapped__ = format_function
    return formatted


import autobahn.twisted.websocket as _ab_twisted  # noqa: E402
import autobahn.util as _ab_util  # noqa: E402

# module -> the debug-only formatters it calls by name
_DEBUG_FORMATTERS = {
    _ab_protocol: {"pformat": pformat, "hltype": _ab_util.hltype, "hlval": _ab_util.hlval},
    _ab_twisted: {"hltype": _ab_util.hltype, "hlval": _ab_util.hlval},
}


def quiet_debug_formatting() -> None:
    """Autobahn's debug-only formatting runs only when its debug lines are written; idempotent."""
    for module, formatters in _DEBUG_FORMATTERS.items():
        for name, function in formatters.items():
            setattr(module, name, _when_debugging(function))


def protocol_with_options(protocol: type, factory) -> type:
    """
    A subclass of `protocol` carrying the factory's protocol options as class attributes.

    Autobahn copies every option (CONFIG_ATTRS, about forty) from the factory onto each connection in
    _connectionMade unless the connection already has it; as class attributes they are found there
    and each connection's __dict__ stays forty entries smaller. Set after setProtocolOptions. The
    subclass also carries what lean_after_open leaves to the class.
    """
    # a function stored as a class attribute would become a method; options such as
    # perMessageCompressionAccept are plain callables and must stay so
    options = {name: staticmethod(value) if callable(value) else value
               for name in protocol.CONFIG_ATTRS for value in (getattr(factory, name),)}
    return type(protocol.__name__, (protocol,), {"__module__": protocol.__module__, "__qualname__": protocol.__qualname__,
                                                 **options, **AUTOBAHN_DEFAULTS, "trafficStats": _SHARED_TRAFFIC_STATS,
                                                 "_transport_details": None,
                                                 "send_queue": NO_SEND_QUEUE})


# ---- an open connection keeps only what it reads -----------------------------------------------
from autobahn.websocket.protocol import TrafficStats as _TrafficStats  # noqa: E402

# what Autobahn keeps of the opening handshake: read only while it runs (processHandshake,
# succeedHandshake), about 2 KB a connection
_HANDSHAKE_LEFTOVERS = (
    "http_headers", "http_request_data", "http_response_data", "http_status_line", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "_wskey", "websocket_protocols",
    "websocket_extensions", "websocket_origin", "request",
)
# read only by Autobahn's frame parser and message assembly, which relayd's frame reader replaces
# (relayd.ws.wire): its UTF-8 validator and the observable "message" event
_PARSER_STATE = ("utf8validator", "_results", "_valid_events")
# Autobahn's transport details (made in its __init__): read while the connection opens (the Twisted
# adapter's _onOpen) and afterwards only by WAMP; once open the class's None stands in
_OPENING_ONLY = ("_transport_details",)
# all of them, and the send queue and traffic counters every connection shares from its class
_DROPPED_ONCE_OPEN = frozenset(_HANDSHAKE_LEFTOVERS + _PARSER_STATE + _OPENING_ONLY + ("trafficStats", "send_queue"))

# the flags Autobahn's _connectionMade sets on every connection, at the values it sets: left to the
# class once the connection is open, and set on the connection again only when they change
AUTOBAHN_DEFAULTS = {
    "_perMessageCompress": None, "trackedTimings": None, "send_state": 0, "triggered": False,
    "wasMaxFramePayloadSizeExceeded": False, "wasMaxMessagePayloadSizeExceeded": False, "closedByMe": False,
    "failedByMe": False, "droppedByMe": False, "wasClean": False, "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False, "wasOpenHandshakeTimeout": False, "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False, "localCloseCode": None, "localCloseReason": None,
    "remoteCloseCode": None, "remoteCloseReason": None, "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None, "autoPingTimeoutCall": None, "autoPingPending": None,
    "autoPingPendingCall": None, "autoPingPendingSeq": 0, "autoPingPendingSent": None,
    "inside_message": False, "current_frame": None, "websocket_protocol_in_use": None,
}

# Autobahn counts traffic into it on every send and nothing reads it: one for every connection
_SHARED_TRAFFIC_STATS = _TrafficStats()


class _NoSendQueue(tuple):
    """
    Autobahn's send queue, which fills only for sync or chopped sends; relayd makes neither, so every
    connection shares this empty one (a deque is 760 bytes), and a send that would queue fails loudly.
    """

    __slots__ = ()

    def append(self, item):
        raise RuntimeError("relayd makes no sync or chopped sends: nothing may be queued on Autobahn's send queue")


NO_SEND_QUEUE = _NoSendQueue()


def lean_after_open(protocol) -> None:
    """
    Once the WebSocket is open: drop what only the handshake and Autobahn's parser read, leave flags
    at their default to the class, and rebuild the instance dict at its new size (a dict never
    shrinks when entries are deleted). About 3 KB less per idle connection.
    """
    kept = {}
    for name, value in protocol.__dict__.items():
        if name in _DROPPED_ONCE_OPEN:
            continue
        if name in AUTOBAHN_DEFAULTS:
            default = AUTOBAHN_DEFAULTS[name]
            if type(value) is type(default) and value == default:
                continue
        kept[name] = value
    protocol.__dict__ = kept


# ---- Twisted's PROXY protocol wrapper -----------------------------------------------------------
# twisted.protocols.haproxy exports only proxyEndpoint, which requires the header on every connection
# and wraps a refused connection (buildProtocol returning None) in a wrapper around nothing. relayd
# believes the header only from its trusted proxies and lets them also connect without one, so it uses
# the wrapper and its parsers' signatures directly.
from twisted.protocols.haproxy._v1parser import V1Parser as _V1Parser  # noqa: E402
from twisted.protocols.haproxy._v2parser import V2Parser as _V2Parser  # noqa: E402
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper  # noqa: E402,F401 (used by relayd.web.proxy)

PROXY_V1_SIGNATURE = _V1Parser.PROXYSTR + b" "
PROXY_V2_SIGNATURE = _V2Parser.PREFIX
# HAProxyProtocolWrapper decides on its first read and needs this many bytes to tell v2 from v1
PROXY_HEADER_PROBE = 16


# ---- Twisted: the listening port, pipelined request bytes, writing without a reactor pass -----------
from twisted.internet import tcp as _tcp  # noqa: E402
from twisted.internet.abstract import FileDescriptor as _FileDescriptor  # noqa: E402


def listening_port(endpoint_service):
    """The port a strports service listens on, once listening (its Deferred fired synchronously)."""
    return endpoint_service._waitingForPort.result


def pipelined_bytes(channel) -> bytes:
    """Bytes an HTTP channel read behind the request it is handling (a client that did not wait)."""
    return b"".join(getattr(channel, "_dataBuffer", ()))


def can_write_now(transport) -> bool:
    """A plain TCP transport with nothing queued, which writeSomeData may write to directly."""
    return (
        type(transport) is _tcp.Server
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and len(transport.dataBuffer) == transport.offset
    )


_Server = _tcp.Server


def buffered_bytes(transport) -> int:
    """
    Bytes waiting in Twisted's write buffer under a connection: of the socket's transport, found
    below any wrapper (TLS, the PROXY header reader) by their `transport`; 0 where there is none.
    """
    for _ in range(4):
        if isinstance(transport, _FileDescriptor):
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        transport = getattr(transport, "transport", None)
        if transport is None:
            return 0
    return 0


def split_writable(protocols, closed_state: int) -> tuple[list, list, list]:
    """
    The Autobahn protocols whose plain TCP transport has nothing queued (Twisted's buffer empty,
    Autobahn not writing chopped data), with their sockets, and the rest: the fan-out writes the
    first around Twisted (relayd.ws._writes.write_to_many). can_write_now's checks, inlined: this
    runs once per receiver of every broadcast.
    """
    direct, fds, others = [], [], []
    for protocol in protocols:
        t = protocol.transport
        if (type(t) is _Server and protocol.state != closed_state and not protocol.send_queue and t.connected
                and not t.disconnecting and not t._writeDisconnected and not t._tempDataLen
                and len(t.dataBuffer) == t.offset):
            direct.append(protocol)
            fds.append(t.socket.fileno())
        else:
            others.append(protocol)
    return direct, fds, others


# ---- Autobahn: a server connection made lean, and opened on a request twisted.web parsed ----------
from urllib.parse import parse_qs as _parse_qs, urlparse as _urlparse  # noqa: E402

from autobahn.twisted.util import peer2str as _peer2str  # noqa: E402
from autobahn.websocket.types import ConnectionDeny as _ConnectionDeny  # noqa: E402
from autobahn.websocket.types import ConnectionRequest as _ConnectionRequest  # noqa: E402
from twisted.internet.defer import Deferred as _Deferred  # noqa: E402
from twisted.logger import Logger as _Logger  # noqa: E402

_log = _Logger()

# what Autobahn's connectionMade sets that relayd's connections never read: its transport details
# (process and thread ids, TLS channel id and peer certificate, made on every connection), its
# UTF-8 validator (relayd's frame reader validates), and what protocol_with_options puts on the class
NOT_MADE = ("_transport_details", "utf8validator", "trafficStats", "send_queue")


def lean_connection_made(protocol) -> None:
    """
    Autobahn's connectionMade for a server connection of a class made by protocol_with_options:
    only what differs from the class is set (AUTOBAHN_DEFAULTS and the options are class attributes),
    and nothing of NOT_MADE. tests/test_internals.py compares it with Autobahn's own, attribute by
    attribute.
    """
    transport = protocol.transport
    protocol.peer = _peer2str(transport)
    try:
        transport.setTcpNoDelay(protocol.tcpNoDelay)
    except Exception:  # not a TCP transport (a UNIX socket, an in-memory one): Autobahn ignores it too
        pass
    protocol.state = _ab_protocol.WebSocketProtocol.STATE_CONNECTING
    protocol.data = b""
    if protocol.openHandshakeTimeout > 0:
        protocol.openHandshakeTimeoutCall = protocol.factory._batched_timer.call_later(
            protocol.openHandshakeTimeout, protocol.onOpenHandshakeTimeout)
    protocol.factory.countConnections += 1


def open_upgraded(protocol, *, uri: str, headers: dict, version: int, key: str, protocols: list,
                  extensions: str | None, data: bytes) -> None:
    """
    Open a WebSocket on an upgrade request relayd has checked already (relayd.web.upgrade): set what
    Autobahn's processHandshake would have parsed, call onConnect, and let Autobahn's
    succeedHandshake write the 101 and open the connection (failHandshake refuses it). The request
    is not written out and parsed a second time, and a synchronous onConnect runs without Deferreds.
    `headers` are lower-case names to values as Autobahn gives them (repeats joined by ", ").
    """
    _scheme, _netloc, path, _params, query, _fragment = _urlparse(uri)
    host = headers.get("host", "").strip()
    if ":" in host and not host.endswith("]"):
        host = host.rsplit(":", 1)[0]
    protocol.http_request_uri = uri
    protocol.http_headers = headers
    protocol.http_request_host = host
    protocol.http_request_path = path
    protocol.http_request_params = _parse_qs(query)
    protocol.websocket_version = version
    protocol.websocket_origin = ""
    protocol.websocket_protocols = protocols
    protocol.websocket_extensions = protocol._parseExtensionsHeader(extensions) if extensions else []
    protocol._wskey = key
    protocol.data = data
    request = _ConnectionRequest(protocol.peer, headers, host, path, protocol.http_request_params, version, "",
                                 protocols, protocol.websocket_extensions)
    try:
        accepted = protocol.onConnect(request)
    except _ConnectionDeny as e:
        protocol.failHandshake(e.reason, e.code)
        return
    if isinstance(accepted, _Deferred):
        accepted.addCallbacks(protocol.succeedHandshake, _refused, errbackArgs=(protocol,))
    else:
        protocol.succeedHandshake(accepted)


def _refused(failure, protocol) -> None:
    if isinstance(failure.value, _ConnectionDeny):
        protocol.failHandshake(failure.value.reason, failure.value.code)
    else:  # RelaydProtocol.onConnect turns every error into ConnectionDeny; anything else is a bug
        _log.failure("opening a WebSocket failed", failure=failure)
        protocol.failHandshake("internal error", _ConnectionDeny.INTERNAL_SERVER_ERROR)


def run_reactor_on(reactor, seconds) -> None:
    """
    The reactor's timers, timeouts and seconds() on relayd's clock (relayd.clock) instead of
    time.time(). Twisted's reactor reads its clock only through the instance's seconds(): callLater
    stamps each DelayedCall with it (and hands it the same function), and the loop's timeout and
    runUntilCurrent compare against it. Installed before the service tree is built, so every timer
    relayd makes is on one clock; a timer made earlier (there is none in a twistd start) is due at a
    wall time, which the clock reads as within a few microseconds of.
    """
    reactor.seconds = seconds
