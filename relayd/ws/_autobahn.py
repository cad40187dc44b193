"""
Every place relayd relies on Autobahn or txaio internals, in one module.

tests/test_autobahn_internals.py checks each of these against the installed versions, so an upgrade
that changes them fails loudly there instead of subtly in production.
"""

from __future__ import annotations

from txaio._common import _BatchedTimer


def batched_timer(clock, bucket_seconds: float = 0.2, chunk_size: int = 1000):
    """
    Autobahn schedules handshake, close and keepalive timeouts on its factory's batched timer, which
    txaio binds to the global reactor. relayd binds it to the injected clock instead, so every timeout
    runs on the daemon's reactor and tests drive them with Clock.advance.
    """
    return _BatchedTimer(
        bucket_seconds * 1000.0,
        chunk_size,
        seconds_provider=clock.seconds,
        delayed_call_creator=clock.callLater,
    )


def install_clock(factory, clock) -> None:
    factory._batched_timer = batched_timer(clock)
