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
    __slots__ = ("payload", "is_binary", "_wire")

    def __init__(self, payload: bytes, is_binary: bool = False):
        self.payload = payload
        self.is_binary = is_binary
        self._wire: bytes | None = None

    @classmethod
    def text(cls, text: str) -> "Frame":
        return cls(text.encode("utf-8"), False)

    @classmethod
    def json(cls, value: Any) -> "Frame":
        return cls(jsonutil.dumps(value), False)

    @property
    def wire(self) -> bytes:
        """The complete single-fragment frame as written to the socket."""
        if self._wire is None:
            self._wire = _header(len(self.payload), self.is_binary) + self.payload
        return self._wire

    def __len__(self) -> int:
        return len(self.wire)

    def __repr__(self) -> str:
        kind = "binary" if self.is_binary else "text"
        return f"<Frame {kind} {self.payload[:60]!r}>"
