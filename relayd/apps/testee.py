"""
The `testee` app: echoes every text and binary message back, through the same WebSocket stack and
limits as every other app, so conformance suites (Autobahn|Testsuite's fuzzing client) exercise
exactly what relayd's apps run on. Not in the shipped config; see etc/examples/conformance.ini.
"""

from __future__ import annotations

from relayd.apps.base import App, AppSpec
from relayd.ws.frames import Frame
from relayd.ws.protocol import RelaydProtocol


class EchoProtocol(RelaydProtocol):
    accepts_binary = True

    def received(self, payload: bytes, is_binary: bool) -> None:
        self.send_frame(Frame(payload, is_binary))


class Testee(App):
    protocol = EchoProtocol


SPEC = AppSpec(name="testee", build=Testee, clustered=True)  # an echo server for WebSocket conformance suites
