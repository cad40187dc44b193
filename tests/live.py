"""Helpers for tests on real sockets: clients whose events are Deferreds, and the real plugin's service."""

from __future__ import annotations

import json
import os
import tempfile

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import TestCase

from relayd import tap
from tests.support import Client


class LiveClient(Client):
    """A Client whose events are Deferreds, for a real reactor."""

    def __init__(self):
        super().__init__()
        self.when_open = defer.Deferred()
        self.when_closed = defer.Deferred()
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def onOpen(self):
        super().onOpen()
        self.when_open.callback(self)

    on_message = None  # an optional callable(message) for tests that answer as they go

    def onMessage(self, payload, isBinary):
        super().onMessage(payload, isBinary)
        if self.on_message is not None:
            self.on_message(self.messages[-1])
        for entry in list(self._waiting):
            if len(self.messages) >= entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(self.messages)

    def onClose(self, wasClean, code, reason):
        super().onClose(wasClean, code, reason)
        if not self.when_open.called:
            self.when_open.errback(ConnectionError(f"closed before open: {code} {reason}"))
        self.when_closed.callback(code)

    def messages_at_least(self, n: int, timeout: float = 30.0) -> defer.Deferred:
        """Fires with the messages once there are n; fails saying so (and what came) after timeout seconds."""
        if len(self.messages) >= n:
            return defer.succeed(self.messages)
        d = defer.Deferred()
        entry = (n, d)
        self._waiting.append(entry)

        def late():
            if entry in self._waiting:
                self._waiting.remove(entry)
                d.errback(AssertionError(
                    f"timed out after {timeout} s waiting for {n} messages; got {len(self.messages)}: "
                    f"{[m if isinstance(m, bytes) else m[:80] for m in self.messages[-3:]]}"))

        timer = reactor.callLater(timeout, late)
        d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return d


class LivePlayer:
    """A gameroom ReferencePlayer answering over a LiveClient as messages arrive."""

    def __init__(self, client, player):
        self.client, self.player = client, player
        client.on_message = self.on_message

    def on_message(self, text):
        for out in self.player.on_message(json.loads(text)):
            if self.client.state == self.client.STATE_OPEN:
                self.client.send_json(out)


def every_app(grace: float = 30, gameroom: str = "") -> str:
    """Sections mounting every app on listener main (wikispeedruns at /ws), for tests of all of them."""
    return f"""
[app:wikispeedruns]
listeners = main
path = /ws

[app:carparty]
listeners = main
path = /carparty

[app:clicker]
listeners = main
path = /clicker

[app:groovejet]
listeners = main
path = /groovejet
reconnect_grace = {grace}

[app:gameroom]
listeners = main
path = /gameroom
persist_interval = 0.05
{gameroom}
"""


def write_config(directory: str, body: str) -> str:
    path = os.path.join(directory, "relayd.ini")
    with open(path, "w") as f:
        f.write(f"[relayd]\nstate_dir = {os.path.join(directory, 'state')}\ndrain_timeout = 5\n" + body)
    return path


class Daemon:
    """The real plugin's makeService on the global reactor."""

    def __init__(self, testcase: TestCase, body: str, directory: str | None = None):
        self.directory = directory or tempfile.mkdtemp(prefix="relayd-test-")
        options = tap.Options()
        options.parseOptions(["--config", write_config(self.directory, body)])
        self.service = tap.makeService(options, reactor=reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.stopped = False
        testcase.addCleanup(self.stop)

    def stop(self):
        if self.stopped:
            return defer.succeed(None)
        self.stopped = True
        return self.service.stopService()

    def port(self, listener="main") -> int:
        return self.service.listeners[listener].address().port

    def connect(self, path: str, listener="main", tls_options=None, origin=None, bind=None) -> defer.Deferred:
        return open_ws(self.port(listener), path, tls_options=tls_options, origin=origin, bind=bind)


def open_ws(port: int, path: str, tls_options=None, origin=None, bind=None, headers=None,
            preface: bytes = b"") -> defer.Deferred:
    """
    Fires with a LiveClient once its WebSocket is open (errbacks if it closes first). `preface` is
    written before the handshake, as a proxy's PROXY protocol header is.
    """
    scheme = "wss" if tls_options is not None else "ws"
    factory = WebSocketClientFactory(f"{scheme}://localhost:{port}{path}", origin=origin, headers=headers or {},
                                     reactor=reactor)
    factory.protocol = LiveClient
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(bind, 0) if bind else None)
    if tls_options is not None:
        endpoint = wrapClientTLS(tls_options, endpoint)
    if preface:
        factory = _PrefaceFactory(factory, preface)
    d = endpoint.connect(factory)
    d.addCallback(lambda protocol: getattr(protocol, "wrappedProtocol", protocol).when_open)
    return d


class _Preface(ProtocolWrapper):
    def makeConnection(self, transport):
        transport.write(self.factory.preface)
        super().makeConnection(transport)


class _PrefaceFactory(WrappingFactory):
    protocol = _Preface

    def __init__(self, wrapped, preface: bytes):
        super().__init__(wrapped)
        self.preface = preface


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@defer.inlineCallbacks
def until(condition, what: str, timeout: float = 30.0, step: float = 0.02):
    """
    Wait on the real reactor until condition() holds (it may return a Deferred), and fire with its
    value; fail, saying what was waited for, when it does not within timeout seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = yield defer.maybeDeferred(condition)
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        yield later(step)


def port_open(port: int) -> defer.Deferred:
    """Fires True when something accepts a TCP connection on 127.0.0.1:port, False when nothing does."""
    from twisted.internet.endpoints import connectProtocol
    from twisted.internet.protocol import Protocol

    def connected(protocol):
        protocol.transport.loseConnection()
        return True

    d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
    return d.addCallbacks(connected, lambda _: False)


@defer.inlineCallbacks
def http_get(port: int, path: str):
    """(status, body text) of a GET to 127.0.0.1:port, without blocking the reactor."""
    from twisted.web.client import Agent, readBody

    response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
    body = yield readBody(response)
    return response.code, body.decode()


def paced(rate: float, count: int, step) -> defer.Deferred:
    """Call step(n) for n in range(count) at rate calls a second (a workload's real pace); fires when done."""
    from twisted.internet.task import LoopingCall

    calls = iter(range(count))

    def tick():
        n = next(calls, None)
        if n is None:
            loop.stop()
        else:
            step(n)

    loop = LoopingCall(tick)
    loop.clock = reactor
    return loop.start(1.0 / rate, now=True).addCallback(lambda _: None)


def later(seconds: float) -> defer.Deferred:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
