"""
Which wire path this process runs: the compiled one (relayd/ws/_cwire.c, built by `pip install .`
where a C compiler exists: the frame reader and send_many for fan-out) or the pure-Python frame
reader (relayd/ws/reader.py), with fan-out through Twisted's own writes.

RELAYD_WIRE=python chooses the twin even where the compiled module is installed (the test suite
runs once with each); relayd logs at start which one runs.
"""

from __future__ import annotations

import os

from relayd.ws import reader as _python_reader


def _choose():
    if os.environ.get("RELAYD_WIRE", "").strip().lower() == "python":
        return "python", _python_reader.FrameReader, None, "RELAYD_WIRE=python"
    try:
        from relayd.ws import _cwire
    except ImportError as e:
        return "python", _python_reader.FrameReader, None, f"the compiled module is not installed ({e})"
    return "compiled", _cwire.FrameReader, _cwire.send_many, ""


# 'compiled' or 'python'; the FrameReader class; send_many, only compiled (a Python loop over the
# sockets costs what Twisted's own write per receiver costs, which the twin uses instead); why the
# twin runs, where it does
IMPLEMENTATION, FrameReader, send_many, WHY = _choose()


def describe() -> str:
    """One line for the start-up log."""
    if IMPLEMENTATION == "compiled":
        return "compiled frame reader and fan-out writer (relayd.ws._cwire)"
    return f"pure-Python frame reader (relayd.ws.reader): {WHY}"
