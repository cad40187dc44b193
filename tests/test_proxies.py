"""
Reverse proxies: which client address relayd believes, and that per-address caps count clients,
not the proxy they share. In memory, through the factory the listener's endpoint is given.
"""

import ipaddress
import struct

from twisted.trial.unittest import TestCase

from relayd.web.proxy import forwarded_client
from tests.support import Harness, make_config

ECHO = "[app:testee]\nlisteners = main\npath = /echo\n"
TRUSTING = """
[relayd]
state_dir = {state_dir}
[listener:main]
endpoint = tcp:0:interface=127.0.0.1
trusted_proxies = 127.0.0.1, 10.0.0.0/8
max_connections_per_address = 3
[limits]
auto_ping_interval = 0
{limits}
"""
HAPROXY = TRUSTING.replace("endpoint = tcp:0:", "endpoint = haproxy:tcp:0:")

NETWORKS = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))


def harness(base=TRUSTING):
    return Harness(make_config(ECHO, base=base)).start()


def proxy_v1(source: str, port: int = 4711) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 8080\r\n".encode()


def proxy_v2(source: str, port: int = 4711) -> bytes:
    addresses = ipaddress.ip_address(source).packed + ipaddress.ip_address("127.0.0.1").packed
    body = addresses + struct.pack("!HH", port, 8080)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


class ForwardedForTests(TestCase):
    def test_right_most_untrusted_hop_is_the_client(self):
        """Hops appended by trusted proxies are skipped; what the client wrote to the left is not believed."""
        self.assertEqual(forwarded_client("127.0.0.1", [b"1.1.1.1, 203.0.113.9, 10.1.2.3"], NETWORKS), "203.0.113.9")
        self.assertEqual(forwarded_client("127.0.0.1", [b"1.1.1.1", b"203.0.113.9"], NETWORKS), "203.0.113.9")

    def test_untrusted_peer_is_its_own_client(self):
        """From a peer that is not a trusted proxy, X-Forwarded-For changes nothing."""
        self.assertEqual(forwarded_client("198.51.100.7", [b"203.0.113.9"], NETWORKS), "198.51.100.7")

    def test_garbage_hop_is_not_believed(self):
        """A hop that is not an address stops the walk: the last address a trusted proxy wrote is the client."""
        self.assertEqual(forwarded_client("127.0.0.1", [b"<script>, 10.9.9.9"], NETWORKS), "10.9.9.9")
        self.assertEqual(forwarded_client("127.0.0.1", [b"203.0.113.9:4711"], NETWORKS), "203.0.113.9")

    def test_websocket_peer_is_the_forwarded_client(self):
        """Through a trusted proxy the connection's client address and log peer are the forwarded client."""
        h = harness()
        c = h.ws("/echo", headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertTrue(c.opened)
        ws = h.service.listeners["main"].tracker.websockets()[0]
        self.assertEqual(ws.client_address, "203.0.113.9")
        self.assertIn("203.0.113.9", ws.peer)

    def test_forwarded_for_ignored_without_trusted_proxies(self):
        """With no trusted_proxies the TCP peer is the client, whatever the header says."""
        h = Harness(make_config(ECHO)).start()
        c = h.ws("/echo", headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertTrue(c.opened)
        self.assertEqual(h.service.listeners["main"].tracker.websockets()[0].client_address, "127.0.0.1")

    def test_per_address_cap_counts_clients_behind_the_proxy(self):
        """Many clients through one proxy all connect; the cap applies to each forwarded client address."""
        h = harness()
        clients = [h.ws("/echo", headers={"X-Forwarded-For": f"203.0.113.{n}"}) for n in range(20)]
        self.assertTrue(all(c.opened for c in clients))
        same = [h.ws("/echo", headers={"X-Forwarded-For": "198.51.100.1"}) for _ in range(4)]
        self.assertEqual([c.opened for c in same], [True, True, True, False])
        self.assertEqual(same[3].response, None)
        self.assertEqual(len(h.service.listeners["main"].tracker), 23)

    def test_direct_clients_still_capped(self):
        """A client that is not a proxy is capped at accept, as before."""
        h = harness()
        raws = [h.raw(host="198.51.100.2") for _ in range(4)]
        self.assertEqual([r is not None for r in raws], [True, True, True, False])


class ProxyProtocolTests(TestCase):
    def test_v1_header_from_trusted_proxy(self):
        """A PROXY v1 header from a trusted proxy names the client."""
        h = harness()
        c = h.ws("/echo", preface=proxy_v1("203.0.113.44"))
        self.assertTrue(c.opened)
        self.assertEqual(h.service.listeners["main"].tracker.websockets()[0].client_address, "203.0.113.44")

    def test_v2_header_from_trusted_proxy(self):
        """A PROXY v2 header from a trusted proxy names the client."""
        h = harness()
        c = h.ws("/echo", preface=proxy_v2("203.0.113.45"))
        self.assertTrue(c.opened)
        self.assertEqual(h.service.listeners["main"].tracker.websockets()[0].client_address, "203.0.113.45")

    def test_header_from_untrusted_peer_is_not_believed(self):
        """A PROXY line from anyone else is just bad HTTP: 400, and no connection opens."""
        h = harness()
        c = h.ws("/echo", preface=proxy_v1("203.0.113.46"), host="198.51.100.3")
        self.assertFalse(c.opened)
        self.assertEqual(h.service.listeners["main"].tracker.websockets(), [])

    def test_cap_counts_proxy_protocol_clients(self):
        """The per-address cap applies to the address the PROXY header names."""
        h = harness()
        opened = [h.ws("/echo", preface=proxy_v2("203.0.113.50")).opened for _ in range(4)]
        self.assertEqual(opened, [True, True, True, False])
        others = [h.ws("/echo", preface=proxy_v1(f"203.0.113.{60 + n}")).opened for n in range(10)]
        self.assertTrue(all(others))

    def test_haproxy_listener_requires_the_header(self):
        """On a haproxy: listener a connection without a header is dropped, and untrusted peers are refused."""
        h = harness(HAPROXY)
        self.assertTrue(h.ws("/echo", preface=proxy_v1("203.0.113.70")).opened)
        self.assertFalse(h.ws("/echo").opened)
        self.assertIsNone(h.raw(host="198.51.100.4"))
