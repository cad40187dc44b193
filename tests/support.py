"""
In-memory harness: a RelaydService on a MemoryReactorClock, and clients connected to a listener's
Site through twisted.test.iosim, so whole exchanges (HTTP upgrade, frames, closes, timeouts) run
without sockets and every timeout is driven with Clock.advance.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from relayd import config as relayd_config
from relayd.service import RelaydService
from relayd.store import MemoryStore
from relayd._internals import install_clock

BASE_INI = """
[relayd]
state_dir = {state_dir}
drain_timeout = 10

[listener:main]
endpoint = tcp:0:interface=127.0.0.1

[limits]
auto_ping_interval = 0
{limits}
"""


def make_config(extra: str = "", base: str = BASE_INI, state_dir: str = "unused-state", limits: str = ""):
    """A config from BASE_INI: `limits` lines go into [limits], `extra` sections follow."""
    return relayd_config.loads(base.format(state_dir=state_dir, limits=limits) + extra, path="test.ini")


class Client(WebSocketClientProtocol):
    """A WebSocket client that records what it receives."""

    def __init__(self):
        super().__init__()
        self.messages: list = []
        self.opened = False
        self.closed = False
        self.close_code = None
        self.close_reason = None
        self.response = None

    def onConnect(self, response):
        self.response = response

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.messages.append(payload if isBinary else payload.decode("utf-8"))

    def onClose(self, wasClean, code, reason):
        self.closed = True
        self.close_code = code
        self.close_reason = reason

    # helpers for tests
    def send_text(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"), False)

    def send_json(self, value) -> None:
        self.sendMessage(json.dumps(value).encode("utf-8"), False)

    def json_messages(self) -> list:
        return [json.loads(m) for m in self.messages if isinstance(m, str) and m[:1] in "[{"]

    def take(self) -> list:
        taken, self.messages = self.messages, []
        return taken


class _Preface(Protocol):
    """Writes some bytes before the wrapped client protocol starts (a proxy's PROXY header)."""

    def __init__(self, inner, preface: bytes):
        self.inner = inner
        self.preface = preface

    def makeConnection(self, transport):
        transport.write(self.preface)
        self.inner.makeConnection(transport)

    def dataReceived(self, data):
        self.inner.dataReceived(data)

    def connectionLost(self, reason):
        self.inner.connectionLost(reason)


class RawClient(Protocol):
    """Bytes in, bytes out: for HTTP requests and hostile input."""

    def __init__(self):
        self.data = b""
        self.lost = False

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True

    def response(self):
        head, _, body = self.data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1]) if lines and lines[0] else 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        if headers.get("transfer-encoding") == "chunked":
            body = _dechunk(body)
        return status, headers, body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


class Harness:
    """One service on a memory reactor, and the pumps of every connection made to it."""

    def __init__(self, config=None, extra: str = "", store=None, reactor=None, bus=None):
        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        self.config = config if config is not None else make_config(extra)
        self.store = store if store is not None else MemoryStore()
        self.service = RelaydService(self.config, reactor=self.reactor, store=self.store, bus=bus)
        self.pumps: list[iosim.IOPump] = []
        self._port = 40000

    def start(self):
        self.service.privilegedStartService()
        self.service.startService()
        return self

    def stop(self):
        d = self.service.stopService()
        self.flush()
        return d

    def app(self, name):
        return self.service.apps[name]

    def _connect(self, client_protocol, listener="main", host="127.0.0.1"):
        # what the listener's endpoint is given (the PROXY header reader, when proxies are trusted),
        # except TLS, which these in-memory clients do not speak
        listening = self.service.listeners[listener]
        factory = listening.site if listening.tls is not None else listening.factory
        self._port += 1
        server = factory.buildProtocol(IPv4Address("TCP", host, self._port))
        if server is None:
            return None
        server_transport = iosim.FakeTransport(server, isServer=True, peerAddress=IPv4Address("TCP", host, self._port))
        client_transport = iosim.FakeTransport(client_protocol, isServer=False)
        pump = iosim.connect(server, server_transport, client_protocol, client_transport, greet=False, clock=self.reactor)
        self.pumps.append(pump)
        self.flush()
        return pump

    def ws(self, path="/", query=None, headers=None, listener="main", origin=None, host="127.0.0.1",
           preface: bytes = b""):
        url = f"ws://127.0.0.1:8080{path}"
        if query:
            url += "?" + (query if isinstance(query, str) else urlencode(query))
        factory = WebSocketClientFactory(url, headers=headers or {}, origin=origin, reactor=self.reactor)
        install_clock(factory, self.reactor)
        factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0, closeHandshakeTimeout=0)
        factory.protocol = Client
        client = factory.buildProtocol(None)
        if preface:  # bytes before the handshake: a PROXY protocol header
            client = _Preface(client, preface)
        pump = self._connect(client, listener=listener, host=host)
        client = getattr(client, "inner", client)
        client.pump = pump
        return client

    def one_frame(self, path: str, payload, binary: bool = False):
        """A new client that sends one frame (text, or binary bytes) and waits for what follows."""
        client = self.ws(path)
        if binary:
            client.sendMessage(payload, True)
        else:
            client.send_text(payload)
        self.flush()
        return client

    def raw(self, data: bytes = b"", listener="main", host="127.0.0.1"):
        client = RawClient()
        pump = self._connect(client, listener=listener, host=host)
        if pump is None:
            return None
        client.pump = pump
        if data:
            client.transport.write(data)
            self.flush()
        return client

    def http(self, method: str, path: str, body: bytes = b"", headers: dict | None = None, listener="main"):
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", "Connection: close"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        raw = self.raw(("\r\n".join(head) + "\r\n\r\n").encode() + body, listener=listener)
        self.flush()
        return raw.response()

    def flush(self):
        """Pump every connection until no bytes move anywhere."""
        for _ in range(1000):
            moved = False
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
            if not moved:
                return
        raise AssertionError("connections never went quiet")

    def advance(self, seconds: float):
        self.reactor.advance(seconds)
        self.flush()


def log_lines(testcase, namespace: str) -> list:
    """The log events of one namespace (a module's logger) while the test runs, as they come."""
    from twisted.logger import globalLogPublisher

    lines: list = []

    def observe(event):
        if event.get("log_namespace") == namespace:
            lines.append(event)

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines
