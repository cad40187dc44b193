"""
The Origin allow-list.

Entries are `*`, or `scheme://host[:port]` where host may start with `*.` and port may be `*`, or
any other value taken literally (`null`, or `Espruino`, which that firmware's `ws` module sends).
An entry without a port means the scheme's default port, so `https://game.example` accepts the
browser origin `https://game.example` (which carries no port) and `https://game.example:443`.
With `*` every Origin is accepted, whatever it is. An Origin that is not a URL matches only an
entry that is literally the same. Requests without an Origin header are not from a browser page and
are not subject to the list. This policy alone decides: Autobahn never sees the header.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attr

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@attr.s(frozen=True, auto_attribs=True)
class _Pattern:
    scheme: str
    host: str
    port: int | None  # None: any port

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


def _split(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            return None
    return scheme, host, port


class OriginPolicy:
    def __init__(self, entries: tuple[str, ...] | list[str]):
        self.any = "*" in entries
        self._literal: set[str] = set()
        self._patterns: list[_Pattern] = []
        for entry in entries:
            if entry == "*":
                continue
            if "://" not in entry:
                self._literal.add(entry)
                continue
            any_port = entry.endswith(":*")
            split = _split(entry[:-2] if any_port else entry.replace("://*.", "://wildcard."))
            if split is None:
                raise ValueError(f"{entry!r} is not an origin (scheme://host[:port])")
            scheme, host, port = split
            if "://*." in entry:
                host = "*." + host[len("wildcard."):]
            self._patterns.append(_Pattern(scheme, host, None if any_port else port))

    def allows(self, origin: str | None) -> bool:
        if origin is None or self.any:
            return True
        origin = origin.strip()
        if origin in self._literal:
            return True
        split = _split(origin) if "://" in origin else None
        if split is None:
            return False
        return any(p.matches(*split) for p in self._patterns)
