"""
Prometheus metrics, one registry per daemon so that several services (tests, several nodes in one
process) never collide.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _RoomsCollector:
    """Asks each app how many rooms it holds at scrape time, instead of tracking a gauge by hand."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], int]] = {}

    def collect(self):
        family = GaugeMetricFamily("relayd_rooms", "Rooms, groups or channels an app holds", labels=["app"])
        for app, count in sorted(self.sources.items()):
            family.add_metric([app], count())
        yield family

    def describe(self):
        return []


class _TrafficCollector:
    """
    Messages and bytes in and out, counted per frame on the hot path as plain integers on each app's
    AppMetrics (a prometheus Counter takes a lock per increment, twice per delivered frame) and
    turned into counters only when scraped.
    """

    FAMILIES = (
        ("relayd_messages_received", "WebSocket messages received", "messages_in"),
        ("relayd_messages_sent", "WebSocket messages sent", "messages_out"),
        ("relayd_received_bytes", "WebSocket payload bytes received", "bytes_in"),
        ("relayd_sent_bytes", "WebSocket frame bytes sent", "bytes_out"),
    )

    def __init__(self) -> None:
        self.apps: dict[str, AppMetrics] = {}

    def collect(self):
        for name, documentation, field in self.FAMILIES:
            family = CounterMetricFamily(name, documentation, labels=["app"])
            for app, metrics in sorted(self.apps.items()):
                family.add_metric([app], getattr(metrics, field))
            yield family

    def describe(self):
        return []


class _PeriodicCollector:
    """Failures of periodic jobs (relayd.periodic.ERRORS), by task, at scrape time."""

    def collect(self):
        from relayd.periodic import ERRORS

        family = CounterMetricFamily("relayd_periodic_errors", "Failures of periodic jobs, by task", labels=["task"])
        for task, count in sorted(ERRORS.items()):
            family.add_metric([task], count)
        yield family

    def describe(self):
        return []


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections_open = Gauge("relayd_connections_open", "Open WebSocket connections", ["app"], registry=r)
        self.connections = Counter("relayd_connections", "WebSocket connections opened", ["app"], registry=r)
        self.closes = Counter("relayd_closes", "WebSocket closes by close code", ["app", "code"], registry=r)
        self.protocol_errors = Counter(
            "relayd_protocol_errors", "Bad input from clients, by kind", ["app", "kind"], registry=r
        )
        self.drops = Counter(
            "relayd_dropped", "Connections or messages an app dropped as its protocol defines, by reason",
            ["app", "reason"], registry=r,
        )
        self.rejected = Counter(
            "relayd_connections_rejected", "Connections refused before a WebSocket opened, by reason",
            ["listener", "reason"], registry=r,
        )
        self.http_requests = Counter(
            "relayd_http_requests", "HTTP requests answered by app endpoints", ["app", "code"], registry=r
        )
        self.ready = Gauge("relayd_ready", "1 while the daemon accepts new work", registry=r)
        self.tick_errors = Counter("relayd_tick_errors", "Errors caught in scheduled ticks", ["app"], registry=r)
        self.tick_lateness = Histogram(
            "relayd_tick_lateness_seconds", "How late scheduler ticks ran", ["app"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.turn_close_delay = Histogram(
            "relayd_turn_close_delay_seconds",
            "From when a lock-step turn could close (its last packet in, or its deadline passed) to its master packet",
            ["app"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.bus_up = Gauge("relayd_bus_up", "1 while the bus reaches every node (always 1 in memory)", registry=r)
        self.bus_up.set(1)
        self.redis_persistent = Gauge(
            "relayd_redis_persistent", "1 while Redis says it persists (appendonly yes), 0 when it does not",
            registry=r,
        )
        self.bus_published = Counter("relayd_bus_published", "Messages this node sent to other nodes", registry=r)
        self.bus_received = Counter("relayd_bus_received", "Messages this node received from other nodes", registry=r)
        self.bus_dropped = Counter(
            "relayd_bus_dropped", "Messages that never reached other nodes, by reason", ["reason"], registry=r
        )
        self.bus_queued = Gauge("relayd_bus_queued", "Messages waiting for the backplane connection", registry=r)
        self.slow_consumers = Counter(
            "relayd_slow_consumers",
            "Connections closed 4008 for not reading, by reason: size (its own queue), age (stuck too long), "
            "total (the process's send backlog bound), address (one address's share of it)",
            ["app", "reason"], registry=r,
        )
        self.throttled = Counter(
            "relayd_address_throttled",
            "Reads after which a connection was paused because its address sent above address_byte_rate",
            ["app"], registry=r,
        )
        self.send_backlog = Gauge(
            "relayd_send_backlog_bytes", "Bytes held for clients that do not read (each queued frame once)", registry=r
        )
        self.send_backlog_limit = Gauge(
            "relayd_send_backlog_limit_bytes", "The process's bound on relayd_send_backlog_bytes (max_total_backlog)",
            registry=r,
        )
        self._rooms = _RoomsCollector()
        r.register(self._rooms)
        self._traffic = _TrafficCollector()
        r.register(self._traffic)
        r.register(_PeriodicCollector())

    def watch_backlogs(self, backlogs) -> None:
        self.send_backlog.set_function(lambda: backlogs.held)
        self.send_backlog_limit.set(backlogs.total)

    def count_rooms(self, app: str, count: Callable[[], int]) -> None:
        self._rooms.sources[app] = count

    def for_app(self, app: str) -> "AppMetrics":
        metrics = self._traffic.apps.get(app)
        if metrics is None:
            metrics = self._traffic.apps[app] = AppMetrics(self, app)
        return metrics


class AppMetrics:
    """
    The labelled children one app uses, resolved once rather than per message, and its traffic
    counts: plain integers the connections add to (the reactor thread is the only writer).
    """

    def __init__(self, metrics: Metrics, app: str):
        self.parent = metrics
        self.app = app
        self.connections_open = metrics.connections_open.labels(app)
        self.connections = metrics.connections.labels(app)
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def closed(self, code: int | None) -> None:
        self.parent.closes.labels(self.app, str(code if code is not None else 1006)).inc()

    def protocol_error(self, kind: str) -> None:
        self.parent.protocol_errors.labels(self.app, kind).inc()

    def throttled(self) -> None:
        self.parent.throttled.labels(self.app).inc()

    def slow_consumer(self, reason: str) -> None:
        self.parent.slow_consumers.labels(self.app, reason).inc()

    def dropped(self, reason: str, count: int = 1) -> None:
        self.parent.drops.labels(self.app, reason).inc(count)

    def http(self, code: int) -> None:
        self.parent.http_requests.labels(self.app, str(code)).inc()
