"""Read an INI file into a validated Config, or fail with one located ConfigError."""

from __future__ import annotations

import configparser
import os
from typing import Any

import attr

from relayd.backplane.target import BadRedisURL, parse_redis_url
from relayd.config.endpoint import parse_endpoint
from relayd.config.model import (
    APP_COMMON_OPTIONS,
    BUS_OPTIONS,
    DAEMON_OPTIONS,
    LIMIT_OPTIONS,
    LISTENER_OPTIONS,
    RATE_KEYS,
    RETIRED_LIMIT_OPTIONS,
    AppConfig,
    BusConfig,
    Config,
    DaemonConfig,
    Limits,
    ListenerConfig,
    Rate,
)
from relayd.config.schema import BadValue, ConfigError, Option, parse_section, url_path
from relayd.config.tlscheck import check_tls_files

RESERVED_PATHS = ("/healthz", "/readyz", "/metrics")


def load(path: str) -> Config:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read the file: {e.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ConfigError(path, None, None, f"not a valid INI file: {_one_line(e)}") from None
    return from_parser(path, parser)


def loads(text: str, path: str = "<string>") -> Config:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=path)
    except configparser.Error as e:
        raise ConfigError(path, None, None, f"not a valid INI file: {_one_line(e)}") from None
    return from_parser(path, parser)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def from_parser(path: str, parser: configparser.ConfigParser) -> Config:
    from relayd.apps.registry import APPS

    sections = {name: dict(parser.items(name)) for name in parser.sections()}
    daemon_values: dict[str, str] = {}
    limit_values: dict[str, str] = {}
    bus_values: dict[str, str] = {}
    listener_sections: dict[str, dict[str, str]] = {}
    app_sections: dict[str, dict[str, str]] = {}
    for name, values in sections.items():
        if name == "relayd":
            daemon_values = values
        elif name == "limits":
            limit_values = values
        elif name == "bus":
            bus_values = values
        elif name.startswith("listener:") and name[len("listener:"):]:
            listener_sections[name[len("listener:"):]] = values
        elif name.startswith("app:") and name[len("app:"):]:
            app_sections[name[len("app:"):]] = values
        else:
            raise ConfigError(
                path, name, None,
                "unknown section (expected [relayd], [limits], [bus], [listener:NAME] or [app:NAME])",
            )

    daemon = DaemonConfig(**parse_section(path, "relayd", daemon_values, DAEMON_OPTIONS))
    _refuse_retired(path, "limits", limit_values)
    limits_dict = parse_section(path, "limits", limit_values, LIMIT_OPTIONS)
    limits = Limits(**limits_dict)
    _check_rate(path, "limits", "", limits.rate(), limits.max_message_size)
    _check_origins(path, "limits", limits.allowed_origins)
    bus = _bus_config(path, parse_section(path, "bus", bus_values, BUS_OPTIONS))

    listeners: dict[str, ListenerConfig] = {}
    for name, values in listener_sections.items():
        section = f"listener:{name}"
        opts = parse_section(path, section, values, LISTENER_OPTIONS)
        tls_keys = {"key": opts["tls_key"], "cert": opts["tls_cert"], "chain": opts["tls_chain"] or None}
        try:
            endpoint = parse_endpoint(opts["endpoint"], tls_keys)
        except BadValue as e:
            raise ConfigError(path, section, "endpoint", str(e)) from None
        if endpoint.tls is not None:
            key = "endpoint" if endpoint.kind == "ssl" else "tls_cert"
            try:
                check_tls_files(endpoint.tls)
            except BadValue as e:
                raise ConfigError(path, section, key, str(e)) from None
        if endpoint.proxy_protocol and not opts["trusted_proxies"]:
            raise ConfigError(
                path, section, "trusted_proxies",
                "a haproxy: endpoint believes the PROXY header of the proxies listed here: list them",
            )
        listeners[name] = ListenerConfig(
            name=name,
            endpoint=endpoint,
            health=opts["health"],
            metrics=opts["metrics"],
            max_connections=opts["max_connections"],
            max_connections_per_address=opts["max_connections_per_address"],
            trusted_proxies=opts["trusted_proxies"],
            send_buffer=opts["send_buffer"],
        )

    apps: dict[str, AppConfig] = {}
    mounts: dict[tuple[str, str], str] = {}
    for name, values in app_sections.items():
        section = f"app:{name}"
        spec = APPS.get(name)
        if spec is None:
            raise ConfigError(path, section, None, f"unknown app (known apps: {', '.join(sorted(APPS))})")
        if bus.backend == "redis" and not spec.clustered:
            # refusing beats a split brain: this app's rooms would silently differ per node
            raise ConfigError(
                path, section, None,
                "does not share its state across nodes yet, so it cannot run with [bus] backend = redis "
                "(docs/scaling.md); run it on a node of its own with backend = memory",
            )
        _refuse_retired(path, section, values)
        app_limit_defaults = effective_limit_defaults(spec, limits_dict, limit_values)
        app_limit_options = {
            key: attr.evolve(option, default=app_limit_defaults[key]) for key, option in LIMIT_OPTIONS.items()
        }
        role_options = _role_options(spec)
        clash = set(spec.options) & (set(APP_COMMON_OPTIONS) | set(LIMIT_OPTIONS) | set(role_options))
        assert not clash, f"app {name} redefines {clash}"
        schema = {**APP_COMMON_OPTIONS, **app_limit_options, **role_options, **spec.options}
        opts = parse_section(path, section, values, schema)
        try:
            mount = url_path(opts["path"])
        except BadValue as e:
            raise ConfigError(path, section, "path", str(e)) from None
        if not opts["listeners"]:
            raise ConfigError(path, section, "listeners", "names no listener")
        for listener in opts["listeners"]:
            if listener not in listeners:
                raise ConfigError(path, section, "listeners", f"no [listener:{listener}] section")
            other = mounts.get((listener, mount))
            if other is not None:
                raise ConfigError(
                    path, section, "path",
                    f"{mount} on listener {listener} is already the mount path of app {other}",
                )
            if mount in RESERVED_PATHS and (listeners[listener].health or listeners[listener].metrics):
                raise ConfigError(path, section, "path", f"{mount} is served by the daemon itself on {listener}")
            mounts[(listener, mount)] = name
        roles = {
            role: Rate(**{key: opts.pop(f"{role}_{key}") for key in RATE_KEYS}) for role in spec.roles
        }
        app_limits = Limits(**{key: opts.pop(key) for key in LIMIT_OPTIONS}, roles=roles)
        _check_origins(path, section, app_limits.allowed_origins)
        for role in ("client", *roles):
            _check_rate(path, section, "" if role == "client" else f"{role}_", app_limits.rate(role),
                        app_limits.max_message_size)
        app_options: dict[str, Any] = {key: opts[key] for key in spec.options}
        try:
            spec.validate(app_options)
        except BadValue as e:
            raise ConfigError(path, section, None, str(e)) from None
        apps[name] = AppConfig(
            name=name,
            listeners=tuple(opts["listeners"]),
            path=mount,
            limits=app_limits,
            options=app_options,
            demo=opts["demo"],
        )

    if not listeners:
        raise ConfigError(path, None, None, "no [listener:NAME] section: relayd would listen nowhere")
    return Config(path=path, daemon=daemon, limits=limits, listeners=listeners, apps=apps, bus=bus)



def effective_limit_defaults(spec, limits_dict: dict[str, Any], limit_values: dict[str, str]) -> dict[str, Any]:
    """
    What an app gets for each [limits] key it does not set itself. The more specific value wins:
    [app:NAME] over [limits] over the app's documented default over the daemon's default.
    """
    return {
        key: limits_dict[key] if key in limit_values else spec.limit_defaults.get(key, limits_dict[key])
        for key in LIMIT_OPTIONS
    }


def _role_options(spec) -> dict[str, Option]:
    """<role>_rate_limit, <role>_rate_burst, <role>_byte_rate, <role>_byte_burst for each of the app's roles."""
    options: dict[str, Option] = {}
    for role, defaults in spec.roles.items():
        for key in RATE_KEYS:
            base = LIMIT_OPTIONS[key]
            options[f"{role}_{key}"] = attr.evolve(base, default=defaults[key], doc=f"{base.doc} (the {role})")
    return options


def _refuse_retired(path: str, section: str, values: dict[str, str]) -> None:
    for key, replacement in RETIRED_LIMIT_OPTIONS.items():
        if key in values:
            raise ConfigError(path, section, key, f"no longer exists: {replacement}")


def _check_origins(path: str, section: str, entries: tuple[str, ...]) -> None:
    from relayd.ws.origin import OriginPolicy

    try:
        OriginPolicy(entries)
    except ValueError as e:
        raise ConfigError(path, section, "allowed_origins", str(e)) from None


def _check_rate(path: str, section: str, prefix: str, rate: Rate, max_message_size: int) -> None:
    if rate.byte_rate and rate.byte_burst < max_message_size:
        raise ConfigError(
            path, section, f"{prefix}byte_burst",
            f"{rate.byte_burst} is below max_message_size ({max_message_size}): the largest message could never be sent",
        )


def _bus_config(path: str, opts: dict) -> BusConfig:
    if opts["backend"] != "redis":
        if opts["url"]:
            raise ConfigError(path, "bus", "url", "applies only to backend = redis")
        return BusConfig(**opts)
    if not opts["url"]:
        raise ConfigError(path, "bus", "url", "backend = redis needs the url of the Redis server")
    try:
        target = parse_redis_url(opts["url"])
    except BadRedisURL as e:
        raise ConfigError(path, "bus", "url", str(e)) from None
    if target.ca is not None and not os.path.isfile(target.ca):
        raise ConfigError(path, "bus", "url", f"the CA file {target.ca} does not exist")
    return BusConfig(**opts, redis=target)
