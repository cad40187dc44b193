"""
The inbound WebSocket frame reader in pure Python: the twin of the compiled one in
relayd/ws/_cwire.c, with the same API and the same decisions, used where no C compiler built it.

A reader is sans-IO: feed() takes whatever bytes a read brought and returns a flat list of events
for everything they complete, `[kind, payload, kind, payload, ...]`:

- TEXT (1) or BINARY (2): a whole message, its fragments joined and unmasked;
- CLOSE (8), PING (9), PONG (10): a control frame's payload (close: code and reason, unparsed);
- ERROR (-1): `(close code, reason)` for the first violation: 1002 for framing (RSV bits, an
  unmasked frame, reserved opcodes, fragmentation out of order, a control frame fragmented or
  over 125 bytes, a length not minimally encoded), 1009 for a frame or message over its limit,
  1007 for invalid UTF-8 in a text message, found as soon as the bytes that make it invalid arrive.

After an error the reader keeps framing: it reads and drops every frame but a close frame, so
the peer's answer to relayd's close is still read (a close frame of a size no close frame may
have, such as the one that caused the error, is delivered with an empty payload); after a close
frame it reads nothing more.
Nothing of a message over the limit is kept. Checks run in the order Autobahn's parser runs
them, so both report the same first error (tests/test_wire_reader.py).
"""

from __future__ import annotations

import codecs

ERROR = -1
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10

_HEADER, _PAYLOAD, _DONE = 0, 1, 2
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


def unmask(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """data XOR the 4-byte mask, starting `offset` bytes into the mask."""
    n = len(data)
    if not n:
        return b""
    key = (mask[offset:] + mask[:offset]) * (n // 4 + 1)
    return (int.from_bytes(data, "big") ^ int.from_bytes(key[:n], "big")).to_bytes(n, "big")


class Utf8Check:
    """
    Incremental UTF-8 validation that fails where Autobahn's DFA fails: at the first byte that
    cannot continue a valid text. CPython's decoder waits one byte longer on a surrogate's
    first two bytes (ED A0..BF), so those are checked here.
    """

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _Utf8Decoder()

    def update(self, data: bytes) -> bool:
        try:
            self._decoder.decode(data, False)
        except UnicodeDecodeError:
            return False
        pending = self._decoder.getstate()[0]
        return not (len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0)

    def complete(self) -> bool:
        return not self._decoder.getstate()[0]


class FrameReader:
    __slots__ = (
        "max_frame", "max_message", "require_mask", "validate_utf8",
        "_state", "failed", "_header", "_opcode", "_fin", "_mask", "_mask_offset", "_remaining",
        "_discard", "_in_message", "_message_opcode", "_message_length", "_chunks", "_utf8", "_control",
        "_control_keep",
    )

    def __init__(self, max_frame: int = 0, max_message: int = 0, require_mask: bool = True,
                 validate_utf8: bool = True):
        self.max_frame = max_frame
        self.max_message = max_message
        self.require_mask = require_mask
        self.validate_utf8 = validate_utf8
        self._state = _HEADER
        self.failed = False
        self._header = b""
        self._opcode = 0
        self._fin = True
        self._mask = None
        self._mask_offset = 0
        self._remaining = 0
        self._discard = False
        self._in_message = False
        self._message_opcode = 0
        self._message_length = 0
        self._chunks: list[bytes] = []
        self._utf8: Utf8Check | None = None
        self._control: list[bytes] = []
        self._control_keep = True

    @property
    def buffered(self) -> int:
        """Bytes held for a message, a control frame or a header not yet complete."""
        return sum(map(len, self._chunks)) + sum(map(len, self._control)) + len(self._header)

    def feed(self, data: bytes) -> list:
        events: list = []
        pos, n = 0, len(data)
        while self._state != _DONE:
            if self._state == _HEADER:
                if pos >= n:
                    break
                header = self._header
                if len(header) < 2:
                    take = 2 - len(header)
                    header += data[pos:pos + take]
                    pos += take
                    if len(header) < 2:
                        self._header = header
                        break
                    self._check_first_bytes(header, events)
                need = _header_length(header)
                if len(header) < need:
                    take = need - len(header)
                    header += data[pos:pos + take]
                    pos += take
                    if len(header) < need:
                        self._header = header
                        break
                self._header = b""
                length = self._length(header, events)
                self._begin_frame(header, length, events)
                self._state = _PAYLOAD
            take = min(n - pos, self._remaining)
            if take > 0:
                self._take(data[pos:pos + take], events)
                pos += take
            if self._remaining:
                break
            self._end_frame(events)
        return events

    # ---- header ------------------------------------------------------------------------------

    def _fail(self, events: list, code: int, reason: str) -> None:
        self._discard = True
        if self.failed:
            return
        self.failed = True
        self._in_message = False
        self._chunks = []
        events += (ERROR, (code, reason))

    def _check_first_bytes(self, header: bytes, events: list) -> None:
        b0, b1 = header[0], header[1]
        op, len1 = b0 & 0x0F, b1 & 0x7F
        self._fin = bool(b0 & 0x80)
        self._opcode = op
        if b0 & 0x70:
            return self._fail(events, 1002, "RSV bits set and no extension negotiated")
        if self.require_mask and not b1 & 0x80:
            return self._fail(events, 1002, "unmasked client-to-server frame")
        if op > 7:
            if not self._fin:
                return self._fail(events, 1002, "fragmented control frame")
            if len1 > 125:
                return self._fail(events, 1002, "control frame with payload length > 125 octets")
            if op not in (CLOSE, PING, PONG):
                return self._fail(events, 1002, "control frame using reserved opcode")
            if op == CLOSE and len1 == 1:
                return self._fail(events, 1002, "close frame with payload length 1")
        else:
            if op > BINARY:
                return self._fail(events, 1002, "data frame using reserved opcode")
            if not self._in_message and op == CONTINUATION:
                return self._fail(events, 1002, "continuation frame outside a fragmented message")
            if self._in_message and op != CONTINUATION:
                return self._fail(events, 1002, "new data frame inside a fragmented message")

    def _length(self, header: bytes, events: list) -> int:
        len1 = header[1] & 0x7F
        if len1 == 126:
            length = int.from_bytes(header[2:4], "big")
            if length < 126:
                self._fail(events, 1002, "frame length not minimally encoded")
        elif len1 == 127:
            length = int.from_bytes(header[2:10], "big")
            if length >> 63:
                self._fail(events, 1002, "frame length of 2^63 or more")
            elif length < 65536:
                self._fail(events, 1002, "frame length not minimally encoded")
        else:
            length = len1
        return length

    def _begin_frame(self, header: bytes, length: int, events: list) -> None:
        op = self._opcode
        self._discard = self.failed
        self._mask = header[-4:] if header[1] & 0x80 else None
        self._mask_offset = 0
        self._remaining = length
        if op > 7:
            self._control = []
            self._control_keep = length <= 125 and (op != CLOSE or length != 1)
            # after an error only a close frame still matters, whatever its form: it ends the closing
            # handshake; one of a size no close frame may have is delivered empty
            if self.failed and op == CLOSE:
                self._discard = False
            return
        if self._discard:
            return
        if not self._in_message:
            self._in_message = True
            self._message_opcode = op
            self._message_length = 0
            self._chunks = []
            self._utf8 = Utf8Check() if op == TEXT and self.validate_utf8 else None
        self._message_length += length
        if self.max_message and self._message_length > self.max_message:
            return self._fail(events, 1009, "message exceeds the size limit")
        if self.max_frame and length > self.max_frame:
            return self._fail(events, 1009, "frame exceeds the size limit")

    # ---- payload ------------------------------------------------------------------------------

    def _take(self, chunk: bytes, events: list) -> None:
        self._remaining -= len(chunk)
        if self._discard:
            return
        if self._mask is not None:
            chunk = unmask(chunk, self._mask, self._mask_offset)
            self._mask_offset = (self._mask_offset + len(chunk)) & 3
        if self._opcode > 7:
            if self._control_keep:
                self._control.append(chunk)
            return
        self._chunks.append(chunk)
        if self._utf8 is not None and not self._utf8.update(chunk):
            self._fail(events, 1007, "invalid UTF-8 in a text message")

    def _end_frame(self, events: list) -> None:
        self._state = _HEADER
        if self._discard:
            self._discard = self.failed
            return
        op = self._opcode
        if op > 7:
            events += (op, b"".join(self._control))
            self._control = []
            if op == CLOSE:
                self._state = _DONE  # nothing after a close frame is read
            return
        if not self._fin:
            return
        if self._utf8 is not None and not self._utf8.complete():
            return self._fail(events, 1007, "text message ends inside a UTF-8 sequence")
        self._in_message = False
        chunks, self._chunks = self._chunks, []
        events += (self._message_opcode, chunks[0] if len(chunks) == 1 else b"".join(chunks))


def _header_length(header: bytes) -> int:
    len1 = header[1] & 0x7F
    n = 6 if header[1] & 0x80 else 2
    if len1 == 126:
        return n + 2
    if len1 == 127:
        return n + 8
    return n
