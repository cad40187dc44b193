"""
A `redis://` or `rediss://` URL as a Twisted client endpoint plus what to send once connected.

    redis://[[user]:password@]host[:port][/db]
    rediss://...              TLS, the server's certificate checked against the system trust store
    rediss://...?ca=/etc/relayd/redis-ca.pem    ... or against this CA bundle
"""

from __future__ import annotations

from urllib.parse import unquote

import attr
import hyperlink
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates


class BadRedisURL(ValueError):
    pass


@attr.s(frozen=True, auto_attribs=True)
class RedisTarget:
    host: str
    port: int
    tls: bool
    db: int | None
    username: str | None
    password: str | None = attr.ib(repr=False)
    ca: str | None

    def endpoint(self, reactor, timeout: float = 10):
        plain = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if not self.tls:
            return plain
        trust = None
        if self.ca is not None:
            with open(self.ca, "rb") as f:
                trust = trustRootFromCertificates([Certificate.loadPEM(f.read())])
        return wrapClientTLS(optionsForClientTLS(self.host, trustRoot=trust), plain)

    def describe(self) -> str:
        """The URL without its credentials, for logs and the readiness page."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db or 0}"


def parse_redis_url(text: str) -> RedisTarget:
    try:
        url = hyperlink.URL.from_text(text)
    except Exception as e:
        raise BadRedisURL(f"not a URL: {e}") from None
    if url.scheme not in ("redis", "rediss"):
        raise BadRedisURL("the scheme must be redis:// or rediss://")
    if not url.host:
        raise BadRedisURL("the URL names no host")
    db = None
    segments = [s for s in url.path if s]
    if len(segments) > 1 or (segments and not segments[0].isdigit()):
        raise BadRedisURL("the path must be a database number, like /0")
    if segments:
        db = int(segments[0])
    username, _, password = url.userinfo.partition(":")
    ca = url.get("ca")
    if ca and url.scheme != "rediss":
        raise BadRedisURL("ca= only applies to rediss://")
    unknown = {name for name, _ in url.query} - {"ca"}
    if unknown:
        raise BadRedisURL(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    return RedisTarget(
        host=url.host,
        port=url.port or 6379,
        tls=url.scheme == "rediss",
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ca=ca[0] if ca else None,
    )
