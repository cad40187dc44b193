"""
Listener endpoint strings.

A listener is a Twisted server endpoint string (`tcp:`, `ssl:`, `unix:`, `systemd:`, any of them behind
`haproxy:` for the PROXY protocol). relayd does TLS itself (reloadable certificates, TLS 1.2 minimum,
ALPN that never picks h2), so an `ssl:` string is split into the plain stream endpoint it listens on
and the files its TLS layer serves. The result is parsed by Twisted's own endpoint parser, as start-up
will, so a misspelt keyword fails the check and not the start.
"""

from __future__ import annotations

import re

import attr
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from relayd.config.schema import BadValue

SUPPORTED = ("tcp", "ssl", "unix", "systemd")  # and haproxy: in front of any of them
DEFAULT_BACKLOG = 1024
_TLS_KEYS = {"privateKey": "key", "certKey": "cert", "extraCertChain": "chain"}
_TLS_IGNORED = ("dhParameters", "sslmethod")


@attr.s(frozen=True, auto_attribs=True)
class TLSFiles:
    key: str
    cert: str
    chain: str | None = None


@attr.s(frozen=True, auto_attribs=True)
class Endpoint:
    """What to listen on: a Twisted endpoint description, and TLS files when it is a TLS listener."""

    description: str
    kind: str
    tls: TLSFiles | None = None
    proxy_protocol: bool = False  # haproxy:, every connection starts with a PROXY header


def split_description(description: str) -> list[str]:
    """Split an endpoint string on unescaped colons, keeping backslash escapes as Twisted reads them."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(char)
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    out = []
    chars = iter(value)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


def parse_endpoint(description: str, tls_keys: dict[str, str | None] | None = None) -> Endpoint:
    """
    Validate an endpoint string and normalise it: a listen backlog of DEFAULT_BACKLOG unless given, and
    `ssl:` rewritten to `tcp:` with its certificate options moved to TLSFiles.
    """
    parts = split_description(description.strip())
    kind = parts[0].lower()
    if kind == "haproxy":
        inner = parse_endpoint(":".join(parts[1:]), tls_keys)
        return attr.evolve(inner, description=f"haproxy:{inner.description}", proxy_protocol=True)
    if kind not in SUPPORTED:
        raise BadValue(f"{parts[0]!r} endpoints are not supported (use one of {', '.join(SUPPORTED)})")
    positional = [p for p in parts[1:] if "=" not in p]
    keywords: dict[str, str] = {}
    for part in parts[1:]:
        if "=" in part:
            name, _, value = part.partition("=")
            keywords[name] = value
    tls_keys = dict(tls_keys or {})

    if kind in ("tcp", "ssl"):
        port = positional[0] if positional else keywords.get("port")
        if port is None:
            raise BadValue(f"{description!r} names no port")
        try:
            if not 0 <= int(port) <= 65535:
                raise ValueError
        except ValueError:
            raise BadValue(f"{port!r} is not a port number") from None
    if kind == "unix" and not (positional or "address" in keywords):
        raise BadValue(f"{description!r} names no socket path")
    if kind == "systemd" and "index" not in keywords and "name" not in keywords:
        raise BadValue(f"{description!r} needs index= or name= of the inherited socket")

    if kind == "ssl":
        for option, name in _TLS_KEYS.items():
            if option in keywords:
                tls_keys[name] = _unescape(keywords.pop(option))
        for ignored in _TLS_IGNORED:
            keywords.pop(ignored, None)
        if not tls_keys.get("cert"):
            raise BadValue(f"{description!r}: an ssl listener needs certKey= (or tls_cert)")
        tls_keys.setdefault("key", tls_keys["cert"])
        kind_out = "tcp"
    else:
        kind_out = kind

    if kind in ("tcp", "ssl", "unix") and "backlog" not in keywords:
        keywords["backlog"] = str(DEFAULT_BACKLOG)

    rebuilt = ":".join([kind_out, *positional, *(f"{k}={v}" for k, v in keywords.items())])
    if kind != "systemd":  # its sockets are inherited at start: there is nothing to parse them against now
        _parse_as_twisted_does(rebuilt)
    tls = None
    if tls_keys.get("cert"):
        tls = TLSFiles(key=tls_keys.get("key") or tls_keys["cert"], cert=tls_keys["cert"], chain=tls_keys.get("chain"))
    return Endpoint(description=rebuilt, kind=kind, tls=tls)


_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


def _parse_as_twisted_does(description: str) -> None:
    try:
        serverFromString(MemoryReactor(), description)
    except TypeError as e:
        unexpected = _UNEXPECTED.search(str(e))
        if unexpected is None:
            raise BadValue(f"{description!r}: {e}") from None
        raise BadValue(f"{description!r}: unknown option {unexpected.group(1)!r}") from None
    except (ValueError, KeyError, IndexError) as e:
        raise BadValue(f"{description!r} is not a valid endpoint: {e}") from None
