"""The validated configuration, as plain frozen data."""

from __future__ import annotations

from typing import Any, Mapping

import attr

from relayd.config.endpoint import Endpoint
from relayd.config.schema import (
    Option,
    boolean,
    choice,
    integer,
    networks,
    nonempty,
    number,
    size,
    size_or_auto,
    text,
    words,
)

DAEMON_OPTIONS: dict[str, Option] = {
    "state_dir": Option(nonempty, "var/relayd", "Directory for durable state; relative to the working directory; created on start."),
    "store": Option(text, "", "SQLite file of the durable store; default <state_dir>/relayd.sqlite3."),
    "log_format": Option(choice("text", "json"), "text", "Log output: text lines, or one JSON object per line."),
    "log_level": Option(choice("debug", "info", "warn", "error", "critical"), "info", "Lowest level logged."),
    "drain_timeout": Option(number(0, 3600), 10.0, "Seconds a stop waits for WebSockets to close after close 1001."),
    "max_total_backlog": Option(size_or_auto(64 * 1024), None, "Bytes the whole process may hold for clients that do not read; past it the largest holders are closed 4008. auto: 1/32 of the machine's memory, 64M to 1G."),
    "max_backlog_per_address": Option(size_or_auto(0), None, "Bytes one client address's connections may hold together; past it that address's largest holders are closed 4008. auto: a quarter of max_total_backlog; 0: no share."),
    "address_byte_rate": Option(size(0), 32 * 1024 * 1024, "Bytes per second one client address's WebSocket connections may send together, across every app; above it their reading pauses until the address is back within it. 0 turns it off."),
    "address_byte_burst": Option(size(1), 64 * 1024 * 1024, "Bytes one client address may send at once above address_byte_rate."),
}

LIMIT_OPTIONS: dict[str, Option] = {
    "max_message_size": Option(size(1), 64 * 1024, "Largest WebSocket message accepted; larger closes with 1009."),
    "max_frame_size": Option(size(1), 64 * 1024, "Largest WebSocket frame accepted; larger closes with 1009."),
    "open_handshake_timeout": Option(number(0.1, 600), 5.0, "Seconds from TCP accept to a completed WebSocket handshake."),
    "close_handshake_timeout": Option(number(0.1, 600), 5.0, "Seconds to wait for the peer's close frame before dropping."),
    "max_request_size": Option(size(1024, 1024 * 1024), 16 * 1024, "Largest HTTP request head (request line plus headers)."),
    "max_body_size": Option(size(0, 16 * 1024 * 1024), 64 * 1024, "Largest HTTP request body; a larger announced body is answered 413 before it is read, a chunked one when it passes the limit."),
    "auto_ping_interval": Option(number(0, 3600), 20.0, "A connection silent this many seconds is pinged (one timer for all); 0 turns keepalive off."),
    "auto_ping_timeout": Option(number(0, 3600), 10.0, "Seconds a pinged connection has to answer (anything) before it is dropped."),
    "allowed_origins": Option(words, ("*",), "Origins allowed to open WebSockets: * (any Origin at all), scheme://host[:port] (wildcards allowed in the host), or a literal value such as null."),
    "rate_limit": Option(number(0), 100.0, "Messages per second one connection may send on average; 0 turns it off."),
    "rate_burst": Option(integer(1), 200, "Messages one connection may send at once above the average."),
    "byte_rate": Option(size(0), 1024 * 1024, "Bytes per second one connection may send on average; 0 turns it off."),
    "byte_burst": Option(size(1), 4 * 1024 * 1024, "Bytes one connection may send at once above the average; at least max_message_size."),
    "max_protocol_errors": Option(integer(1), 50, "Protocol errors one connection may cause in a minute (refilled evenly); one more closes it with 1008."),
    "max_send_backlog": Option(size(1024), 1024 * 1024, "Bytes queued for a client that does not read before it is disconnected."),
    "max_send_backlog_age": Option(number(0.1, 3600), 30.0, "Seconds a client may block its send queue before it is disconnected."),
}

LISTENER_OPTIONS: dict[str, Option] = {
    "endpoint": Option(nonempty, doc="Twisted endpoint string: tcp:, ssl:, unix:, systemd:, any of them behind haproxy:."),
    "tls_key": Option(text, "", "Private key file (PEM) for a TLS listener not written as ssl:."),
    "tls_cert": Option(text, "", "Certificate file (PEM) for a TLS listener not written as ssl:."),
    "tls_chain": Option(text, "", "Intermediate certificates (PEM) sent after the certificate."),
    "health": Option(boolean, True, "Serve /healthz and /readyz on this listener."),
    "metrics": Option(boolean, True, "Serve Prometheus /metrics on this listener."),
    "max_connections": Option(integer(1), 10000, "WebSockets this listener holds at once (503 past it); 16 plain HTTP connections more are accepted so health and metrics answer a full listener."),
    "max_connections_per_address": Option(integer(0), 256, "Open connections from one client address; 0 for no limit."),
    "trusted_proxies": Option(networks, (), "Addresses and CIDRs of reverse proxies whose X-Forwarded-For and PROXY protocol header are believed."),
    "send_buffer": Option(size(0, 64 * 1024 * 1024), 256 * 1024, "Kernel send buffer (SO_SNDBUF) of each accepted connection: what a client that does not read pins in the kernel; 0 leaves the kernel's auto-tuning."),
}

# a [limits] key that no longer exists, and what replaced it: named in the error instead of "unknown key"
RETIRED_LIMIT_OPTIONS = {
    "trust_x_forwarded_for": "replaced by trusted_proxies in [listener:NAME] (addresses and CIDRs of the proxies)",
}

# the keys of one rate: what a role's keys are called in an [app:NAME] section, <role>_<key>
RATE_KEYS = ("rate_limit", "rate_burst", "byte_rate", "byte_burst")

BUS_OPTIONS: dict[str, Option] = {
    "backend": Option(choice("memory", "redis"), "memory", "Where fan-out happens: memory (one process) or redis (many nodes)."),
    "url": Option(text, "", "redis:// or rediss:// URL of the Redis every node shares (password in the URL; ?ca=FILE for a private CA)."),
    "prefix": Option(nonempty, "relayd", "Prefix of every Redis key and channel, so several clusters can share one Redis."),
    "queue_limit": Option(integer(1), 10000, "Messages that wait for Redis while it is away or behind; beyond, the oldest are dropped (counted)."),
    "max_backoff": Option(number(0.1, 300), 5.0, "Longest wait in seconds between attempts to reach Redis again."),
    "node_timeout": Option(number(1, 3600), 10.0, "Seconds after which a node that stopped renewing its presence in Redis counts as dead."),
}

APP_COMMON_OPTIONS: dict[str, Option] = {
    "listeners": Option(words, doc="Listeners this app is mounted on."),
    "path": Option(nonempty, doc="Mount path: the app answers here and below."),
    "demo": Option(boolean, False, "Serve the app's demo page at <path>/demo (off in production)."),
}


@attr.s(frozen=True, auto_attribs=True)
class DaemonConfig:
    state_dir: str
    store: str
    log_format: str
    log_level: str
    drain_timeout: float
    max_total_backlog: int | None = None  # None: auto (relayd.ws.backlog.default_total)
    max_backlog_per_address: int | None = None  # None: a quarter of the total
    address_byte_rate: int = 32 * 1024 * 1024
    address_byte_burst: int = 64 * 1024 * 1024

    def backlog_bounds(self) -> tuple[int, int]:
        """The process's send backlog bound and one address's share, auto resolved for this machine."""
        from relayd.ws.backlog import default_total

        total = self.max_total_backlog if self.max_total_backlog is not None else default_total()
        share = self.max_backlog_per_address if self.max_backlog_per_address is not None else total // 4 // 2**20 * 2**20
        return total, share


@attr.s(frozen=True, auto_attribs=True)
class Limits:
    max_message_size: int
    max_frame_size: int
    open_handshake_timeout: float
    close_handshake_timeout: float
    max_request_size: int
    max_body_size: int
    auto_ping_interval: float
    auto_ping_timeout: float
    allowed_origins: tuple[str, ...]
    rate_limit: float
    rate_burst: int
    byte_rate: int
    byte_burst: int
    max_protocol_errors: int
    max_send_backlog: int
    max_send_backlog_age: float
    # the app's roles other than an ordinary client (a carparty game server, a groovejet host)
    roles: Mapping[str, "Rate"] = attr.Factory(dict)

    @classmethod
    def defaults(cls, **overrides: Any) -> "Limits":
        values = {name: option.default for name, option in LIMIT_OPTIONS.items()}
        values.update(overrides)
        return cls(**values)

    def rate(self, role: str = "client") -> "Rate":
        """What a connection in this role may send; an unknown role is an ordinary client."""
        found = self.roles.get(role)
        if found is not None:
            return found
        return Rate(self.rate_limit, self.rate_burst, self.byte_rate, self.byte_burst)


@attr.s(frozen=True, auto_attribs=True)
class Rate:
    """Messages and bytes per second on average, with a burst of each above it; 0 turns a rate off."""

    rate_limit: float
    rate_burst: int
    byte_rate: int
    byte_burst: int


@attr.s(frozen=True, auto_attribs=True)
class ListenerConfig:
    name: str
    endpoint: Endpoint
    health: bool = True
    metrics: bool = True
    max_connections: int = 10000
    max_connections_per_address: int = 256
    trusted_proxies: tuple = ()  # ipaddress networks
    send_buffer: int = 256 * 1024


@attr.s(frozen=True, auto_attribs=True)
class AppConfig:
    name: str
    listeners: tuple[str, ...]
    path: str
    limits: Limits
    options: Mapping[str, Any]
    demo: bool = False


@attr.s(frozen=True, auto_attribs=True)
class BusConfig:
    backend: str = "memory"
    url: str = ""
    prefix: str = "relayd"
    queue_limit: int = 10000
    max_backoff: float = 5.0
    node_timeout: float = 10.0
    redis: Any = None  # the parsed url, a relayd.backplane.target.RedisTarget, with backend = redis


@attr.s(frozen=True, auto_attribs=True)
class Config:
    path: str
    daemon: DaemonConfig
    limits: Limits
    listeners: Mapping[str, ListenerConfig]
    apps: Mapping[str, AppConfig]
    bus: BusConfig = BusConfig()
