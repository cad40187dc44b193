"""
The durable-state seam: a small namespaced key-value store of JSON values, for what must survive a
restart (device identities, snapshots, running games).

SqliteStore does its I/O on one dedicated database thread (adbapi with a single connection), so a
write never stalls the reactor and writes are applied in the order they were made. MemoryStore is
the same interface over a dict, for tests and for deployments that keep nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet import defer
from zope.interface import Interface, implementer


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
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


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
        # fail at start-up, in the caller's thread, when the file cannot be a database
        probe = sqlite3.connect(path)
        try:
            _open_connection(probe)
        finally:
            probe.close()

    def get(self, namespace, key):
        d = self._pool.runQuery("SELECT value FROM kv WHERE ns = ? AND key = ?", (namespace, key))
        d.addCallback(lambda rows: json.loads(rows[0][0]) if rows else None)
        return d

    def put(self, namespace, key, value):
        return self._pool.runOperation(_UPSERT, (namespace, key, _encode(value)))

    def delete(self, namespace, key):
        return self._pool.runOperation("DELETE FROM kv WHERE ns = ? AND key = ?", (namespace, key))

    def items(self, namespace):
        d = self._pool.runQuery("SELECT key, value FROM kv WHERE ns = ? ORDER BY key", (namespace,))
        d.addCallback(lambda rows: [(k, json.loads(v)) for k, v in rows])
        return d

    def put_many(self, entries):
        rows = [(namespace, key, _encode(value)) for namespace, key, value in entries]

        def write(cursor):
            cursor.executemany(_UPSERT, rows)

        return self._pool.runInteraction(write)

    def delete_many(self, entries):
        rows = list(entries)

        def delete(cursor):
            cursor.executemany("DELETE FROM kv WHERE ns = ? AND key = ?", rows)

        return self._pool.runInteraction(delete)

    def close(self):
        self._pool.close()
        return defer.succeed(None)
