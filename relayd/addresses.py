"""Client addresses in one spelling: IPv4-mapped IPv6 (::ffff:192.0.2.1) is the IPv4 address it maps."""

from __future__ import annotations

import ipaddress


def parse_ip(host: str | None):
    """The ipaddress object for host (an IPv4-mapped IPv6 address as its IPv4 address), or None."""
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address
