"""
The durable-state seam: a small namespaced key-value store of JSON values, for what must survive a
restart (device identities, snapshots, running games).

SqliteStore does its I/O on one dedicated database thread (adbapi with a single connection), so a
write never stalls the reactor. Writes wait in a queue on the reactor side and go to the thread as
one transaction at a time (group commit: one fsync for everything that waited), and the queue is
fair between namespaces: a transaction takes at most PER_LANE writes of each namespace, so one
app's flood of writes never stands between another app and its next commit. A put to a key whose
previous put has not started yet replaces it in its place in the queue (only the newest value is
written; both callers hear when it is durable). Otherwise writes to one namespace are applied in
the order they were made, and reads see the writes still waiting. MemoryStore is the same interface over a dict, for tests and for
deployments that keep nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from itertools import groupby
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from relayd import jsonutil
from relayd.errors import StoreUnavailable
from relayd.logs import Sparse
from relayd.ws._writes import BATCH

_log = Logger()

FAILURE_LOG_INTERVAL = 30.0  # seconds between the log lines of writes that keep failing the same way


class IStore(Interface):
    def get(namespace: str, key: str) -> defer.Deferred:
        """Fire with the stored value, or None."""

    def put(namespace: str, key: str, value: Any) -> defer.Deferred:
        """Store a JSON-serialisable value; fires once it is durable."""

    def delete(namespace: str, key: str) -> defer.Deferred:
        """Remove the key; fires once that is durable."""

    def items(namespace: str) -> defer.Deferred:
        """Fire with a list of (key, value) of the namespace."""

    def put_many(entries: list) -> defer.Deferred:
        """Store (namespace, key, value) entries in one transaction; fires once all are durable."""

    def delete_many(entries: list) -> defer.Deferred:
        """Remove (namespace, key) entries in one transaction."""

    def close() -> defer.Deferred:
        """Finish pending writes and release the store."""


def _encode(value: Any) -> str:
    # stored values come from parsed, checked input (no NaN, no lone surrogate that jsonutil would not
    # escape); jsonutil writes them with orjson, at half the standard library's cost
    return jsonutil.dumps(value).decode("utf-8")


@implementer(IStore)
class MemoryStore:
    def __init__(self, data: dict | None = None):
        self.data: dict[tuple[str, str], str] = data if data is not None else {}

    def get(self, namespace, key):
        raw = self.data.get((namespace, key))
        return defer.succeed(None if raw is None else json.loads(raw))

    def put(self, namespace, key, value):
        self.data[(namespace, key)] = _encode(value)
        return defer.succeed(None)

    def delete(self, namespace, key):
        self.data.pop((namespace, key), None)
        return defer.succeed(None)

    def items(self, namespace):
        return defer.succeed(
            [(k, json.loads(v)) for (ns, k), v in sorted(self.data.items()) if ns == namespace]
        )

    def put_many(self, entries):
        for namespace, key, value in entries:
            self.data[(namespace, key)] = _encode(value)
        return defer.succeed(None)

    def delete_many(self, entries):
        for namespace, key in entries:
            self.data.pop((namespace, key), None)
        return defer.succeed(None)

    def close(self):
        return defer.succeed(None)


_UPSERT = "INSERT INTO kv (ns, key, value) VALUES (?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value"
_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (ns, key))"


def _open_connection(connection) -> None:
    # WAL keeps readers off the writer's back; FULL makes a committed write survive power loss,
    # which is what "acknowledged" promises to a device
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(_SCHEMA)
    connection.commit()


_DELETE = object()  # a queued write that removes its key
PER_LANE = 64  # writes of one namespace in one transaction
MAX_BATCH_BYTES = 4 * 1024 * 1024


class _Job:
    """Writes made by one call, applied in one transaction, and who waits for them to be durable."""

    __slots__ = ("entries", "waiters", "size", "lane")

    def __init__(self, entries: list[tuple[str, str, Any]]):
        self.entries = entries  # (namespace, key, encoded text or _DELETE)
        self.waiters: list[defer.Deferred] = []
        self.size = sum(len(v) if isinstance(v, str) else 16 for _, _, v in entries)
        self.lane = entries[0][0] if entries else ""


@implementer(IStore)
class SqliteStore:
    def __init__(self, path: str, reactor=None):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        kwargs = {}
        if reactor is not None:
            kwargs["cp_reactor"] = reactor
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_open_connection,
            **kwargs,
        )
        self._jobs: list[_Job] = []
        self._single: dict[tuple[str, str], _Job] = {}  # key -> its one-entry job not yet started
        self._last: dict[str, _Job] = {}  # namespace -> its newest job not yet started
        self._writing = False
        self._drained: list[defer.Deferred] = []
        if reactor is None:
            from twisted.internet import reactor
        self._clock = reactor
        self.failing: str | None = None  # why writes fail now (a full disk): the daemon is not ready
        self._failures = 0  # failed transactions since writes last succeeded
        self._said = Sparse(reactor, FAILURE_LOG_INTERVAL)
        # fail at start-up, in the caller's thread, when the file cannot be a database
        probe = sqlite3.connect(path)
        try:
            _open_connection(probe)
        finally:
            probe.close()

    # ---- reads: they see the writes still waiting ----------------------------------------------

    def _waiting(self, namespace: str, key: str):
        for job in reversed(self._jobs):
            for ns, k, value in reversed(job.entries):
                if ns == namespace and k == key:
                    return value
        return None

    def get(self, namespace, key):
        waiting = self._waiting(namespace, key)
        if waiting is _DELETE:
            return defer.succeed(None)
        if waiting is not None:
            return defer.succeed(json.loads(waiting))
        d = self._pool.runQuery("SELECT value FROM kv WHERE ns = ? AND key = ?", (namespace, key))
        d.addCallback(lambda rows: json.loads(rows[0][0]) if rows else None)
        return d

    def items(self, namespace):
        d = self._pool.runQuery("SELECT key, value FROM kv WHERE ns = ? ORDER BY key", (namespace,))

        def overlay(rows):
            found = dict(rows)
            for job in self._jobs:
                for ns, key, value in job.entries:
                    if ns != namespace:
                        continue
                    if value is _DELETE:
                        found.pop(key, None)
                    else:
                        found[key] = value
            return [(k, json.loads(found[k])) for k in sorted(found)]

        return d.addCallback(overlay)

    # ---- writes ------------------------------------------------------------------------------

    def put(self, namespace, key, value):
        return self._single_write(namespace, key, _encode(value))

    def delete(self, namespace, key):
        return self._single_write(namespace, key, _DELETE)

    def put_many(self, entries):
        return self._enqueue(_Job([(namespace, key, _encode(value)) for namespace, key, value in entries]))

    def delete_many(self, entries):
        return self._enqueue(_Job([(namespace, key, _DELETE) for namespace, key in entries]))

    def _single_write(self, namespace: str, key: str, value) -> defer.Deferred:
        waiting = self._single.get((namespace, key))
        if waiting is not None:
            # the newest value takes the place of the one that had not started yet
            d: defer.Deferred = defer.Deferred()
            waiting.entries = [(namespace, key, value)]
            waiting.waiters.append(d)
            return d
        job = _Job([(namespace, key, value)])
        self._single[(namespace, key)] = job
        return self._enqueue(job)

    def _enqueue(self, job: _Job) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if not job.entries:
            d.callback(None)
            return d
        job.waiters.append(d)
        self._jobs.append(job)
        self._last[job.lane] = job
        self._next()
        return d

    def _next(self) -> None:
        if self._writing:
            return
        if not self._jobs:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
            return
        batch, left, per_lane, size = [], [], {}, 0
        for job in self._jobs:
            taken = per_lane.get(job.lane, 0)
            if taken < 0 or taken >= PER_LANE or (batch and size + job.size > MAX_BATCH_BYTES):
                per_lane[job.lane] = -1  # this lane waits for the next transaction from here on
                left.append(job)
                continue
            per_lane[job.lane] = taken + 1
            size += job.size
            batch.append(job)
        self._jobs = left
        for job in batch:
            if self._last.get(job.lane) is job:
                del self._last[job.lane]
            for namespace, key, _ in job.entries:
                if self._single.get((namespace, key)) is job:
                    del self._single[(namespace, key)]
        rows = [entry for job in batch for entry in job.entries]

        def write(cursor):
            # runs of upserts and of deletes each in one executemany, in order: the loop over rows is
            # SQLite's, not Python's holding the interpreter lock the reactor thread waits for
            for deleting, run in groupby(rows, key=lambda row: row[2] is _DELETE):
                if deleting:
                    cursor.executemany("DELETE FROM kv WHERE ns = ? AND key = ?", [row[:2] for row in run])
                else:
                    cursor.executemany(_UPSERT, run)

        self._writing = True
        self._pool.runInteraction(write).addBoth(self._written, batch)

    def _written(self, result, batch: list[_Job]) -> None:
        self._writing = False
        if isinstance(result, Failure):
            result = self._write_failed(result)
        elif self.failing is not None:
            _log.info("store: writes succeed again ({count} transactions had failed)", count=self._failures)
            self.failing, self._failures = None, 0
        # what the waiters send (clicker's SCORED and score events, many per transaction) is written
        # once per receiver when all of them have run, as for a WebSocket read
        with BATCH:
            for job in batch:
                for d in job.waiters:
                    if isinstance(result, Failure):
                        d.errback(result)
                    else:
                        d.callback(None)
        self._next()

    def _write_failed(self, failure: Failure) -> Failure:
        """A transaction failed: the store is failing until one succeeds, said once per kind and interval."""
        error = failure.value
        kind = _failure_kind(error)
        self.failing = f"{kind}: {error}"
        self._failures += 1
        count = self._said.due(kind)
        if count:
            _log.error("store: writes failing ({kind}: {error}); {count} transactions failed since the last line; "
                       "nothing of them was acknowledged, and /readyz answers 503 until a write succeeds",
                       kind=kind, error=str(error), count=count)
        return Failure(StoreUnavailable(f"the state store cannot write ({kind})"))

    def probe(self) -> defer.Deferred:
        """One small write, to learn whether writes succeed again (the daemon asks while failing)."""
        return self.put("_relayd", "probe", {"at": self._clock.seconds()})

    def close(self):
        """Finish the writes still waiting, then release the database thread."""
        d: defer.Deferred = defer.Deferred()
        if self._jobs or self._writing:
            self._drained.append(d)
        else:
            d.callback(None)

        def closed(result):
            self._pool.close()
            return result

        return d.addBoth(closed)


def _failure_kind(error: BaseException) -> str:
    """A failed write, named for the operator: a full disk, an I/O error, or what else it was."""
    text = str(error).lower()
    if "full" in text or getattr(error, "errno", None) == 28:
        return "disk_full"
    if "i/o" in text or "readonly" in text or "read-only" in text or isinstance(error, OSError):
        return "io_error"
    return type(error).__name__
