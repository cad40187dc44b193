"""The JSON HTTP endpoints apps serve beside their WebSockets: bearer tokens, bounded bodies, answers."""

from __future__ import annotations

import hmac
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from relayd import jsonutil

_log = Logger()


class JSONEndpoint(Resource):
    isLeaf = True
    max_body = 64 * 1024

    def __init__(self, app):
        super().__init__()
        self.app = app

    def answer(self, request, code: int, body: Any) -> bytes:
        self.app.metrics.http(code)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return jsonutil.dumps(body)

    def authorized(self, request, token: str, kind: str) -> bool:
        """Constant-time bearer check; a missing configured token refuses everyone."""
        given = request.getHeader(b"authorization") or b""
        if token and hmac.compare_digest(given, b"Bearer " + token.encode()):
            return True
        request.setHeader(b"www-authenticate", b'Bearer realm="relayd"')
        self.app.metrics.protocol_error(kind)
        return False

    def over_quota(self, request, quota, client: str, what: str) -> bytes:
        """429 with Retry-After for a client address past one of the app's quotas; counted and logged."""
        retry = max(1, int(quota.retry_after(client) + 0.999))
        request.setHeader(b"retry-after", str(retry).encode("ascii"))
        self.app.metrics.protocol_error("quota")
        _log.info("{app}: {client} is over its quota of {what}", app=self.app.ctx.name, client=client, what=what)
        return self.answer(request, 429, {"error": f"too many {what}; try again in {retry} s"})

    def body(self, request) -> bytes | None:
        """The request body, or None when it is larger than max_body."""
        data = request.content.read(self.max_body + 1)
        return None if len(data) > self.max_body else data


def respond_when(request, d: defer.Deferred):
    """
    Answer the request with the bytes d fires with: at once if it has fired (an answer on one node is
    rendered as a synchronous one is), else when it does, unless the client went away meanwhile.
    """
    if d.called:
        answered: list = []
        d.addBoth(answered.append)
        if not isinstance(answered[0], Failure):
            return answered[0]
        d = defer.fail(answered[0])
    gone: list = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def answer(body):
        if not gone:
            request.write(body)
            request.finish()

    def failed(failure):
        _log.failure("answering a request failed", failure)
        if not gone:
            request.setResponseCode(500)
            request.finish()

    d.addCallback(answer).addErrback(failed)
    return NOT_DONE_YET
