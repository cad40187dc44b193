"""
Bus messages on the wire between nodes: one tag byte, then the message's own bytes.

A Frame crosses as its payload. Other message types register a tag with an encoder and a decoder;
a message of a type nobody registered stays on its own node (and is logged once per type). Every
tag is in TAGS, the one table of them: a tag not in it, or registered twice, is refused at import.
"""

from __future__ import annotations

from typing import Any, Callable

from relayd.ws.frames import Frame

_TEXT, _BINARY = b"t", b"b"

TAGS = {
    _TEXT: "a text Frame",
    _BINARY: "a binary Frame",
    b"j": "a pipe's message (relayd.backplane.pipes.PipeMessage)",
    b"g": "a carparty server that left (relayd.apps.carparty.core.ServerGone)",
    b"w": "a wikispeedruns roster (relayd.apps.wikispeedruns.core.RosterUpdate)",
    b"k": "a clicker device taken by another connection (relayd.apps.clicker.cluster.Taken)",
    b"c": "a clicker device's event (relayd.apps.clicker.core.Event)",
}
_encoders: dict[type, tuple[bytes, Callable[[Any], bytes]]] = {}
_decoders: dict[bytes, Callable[[bytes], Any]] = {
    _TEXT: lambda body: Frame(body, False),
    _BINARY: lambda body: Frame(body, True),
}


class Unrelayable(TypeError):
    pass


def register(tag: bytes, kind: type, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]) -> None:
    if tag in (_TEXT, _BINARY) or tag not in TAGS:
        raise ValueError(f"tag {tag!r} is not one of relayd.backplane.codec.TAGS for messages")
    if tag in _decoders or kind in _encoders:
        raise ValueError(f"tag {tag!r} ({TAGS[tag]}) or type {kind.__name__} is registered twice")
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
