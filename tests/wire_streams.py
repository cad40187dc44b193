"""
Client byte streams for the frame readers, and Autobahn's own parser as the reference they are
held to: the differential test (tests/test_wire_reader.py) and the fuzz target (fuzz/wire.py).

A stream is what a client's socket could carry after the upgrade: well-formed frames (text,
binary, fragmented messages with control frames between fragments, pings, pongs, a close), the
same corrupted (bytes flipped, dropped, inserted, cut short), and frames that break one rule.
"""

from __future__ import annotations

import random
import struct

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport

from relayd.ws.reader import BINARY, CLOSE, ERROR, PING, PONG, TEXT

MAX_FRAME = 4096
MAX_MESSAGE = 16384


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = b"\x01\x02\x03\x04",
          rsv: int = 0, minimal: bool = True) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    bit = 0x80 if mask is not None else 0
    if n <= 125 and minimal:
        head = bytes((first, bit | n))
    elif n <= 0xFFFF and (minimal or n > 125):
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if mask is None:
        return head + payload
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def _text(rng: random.Random) -> bytes:
    alphabet = ["a", "Z", " ", "{", "\"", "é", "€", "😀", "\u07ff", "\ud7ff", "\ue000", "\U0010ffff"]
    return "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 5, 40, 300, 2000)))).encode("utf-8")


def _bad_utf8(rng: random.Random) -> bytes:
    good = _text(rng)
    bad = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80", b"\xce", b"\x80"])
    at = rng.randint(0, len(good))
    return good[:at] + bad + good[at:]


def _close_payload(rng: random.Random) -> bytes:
    code = rng.choice([1000, 1001, 1002, 1003, 1007, 1008, 1011, 3000, 4999, 999, 1004, 1005, 1006, 1016, 5000])
    reason = rng.choice([b"", b"bye", "é".encode(), b"\xff"])
    return rng.choice([b"", struct.pack("!H", code) + reason])


def _mask(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(4))


def _message(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.08:
        return frame(rng.choice((PING, PONG)), rng.randbytes(rng.choice((0, 4, 125))), mask=_mask(rng))
    opcode = TEXT if rng.random() < 0.7 else BINARY
    body = (_bad_utf8(rng) if rng.random() < 0.05 else _text(rng)) if opcode == TEXT else rng.randbytes(rng.choice((0, 1, 200, 5000)))
    if rng.random() < 0.03:
        body = body * rng.choice((3, 6))  # past the frame or message limit
    if rng.random() < 0.3 and len(body) > 1:
        # fragmented, sometimes inside a UTF-8 sequence, with control frames between fragments
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(1, 4))))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
        out = b""
        for i, part in enumerate(parts):
            out += frame(opcode if i == 0 else 0, part, fin=i == len(parts) - 1, mask=_mask(rng))
            if rng.random() < 0.3:
                out += frame(rng.choice((PING, PONG)), b"p", mask=_mask(rng))
        return out
    return frame(opcode, body, mask=_mask(rng), minimal=rng.random() > 0.02)


def _rule_breaker(rng: random.Random) -> bytes:
    return rng.choice([
        lambda: frame(TEXT, b"x", rsv=rng.randint(1, 7)),
        lambda: frame(TEXT, b"x", mask=None),
        lambda: frame(rng.choice((3, 4, 5, 6, 7)), b"x"),
        lambda: frame(rng.choice((11, 12, 13, 14, 15)), b"x"),
        lambda: frame(0, b"x"),
        lambda: frame(PING, b"x", fin=False),
        lambda: frame(PING, b"x" * 126),
        lambda: frame(CLOSE, b"x"),
        lambda: frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
        lambda: bytes((0x81, 0xFF)) + b"\x80" + b"\x00" * 7 + b"\x00" * 4,
    ])()


def stream(rng: random.Random) -> bytes:
    """One client stream: a few messages, perhaps a broken rule, perhaps corrupted, perhaps a close."""
    out = b"".join(_message(rng) for _ in range(rng.randint(1, 8)))
    if rng.random() < 0.25:
        out += _rule_breaker(rng) + _message(rng)
    if rng.random() < 0.5:
        out += frame(CLOSE, _close_payload(rng), mask=_mask(rng))
    if rng.random() < 0.3 and out:
        data = bytearray(out)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.5:
                data[at] = rng.randrange(256)
            elif action < 0.75:
                del data[at]
            else:
                data.insert(at, rng.randrange(256))
        if rng.random() < 0.3:
            del data[rng.randrange(len(data) + 1):]
        out = bytes(data)
    return out


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """data as a client's reads could split it: whole, byte by byte, or at random cuts."""
    how = rng.random()
    if how < 0.3 or not data:
        return [data]
    if how < 0.4:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data) + 1), min(len(data), rng.randint(1, 12))))
    return [data[a:b] for a, b in zip([0, *cuts], cuts)] + ([data[cuts[-1]:]] if cuts[-1] < len(data) else [])


# ---- the readers' events, in one form ------------------------------------------------------------

def close_event(payload: bytes) -> tuple:
    """A close frame's payload as Autobahn hands it to onCloseFrame: (code or None, reason bytes or None)."""
    code = struct.unpack("!H", payload[:2])[0] if len(payload) > 1 else None
    return ("close", code, payload[2:] if len(payload) > 2 else None)


def reader_events(reader, pieces: list[bytes]) -> list[tuple]:
    """Everything a FrameReader reports for pieces, up to its first error or close frame."""
    out = []
    for piece in pieces:
        events = reader.feed(piece)
        for kind, payload in zip(events[::2], events[1::2]):
            if kind == ERROR:
                out.append(("error", payload[0]))
                return out
            if kind == CLOSE:
                out.append(close_event(payload))
                return out
            out.append(("message", kind, payload) if kind in (TEXT, BINARY) else ("control", kind, payload))
    return out


class _Recording(WebSocketServerProtocol):
    # compared up to the first error or close: what Autobahn does after it is not recorded
    def onMessage(self, payload, isBinary):
        if not self.done:
            self.events.append(("message", BINARY if isBinary else TEXT, payload))

    def onPing(self, payload):
        if not self.done:
            self.events.append(("control", PING, payload))

    def onPong(self, payload):
        if not self.done:
            self.events.append(("control", PONG, payload))

    def onCloseFrame(self, code, reasonRaw):
        if not self.done:
            self.events.append(("close", code, reasonRaw))
            self.done = True
        return super().onCloseFrame(code, reasonRaw)

    def _fail_connection(self, code=1001, reason="going away"):
        if not self.done:
            self.events.append(("error", code))
            self.done = True
        return super()._fail_connection(code, reason)


class TolerantTransport(StringTransport):
    def unregisterProducer(self):
        self.producer = None  # Autobahn unregisters on every drop, registered or not


UPGRADE = (b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def autobahn_events(pieces: list[bytes], max_frame: int = MAX_FRAME, max_message: int = MAX_MESSAGE) -> list[tuple]:
    """What Autobahn's own parser reports for pieces, up to its first error or close frame."""
    factory = WebSocketServerFactory("ws://localhost")
    factory.protocol = _Recording
    factory.setProtocolOptions(maxFramePayloadSize=max_frame, maxMessagePayloadSize=max_message, failByDrop=False,
                               autoPingInterval=0, openHandshakeTimeout=0, closeHandshakeTimeout=0)
    protocol = factory.buildProtocol(None)
    protocol.events, protocol.done = [], False
    protocol.makeConnection(TolerantTransport())
    protocol.dataReceived(UPGRADE)
    assert protocol.state == protocol.STATE_OPEN
    for piece in pieces:
        if protocol.done or protocol.state == protocol.STATE_CLOSED:
            break
        protocol.dataReceived(piece)
    return protocol.events
