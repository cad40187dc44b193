"""
The process's descriptor limit against what its listeners may hold.

Every connection is a descriptor. When the limit (ulimit -n, systemd's LimitNOFILE) is below what
max_connections allows, accept() fails with EMFILE once it is reached: Twisted logs each failure,
and /healthz and /metrics are refused with everyone else. At start relayd raises its soft limit as
far as the hard limit allows; if that is still short, it says so in one line and lowers each
listener's max_connections to fit, keeping DAEMON_DESCRIPTORS for itself (the store, Redis, log
files, the reactor) and each listener's reserve for health and metrics (relayd.web.tracker).
"""

from __future__ import annotations

from twisted.logger import Logger

from relayd.web.tracker import RESERVE

_log = Logger()

DAEMON_DESCRIPTORS = 64

try:
    import resource as _resource
except ImportError:  # not POSIX
    _resource = None


def needed(trackers) -> int:
    return sum(t.max_connections + RESERVE for t in trackers) + DAEMON_DESCRIPTORS


def fit(trackers: dict, limits=_resource) -> int | None:
    """Raise the soft limit or lower max_connections so that `trackers` fit; the limit in force (None: unknown)."""
    if limits is None or not trackers:
        return None
    want = needed(trackers.values())
    soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    infinite = limits.RLIM_INFINITY
    if soft == infinite or soft >= want:
        return soft
    target = want if hard == infinite else min(hard, want)
    if target > soft:
        try:
            limits.setrlimit(limits.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft >= want:
        return soft
    room = max(len(trackers), soft - DAEMON_DESCRIPTORS - RESERVE * len(trackers))
    total = sum(t.max_connections for t in trackers.values())
    lowered = {}
    for name, tracker in trackers.items():
        tracker.max_connections = max(1, room * tracker.max_connections // total)
        lowered[name] = tracker.max_connections
    _log.warn(
        "descriptor limit {soft} (hard {hard}) is below the {want} that max_connections needs; lowered "
        "max_connections to {lowered} so that health and metrics still answer: raise LimitNOFILE (systemd) "
        "or ulimit -n to {want}",
        soft=soft, hard="unlimited" if hard == infinite else hard, want=want,
        lowered=", ".join(f"{name} {value}" for name, value in lowered.items()),
    )
    return soft
