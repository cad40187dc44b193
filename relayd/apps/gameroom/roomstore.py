"""
Where gameroom keeps its rooms between writes: each room's meta (everything but the log, written
when more than its progress changed), its progress (what changes turn by turn: the turn, timing,
hashes, the log's length; written with every change) and its log of master packets in chunks (of the
size its meta names: `log_chunk`, 256 where a meta stored before that does not), written together so
a room is restored as it was written. A room read back is its meta brought up to its progress
(core.merge_progress); a room stored before progress records existed has a meta alone.

LocalRoomStore is the daemon's durable store (one node). RedisRoomStore is shared by every node
(`<prefix>:gameroom:meta` and `<prefix>:gameroom:progress`, one hash each, and
`<prefix>:gameroom:log:<room>`, a hash of chunks per room), so another node can take a room over
when its owner dies.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from zope.interface import Interface, implementer

from relayd.apps.gameroom.core import STORED_LOG_CHUNK, merge_progress

META = "gameroom.room"
PROGRESS = "gameroom.progress"
LOG = "gameroom.log"


class IRoomStore(Interface):
    def save(rooms: list, deleted: set) -> defer.Deferred:
        """
        Write [(meta or None when unchanged, progress, {chunk index: [packet, ...]})] and remove the
        deleted room ids, in one go.
        """

    def load_all() -> defer.Deferred:
        """Fire with [(meta, log)] of every stored room."""

    def load(room_id: str) -> defer.Deferred:
        """Fire with (meta, log) of one room, or None."""


def _joined(chunks: dict) -> list:
    return [packet for _, chunk in sorted(chunks.items()) for packet in chunk]


@implementer(IRoomStore)
class LocalRoomStore:
    def __init__(self, store):
        self.store = store

    @defer.inlineCallbacks
    def save(self, rooms, deleted):
        entries = []
        for meta, progress, chunks in rooms:
            room_id = progress["id"]
            if meta is not None:
                entries.append((META, room_id, meta))
            entries.append((PROGRESS, room_id, progress))
            entries.extend((LOG, _chunk_key(room_id, index), chunk) for index, chunk in chunks.items())
        if entries:
            yield self.store.put_many(entries)
        removed = []
        for room_id in deleted:
            # a room's meta (chunk size) and progress (log length) say which chunks are its own
            meta = (yield self.store.get(META, room_id)) or {}
            progress = (yield self.store.get(PROGRESS, room_id)) or {}
            removed.extend([(META, room_id), (PROGRESS, room_id)])
            removed.extend((LOG, key) for key in _chunk_keys(room_id, {**meta, **progress}))
        if removed:
            yield self.store.delete_many(removed)

    @defer.inlineCallbacks
    def load_all(self):
        chunks: dict[str, dict[int, list]] = {}
        for key, packets in (yield self.store.items(LOG)):
            room_id, _, index = key.rpartition(":")
            chunks.setdefault(room_id, {})[int(index)] = packets
        progress = dict((yield self.store.items(PROGRESS)))
        return [(merge_progress(meta, progress.get(room_id)), _joined(chunks.get(room_id, {})))
                for room_id, meta in (yield self.store.items(META))]

    @defer.inlineCallbacks
    def load(self, room_id):
        meta = yield self.store.get(META, room_id)
        if meta is None:
            return None
        meta = merge_progress(meta, (yield self.store.get(PROGRESS, room_id)))
        chunks = {}
        for index, key in enumerate(_chunk_keys(room_id, meta)):
            chunk = yield self.store.get(LOG, key)
            if chunk is not None:
                chunks[index] = chunk
        return meta, _joined(chunks)


def _chunk_key(room_id: str, index: int) -> str:
    return f"{room_id}:{index:08d}"


def _chunk_keys(room_id: str, meta: dict | None) -> list[str]:
    length = (meta or {}).get("log_length", 0)
    size = (meta or {}).get("log_chunk", STORED_LOG_CHUNK)
    return [_chunk_key(room_id, index) for index in range((length + size - 1) // size)]


@implementer(IRoomStore)
class RedisRoomStore:
    """
    Rooms in Redis for several nodes. A room's writes are fenced by its lease (Leases.write): only
    while this node holds it, checked in Redis with the writes.
    """

    def __init__(self, cluster, leases):
        self.cluster = cluster
        self.leases = leases

    def _meta(self) -> str:
        return self.cluster.key("gameroom", "meta")

    def _progress(self) -> str:
        return self.cluster.key("gameroom", "progress")

    def _log(self, room_id: str) -> str:
        return self.cluster.key("gameroom", "log", room_id)

    def save(self, rooms, deleted):
        # sent at once on one connection, so Redis runs them in this order: chunks first, then the
        # meta, the progress last (neither names turns the log does not have yet, and a meta newer
        # than its progress, a write cut short, only has restored fewer turns)
        call = self.cluster.call
        calls = []
        for meta, progress, chunks in rooms:
            room_id = progress["id"]
            commands = []
            if chunks:
                args = [item for index, chunk in chunks.items() for item in (index, json.dumps(chunk))]
                commands.append(("HSET", self._log(room_id), *args))
            if meta is not None:
                commands.append(("HSET", self._meta(), room_id, json.dumps(meta)))
            commands.append(("HSET", self._progress(), room_id, json.dumps(progress)))
            calls.append(self.leases.write(room_id, commands))
        for room_id in deleted:
            calls.append(call("HDEL", self._meta(), room_id))
            calls.append(call("HDEL", self._progress(), room_id))
            calls.append(call("DEL", self._log(room_id)))
        # the first failure, as it was (an Unavailable stays one)
        return defer.gatherResults(calls, consumeErrors=True).addErrback(lambda f: f.value.subFailure)

    def load_all(self):
        return defer.succeed([])  # on several nodes a node loads only the rooms it takes over

    @defer.inlineCallbacks
    def load(self, room_id):
        raw = yield self.cluster.call("HGET", self._meta(), room_id)
        if raw is None:
            return None
        progress = yield self.cluster.call("HGET", self._progress(), room_id)
        flat = yield self.cluster.call("HGETALL", self._log(room_id))
        chunks = {int(flat[i]): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        return merge_progress(json.loads(raw), None if progress is None else json.loads(progress)), _joined(chunks)
