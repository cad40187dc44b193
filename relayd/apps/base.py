"""
What an app is, to the daemon.

An app is a sans-IO core (rooms and state machines as plain data, time passed in), a session per
client (an ISession, relayd.session: frames into core calls, core results into frames) and a thin
adapter: a RelaydProtocol subclass naming the session class, and the App with its HTTP endpoints. The daemon
builds one App per [app:NAME] section from its AppSpec, mounts it at its path on its listeners, and
starts and stops it with the daemon.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attr
from twisted.application.service import MultiService
from twisted.web.resource import Resource

from relayd.bus import IBus
from relayd.config.model import AppConfig, Limits
from relayd.config.schema import Option
from relayd.metrics import AppMetrics
from relayd.periodic import Periodic
from relayd.store import IStore


@attr.s(frozen=True, auto_attribs=True)
class AppContext:
    """Everything an app may use from the daemon; nothing else reaches it."""

    name: str
    config: AppConfig
    reactor: Any
    bus: IBus
    store: IStore
    metrics: AppMetrics
    state_dir: str
    cluster: Any = None  # relayd.backplane.cluster.Cluster with [bus] backend = redis, else None

    @property
    def options(self) -> Mapping[str, Any]:
        return self.config.options

    @property
    def limits(self) -> Limits:
        return self.config.limits


class App:
    """Base of every app: override protocol, and what else the app has."""

    protocol: type = None  # type: ignore[assignment]

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.bus = ctx.bus
        self.store = ctx.store
        self.metrics = ctx.metrics
        self.options = ctx.options
        self.cluster = ctx.cluster
        # the app's periodic work; the daemon parents it, so it starts after start() and stops before stop()
        self.services = MultiService()

    def every(self, name: str, interval: float, function, *, now: bool = False) -> Periodic:
        """Run function every interval seconds while the daemon runs; its errors are logged and counted."""
        periodic = Periodic(f"{self.ctx.name} {name}", interval, function, clock=self.reactor, now=now,
                            on_error=self.metrics.parent.tick_errors.labels(self.ctx.name).inc)
        periodic.setServiceParent(self.services)
        return periodic

    def http_resource(self) -> Resource | None:
        """HTTP endpoints under the mount path, or None."""
        return None

    def accepts_websocket_path(self, postpath: list[bytes]) -> bool:
        """Whether a WebSocket may open at this path below the mount (most apps: any)."""
        return True

    def start(self):
        """Called once before listeners accept; may return a Deferred."""

    def stop(self):
        """Called once after connections are drained; may return a Deferred."""

    def room_count(self) -> int:
        return 0


def _no_validation(options: Mapping[str, Any]) -> None:
    return None


@attr.s(frozen=True, auto_attribs=True)
class AppSpec:
    name: str
    build: Callable[[AppContext], App]
    options: Mapping[str, Option] = attr.Factory(dict)
    limit_defaults: Mapping[str, Any] = attr.Factory(dict)
    # roles whose connections send more than an ordinary client: role -> rate_limit, rate_burst, byte_rate, byte_burst
    roles: Mapping[str, Mapping[str, Any]] = attr.Factory(dict)
    validate: Callable[[Mapping[str, Any]], None] = _no_validation
    clustered: bool = False  # its state is shared through ctx.cluster, so it may run with [bus] backend = redis
