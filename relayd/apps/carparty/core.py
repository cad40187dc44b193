"""
carparty, sans IO: one game server per code, many phones per server, every frame relayed in order.

The core decides; the adapter only carries frames. What the protocol drops silently is returned as
a Drop with a reason, so the adapter can log and count it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from zope.interface import Interface, implementer

from relayd import jsonutil
from relayd.backplane import codec
from relayd.bus import IBus
from relayd.ws.frames import Frame


class Drop(Exception):
    """The protocol's silent drop: the connection is closed without a word, for this reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _server_channel(code: str) -> str:
    return "carparty:server:" + code


def _clients_channel(code: str) -> str:
    return "carparty:clients:" + code


def _client_channel(code: str, client_id: str) -> str:
    return "carparty:client:" + code + ":" + client_id


def parse_login(payload: bytes) -> dict:
    try:
        message = jsonutil.loads(payload)
    except jsonutil.BadJSON:
        raise Drop("login_not_json") from None
    if not isinstance(message, dict):
        raise Drop("login_not_object")
    action = message.get("action")
    if action not in ("login_server", "login_client"):
        raise Drop("unknown_action")
    code = message.get("server_code")
    if not isinstance(code, str) or not code:
        raise Drop("missing_code")
    if action == "login_client":
        client_id = message.get("client_id")
        if not isinstance(client_id, str):
            raise Drop("missing_client_id")
    return message


class ServerGone:
    """Told to a server's phones, on whatever node they are, when it leaves: they are closed."""

    __slots__ = ("code",)

    def __init__(self, code: str):
        self.code = code


codec.register(b"g", ServerGone, lambda m: m.code.encode("utf-8", "surrogatepass"),
               lambda b: ServerGone(b.decode("utf-8", "surrogatepass")))


class ICodes(Interface):
    """Which server codes are in use: one node's dict, or leases shared by every node."""

    def claim(code: str) -> defer.Deferred:
        """Fires True when this node's server now holds code, False when the code is in use."""

    def exists(code: str) -> defer.Deferred:
        """Fires True when a server holds code, on any node."""

    def release(code: str):
        """The server holding code left; may return a Deferred that fires once the code is free everywhere."""


@implementer(ICodes)
class MemoryCodes:
    def __init__(self) -> None:
        self.codes: set[str] = set()

    def claim(self, code):
        if code in self.codes:
            return defer.succeed(False)
        self.codes.add(code)
        return defer.succeed(True)

    def exists(self, code):
        return defer.succeed(code in self.codes)

    def release(self, code):
        self.codes.discard(code)


class ServerSession:
    __slots__ = ("code", "subscription", "kick", "left")

    def __init__(self, code: str, kick: Callable[[], None]):
        self.code = code
        self.subscription = None
        self.kick = kick
        self.left = False  # gone before its claim was answered


class ClientSession:
    __slots__ = ("core", "code", "client_id", "subscriptions", "receiver", "kick", "gone")

    def __init__(self, core: "CarParty", code: str, client_id: str, receiver: Callable[[Frame], None],
                 kick: Callable[[], None]):
        self.core = core
        self.code = code
        self.client_id = client_id
        self.subscriptions: list = []
        self.receiver = receiver
        self.kick = kick
        self.gone = False

    def deliver(self, message) -> None:
        """What the phone's channels carry: frames for it, or its server's leaving."""
        # every frame the server sends passes here: a Frame is told apart by one type check
        if type(message) is not Frame and isinstance(message, ServerGone):
            self.core._forget(self)
            self.kick()
        else:
            self.receiver(message)


class CarParty:
    def __init__(self, bus: IBus, codes: ICodes | None = None):
        self.bus = bus
        self.codes = codes if codes is not None else MemoryCodes()
        self.servers: dict[str, ServerSession] = {}  # the servers on this node
        self.clients: dict[str, dict[int, ClientSession]] = {}  # this node's phones, by code

    def login_server(self, code: str, receiver: Callable[[Frame], None], kick: Callable[[], None]) -> defer.Deferred:
        """
        Fires with the ServerSession once the code is this server's; fails with Drop("code_in_use").
        The server listens before it claims the code, so no phone can announce itself unheard.
        """
        if code in self.servers:
            raise Drop("code_in_use")
        server = self.servers[code] = ServerSession(code, kick)  # held here while the claim is on its way
        subscription = self.bus.subscribe(_server_channel(code), receiver)

        def claimed(ok):
            if not ok or server.left:
                subscription.cancel()
                if self.servers.get(code) is server:
                    del self.servers[code]
                if ok:
                    self.codes.release(code)
                raise Drop("code_in_use" if not ok else "left_while_logging_in")
            server.subscription = subscription
            return server

        def failed(failure):
            subscription.cancel()
            if self.servers.get(code) is server:
                del self.servers[code]
            return failure

        d = self.bus.when_subscribed(_server_channel(code))
        d.addCallback(lambda _: self.codes.claim(code))
        return d.addCallbacks(claimed, failed)

    def login_client(self, code: str, client_id: str, receiver: Callable[[Frame], None],
                     kick: Callable[[], None]) -> defer.Deferred:
        """
        Fires with the ClientSession once its server is known to exist and the phone hears its
        channels; fails with Drop("unknown_code").
        """

        def found(exists):
            if not exists:
                raise Drop("unknown_code")
            client = ClientSession(self, code, client_id, receiver, kick)
            deliver = client.deliver  # one bound method for both channels
            client.subscriptions = [
                self.bus.subscribe(_clients_channel(code), deliver),
                self.bus.subscribe(_client_channel(code, client_id), deliver),
            ]
            self.clients.setdefault(code, {})[id(client)] = client
            heard = defer.gatherResults([
                self.bus.when_subscribed(_clients_channel(code)),
                self.bus.when_subscribed(_client_channel(code, client_id)),
            ])
            return heard.addCallback(lambda _: self._announce(client))

        return self.codes.exists(code).addCallback(found)

    def _announce(self, client: ClientSession) -> ClientSession:
        if not client.gone:
            self.bus.publish(_server_channel(client.code), Frame.json({"action": "connect", "client_id": client.client_id}))
        return client

    def from_client(self, client: ClientSession, payload: bytes) -> None:
        """A phone's frame, stamped with its client_id (overwriting any it carried), to its server."""
        try:
            message = jsonutil.loads(payload)
        except jsonutil.BadJSON:
            raise Drop("client_frame_not_json") from None
        if isinstance(message, dict):
            message["client_id"] = client.client_id
            frame = Frame.json(message)
        else:
            frame = Frame(payload)
        self.bus.publish(_server_channel(client.code), frame)

    def from_server(self, server: ServerSession, payload: bytes, is_binary: bool) -> int:
        """A server frame: to the phones named by receiver_id, else to every phone; encoded once."""
        frame = Frame(payload, is_binary)
        targeted, receiver = (False, None) if is_binary else _receiver_id(payload)
        if not targeted:
            return self.bus.publish(_clients_channel(server.code), frame)
        if receiver is None:
            raise Drop("receiver_id_not_string")
        return self.bus.publish(_client_channel(server.code, receiver), frame)

    def _forget(self, client: ClientSession) -> bool:
        if client.gone:
            return False
        client.gone = True
        for subscription in client.subscriptions:
            subscription.cancel()
        phones = self.clients.get(client.code)
        if phones is not None:
            phones.pop(id(client), None)
            if not phones:
                del self.clients[client.code]
        return True

    def client_left(self, client: ClientSession) -> None:
        if self._forget(client):
            self.bus.publish(
                _server_channel(client.code), Frame.json({"action": "disconnect", "client_id": client.client_id})
            )

    def server_left(self, server: ServerSession) -> None:
        """The code is freed and every phone of this server, on any node, is closed."""
        if server.subscription is None:
            server.left = True  # its claim is still on the way (or was refused): claimed() cleans up
            return
        if self.servers.get(server.code) is server:
            del self.servers[server.code]
            self.codes.release(server.code)
        server.subscription.cancel()
        self.bus.publish(_clients_channel(server.code), ServerGone(server.code))

    def server_vanished(self, code: str) -> None:
        """The node of this code's server died: close this node's phones of it, as if it had left."""
        for client in list(self.clients.get(code, {}).values()):
            self._forget(client)
            client.kick()

    def server_lost(self, code: str) -> None:
        """This node's server lost its code to a server on another node: close it."""
        server = self.servers.pop(code, None)
        if server is not None:
            if server.subscription is not None:
                server.subscription.cancel()
                server.subscription = None
            server.kick()

    def room_count(self) -> int:
        return len(self.servers)


def _receiver_id(payload: bytes) -> tuple[bool, str | None]:
    """
    Whether the frame is a JSON object with a receiver_id, and that id when it is a string: ids match
    as JSON strings, so a numeric receiver_id reaches nobody.
    """
    if b"receiver_id" not in payload or payload.lstrip()[:1] != b"{":
        return False, None
    try:
        message: Any = jsonutil.loads(payload)
    except jsonutil.BadJSON:
        return False, None
    if not isinstance(message, dict) or "receiver_id" not in message:
        return False, None
    receiver = message["receiver_id"]
    return True, receiver if isinstance(receiver, str) else None
