"""
One wikispeedruns connection: its first frame decides what it is (a waiter in a lobby prompt group,
a leaderboard or lobby-prompts subscriber, or a one-shot trigger); docs/protocols/wikispeedruns.md.
"""

from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from relayd.apps.wikispeedruns.core import WikiSpeedruns, parse
from relayd.errors import ProtocolError
from relayd.session import ISession, unavailable
from relayd.ws import closecodes
from relayd.ws.frames import Frame

_log = Logger()


@implementer(ISession)
class WikiSpeedrunsSession:
    unavailable = unavailable("lobby service unavailable, try again")

    def __init__(self, app, conn):
        self.app = app
        self.conn = conn
        self.role = None  # wait, leaderboard, lobby_prompts, done
        self.waiter = None
        self.subscription = None
        self.channel = None

    def opened(self) -> None:
        pass

    def received(self, payload: bytes, is_binary: bool):
        core: WikiSpeedruns = self.app.core
        message = parse(payload)
        kind = message["type"]
        if self.role is None:
            return self._first(core, message, kind)
        if self.role == "wait" and kind == "start":
            core.start(self.waiter, self.app.reactor.seconds())
        elif self.role == "lobby_prompts" and kind == "lobby_prompts_update":
            core.refresh(self.channel)
        else:
            self.app.metrics.dropped("ignored_message")
        return None

    def _first(self, core: WikiSpeedruns, message: dict, kind: str):
        if kind == "wait_start":
            address = self.conn.client_address or "unknown"
            if not self.app.join_quota.take(address):
                raise ProtocolError("quota", "too many joins from this address; try again later", close=True,
                                    code=closecodes.TRY_AGAIN_LATER)
            self.role = "wait"
            # a start sent right behind the join waits for it, with every later frame; a join that
            # fails (Redis away, bad input) gives its quota back
            try:
                joined = core.wait_start(message, self.conn.send, self.app.reactor.seconds())
            except BaseException:
                self.app.join_quota.give_back(address)
                raise
            return joined.addCallbacks(self._joined, lambda failure: (self.app.join_quota.give_back(address), failure)[1])
        if kind == "leaderboard":
            self.subscription = core.subscribe(core.leaderboard_channel(message), self.conn.send)
            self.role = "leaderboard"
        elif kind == "lobby_prompts":
            self.channel = core.lobby_prompts_channel(message)
            self.subscription = core.subscribe(self.channel, self.conn.send)
            self.role = "lobby_prompts"
        elif kind == "leaderboard_update":
            core.refresh(core.leaderboard_channel(message))
            self.role = "done"
            self.conn.close(closecodes.NORMAL)
        else:
            raise ProtocolError("invalid_message_type", "invalid message type", close=True, code=closecodes.NORMAL)
        return None

    def _joined(self, waiter) -> None:
        if not self.conn.still_open():
            # closed while joining: leave the group the join has just put it in
            self.app.core.leave(waiter).addErrback(self._leave_failed)
            return
        self.waiter = waiter

    @staticmethod
    def _leave_failed(failure) -> None:
        _log.failure("wikispeedruns: leaving a group failed", failure)

    def report(self, error: ProtocolError) -> None:
        if error.close:
            self.conn.close(error.code, error.message)
        else:
            self.conn.send(Frame.json({"type": "error", "error": error.kind, "message": error.message}))

    def closed(self) -> None:
        if self.waiter is not None:
            self.app.core.leave(self.waiter).addErrback(self._leave_failed)
            self.waiter = None
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
