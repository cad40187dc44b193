"""
Handing an HTTP connection over to a WebSocket protocol.

This does what autobahn.twisted.resource.WebSocketResource does, plus what relayd needs: the
listener's connection slot and any bytes the client sent right behind its request move to the
WebSocket protocol, and the HTTP channel's timers stop. The upgrade is parsed once, by twisted.web:
relayd checks it here as RFC 6455 and Autobahn's processHandshake would (with the same answers), and
the protocol opens on what twisted.web parsed (relayd._internals.open_upgraded) instead of reading
the request again from bytes written out for it.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import NOT_DONE_YET

from relayd._internals import open_upgraded, pipelined_bytes

_log = Logger()
_BASE64 = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")


def is_upgrade(request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return b"websocket" in upgrade.lower()


# the WebSocket protocol never sees these: relayd's own checks ran on them already
_CHECKED_HEADERS = (b"origin", b"x-forwarded-for")


class Refused(Exception):
    """An upgrade request that is not a valid RFC 6455 opening handshake: answered code, reason."""

    def __init__(self, code: int, reason: str, headers: dict | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.headers = headers or {}


def _single(request, name: bytes, required: bool = True) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        if required:
            raise Refused(400, f"HTTP {name.decode()} header missing in opening handshake request")
        return None
    if len(values) > 1:
        raise Refused(400, f"HTTP {name.decode()} header appears more than once in opening handshake request")
    return values[0].decode("latin-1").strip()


def _has_token(request, name: bytes, token: str) -> bool:
    return any(part.strip().lower() == token
               for value in request.requestHeaders.getRawHeaders(name, [])
               for part in value.decode("latin-1").split(","))


def checked_upgrade(request, versions=(13,)) -> dict:
    """
    The parts of a valid opening handshake that open_upgraded takes; raises Refused for anything
    RFC 6455 (section 4.2.1) does not allow, with the status Autobahn answers it with. `versions`:
    the protocol versions the factory speaks (Autobahn's also include hybi-10's 8, framed alike).
    """
    if request.method != b"GET":
        raise Refused(405, f'HTTP method "{request.method.decode("latin-1")}" not allowed')
    if request.clientproto != b"HTTP/1.1":
        raise Refused(505, f'Unsupported HTTP version "{request.clientproto.decode("latin-1")}"')
    uri = request.uri.decode("latin-1")
    if "#" in uri:
        raise Refused(400, "HTTP requested resource contains a fragment identifier")
    _single(request, b"host")
    if not _has_token(request, b"upgrade", "websocket"):
        raise Refused(400, 'HTTP Upgrade headers do not include "websocket" value (case-insensitive)')
    if not _has_token(request, b"connection", "upgrade"):
        raise Refused(400, 'HTTP Connection headers do not include "upgrade" value (case-insensitive)')
    version = _single(request, b"sec-websocket-version")
    if not version.isdigit() or int(version) not in versions:
        supported = ",".join(str(v) for v in sorted(versions, reverse=True))
        raise Refused(400, f"WebSocket version {version[:20]} not supported (supported versions: {supported})",
                      {b"Sec-WebSocket-Version": supported.encode()})
    protocols = [part.strip() for value in request.requestHeaders.getRawHeaders(b"sec-websocket-protocol", [])
                 for part in value.decode("latin-1").split(",")]
    if len(set(protocols)) != len(protocols):
        raise Refused(400, "duplicate protocol specified in HTTP Sec-WebSocket-Protocol header")
    key = _single(request, b"sec-websocket-key")
    if len(key) != 24 or key[-2:] != "==" or not _BASE64.issuperset(key[:-2]):
        raise Refused(400, "bad Sec-WebSocket-Key (16 bytes in base64)")
    extensions = _single(request, b"sec-websocket-extensions", required=False)
    headers = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        name = name.lower()
        if name not in _CHECKED_HEADERS:
            headers[name.decode("latin-1")] = ", ".join(v.decode("latin-1").strip(" \t") for v in values)
    return {"uri": uri, "headers": headers, "version": int(version), "key": key, "protocols": protocols,
            "extensions": extensions}


def hand_over(request, factory, client: str):
    channel = request.channel
    transport = channel.transport
    if transport is None:  # HTTP/2 stream: no transport to take
        request.setResponseCode(426)
        request.setHeader(b"upgrade", b"websocket")
        return b"WebSocket needs HTTP/1.1\n"
    try:
        upgrade = checked_upgrade(request, factory.versions)
    except Refused as e:
        factory.metrics.protocol_error("bad_handshake")
        _log.info("{app}: refused an opening handshake from {client}: {reason}", app=factory.app_name, client=client,
                  reason=e.reason)
        request.setResponseCode(e.code)
        for name, value in e.headers.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"connection", b"close")
        return e.reason.encode("utf-8") + b"\n"
    protocol = factory.buildProtocol(transport.getPeer())
    if protocol is None:
        request.setResponseCode(503)
        return b""
    protocol.slot = channel.hand_over() if hasattr(channel, "hand_over") else None
    if protocol.slot is not None:
        protocol.slot.channel = None
    # bytes the client pipelined behind its request head, buffered by the channel while it handled it
    pipelined = pipelined_bytes(channel)
    channel.transport = None

    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.client_address = client
    if client != getattr(transport.getPeer(), "host", None):
        protocol.peer = f"{client} (via {protocol.peer})"
    producer = IPushProducer(transport, None)
    if producer is not None:
        producer.resumeProducing()

    open_upgraded(protocol, data=request.content.read() + pipelined, **upgrade)
    return NOT_DONE_YET
