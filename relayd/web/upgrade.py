"""
Handing an HTTP connection over to a WebSocket protocol.

This does what autobahn.twisted.resource.WebSocketResource does, plus what relayd needs: the
listener's connection slot and any bytes the client sent right behind its request move to the
WebSocket protocol, and the HTTP channel's timers stop.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import NOT_DONE_YET

from relayd._internals import pipelined_bytes


def is_upgrade(request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return b"websocket" in upgrade.lower()


# the WebSocket protocol never sees these: relayd's own checks ran on them already
_CHECKED_HEADERS = (b"origin", b"x-forwarded-for")


def hand_over(request, factory, client: str):
    channel = request.channel
    transport = channel.transport
    if transport is None:  # HTTP/2 stream: no transport to take
        request.setResponseCode(426)
        request.setHeader(b"upgrade", b"websocket")
        return b"WebSocket needs HTTP/1.1\n"
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

    head = [request.method + b" " + request.uri + b" HTTP/1.1\r\n"]
    for name, values in request.requestHeaders.getAllRawHeaders():
        if name.lower() not in _CHECKED_HEADERS:
            head.append(name + b": " + b",".join(values) + b"\r\n")
    head.append(b"\r\n")
    protocol.dataReceived(b"".join(head) + request.content.read() + pipelined)
    return NOT_DONE_YET
