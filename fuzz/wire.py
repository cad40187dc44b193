"""
An atheris (libFuzzer) target for relayd's inbound frame readers: `fuzz/run wire [SECONDS]`.

An input's first byte says how its reads are cut (0: one read; otherwise reads of that many
bytes); the rest is what a client sends after the upgrade. The compiled reader, its pure-Python
twin and Autobahn's own parser each read it; a crash is any exception, a compiled reader that
fails the process, or any difference between the three up to the first error or close.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from relayd.ws import _cwire  # noqa: E402  (a fuzz run needs the compiled reader built)
    from relayd.ws import reader as python_reader  # noqa: E402
    from tests import wire_streams  # noqa: E402

LIMITS = dict(max_frame=wire_streams.MAX_FRAME, max_message=wire_streams.MAX_MESSAGE)


def one_input(data: bytes) -> None:
    if not data:
        return
    step, body = data[0], data[1:]
    pieces = [body] if not step else [body[i:i + step] for i in range(0, len(body), step)] or [b""]
    expected = wire_streams.autobahn_events(pieces, wire_streams.MAX_FRAME, wire_streams.MAX_MESSAGE)
    for reader in (_cwire.FrameReader(**LIMITS), python_reader.FrameReader(**LIMITS)):
        got = wire_streams.reader_events(reader, pieces)
        if got != expected:
            raise AssertionError(f"{type(reader).__module__} read {got!r}, Autobahn {expected!r}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
