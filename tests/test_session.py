"""
The session seam: the Runner's guard and holding queue over a fake IConnection, and apps' sessions
driven directly, with no WebSocket, no Autobahn and time on a Clock.
"""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relayd.bus import MemoryBus
from relayd.errors import ProtocolError, Unavailable
from relayd.session import MAX_HELD, IConnection, ISession, Runner, unavailable
from relayd.ws.frames import Frame


@implementer(IConnection)
class FakeConnection:
    peer = "fake"
    client_address = "192.0.2.1"

    def __init__(self):
        self.sent: list = []
        self.closed_with = None
        self.errors: list = []
        self.internal = 0
        self.roles: list = []

    def send(self, frame, latest=None):
        self.sent.append(frame.payload if isinstance(frame, Frame) else frame)

    def close(self, code, reason=""):
        if self.closed_with is None:
            self.closed_with = (code, reason)

    def drop(self):
        self.close(1006, "dropped")

    def still_open(self):
        return self.closed_with is None

    def count_error(self, error):
        self.errors.append(error.kind)
        return True

    def internal_error(self):
        self.internal += 1
        self.close(1011, "internal error")

    def use_role(self, role):
        self.roles.append(role)

    def listen(self, bus, channel):
        return bus.subscribe(channel, self.send)


@implementer(ISession)
class Recorder:
    """A session whose steps are scripted: each frame's payload names what its step does."""

    unavailable = unavailable("the thing is away")

    def __init__(self, conn):
        self.conn = conn
        self.seen: list = []
        self.answers: dict = {}
        self.reports: list = []
        self.gone = False

    def opened(self):
        return self.answers.pop(b"open", None)

    def received(self, payload, is_binary):
        self.seen.append(payload)
        if payload == b"bad":
            raise ProtocolError("bad", "a bad frame")
        if payload == b"bug":
            raise ZeroDivisionError("a bug")
        if payload == b"away":
            raise Unavailable("redis")
        return self.answers.pop(payload, None)

    def closed(self):
        self.gone = True

    def report(self, error):
        self.reports.append(error.kind)
        if error.close:
            self.conn.close(error.code, error.message)


def runner():
    conn = FakeConnection()
    session = Recorder(conn)
    return conn, session, Runner(conn, session, name="test")


class RunnerTests(TestCase):
    def test_interfaces(self):
        """The fake and the real pieces provide the interfaces the runner is written against."""
        conn, session, _ = runner()
        verifyObject(IConnection, conn)
        verifyObject(ISession, session)

    def test_frames_wait_for_a_pending_step_in_order(self):
        """While a step's Deferred is pending the frames after it wait; they run in order when it fires."""
        conn, session, run = runner()
        pending = session.answers[b"1"] = defer.Deferred()
        for payload in (b"1", b"2", b"3"):
            run.received(payload, False)
        self.assertEqual(session.seen, [b"1"])
        pending.callback(None)
        self.assertEqual(session.seen, [b"1", b"2", b"3"])

    def test_opening_holds_frames_too(self):
        """A Deferred from opened() holds the first frames until it fires."""
        conn, session, run = runner()
        opening = session.answers[b"open"] = defer.Deferred()
        run.opened()
        run.received(b"a", False)
        self.assertEqual(session.seen, [])
        opening.callback(None)
        self.assertEqual(session.seen, [b"a"])

    def test_a_step_that_waits_again_keeps_the_rest_waiting(self):
        """A held frame whose own step waits makes the frames behind it wait for that one."""
        conn, session, run = runner()
        first, second = session.answers[b"1"], session.answers[b"2"] = defer.Deferred(), defer.Deferred()
        for payload in (b"1", b"2", b"3"):
            run.received(payload, False)
        first.callback(None)
        self.assertEqual(session.seen, [b"1", b"2"])
        second.callback(None)
        self.assertEqual(session.seen, [b"1", b"2", b"3"])

    def test_bounded(self):
        """More than MAX_HELD frames waiting: the session's error for it, and the connection closes."""
        conn, session, run = runner()
        session.answers[b"w"] = defer.Deferred()
        run.received(b"w", False)
        for _ in range(MAX_HELD + 1):
            run.received(b"x", False)
        self.assertEqual(session.reports, ["too_many_held"])
        self.assertEqual(conn.closed_with[0], 1008)

    def test_protocol_error_goes_to_report(self):
        """A ProtocolError is counted by the connection and put on the wire by the session."""
        conn, session, run = runner()
        run.received(b"bad", False)
        self.assertEqual((conn.errors, session.reports, conn.closed_with), (["bad"], ["bad"], None))

    def test_unavailable_is_the_one_close(self):
        """Unavailable becomes the session's unavailable error: its form, then close 1013."""
        conn, session, run = runner()
        run.received(b"away", False)
        self.assertEqual(session.reports, ["unavailable"])
        self.assertEqual(conn.closed_with, (1013, "the thing is away"))

    def test_a_bug_is_logged_and_closes_1011(self):
        """Anything else is logged with its traceback and closes that connection with 1011."""
        conn, session, run = runner()
        run.received(b"bug", False)
        self.assertEqual(conn.internal, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_failure_in_a_callback_is_guarded_the_same(self):
        """A Deferred that fails later is handled exactly like an error raised at once."""
        conn, session, run = runner()
        later = session.answers[b"1"] = defer.Deferred()
        run.received(b"1", False)
        run.received(b"2", False)
        later.errback(ProtocolError("late", "failed later"))
        self.assertEqual(session.reports, ["late"])
        self.assertEqual(session.seen, [b"1", b"2"])

    def test_closed_once_and_held_frames_dropped(self):
        """closed() reaches the session once; frames still waiting are not run after it."""
        conn, session, run = runner()
        pending = session.answers[b"1"] = defer.Deferred()
        run.received(b"1", False)
        run.received(b"2", False)
        run.closed()
        run.closed()
        pending.callback(None)
        self.assertTrue(session.gone)
        self.assertEqual(session.seen, [b"1"])


class _Metrics:
    def __init__(self):
        self.drops: list = []

    def protocol_error(self, kind):
        pass

    def dropped(self, reason, count=1):
        self.drops.append(reason)


class _App:
    """Just enough of an App for a session: its core, a bus, metrics that count, a clock."""

    def __init__(self, core):
        self.core = core
        self.bus = core.bus
        self.reactor = Clock()
        self.metrics = _Metrics()


class CarPartySessionTests(TestCase):
    def test_phone_frames_reach_the_server_with_its_id(self):
        """Driven directly: a server and a phone log in; the phone's frame reaches the server with client_id set."""
        from relayd.apps.carparty.core import CarParty
        from relayd.apps.carparty.session import CarPartySession

        app = _App(CarParty(MemoryBus()))
        screen_conn, phone_conn = FakeConnection(), FakeConnection()
        screen, phone = CarPartySession(app, screen_conn), CarPartySession(app, phone_conn)
        Runner(screen_conn, screen, name="carparty").received(b'{"action": "login_server", "server_code": "SNEK"}', False)
        phone_run = Runner(phone_conn, phone, name="carparty")
        phone_run.received(b'{"action": "login_client", "server_code": "SNEK", "client_id": "7"}', False)
        phone_run.received(b'{"steer": 1, "client_id": "forged"}', False)
        messages = [json.loads(p) for p in screen_conn.sent]
        self.assertEqual(messages, [{"action": "connect", "client_id": "7"}, {"steer": 1, "client_id": "7"}])
        self.assertEqual(screen_conn.roles, ["server"])

    def test_an_unknown_code_is_a_silent_drop(self):
        """A phone logging in to a code nobody serves is dropped without a word, and counted."""
        from relayd.apps.carparty.core import CarParty
        from relayd.apps.carparty.session import CarPartySession

        app = _App(CarParty(MemoryBus()))
        conn = FakeConnection()
        Runner(conn, CarPartySession(app, conn), name="carparty").received(
            b'{"action": "login_client", "server_code": "NONE", "client_id": "7"}', False)
        self.assertEqual((conn.sent, conn.closed_with), ([], (1006, "dropped")))
        self.assertEqual(len(app.metrics.drops), 1)
