"""
The twistd plugin: `twistd -n relayd --config etc/relayd.ini`.

A configuration problem ends start-up with one line naming file, section and key, and a non-zero
exit; `--check` validates, prints what every app gets on every listener, and exits; `--version`
prints relayd's version.
"""

from __future__ import annotations

import sys

from twisted.python import usage

import relayd
from relayd import config as relayd_config
from relayd.config import ConfigError
from relayd.config.model import Config
from relayd._internals import run_reactor_on
from relayd.clock import SteadyClock
from relayd.gcpolicy import CollectorPolicy
from relayd.memory import tune_allocator


class Options(usage.Options):
    synopsis = "--config FILE [--check]"
    longdesc = "relayd hosts the live WebSocket servers of small multiplayer games."
    optParameters = [["config", "c", "etc/relayd.ini", "The relayd INI configuration file."]]
    optFlags = [["check", None, "Validate the configuration, print the effective limits and exit."]]

    def opt_version(self):
        """Print relayd's version and exit."""
        sys.stdout.write(f"relayd {relayd.__version__}\n")
        raise SystemExit(0)

    def postOptions(self):
        try:
            self.loaded = relayd_config.load(self["config"])
        except ConfigError as e:
            raise SystemExit(f"relayd: {e}") from None
        if self["check"]:
            sys.stdout.write(describe(self.loaded))
            raise SystemExit(0)


def describe(loaded: Config) -> str:
    """What --check prints: the config is valid, and what each app gets on each of its listeners."""
    lines = [
        f"relayd {relayd.__version__}: {loaded.path}: OK, listeners {', '.join(loaded.listeners)}; "
        f"apps {', '.join(f'{n} at {a.path}' for n, a in loaded.apps.items()) or 'none'}"
    ]
    daemon = loaded.daemon
    total, share = daemon.backlog_bounds()
    address_rate = (f"{_size(daemon.address_byte_rate)}/s, burst {_size(daemon.address_byte_burst)}"
                    if daemon.address_byte_rate else "unlimited")
    lines.append(
        f"process: send backlogs {_size(total)}{' (auto)' if daemon.max_total_backlog is None else ''}, "
        f"per address {_size(share) if share else 'unlimited'}; one address sends {address_rate}"
    )
    for name, listener in loaded.listeners.items():
        proxies = ", ".join(str(n) for n in listener.trusted_proxies) or "none"
        lines.append(
            f"listener {name}: {listener.endpoint.description}; max_connections {listener.max_connections}, "
            f"per address {listener.max_connections_per_address or 'unlimited'}; trusted proxies {proxies}; "
            f"send buffer {_size(listener.send_buffer) if listener.send_buffer else 'kernel'}"
        )
        for app_name, app in loaded.apps.items():
            if name not in app.listeners:
                continue
            limits = app.limits
            lines.append(
                f"  {app_name} at {app.path}: message {_size(limits.max_message_size)}, "
                f"frame {_size(limits.max_frame_size)}, "
                f"keepalive {limits.auto_ping_interval:g}/{limits.auto_ping_timeout:g} s, "
                f"origins {' '.join(limits.allowed_origins)}, send backlog {_size(limits.max_send_backlog)} "
                f"/ {limits.max_send_backlog_age:g} s"
            )
            for role in ("client", *limits.roles):
                rate = limits.rate(role)
                messages = f"{rate.rate_limit:g} messages/s" if rate.rate_limit else "unlimited messages"
                byte_rate = f"{_size(rate.byte_rate)} bytes/s" if rate.byte_rate else "unlimited bytes"
                lines.append(f"    {role}: {messages} burst {rate.rate_burst}; {byte_rate} burst {_size(rate.byte_burst)}")
    return "".join(f"{line}\n" for line in lines)


def _size(count: int) -> str:
    for unit, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if count >= factor and count % factor == 0:
            return f"{count // factor}{unit}"
    return f"{count} B"


def makeService(options, reactor=None):
    from relayd.service import RelaydService

    loaded = options.loaded if hasattr(options, "loaded") else relayd_config.load(options["config"])
    if reactor is None:
        from twisted.internet import reactor as running

        # every timer and duration on a clock the system clock's steps do not move (relayd.clock)
        run_reactor_on(running, SteadyClock().seconds)
        # large buffers mmapped and unmapped when freed, so RSS falls after an attack (relayd.memory)
        tune_allocator()
    service = RelaydService(loaded, reactor=reactor, handle_signals=reactor is None)
    if reactor is None:

        # start-up's objects out of the collector's reach, full collections rarer (relayd.gcpolicy)
        CollectorPolicy(running).setServiceParent(service)
        # under twistd: bind now, so that a port in use ends start-up with its one line before twistd
        # writes its pid file (twistd's own privileged start, later, finds the ports bound)
        service.privilegedStartService()
    return service
