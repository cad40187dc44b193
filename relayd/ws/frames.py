"""
Outbound WebSocket frames, encoded once however many connections they go to.

A server frame is unmasked and (without permessage-deflate, which relayd does not negotiate)
identical for every receiver, so a Frame is built once, handed through the bus, and its wire bytes
written to each receiver's transport.
"""

from __future__ import annotations

import struct
from typing import Any

from relayd import jsonutil


def _header(length: int, is_binary: bool) -> bytes:
    first = 0x82 if is_binary else 0x81
    if length <= 125:
        return bytes((first, length))
    if length <= 0xFFFF:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


class Frame:
    """
    One outbound message. Once its wire bytes are built the payload is not kept beside them (a
    queued 1 MiB frame would otherwise be held twice); `payload` is then read back out of the wire.
    `queued` counts the send queues holding it, so the process-wide backlog counts it once
    (relayd.ws.backlog).
    """

    __slots__ = ("_payload", "is_binary", "_wire", "_start", "queued")

    def __init__(self, payload: bytes, is_binary: bool = False):
        self._payload = payload
        self.is_binary = is_binary
        self._wire: bytes | None = None
        self._start = 0
        self.queued = 0

    @classmethod
    def text(cls, text: str) -> "Frame":
        return cls(text.encode("utf-8"), False)

    @classmethod
    def json(cls, value: Any) -> "Frame":
        return cls(jsonutil.dumps(value), False)

    @property
    def payload(self) -> bytes:
        if self._wire is None:
            return self._payload
        return self._wire[self._start:]

    @property
    def wire(self) -> bytes:
        """The complete single-fragment frame as written to the socket."""
        if self._wire is None:
            payload = self._payload
            header = _header(len(payload), self.is_binary)
            self._wire = header + payload
            self._start = len(header)
            self._payload = None
        return self._wire

    def __len__(self) -> int:
        return len(self.wire)

    def __repr__(self) -> str:
        kind = "binary" if self.is_binary else "text"
        return f"<Frame {kind} {self.payload[:60]!r}>"
