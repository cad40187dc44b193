"""The resources of a listener's Site: the router, app mounts and the daemon's own endpoints."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource, getChildForRequest

from relayd.web.demo import demo_script
from relayd.web.upgrade import hand_over, is_upgrade


class Router(Resource):
    """Longest-prefix dispatch over mount paths; an app answers at its mount path and every path below it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mounts: dict[tuple[bytes, ...], Resource] = {}

    def mount(self, path: str, resource: Resource) -> None:
        key = tuple(seg.encode("utf-8") for seg in path.strip("/").split("/") if seg)
        if key in self.mounts:
            raise ValueError(f"{path} is mounted twice")
        self.mounts[key] = resource

    def render(self, request):
        segments = request.postpath
        for length in range(len(segments), -1, -1):
            resource = self.mounts.get(tuple(segments[:length]))
            if resource is not None:
                request.prepath = request.prepath + segments[:length]
                request.postpath = segments[length:]
                return resource.render(request)
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found\n"


class AppMount(Resource):
    """
    One app at its mount path: WebSocket upgrades go to the app's factory (where the app accepts that
    sub-path), other requests to the app's HTTP resource tree when it has one.
    """

    isLeaf = True

    def __init__(self, factory, http: Resource | None, accepts_path: Callable[[list[bytes]], bool], daemon,
                 demo: bytes | None = None):
        super().__init__()
        self.factory = factory
        self.http = http
        self.accepts_path = accepts_path
        self.daemon = daemon
        self.demo = demo

    def render(self, request):
        if self.demo is not None and request.postpath[:1] == [b"demo"] and not is_upgrade(request):
            request.setHeader(b"cache-control", b"no-store")
            if request.postpath[1:] in ([], [b""]):
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                return self.demo
            if request.postpath[1:] == [b"common.js"]:
                request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
                return demo_script()
        websocket_path = self.accepts_path(request.postpath)
        if websocket_path and is_upgrade(request):
            if self.daemon.draining:
                request.setResponseCode(503)
                request.setHeader(b"retry-after", b"5")
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"shutting down\n"
            return hand_over(request, self.factory)
        if self.http is not None:
            resource = getChildForRequest(self.http, request)
            return resource.render(request)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if websocket_path:
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
            return b"this is a WebSocket endpoint\n"
        request.setResponseCode(404)
        return b"not found\n"


class Health(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"

    render_HEAD = render_GET


class Readiness(Resource):
    """200 while the daemon takes new work; 503, with one line per reason, while starting, draining or cut off from its bus."""

    isLeaf = True

    def __init__(self, problems: Callable[[], list[str]]):
        super().__init__()
        self.problems = problems

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        problems = self.problems()
        if not problems:
            return b"ready\n"
        request.setResponseCode(503)
        return "".join(["not ready\n"] + [f"{p}\n" for p in problems]).encode("utf-8")

    render_HEAD = render_GET


class Metrics(Resource):
    """Prometheus text exposition, rendered in the reactor thread (it is a walk over in-memory counters)."""

    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)
