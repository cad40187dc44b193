"""The per-app, per-listener Autobahn factory, carrying the hardened options and what adapters need."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory

from relayd.config.model import Limits
from relayd.metrics import AppMetrics
from relayd.ws.backlog import Backlogs, default_total
from relayd.ws.keepalive import Keepalive
from relayd.ws.ratelimit import AddressRates
from relayd._internals import install_clock, protocol_with_options, quiet_debug_formatting
from relayd.ws.origin import OriginPolicy


class RelaydFactory(WebSocketServerFactory):
    def __init__(
        self,
        *,
        protocol,
        app,
        app_name: str,
        limits: Limits,
        metrics: AppMetrics,
        reactor,
        listener_name: str = "",
        secure: bool = False,
        backlogs: Backlogs | None = None,
        address_rates: AddressRates | None = None,
    ):
        super().__init__(reactor=reactor, server="relayd")
        self.protocol = protocol
        self.app = app
        self.app_name = app_name
        self.limits = limits
        self.metrics = metrics
        self.listener_name = listener_name
        self.isSecure = secure
        # the process's (RelaydService); a factory made alone bounds only its own connections
        self.backlogs = backlogs if backlogs is not None else Backlogs(default_total(), 0)
        self.address_rates = address_rates  # the process's; None: no bound across an address's connections
        self.origins = OriginPolicy(limits.allowed_origins)
        install_clock(self, reactor)
        self.setProtocolOptions(
            maxMessagePayloadSize=limits.max_message_size,
            maxFramePayloadSize=limits.max_frame_size,
            openHandshakeTimeout=limits.open_handshake_timeout,
            closeHandshakeTimeout=limits.close_handshake_timeout,
            autoPingInterval=0,  # relayd.ws.keepalive: one timer for all connections
            # send the close frame (1002, 1007, 1009) before dropping, so clients learn why
            failByDrop=False,
            webStatus=False,
        )
        self.keepalive = (
            Keepalive(reactor, limits.auto_ping_interval, limits.auto_ping_timeout or limits.auto_ping_interval)
            if limits.auto_ping_interval else None
        )
        self.protocol = protocol_with_options(protocol, self)
        quiet_debug_formatting()
