"""
carparty over WebSocket, wire-compatible with the CarParty Godot game server and phone client.

The first text frame logs in:
  {"action": "login_server", "server_code": "SNEK"}                        the game screen
  {"action": "login_client", "server_code": "SNEK", "client_id": "467123746"}  a phone
Extra fields are ignored; nothing is ever sent back for a login.

Then frames are relayed:
  phone -> server: JSON only; an object gets "client_id" set to the phone's id (overwriting any
      value it carried); other JSON values are forwarded as they are.
  server -> phones: to every phone of the server, never back to the server; a JSON object with a
      string "receiver_id" goes only to the phones whose client_id equals it (all of them when
      several share the id), forwarded unchanged with receiver_id in it.
  server <- relay: {"action": "connect", "client_id": ...} and {"action": "disconnect", ...}, once
      per phone connection.
When the server leaves, its code is freed and its phones are closed.

Silent drops, as the protocol defines (the connection is closed without a word; each is logged and
counted in relayd_dropped_total{app="carparty",reason=...}): a first frame that is not a JSON
object, an unknown action, a missing server_code, a phone without a string client_id, an unknown
code, a code already in use, and a phone frame that is not JSON. Binary frames from phones are
ignored (counted); binary frames from the server are relayed as binary.
Frames up to 1 MiB by default; every frame reaches every live receiver, in order.

With [bus] backend = redis a server code is unique in the cluster and phones may log in on any node
(relayd.apps.carparty.cluster); frames sent right after a login wait for its answer, in order. A
login the node cannot check with Redis closes 1013 "relay unavailable, try again".
"""

from __future__ import annotations

from relayd.apps.base import App
from relayd.apps.carparty.cluster import CodeKeeper
from relayd.apps.carparty.core import CarParty
from relayd.apps.carparty.session import CarPartySession
from relayd.ws.protocol import RelaydProtocol


class CarPartyProtocol(RelaydProtocol):
    """A carparty client's WebSocket: its logic is a CarPartySession."""

    accepts_binary = True
    session_class = CarPartySession


class CarPartyApp(App):
    protocol = CarPartyProtocol

    def __init__(self, ctx):
        super().__init__(ctx)
        if self.cluster is None:
            self.core = CarParty(self.bus)
        else:
            # a child of the app's services: it starts and stops with the daemon, while Redis is connected
            keeper = CodeKeeper(self.cluster, clock=self.reactor)
            keeper.setServiceParent(self.services)
            self.core = keeper.core = CarParty(self.bus, keeper.codes())

    def room_count(self) -> int:
        return self.core.room_count()
