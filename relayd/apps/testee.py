"""
The `testee` app: echoes every text and binary message back, through the same WebSocket stack and
limits as every other app, so conformance suites (Autobahn|Testsuite's fuzzing client) exercise
exactly what relayd's apps run on. Not in the shipped config; see etc/examples/conformance.ini.
"""

from __future__ import annotations

from zope.interface import implementer

from relayd.apps.base import App, AppSpec
from relayd.errors import ProtocolError
from relayd.session import ISession, unavailable
from relayd.ws.frames import Frame
from relayd.ws.protocol import RelaydProtocol


@implementer(ISession)
class EchoSession:
    unavailable = unavailable("try again")

    def __init__(self, app, conn):
        self.conn = conn

    def opened(self) -> None:
        pass

    def received(self, payload: bytes, is_binary: bool) -> None:
        self.conn.send(Frame(payload, is_binary))

    def closed(self) -> None:
        pass

    def report(self, error: ProtocolError) -> None:
        if error.close:
            self.conn.close(error.code, error.message)


class EchoProtocol(RelaydProtocol):
    accepts_binary = True
    session_class = EchoSession


class Testee(App):
    protocol = EchoProtocol


SPEC = AppSpec(name="testee", build=Testee, clustered=True)  # an echo server for WebSocket conformance suites
