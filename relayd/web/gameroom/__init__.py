"""The gameroom browser client library, served by the gameroom app at <mount>/client.js (and .d.ts)."""

from __future__ import annotations

from importlib import resources


def client_script() -> bytes:
    return resources.files(__package__).joinpath("relayd-gameroom.js").read_bytes()


def client_types() -> bytes:
    return resources.files(__package__).joinpath("relayd-gameroom.d.ts").read_bytes()
