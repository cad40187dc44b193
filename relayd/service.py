"""
The daemon as a Twisted service tree: config -> RelaydService -> Listeners -> Sites -> app mounts.

Start: the store opens, apps start, listeners bind (a bind failure stops start-up with one line).
Stop (SIGTERM under twistd): readiness turns 503 and new WebSocket upgrades are refused with 503,
every WebSocket gets close 1001, the daemon waits up to drain_timeout for them to go, aborts what
is left, stops listening, stops the apps (their periodic work, then what they write and the leases
they release, while Redis is still connected), then this node's presence and the bus, and closes
the store.
"""

from __future__ import annotations

import os
import signal

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger

from relayd.ws import wire
from relayd.apps.base import AppContext
from relayd.apps.registry import APPS
from relayd.bus import MemoryBus
from relayd.config.model import Config
from relayd.descriptors import fit as fit_descriptors
from relayd.errors import StoreUnavailable
from relayd.listener import Listener, StartupError
from relayd.logs import make_observer
from relayd.memory import GiveBack
from relayd.metrics import Metrics
from relayd.periodic import Periodic
from relayd.statelock import StateInUse, StateLock
from relayd.store import SqliteStore
from relayd.web.demo import demo_page
from relayd.web.resources import AppMount, Health, Metrics as MetricsPage, Readiness
from relayd.ws.backlog import Backlogs
from relayd.ws.factory import RelaydFactory
from relayd.ws.ratelimit import AddressRates

_log = Logger()


class RelaydService(MultiService):
    def __init__(self, config: Config, *, reactor=None, store=None, bus=None, metrics=None, handle_signals=False):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        self.cluster = None
        self.bus = bus if bus is not None else self._open_bus()
        self.handle_signals = handle_signals
        self.ready = False
        self.draining = False
        self.state_dir = config.daemon.state_dir
        total, share = config.daemon.backlog_bounds()
        self.backlogs = Backlogs(total, share)
        self.metrics.watch_backlogs(self.backlogs)
        daemon = config.daemon
        self.address_rates = (AddressRates(daemon.address_byte_rate, daemon.address_byte_burst)
                              if daemon.address_byte_rate else None)
        # what deaf readers held goes back to the system once they are closed (relayd.memory)
        Periodic("give memory back", 5.0, GiveBack(self.backlogs), clock=reactor, now=False).setServiceParent(self)
        Periodic("store probe", 2.0, self._probe_store, clock=reactor, now=False).setServiceParent(self)
        self.store = store if store is not None else self._open_store()
        self.listeners: dict[str, Listener] = {}
        for name, listener_config in config.listeners.items():
            listener = Listener(listener_config, reactor=reactor, limits=config.limits, metrics=self.metrics)
            listener.setServiceParent(self)
            self.listeners[name] = listener
            if listener_config.health:
                listener.router.mount("/healthz", Health())
                listener.router.mount("/readyz", Readiness(self.problems))
            if listener_config.metrics:
                listener.router.mount("/metrics", MetricsPage(self.metrics.registry))
        # every connection is a descriptor: the limit must hold what the listeners may (relayd.descriptors)
        fit_descriptors({name: listener.tracker for name, listener in self.listeners.items()})
        self.apps = {}
        for name, app_config in config.apps.items():
            app_metrics = self.metrics.for_app(name)
            ctx = AppContext(
                name=name, config=app_config, reactor=reactor, bus=self.bus, store=self.store,
                metrics=app_metrics, state_dir=self.state_dir, cluster=self.cluster,
            )
            app = APPS[name].build(ctx)
            self.apps[name] = app
            app.services.setServiceParent(self)
            self.metrics.count_rooms(name, app.room_count)
            for listener_name in app_config.listeners:
                listener = self.listeners[listener_name]
                factory = RelaydFactory(
                    protocol=app.protocol, app=app, app_name=name, limits=app_config.limits,
                    metrics=app_metrics, reactor=reactor, listener_name=listener_name, secure=listener.secure,
                    backlogs=self.backlogs, address_rates=self.address_rates,
                )
                demo = demo_page(name) if app_config.demo else None
                listener.router.mount(
                    app_config.path,
                    AppMount(factory, app.http_resource(), app.accepts_websocket_path, self, demo, f"app:{name}"),
                )
        self.metrics.ready.set(0)

    def _open_bus(self):
        bus_config = self.config.bus
        if bus_config.backend == "memory":
            return MemoryBus()
        from relayd.backplane.redisbus import RedisBus

        bus = RedisBus(
            bus_config.redis, clock=self.reactor, metrics=self.metrics, prefix=bus_config.prefix,
            queue_limit=bus_config.queue_limit, max_backoff=bus_config.max_backoff,
        )
        # child services: they connect when relayd starts and disconnect once drained (the cluster,
        # added last, stops first and removes this node's presence while Redis is still connected)
        bus.setServiceParent(self)
        from relayd.backplane.cluster import Cluster

        self.cluster = Cluster(bus, clock=self.reactor, node_timeout=bus_config.node_timeout)
        self.cluster.setServiceParent(self)
        return bus

    def problems(self) -> list[str]:
        """Why this node should not get new work now; empty while it is ready."""
        found = []
        if not self.ready:
            found.append("draining" if self.draining else "starting")
        bus_problems = getattr(self.bus, "problems", None)
        if bus_problems is not None:
            found.extend(bus_problems())
        failing = getattr(self.store, "failing", None)
        if failing:
            found.append(f"store: writes failing ({failing})")
        return found

    def _probe_store(self):
        # while writes fail (a full disk), a small write learns when they succeed again; its failure is
        # the store's to log (once per interval), not this check's
        if getattr(self.store, "failing", None):
            return self.store.probe().addErrback(lambda failure: failure.trap(StoreUnavailable))
        return None

    state_lock = None

    def _open_store(self):
        path = self.config.daemon.store or os.path.join(self.state_dir, "relayd.sqlite3")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.state_lock = StateLock(path).acquire()
        except StateInUse as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"cannot lock the state store {path}: {e}") from None
        try:
            return SqliteStore(path, reactor=self.reactor)
        except Exception as e:
            self.state_lock.release()
            raise StartupError(f"cannot open the state store {path}: {e}") from None

    def _close_store(self):
        d = defer.maybeDeferred(self.store.close)
        if self.state_lock is not None:
            d.addBoth(lambda result: (self.state_lock.release(), result)[1])
        return d

    def setServiceParent(self, parent):
        # twistd asks the application for an ILogObserver before it starts logging: that is where the
        # configured format and level take effect (unless --logger was given on the command line)
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None and parent.getComponent(ILogObserver, None) is None:
            set_component(ILogObserver, make_observer(self.config.daemon.log_format, self.config.daemon.log_level))
        super().setServiceParent(parent)

    _privileged_started = False

    def privilegedStartService(self):
        if self._privileged_started:
            return
        self._privileged_started = True
        try:
            super().privilegedStartService()
        except BaseException:
            # start-up failed (a port in use): release the store's database thread and lock before leaving
            self._close_store()
            raise

    @defer.inlineCallbacks
    def startService(self):
        _log.info("relayd starting with {config}", config=self.config.path)
        _log.info("wire path: {wire}", wire=wire.describe())
        for name, app in self.apps.items():
            try:
                yield defer.maybeDeferred(app.start)
            except Exception:
                _log.failure("app {app} failed to start", app=name)
                raise
        super().startService()
        if self.handle_signals:
            self._install_sighup()
        self.ready = True
        self.metrics.ready.set(1)
        for listener in self.listeners.values():
            _log.info(
                "listening on {endpoint} ({listener})",
                endpoint=listener.config.endpoint.description, listener=listener.config.name,
            )

    def _install_sighup(self):
        def on_sighup(signum, frame):
            self.reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_sighup)

    def reload(self):
        """SIGHUP: re-read certificate files; new connections get the renewed certificates."""
        outcomes = {name: listener.reload_tls() for name, listener in self.listeners.items()}
        reloaded = [name for name, outcome in outcomes.items() if outcome]
        failed = [name for name, outcome in outcomes.items() if outcome is False]
        if reloaded:
            _log.info("SIGHUP: reloaded the TLS certificates of {listeners}", listeners=", ".join(reloaded))
        if failed:
            _log.error("SIGHUP: the TLS certificates of {listeners} were not reloaded (see above); "
                       "they keep serving the previous ones", listeners=", ".join(failed))
        if not reloaded and not failed:
            _log.info("SIGHUP: nothing to reload (no TLS listener; the config file is read only at start)")

    def _all_closed_within(self, timeout: float) -> defer.Deferred:
        """Fires True once every listener is empty, or False when timeout passes first."""
        outcome: defer.Deferred = defer.Deferred()

        def settle(value):
            if not outcome.called:
                outcome.callback(value)
                if timer.active():
                    timer.cancel()

        timer = self.reactor.callLater(timeout, settle, False)
        defer.gatherResults([listener.tracker.when_empty() for listener in self.listeners.values()]).addCallback(
            lambda _: settle(True)
        )
        return outcome

    @defer.inlineCallbacks
    def stopService(self):
        self.ready = False
        self.draining = True
        self.metrics.ready.set(0)
        told = sum(listener.close_all() for listener in self.listeners.values())
        _log.info("draining: told {count} WebSockets the server is going away", count=told)
        timeout = self.config.daemon.drain_timeout
        if not (yield self._all_closed_within(timeout)):
            aborted = sum(listener.abort_all() for listener in self.listeners.values())
            _log.warn("drain timeout after {timeout}s: aborted {count} connections", timeout=timeout, count=aborted)
        yield defer.DeferredList([listener.stop_accepting() for listener in self.listeners.values()])
        # the apps first, while Redis is still connected: their periodic work stops, then each writes
        # what is dirty and releases its leases, so another node may serve its rooms at once; then the
        # rest of the tree (listeners, this node's presence, the bus)
        for name, app in self.apps.items():
            try:
                yield defer.maybeDeferred(app.services.stopService)
                app.services.disownServiceParent()
                yield defer.maybeDeferred(app.stop)
            except Exception:
                _log.failure("app {app} failed to stop cleanly", app=name)
        yield defer.maybeDeferred(super().stopService)
        yield self._close_store()
        _log.info("relayd stopped")

