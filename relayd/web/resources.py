"""The resources of a listener's Site: the router, app mounts and the daemon's own endpoints."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource, getChildForRequest

from twisted.logger import Logger

from relayd.web.demo import demo_script
from relayd.web.proxy import request_client
from relayd.web.upgrade import hand_over, is_upgrade

_log = Logger()


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
                 demo: bytes | None = None, section: str = ""):
        super().__init__()
        self.factory = factory
        self.http = http
        self.accepts_path = accepts_path
        self.daemon = daemon
        self.demo = demo
        self.section = section

    def render(self, request):
        if request.postpath[:1] == [b"demo"] and not is_upgrade(request):
            if self.demo is None:
                return _plain(request, 404, f"the demo page is off: set demo = yes in [{self.section}] "
                                            f"and restart relayd\n".encode("utf-8"))
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
            return self._upgrade(request)
        if self.http is not None:
            resource = getChildForRequest(self.http, request)
            if request.method == b"HEAD" and not _serves_head(resource):
                # twisted.web answers HEAD with render_GET, and a resource that has none with a 500
                raise UnsupportedMethod(_allowed_methods(resource))
            return resource.render(request)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if websocket_path:
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
            return b"this is a WebSocket endpoint\n"
        request.setResponseCode(404)
        return b"not found\n"


    def _upgrade(self, request):
        """
        The checks every upgrade passes before Autobahn sees it: the app's Origin policy, which alone
        decides (Autobahn would refuse `null` and any Origin that is not a URL, such as Espruino's),
        and the per-address cap on the client's address when a trusted proxy carries the connection.
        """
        factory = self.factory
        site = request.channel.site
        client = request_client(request, site.trusted_proxies)
        origins = request.requestHeaders.getRawHeaders(b"origin", [])
        origin = origins[0].decode("latin-1").strip() if origins else None
        if len(origins) > 1 or not factory.origins.allows(origin):
            site.reject("origin")
            _log.info("{app}: origin {origin} refused for {client}", app=factory.app_name, origin=origin, client=client)
            return _plain(request, 403, b"origin not allowed\n")
        slot = getattr(request.channel, "slot", None)
        reason = slot.bind(client) if slot is not None else ""
        if reason:
            site.refused(client, reason)
            return _plain(request, 429, b"too many connections from your address\n")
        if slot is not None and slot.upgrade():
            # the listener holds max_connections WebSockets: its reserve still answers health and metrics
            site.refused(client, "max_connections")
            request.setHeader(b"retry-after", b"5")
            return _plain(request, 503, b"this server holds as many connections as it may; try again\n")
        return hand_over(request, factory, client)


def _serves_head(resource) -> bool:
    inherited = getattr(Resource, "render_HEAD", None)
    own_head = getattr(type(resource), "render_HEAD", inherited) is not inherited
    return own_head or hasattr(resource, "render_GET")


def _allowed_methods(resource) -> list[bytes]:
    methods = {name[len("render_"):] for name in dir(resource)
               if name.startswith("render_") and name[len("render_"):].isupper()}
    if not _serves_head(resource):
        methods.discard("HEAD")
    return sorted(m.encode("ascii") for m in methods)


def _plain(request, code: int, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"connection", b"close")
    return body


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
