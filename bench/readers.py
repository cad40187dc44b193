"""
Inbound frames per second through each frame reader, as ratios to Autobahn's own parser in the same
run: 30,000 masked 100-byte text frames (what a carparty phone sends), fed in reads of 64 frames,
in interleaved rounds; the median of the rounds.

    .venv/bin/python bench/readers.py [--rounds 7] [--frames 30000]

Autobahn's parser is driven as relayd drove it before its own reader: an open server protocol whose
onMessage does nothing, bytes through _dataReceived. The readers are relayd.ws.reader (pure Python)
and relayd.ws._cwire (compiled, where built).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol  # noqa: E402

from relayd.ws import reader as python_reader  # noqa: E402
from tests.wire_streams import TolerantTransport, UPGRADE, frame  # noqa: E402

try:
    from relayd.ws import _cwire
except ImportError:
    _cwire = None


class _Quiet(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        pass


def autobahn_feeder():
    factory = WebSocketServerFactory("ws://localhost")
    factory.protocol = _Quiet
    factory.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=0, closeHandshakeTimeout=0)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(TolerantTransport())
    protocol.dataReceived(UPGRADE)
    return protocol._dataReceived


def reader_feeder(cls):
    reader = cls(65536, 65536)
    return reader.feed


def rate(make_feeder, reads, frames) -> float:
    feed = make_feeder()
    started = time.perf_counter()
    for data in reads:
        feed(data)
    return frames / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--frames", type=int, default=30000)
    args = parser.parse_args(argv)
    one = frame(1, b"x" * 100, mask=b"\x37\xfa\x21\x3d")
    reads = [one * 64] * (args.frames // 64)
    frames = len(reads) * 64
    feeders = {"autobahn": autobahn_feeder, "python twin": lambda: reader_feeder(python_reader.FrameReader)}
    if _cwire is not None:
        feeders["compiled"] = lambda: reader_feeder(_cwire.FrameReader)
    results: dict[str, list[float]] = {name: [] for name in feeders}
    for _ in range(args.rounds):
        for name, make in feeders.items():
            results[name].append(rate(make, reads, frames))
    base = statistics.median(results["autobahn"])
    print(f"{frames} masked 100-byte text frames in reads of 64, median of {args.rounds} interleaved rounds")
    print("| reader | frames/s | ratio to Autobahn's parser |\n|---|---|---|")
    for name, rates in results.items():
        median = statistics.median(rates)
        print(f"| {name} | {median:,.0f} | {median / base:.1f}x |")
    if _cwire is None:
        print("(the compiled reader is not built here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
