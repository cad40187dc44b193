"""
The picows peer: a minimal carparty relay (login_server / login_client, server frames to every
phone, phone frames to the server with client_id stamped) on picows, the fastest Python WebSocket
library a user would pick instead of relayd; plus the parts of wikispeedruns (lobby_prompts,
`refresh` to everyone following a lobby) and clicker (REGISTER, SCORE -> SCORED and SCORE lines to
LISTENers) that the generator's other fan-out scenarios use.

    python bench/peers/picows_relay.py PORT [KEEPALIVE_SECONDS]
"""

import asyncio
import json
import sys

import picows

KEEPALIVE = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
servers = {}
lobbies = {}  # lobby id -> set of Relay
listeners = {}  # device id -> set of Relay
devices = iter(range(100000, 1000000))
TEXT = picows.WSMsgType.TEXT


class Relay(picows.WSListener):
    def __init__(self):
        self.role = None
        self.session = None
        self.client_id = None

    def on_ws_connected(self, transport):
        self.transport = transport

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type not in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY):
            return
        payload = frame.get_payload_as_bytes()
        if self.role == "device":
            _, ts, score = payload.split(b" ")
            transport.send(TEXT, b"SCORED " + ts)
            line = b"SCORE " + ts + b" " + self.device + b" " + score
            for listener in listeners.get(self.device, ()):
                listener.transport.send(TEXT, line)
            return
        if self.role == "lobby":
            if json.loads(payload).get("type") == "lobby_prompts_update":
                for follower in lobbies.get(self.lobby, ()):
                    follower.transport.send(TEXT, b"refresh")
            return
        if self.role is None and payload[:1] != b"{":
            verb, *args = payload.split(b" ")
            if verb == b"REGISTER":
                self.role, self.device = "device", str(next(devices)).encode()
                transport.send(TEXT, b"REGISTERED " + self.device + b" 00000000-0000-4000-8000-000000000000")
            elif verb == b"LISTEN":
                self.role, self.follows = "listener", args
                for device in args:
                    listeners.setdefault(device, set()).add(self)
                transport.send(TEXT, b"CONNECT " + b" ".join(args))
            else:
                transport.disconnect()
            return
        if self.role is None:
            try:
                login = json.loads(payload)
            except ValueError:
                transport.disconnect()
                return
            if login.get("type") == "lobby_prompts":
                self.role, self.lobby = "lobby", str(login.get("lobby_id"))
                lobbies.setdefault(self.lobby, set()).add(self)
                return
            code = login.get("server_code")
            if login.get("action") == "login_server" and code not in servers:
                self.role, self.session = "server", {"server": self, "clients": set()}
                servers[code] = self.session
                self.code = code
            elif login.get("action") == "login_client" and code in servers and isinstance(login.get("client_id"), str):
                self.role, self.session, self.client_id = "client", servers[code], login["client_id"]
                self.session["clients"].add(self)
            else:
                transport.disconnect()
            return
        if self.role == "server":
            kind = frame.msg_type
            for client in self.session["clients"]:
                client.transport.send(kind, payload)
        else:
            try:
                message = json.loads(payload)
            except ValueError:
                transport.disconnect()
                return
            message["client_id"] = self.client_id
            self.session["server"].transport.send(picows.WSMsgType.TEXT, json.dumps(message).encode())

    def on_ws_disconnected(self, transport):
        if self.role == "lobby":
            lobbies.get(self.lobby, set()).discard(self)
        elif self.role == "listener":
            for device in self.follows:
                listeners.get(device, set()).discard(self)
        if self.role == "server":
            servers.pop(self.code, None)
            for client in list(self.session["clients"]):
                client.transport.disconnect()
        elif self.role == "client":
            self.session["clients"].discard(self)


async def main(port):
    # keepalive as relayd and the ws peer have it: a ping every KEEPALIVE seconds of silence
    server = await picows.ws_create_server(lambda request: Relay(), "127.0.0.1", port, max_frame_size=1 << 20,
                                           backlog=1024, enable_auto_ping=True, auto_ping_idle_timeout=KEEPALIVE,
                                           auto_ping_reply_timeout=KEEPALIVE)
    print("listening", port, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
