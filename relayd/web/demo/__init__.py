"""Demo pages: one minimal page per app that connects to it and shows the messages (demo = yes)."""

from __future__ import annotations

from importlib import resources


def demo_page(app: str) -> bytes:
    return resources.files(__package__).joinpath(f"{app}.html").read_bytes()


def demo_script() -> bytes:
    return resources.files(__package__).joinpath("common.js").read_bytes()
