"""
An atheris (libFuzzer) target for one relayd app, through the whole in-memory stack: HTTP upgrade,
Autobahn framing, the app's adapter and core. Run it with fuzz/run (see its header).

An input is lines separated by b"\\n". The first byte of a line picks the client (byte % 4) and what
it does (byte // 4 % 3: 0 text frame, 1 binary frame, 2 close); the rest is the payload, sent as it
is (invalid UTF-8 in a text frame included). After the lines every client closes. A crash is any
exception out of the stack, an internal error counted by relayd, or state left behind.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from tests.support import Harness, make_config  # noqa: E402

APPS = {
    "wikispeedruns": ("[app:wikispeedruns]\nlisteners = main\npath = /x\n", "/x"),
    "carparty": ("[app:carparty]\nlisteners = main\npath = /x\n", "/x/ws"),
    "clicker": ("[app:clicker]\nlisteners = main\npath = /x\n", "/x/ws"),
    "groovejet": ("[app:groovejet]\nlisteners = main\npath = /x\n", "/x"),
    "gameroom": ("[app:gameroom]\nlisteners = main\npath = /x\ncreate_token = fuzz-token-0123456789\n", None),
}
APP = os.environ.get("RELAYD_FUZZ_APP", "wikispeedruns")
SECTION, PATH = APPS[APP]
CONFIG = make_config(SECTION, limits="rate_limit = 0\nbyte_rate = 0")


def internal_errors(h) -> float:
    total = 0.0
    for metric in h.service.metrics.registry.collect():
        if metric.name == "relayd_protocol_errors":
            total += sum(s.value for s in metric.samples if s.labels.get("kind") == "internal")
    return total


def one_input(data: bytes) -> None:
    h = Harness(CONFIG).start()
    path = PATH
    if path is None:
        import json

        body = json.dumps({"engine": "e", "seed": 1, "players": 2}).encode()
        room = json.loads(h.http("POST", "/x/create", body, {"Authorization": "Bearer fuzz-token-0123456789"})[2])
        path = f"/x/play/{room['id']}"
    clients = {}
    for line in data.split(b"\n")[:64]:
        if not line:
            continue
        index, kind, payload = line[0] % 4, line[0] // 4 % 3, line[1:]
        client = clients.get(index)
        if client is None or client.closed:
            client = clients[index] = h.ws(path)
        if kind == 0:
            client.sendMessage(payload, False)
        elif kind == 1:
            client.sendMessage(payload, True)
        else:
            client.sendClose(1000)
        h.flush()
    for client in clients.values():
        if not client.closed:
            client.sendClose(1000)
    h.flush()
    if internal_errors(h):
        raise AssertionError("an internal error was counted")
    if len(h.service.listeners["main"].tracker):
        raise AssertionError("connections left open")
    if APP in ("wikispeedruns", "carparty", "clicker") and h.service.bus.channel_count():
        raise AssertionError("bus channels left behind")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
