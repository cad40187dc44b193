"""
Store fairness: clicker's acknowledged writes while groovejet hosts flood the store with snapshots.

20 hosts write 60 KB snapshots 90 times a second each and 40 devices write a score 10 times a
second each, for --seconds, against relayd's SqliteStore and, in the same run, against the plain
adbapi path it replaced (every write its own transaction, first come first served). Reported: the
p50 and p99 time from a score's put to its durability, and how many snapshot writes each made
durable. One process, one disk; bounded in time.

    .venv/bin/python bench/store_fairness.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from twisted.internet import defer, reactor, task

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from relayd.store import _UPSERT, SqliteStore, _encode  # noqa: E402


class FirstComeStore(SqliteStore):
    """The path before: every put its own transaction, in arrival order."""

    def put(self, namespace, key, value):
        return self._pool.runOperation(_UPSERT, (namespace, key, _encode(value)))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


@defer.inlineCallbacks
def run(store_class, seconds: float) -> dict:
    path = os.path.join(tempfile.mkdtemp(prefix="relayd-fair-"), "store.sqlite3")
    store = store_class(path, reactor=reactor)
    snapshot = {"world": "w" * 60_000}
    latencies: list[float] = []
    snapshots_done = [0]
    outstanding: list[defer.Deferred] = []

    def host_tick(host: int):
        d = store.put("groovejet.rooms", f"room{host}", snapshot)
        d.addCallback(lambda _: snapshots_done.__setitem__(0, snapshots_done[0] + 1))
        outstanding.append(d)

    def device_tick(device: int, counter=[0]):
        counter[0] += 1
        start = reactor.seconds()
        d = store.put("clicker.latest", f"{device:06d}", {"timestamp": counter[0], "score": counter[0]})
        d.addCallback(lambda _: latencies.append(reactor.seconds() - start))
        outstanding.append(d)

    loops = [task.LoopingCall(host_tick, h) for h in range(20)]
    loops += [task.LoopingCall(device_tick, n) for n in range(40)]
    for n, loop in enumerate(loops):
        loop.start(1 / 90 if n < 20 else 0.1, now=False)
    yield task.deferLater(reactor, seconds, lambda: None)
    for loop in loops:
        loop.stop()
    written = snapshots_done[0]
    scores = len(latencies)
    # what was still queued at the end is not counted: the figures are what finished in the window
    yield defer.DeferredList(outstanding)
    yield store.close()
    return {"store": store_class.__name__, "scores_acknowledged": scores, "snapshots_written": written,
            "score_p50_ms": round(percentile(latencies[:scores], 0.5) * 1000, 1),
            "score_p99_ms": round(percentile(latencies[:scores], 0.99) * 1000, 1)}


@defer.inlineCallbacks
def main(seconds: float):
    results = []
    for store_class in (SqliteStore, FirstComeStore):
        results.append((yield run(store_class, seconds)))
    relayd, before = results
    for r in results:
        print(json.dumps(r))
    print(json.dumps({"score_p99_ratio_before_over_now": round(before["score_p99_ms"] / max(relayd["score_p99_ms"], 0.1), 1)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    task.react(lambda _reactor: main(args.seconds))
