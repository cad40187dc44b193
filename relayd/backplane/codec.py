"""
Bus messages on the wire between nodes: one tag byte, then the message's own bytes.

A Frame crosses as its payload. Other message types register a tag with an encoder and a decoder;
a message of a type nobody registered stays on its own node (and is logged once per type).
"""

from __future__ import annotations

from typing import Any, Callable

from relayd.ws.frames import Frame

_TEXT, _BINARY = b"t", b"b"
_encoders: dict[type, tuple[bytes, Callable[[Any], bytes]]] = {}
_decoders: dict[bytes, Callable[[bytes], Any]] = {
    _TEXT: lambda body: Frame(body, False),
    _BINARY: lambda body: Frame(body, True),
}


class Unrelayable(TypeError):
    pass


def register(tag: bytes, kind: type, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]) -> None:
    if len(tag) != 1 or tag in (_TEXT, _BINARY):
        raise ValueError(f"tag {tag!r} must be one byte and not one of Frame's")
    _encoders[kind] = (tag, encode)
    _decoders[tag] = decode


def encode(message: Any) -> bytes:
    if type(message) is Frame:
        return (_BINARY if message.is_binary else _TEXT) + message.payload
    entry = _encoders.get(type(message))
    if entry is None:
        raise Unrelayable(type(message).__name__)
    tag, encoder = entry
    return tag + encoder(message)


def decode(data: bytes) -> Any:
    """The message, or ValueError for bytes no node of this version writes."""
    decoder = _decoders.get(data[:1])
    if decoder is None:
        raise ValueError(f"unknown bus message tag {data[:1]!r}")
    return decoder(data[1:])
