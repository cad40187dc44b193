"""
Reverse proxies in front of relayd, and the client address behind them.

A listener's `trusted_proxies` names the proxies it believes. From one of them:
- a connection may begin with a PROXY protocol header, v1 or v2 (parsed by Twisted's HAProxy
  wrapper); on a `haproxy:` listener every connection must;
- an HTTP request's client is the right-most address of X-Forwarded-For that is not itself a trusted
  proxy (each proxy appends the address it was reached from, so hops to the left of the first
  untrusted one were written by the client and prove nothing).
From anyone else both are ignored and the TCP peer is the client.

A trusted proxy's connections are not counted per address when they are accepted: the address that
counts is the client's, known once the request head is read (relayd.web.tracker.Slot.bind).
"""

from __future__ import annotations

from typing import Iterable

from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory

from relayd.addresses import parse_ip
from relayd._internals import PROXY_HEADER_PROBE, PROXY_V1_SIGNATURE, PROXY_V2_SIGNATURE, HAProxyProtocolWrapper

_log = Logger()

Networks = tuple  # of ipaddress.IPv4Network / IPv6Network


def normal_address(host: str) -> str:
    """An IP address in one spelling (relayd.addresses); anything else as it is."""
    address = parse_ip(host)
    return host if address is None else str(address)


def is_trusted(host: str | None, networks: Networks) -> bool:
    address = parse_ip(host) if networks else None
    return address is not None and any(address.version == net.version and address in net for net in networks)


def forwarded_client(peer: str, forwarded_for: Iterable[bytes], networks: Networks) -> str:
    """The client of a request that arrived from `peer` carrying these X-Forwarded-For header values."""
    peer = normal_address(peer)
    if not is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.decode("latin-1").split(",")]
    hops = [hop for hop in hops if hop]
    client = peer
    for hop in reversed(hops):
        address = parse_ip(_strip_port(hop))
        if address is None:
            # a trusted proxy appends an address; anything else came from the client and is not believed
            return client
        client = str(address)
        if not is_trusted(client, networks):
            return client
    return client


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # [2001:db8::1]:4711
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:  # 203.0.113.9:4711
        return hop.partition(":")[0]
    return hop


def request_client(request, networks: Networks) -> str:
    """The client address of a twisted.web request (behind a PROXY header, its source already)."""
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    if host is None:
        return "local"
    return forwarded_client(host, request.requestHeaders.getRawHeaders(b"x-forwarded-for", ()), networks)


def client_of(request) -> str:
    """The client address of a request on a relayd listener, believing the listener's trusted proxies."""
    site = getattr(request.channel, "site", None)
    return request_client(request, getattr(site, "trusted_proxies", ()))


def public_base(request, public_url: str) -> str:
    """
    The http(s) base URL clients reach this daemon at: the configured public_url, else the address
    of the listener the request arrived on. Never the Host header, which the client writes.
    """
    if public_url:
        return public_url.rstrip("/")
    host = request.getHost()
    address = getattr(host, "host", "localhost")
    if ":" in address:
        address = f"[{address}]"
    port = getattr(host, "port", None)
    secure = request.isSecure()
    default = 443 if secure else 80
    return f"{'https' if secure else 'http'}://{address}{'' if port in (None, default) else f':{port}'}"


class RefusingWrapper:
    """A WrappingFactory that lets its wrapped factory refuse a connection (buildProtocol -> None)."""

    def buildProtocol(self, addr):
        inner = self.wrappedFactory.buildProtocol(addr)
        return None if inner is None else self.protocol(self, inner)


class ProxyHeader(HAProxyProtocolWrapper):
    """
    Reads a PROXY header when a trusted proxy sends one; passes everything else through untouched.

    Without `required`, a trusted proxy may also connect without a header (health checks, or an HTTP
    proxy that sends X-Forwarded-For instead), and an untrusted peer's bytes are never read as one:
    a PROXY line from it reaches the HTTP parser and is refused there as a bad request.
    """

    _mode = None  # None undecided, "plain" or "header"
    _pending = b""

    def dataReceived(self, data: bytes) -> None:
        mode = self._mode
        if mode == "plain":
            self.wrappedProtocol.dataReceived(data)
            return
        if mode == "header":
            super().dataReceived(data)
            return
        data = self._pending + data
        self._pending = b""
        factory = self.factory
        peer = getattr(self.transport.getPeer(), "host", None)
        if not is_trusted(peer, factory.networks):
            self._mode = "plain"
            self.wrappedProtocol.dataReceived(data)
            return
        for signature in (PROXY_V1_SIGNATURE, PROXY_V2_SIGNATURE):
            if data.startswith(signature) or signature.startswith(data):
                if len(data) < PROXY_HEADER_PROBE and not data.endswith(b"\n"):
                    self._pending = data  # wait for enough to tell the two versions apart
                    return
                self._mode = "header"
                super().dataReceived(data)
                return
        if factory.required:
            factory.refused("no_proxy_header", peer)
            self.loseConnection()
            return
        self._mode = "plain"
        self.wrappedProtocol.dataReceived(data)


class ProxyHeaderFactory(RefusingWrapper, WrappingFactory):
    protocol = ProxyHeader
    noisy = False

    def __init__(self, wrapped, networks: Networks, *, required: bool, on_refused=lambda reason: None):
        super().__init__(wrapped)
        self.networks = networks
        self.required = required
        self._on_refused = on_refused

    def refused(self, reason: str, peer) -> None:
        self._on_refused(reason)
        _log.info("refused a connection from {peer}: {reason}", peer=peer, reason=reason)
