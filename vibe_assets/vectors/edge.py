"""Embedded engine: qdrant-edge-py (Qdrant's own Rust engine in-process), one shard per collection.

Layout under ``root`` (``$VIBE_HOME/vectors``)::

    <collection>/                 one EdgeShard: edge_config.json, segments/, wal/
    <collection>.holder.json      who holds it now: pid, host, command, since (ours, JSON)

A shard is opened on first use of its collection and held until :meth:`EdgeVectorStore.close`.
Opening takes an exclusive lock on the shard's write-ahead log; a second process that opens it
gets ``failed to open WAL ...: Can't init WAL: Kind(WouldBlock)`` at once (measured with
qdrant-edge-py 0.9.0), and the lock is released when the holder closes it or dies (even by
SIGKILL). There is no read-only open, so a reader waits: :class:`EdgeVectorStore` retries the
open every ``poll_seconds`` for up to ``wait_seconds``, calling ``on_wait`` with a progress line
(holder, seconds waited) every ``notify_seconds``, then raises :class:`QdrantBusyError` naming
the holder. Writes go to the write-ahead log, so a process killed mid-upsert loses nothing that
:meth:`~EdgeVectorStore.upsert` returned from.

Collections are created in a temporary folder and renamed into place, so a half-created shard
is never seen. Nothing here reads or writes a pickle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from vibe_assets.vectors.base import (
    INDEXED_FIELDS,
    READ_BATCH,
    UPSERT_BATCH,
    CollectionInfo,
    CollectionMismatchError,
    CollectionNotFoundError,
    Distance,
    FieldType,
    PayloadUpdate,
    PointFilter,
    PointNotFoundError,
    QdrantBusyError,
    ScoredPoint,
    StoredPoint,
    VectorPoint,
    VectorStore,
    as_vector,
    mismatch_message,
)

CONFIG_FILE = "edge_config.json"  # written by qdrant-edge in every shard folder
HOLDER_SUFFIX = ".holder.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOCK_ERRORS = ("WouldBlock", "temporarily unavailable")

_DISTANCES = {
    Distance.COSINE: qe.Distance.Cosine,
    Distance.DOT: qe.Distance.Dot,
    Distance.EUCLID: qe.Distance.Euclid,
    Distance.MANHATTAN: qe.Distance.Manhattan,
}
_FIELD_TYPES = {
    FieldType.KEYWORD: qe.PayloadSchemaType.Keyword,
    FieldType.DATETIME: qe.PayloadSchemaType.Datetime,
    FieldType.GEO: qe.PayloadSchemaType.Geo,
}


def is_lock_error(exc: BaseException) -> bool:
    """True when ``exc`` is qdrant-edge refusing a shard another process holds."""
    return any(marker in str(exc) for marker in _LOCK_ERRORS)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def edge_filter(flt: PointFilter | None) -> qe.Filter | None:
    """A :class:`PointFilter` as a qdrant-edge filter (None when it matches everything)."""
    if flt is None or flt.is_empty:
        return None
    must: list[Any] = []
    for key, values in flt.keyword_conditions():
        match = qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(list(values))
        must.append(qe.FieldCondition(key, match=match))
    if flt.taken_after or flt.taken_before:
        rng = qe.RangeDateTime(gte=flt.taken_after, lt=flt.taken_before)
        must.append(qe.FieldCondition("taken_at", range=rng))
    return qe.Filter(must=must)


def _selector(with_payload: bool | Sequence[str]) -> bool | list[str]:
    return with_payload if isinstance(with_payload, bool) else list(with_payload)


def _stored(record: Any, with_vectors: bool) -> StoredPoint:
    vector = as_vector(record.vector) if with_vectors and record.vector is not None else None
    return StoredPoint(id=str(record.id), payload=record.payload or {}, vector=vector)


class EdgeVectorStore(VectorStore):
    """Collections as qdrant-edge shards under ``root``.

    Args:
        root: folder of the shards (created on first write).
        wait_seconds: how long opening a collection held by another process is retried before
            :class:`QdrantBusyError` (0: fail at once).
        on_wait: called with a progress line (who holds it, for how long we waited) when a wait
            starts and every ``notify_seconds`` after; None: silent.
        poll_seconds: pause between open attempts while waiting.
    """

    engine = "edge"

    def __init__(
        self,
        root: Path,
        wait_seconds: float = 0.0,
        on_wait: Callable[[str], None] | None = None,
        poll_seconds: float = 0.2,
        notify_seconds: float = 5.0,
    ) -> None:
        self.root = Path(root)
        self.wait_seconds = max(0.0, wait_seconds)
        self.on_wait = on_wait
        self.poll_seconds = poll_seconds
        self.notify_seconds = notify_seconds
        self._shards: dict[str, qe.EdgeShard] = {}

    @property
    def location(self) -> str:
        return f"embedded:{self.root}"

    # -- plumbing -----------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise CollectionNotFoundError(
                f"invalid collection name {name!r} (letters, digits, _ and - only)"
            )
        return self.root / name

    def _holder_file(self, name: str) -> Path:
        return self.root / f"{name}{HOLDER_SUFFIX}"

    def _write_holder(self, name: str) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]])[:120],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = self._holder_file(name).with_suffix(f".{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(info))
            os.replace(tmp, self._holder_file(name))

    def _drop_holder(self, name: str) -> None:
        path = self._holder_file(name)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()

    def holder(self, name: str) -> str:
        """Who holds collection ``name``, as far as its holder file says (for messages)."""
        try:
            info = json.loads(self._holder_file(name).read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"
        same_host = info.get("host") == socket.gethostname()
        if same_host and not _pid_alive(pid):
            return "another process"  # the file is stale: its writer is gone
        where = "" if same_host else f" on {info.get('host')}"
        return f"pid {pid}{where} ({info.get('command', '?')}) since {info.get('since', '?')}"

    def _busy_message(self, name: str) -> str:
        return (
            f"the embedded vector store {self._dir(name)} is in use by another process "
            f"({self.holder(name)}); retry when it is done, or run a Qdrant server "
            "(docker compose up -d qdrant) and set QDRANT_URL"
        )

    def _load(self, name: str) -> qe.EdgeShard:
        path = self._dir(name)
        start = time.monotonic()
        deadline = start + self.wait_seconds
        next_note = start
        while True:
            try:
                shard = qe.EdgeShard.load(str(path))
            except Exception as exc:
                if not is_lock_error(exc):
                    raise
                now = time.monotonic()
                if now >= deadline:
                    raise QdrantBusyError(self._busy_message(name)) from exc
                if self.on_wait is not None and now >= next_note:
                    self.on_wait(
                        f"waiting for collection {name!r} ({path}): held by {self.holder(name)}; "
                        f"waited {now - start:.0f} s of up to {self.wait_seconds:.0f} s"
                    )
                    next_note = now + self.notify_seconds
                time.sleep(min(self.poll_seconds, max(0.0, deadline - now)))
                continue
            self._write_holder(name)
            return shard

    def _shard(self, name: str) -> qe.EdgeShard:
        """The open shard of ``name`` (opened, and waited for, on first use).

        Raises:
            CollectionNotFoundError: no such collection.
            QdrantBusyError: held by another process past ``wait_seconds``.
        """
        shard = self._shards.get(name)
        if shard is None:
            if not self.collection_exists(name):
                raise CollectionNotFoundError(f"collection {name!r} does not exist")
            shard = self._shards[name] = self._load(name)
        return shard

    def _config(self, name: str) -> tuple[int, str]:
        """``(vector size, distance name)`` from the shard's own config file (no lock needed)."""
        path = self._dir(name) / CONFIG_FILE
        try:
            vectors = json.loads(path.read_text())["vectors"]
            params = vectors[""]
            return int(params["size"]), str(params["distance"]).lower()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CollectionMismatchError(
                f"collection {name!r} ({path}) is not a single-vector collection this version "
                f"can read ({type(exc).__name__}: {exc})"
            ) from exc

    def _ensure_indexes(self, shard: qe.EdgeShard) -> None:
        present = shard.info().payload_schema
        for field, kind in INDEXED_FIELDS.items():
            if field not in present:
                shard.update(qe.UpdateOperation.create_field_index(field, _FIELD_TYPES[kind]))

    # -- collections --------------------------------------------------------------------------
    def collection_exists(self, name: str) -> bool:
        try:
            return (self._dir(name) / CONFIG_FILE).is_file()
        except CollectionNotFoundError:
            return False

    def ensure_collection(self, name: str, size: int, distance: Distance) -> bool:
        distance = Distance(distance)
        created = False
        if not self.collection_exists(name):
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".creating-{name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            params = qe.EdgeVectorParams(size=size, distance=_DISTANCES[distance])
            qe.EdgeShard.create(str(tmp), qe.EdgeConfig(vectors=params)).close()
            try:
                os.rename(tmp, self._dir(name))  # atomic; fails if another process won the race
                created = True
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not self.collection_exists(name):
                    raise
        have_size, have_distance = self._config(name)
        if (have_size, have_distance) != (size, distance.value):
            raise CollectionMismatchError(
                mismatch_message(name, have_size, have_distance, size, distance)
            )
        self._ensure_indexes(self._shard(name))
        return created

    def collection_info(self, name: str) -> CollectionInfo | None:
        if not self.collection_exists(name):
            return None
        size, distance = self._config(name)
        info = self._shard(name).info()
        return CollectionInfo(
            name=name,
            points=int(info.points_count),
            vector_size=size,
            distance=Distance(distance),
            engine=self.engine,
            indexed_fields={
                field: str(index.data_type).rsplit(".", 1)[-1].lower()
                for field, index in sorted(info.payload_schema.items())
            },
        )

    def list_collections(self) -> list[CollectionInfo]:
        if not self.root.is_dir():
            return []
        names = sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME_RE.match(p.name) and (p / CONFIG_FILE).is_file()
        )
        infos = [self.collection_info(name) for name in names]
        return [info for info in infos if info is not None]

    def delete_collection(self, name: str) -> bool:
        if not self.collection_exists(name):
            return False
        shard = self._shard(name)  # holding its lock: nobody else is using it
        trash = self.root / f".deleting-{name}-{os.getpid()}-{time.time_ns()}"
        os.rename(self._dir(name), trash)
        shard.close()
        del self._shards[name]
        self._drop_holder(name)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # -- points -------------------------------------------------------------------------------
    def count(self, name: str, flt: PointFilter | None = None) -> int:
        return int(self._shard(name).count(qe.CountRequest(exact=True, filter=edge_filter(flt))))

    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        shard = self._shard(name)
        for i in range(0, len(points), UPSERT_BATCH):
            batch = [
                qe.Point(p.id, np.asarray(p.vector, dtype=np.float32).tolist(), p.payload)
                for p in points[i : i + UPSERT_BATCH]
            ]
            shard.update(qe.UpdateOperation.upsert_points(batch))

    def set_payloads(self, name: str, updates: Sequence[PayloadUpdate]) -> None:
        shard = self._shard(name)
        for update in updates:  # in-process: one WAL record each, no request per point
            if not update.ids:
                continue
            try:
                shard.update(qe.UpdateOperation.set_payload(list(update.ids), update.payload))
            except Exception as exc:
                if "No point with id" in str(exc):
                    raise PointNotFoundError(f"collection {name!r}: {exc}") from exc
                raise

    def delete(self, name: str, ids: Sequence[str]) -> None:
        shard = self._shard(name)
        for i in range(0, len(ids), READ_BATCH):
            shard.update(qe.UpdateOperation.delete_points(list(ids[i : i + READ_BATCH])))

    def retrieve(
        self,
        name: str,
        ids: Sequence[str],
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
    ) -> list[StoredPoint]:
        shard = self._shard(name)
        out: list[StoredPoint] = []
        for i in range(0, len(ids), READ_BATCH):
            records = shard.retrieve(
                list(ids[i : i + READ_BATCH]),
                with_payload=_selector(with_payload),
                with_vector=with_vectors,
            )
            out.extend(_stored(r, with_vectors) for r in records)
        return out

    def scroll(
        self,
        name: str,
        flt: PointFilter | None = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
        page_size: int = READ_BATCH,
    ) -> Iterator[StoredPoint]:
        shard = self._shard(name)
        offset: Any = None
        condition = edge_filter(flt)
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=page_size,
                    filter=condition,
                    with_payload=_selector(with_payload),
                    with_vector=with_vectors,
                )
            )
            for record in records:
                yield _stored(record, with_vectors)
            if offset is None:
                return

    def query(
        self,
        name: str,
        vector: np.ndarray,
        limit: int = 10,
        flt: PointFilter | None = None,
        with_payload: bool | Sequence[str] = True,
    ) -> list[ScoredPoint]:
        hits = self._shard(name).query(
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist()),
                filter=edge_filter(flt),
                with_payload=_selector(with_payload),
                with_vector=False,
            )
        )
        return [ScoredPoint(str(h.id), float(h.score), h.payload or {}) for h in hits]

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        shards, self._shards = self._shards, {}
        for name, shard in shards.items():
            shard.close()
            self._drop_holder(name)
