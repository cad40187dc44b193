"""
One listener: an endpoint string started with strports.service, a Site, an optional TLS layer, and
the connection tracker a drain works through.
"""

from __future__ import annotations

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from relayd.config.model import Limits, ListenerConfig
from relayd._internals import listening_port
from relayd.tls import ReloadableTLS
from relayd.web.proxy import ProxyHeaderFactory, RefusingWrapper
from relayd.web.resources import Router
from relayd.web.site import RelaydSite
from relayd.web.tracker import ConnectionTracker

_log = Logger()


class StartupError(SystemExit):
    """A start-up failure with one line for the operator; uncaught, it exits non-zero with that line."""

    def __init__(self, message: str):
        super().__init__(f"relayd: {message}")
        self.message = message


class _TLSFactory(RefusingWrapper, TLSMemoryBIOFactory):
    """relayd's TLS layer over the Site, which may refuse a connection before TLS starts."""


class Listener(MultiService):
    def __init__(self, config: ListenerConfig, *, reactor, limits: Limits, metrics):
        super().__init__()
        self.setName(f"listener:{config.name}")
        self.config = config
        self.reactor = reactor
        self.router = Router()
        self.tracker = ConnectionTracker(config.max_connections, config.max_connections_per_address)
        endpoint = config.endpoint
        self.site = RelaydSite(
            self.router, reactor=reactor, tracker=self.tracker, limits=limits, metrics=metrics,
            listener_name=config.name, trusted_proxies=config.trusted_proxies, proxies_only=endpoint.proxy_protocol,
            send_buffer=config.send_buffer,
        )
        self.tls = ReloadableTLS(endpoint.tls) if endpoint.tls is not None else None
        factory = self.site if self.tls is None else _TLSFactory(self.tls, False, self.site)
        description = endpoint.description
        if config.trusted_proxies:
            # the PROXY header comes before TLS; haproxy: listeners require it, others accept it from proxies
            factory = ProxyHeaderFactory(
                factory, config.trusted_proxies, required=endpoint.proxy_protocol,
                on_refused=self.site.reject,
            )
            description = description.removeprefix("haproxy:")
        self.factory = factory  # what the endpoint accepts connections with
        self.endpoint_service = strports.service(description, factory, reactor=reactor)
        self.endpoint_service.setServiceParent(self)
        self.accepting = False

    @property
    def secure(self) -> bool:
        return self.tls is not None

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartupError(
                f"listener {self.config.name}: cannot listen on {self.config.endpoint.description}: {e.socketError}"
            ) from None
        except Exception as e:
            raise StartupError(
                f"listener {self.config.name}: cannot listen on {self.config.endpoint.description}: {e}"
            ) from None

    def startService(self):
        super().startService()
        self.accepting = True

    def address(self):
        """The bound address once listening (tests listen on port 0 and ask)."""
        return listening_port(self.endpoint_service).getHost()

    def stop_accepting(self):
        if not self.accepting:
            return defer.succeed(None)
        self.accepting = False
        return self.endpoint_service.stopService()

    def stopService(self):
        d = self.stop_accepting()
        Service.stopService(self)
        return d

    def close_all(self) -> int:
        """Send 1001 to every WebSocket and close idle HTTP connections; returns the WebSockets told."""
        told = 0
        for slot in list(self.tracker.slots):
            if slot.websocket is not None:
                slot.websocket.going_away()
                told += 1
            elif slot.channel is not None and slot.channel.transport is not None:
                slot.channel.transport.loseConnection()
        return told

    def abort_all(self) -> int:
        left = list(self.tracker.slots)
        for slot in left:
            transport = None
            if slot.websocket is not None:
                transport = slot.websocket.transport
            elif slot.channel is not None:
                transport = slot.channel.transport
            if transport is not None:
                transport.abortConnection()
            slot.release()
        return len(left)

    def reload_tls(self) -> bool | None:
        """Re-read this listener's certificate files: True when reloaded, False when that failed, None without TLS."""
        if self.tls is None:
            return None
        return self.tls.reload()
