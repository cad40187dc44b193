"""
wikispeedruns over WebSocket, wire-compatible with the deployed wikispeedruns.com pages.

Text frames of JSON objects with a "type". The first frame decides what the connection is:

  {"type": "wait_start", "user": U, "lobby_id": L, "prompt_id": P [, "token": T]}
      joins the waiting group (L, P); a name already waiting there is renamed "also " + name
      (repeatedly). After every join and leave everyone in the group, the newcomer included, gets
      {"type": "update", "users": [...]}. Later on this connection:
      {"type": "start", ...} -> {"type": "start"} to everyone in the group, the sender included.
      With a configured secret only a connection whose token says host may start; others get
      {"type": "error", "error": "not_host", "message": ...} and stay connected.
  {"type": "leaderboard", "lobby_id": L, "prompt_id": P}
      subscribes; nothing is sent back.
  {"type": "leaderboard_update", "lobby_id": L, "prompt_id": P}
      every leaderboard subscriber of (L, P) receives the text frame `refresh`; then this
      connection is closed with 1000.
  {"type": "lobby_prompts", "lobby_id": L}
      subscribes; a later {"type": "lobby_prompts_update"} on the same connection sends `refresh`
      to every subscriber of L, the sender included.

Ids are integers, strings or null, kept apart by type (10 and "10" are different groups).
Other later frames are ignored. Errors: an unknown first type closes 1000 "invalid message type";
malformed JSON, a non-object, missing or mistyped keys, or a bad token close 1008 with the reason;
binary frames close 1003; frames above the limit close 1009.

HTTP, for the main site's server (bearer token `trigger_token` from the config):
  POST <mount>/leaderboard_update   {"lobby_id": L, "prompt_id": P}  -> 200 {"delivered": n}
  POST <mount>/lobby_prompts_update {"lobby_id": L}                  -> 200 {"delivered": n}
Wrong or missing token: 401 and nothing delivered.

With [bus] backend = redis a group spans nodes (relayd.apps.wikispeedruns.cluster); a wait_start the
node cannot write to Redis closes 1013 "lobby service unavailable, try again".
"""

from __future__ import annotations

from twisted.web.resource import Resource

from relayd import jsonutil
from relayd.apps.base import App
from relayd.apps.wikispeedruns.cluster import RedisRoster, RosterKeeper
from relayd.apps.wikispeedruns.core import TokenVerifier, WikiSpeedruns
from relayd.apps.wikispeedruns.session import WikiSpeedrunsSession
from relayd.errors import ProtocolError
from relayd.quota import AddressQuota
from relayd.web.endpoint import JSONEndpoint
from relayd.ws.protocol import RelaydProtocol

class WikiSpeedrunsProtocol(RelaydProtocol):
    """A wikispeedruns page's WebSocket: its logic is a WikiSpeedrunsSession."""

    session_class = WikiSpeedrunsSession


class Trigger(JSONEndpoint):
    """POST endpoints that do what the WebSocket triggers do, for the main site's server."""

    def __init__(self, app: "WikiSpeedrunsApp", channel_of):
        super().__init__(app)
        self.channel_of = channel_of

    def render_POST(self, request):
        if not self.authorized(request, self.app.options["trigger_token"], "unauthorized_trigger"):
            return self.answer(request, 401, {"error": "unauthorized"})
        body = self.body(request)
        if body is None:
            return self.answer(request, 413, {"error": "body too large"})
        try:
            message = jsonutil.loads(body)
            if not isinstance(message, dict):
                raise ProtocolError("malformed_message", "the body must be a JSON object")
            channel = self.channel_of(message)
        except jsonutil.BadJSON as e:
            return self.answer(request, 400, {"error": f"not JSON: {e}"})
        except ProtocolError as e:
            return self.answer(request, 400, {"error": e.message})
        return self.answer(request, 200, {"delivered": self.app.core.refresh(channel)})


class WikiSpeedrunsApp(App):
    protocol = WikiSpeedrunsProtocol

    def __init__(self, ctx):
        super().__init__(ctx)
        secret = self.options["secret"]
        verifier = TokenVerifier(secret.encode()) if secret else None
        o = self.options
        bounds = dict(clock=self.reactor, max_name_length=o["max_name_length"], max_group_size=o["max_group_size"],
                      roster_interval=o["roster_interval"], roster_bytes_per_second=o["roster_bytes_per_second"])
        self.join_quota = AddressQuota(o["joins_per_address"], o["join_window"], self.reactor)
        if self.cluster is None:
            self.core = WikiSpeedruns(self.bus, verifier, **bounds)
        else:
            roster = RedisRoster(self.cluster, ttl=max(60.0, 3 * self.cluster.node_timeout))
            self.core = WikiSpeedruns(self.bus, verifier, roster, **bounds)
            # a child of the app's services: it starts and stops with the daemon, while Redis is connected
            RosterKeeper(self.core, roster, self.cluster, clock=self.reactor).setServiceParent(self.services)

    def stop(self):
        self.core.shutdown()

    def http_resource(self):
        root = Resource()
        root.putChild(b"leaderboard_update", Trigger(self, self.core.leaderboard_channel))
        root.putChild(b"lobby_prompts_update", Trigger(self, self.core.lobby_prompts_channel))
        return root

    def room_count(self) -> int:
        return self.core.room_count()
