"""
carparty, sans IO: one game server per code, many phones per server, every frame relayed in order.

The core decides; the adapter only carries frames. What the protocol drops silently is returned as
a Drop with a reason, so the adapter can log and count it.
"""

from __future__ import annotations

from typing import Any, Callable

from relayd import jsonutil
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


class ServerSession:
    __slots__ = ("code", "subscription", "clients")

    def __init__(self, code: str):
        self.code = code
        self.subscription = None
        self.clients: dict[int, "ClientSession"] = {}


class ClientSession:
    __slots__ = ("server", "client_id", "subscriptions", "kick")

    def __init__(self, server: ServerSession, client_id: str, kick: Callable[[], None]):
        self.server = server
        self.client_id = client_id
        self.subscriptions: list = []
        self.kick = kick


class CarParty:
    def __init__(self, bus: IBus):
        self.bus = bus
        self.servers: dict[str, ServerSession] = {}

    def login_server(self, code: str, receiver: Callable[[Frame], None]) -> ServerSession:
        if code in self.servers:
            raise Drop("code_in_use")
        server = ServerSession(code)
        server.subscription = self.bus.subscribe(_server_channel(code), receiver)
        self.servers[code] = server
        return server

    def login_client(self, code: str, client_id: str, receiver: Callable[[Frame], None],
                     kick: Callable[[], None]) -> ClientSession:
        server = self.servers.get(code)
        if server is None:
            raise Drop("unknown_code")
        client = ClientSession(server, client_id, kick)
        client.subscriptions = [
            self.bus.subscribe(_clients_channel(code), receiver),
            self.bus.subscribe(_client_channel(code, client_id), receiver),
        ]
        server.clients[id(client)] = client
        self.bus.publish(_server_channel(code), Frame.json({"action": "connect", "client_id": client_id}))
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
        self.bus.publish(_server_channel(client.server.code), frame)

    def from_server(self, server: ServerSession, payload: bytes, is_binary: bool) -> int:
        """A server frame: to the phones named by receiver_id, else to every phone; encoded once."""
        frame = Frame(payload, is_binary)
        targeted, receiver = (False, None) if is_binary else _receiver_id(payload)
        if not targeted:
            return self.bus.publish(_clients_channel(server.code), frame)
        if receiver is None:
            raise Drop("receiver_id_not_string")
        return self.bus.publish(_client_channel(server.code, receiver), frame)

    def client_left(self, client: ClientSession) -> None:
        server = client.server
        if server.clients.pop(id(client), None) is None:
            return
        for subscription in client.subscriptions:
            subscription.cancel()
        if self.servers.get(server.code) is server:
            self.bus.publish(
                _server_channel(server.code), Frame.json({"action": "disconnect", "client_id": client.client_id})
            )

    def server_left(self, server: ServerSession) -> None:
        """The code is freed and every phone of this server is closed."""
        if self.servers.get(server.code) is server:
            del self.servers[server.code]
        server.subscription.cancel()
        for client in list(server.clients.values()):
            self.client_left(client)
            client.kick()

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
