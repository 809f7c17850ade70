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
is never seen. Their vectors stay in memory-mapped files (:data:`VECTOR_MEMORY`), they search
exactly (:data:`EXACT_SEARCH`) and :meth:`EdgeVectorStore.optimize` turns what writes gathered
into read-only segments that open cheaply. Nothing here reads or writes a pickle.

Snapshots live under ``snapshots_root`` (``$VIBE_HOME/snapshots``)::

    <collection>/<id>/shard/          a copy of the shard folder
    <collection>/<id>/snapshot.json   what it is (SnapshotInfo fields, vector size, distance)

:meth:`EdgeVectorStore.snapshot` holds the shard (so no other process writes it), flushes it,
copies its folder into ``.<id>.partial-<pid>``, opens the copy to check it loads and holds as
many points, and renames it to ``<id>`` (a crash leaves a hidden partial folder, never a
snapshot that is not whole). The id is the UTC time, ``YYYYmmddTHHMMSS.ffffffZ``.
:meth:`EdgeVectorStore.restore_snapshot` copies the snapshot beside the collection, then, holding
the shard, flushes it, renames its folder away, closes it (qdrant-edge 0.9 rewrites
``segment.json`` files by path when a shard closes: closing after the rename keeps it from
writing into the restored folder) and renames the copy into place; for a few milliseconds the
collection does not exist. What it replaced is kept as snapshot ``<id>-before-restore``, so a
restore can itself be undone. Snapshots are plain folders: delete old ones by hand.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
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
    SnapshotInfo,
    SnapshotNotFoundError,
    StoredPoint,
    VectorPoint,
    VectorStore,
    as_vector,
    mismatch_message,
)

CONFIG_FILE = "edge_config.json"  # written by qdrant-edge in every shard folder
HOLDER_SUFFIX = ".holder.json"
SNAPSHOT_META = "snapshot.json"
SNAPSHOT_SHARD = "shard"
BEFORE_RESTORE = "-before-restore"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SNAPSHOT_ID_RE = re.compile(rf"^\d{{8}}T\d{{6}}\.\d{{6}}Z({BEFORE_RESTORE})?$")
_LOCK_ERRORS = ("WouldBlock", "temporarily unavailable")

_DISTANCES = {
    Distance.COSINE: qe.Distance.Cosine,
    Distance.DOT: qe.Distance.Dot,
    Distance.EUCLID: qe.Distance.Euclid,
    Distance.MANHATTAN: qe.Distance.Manhattan,
}
_FIELD_PARAMS = {
    FieldType.KEYWORD: qe.KeywordIndexParams,
    FieldType.DATETIME: qe.DatetimeIndexParams,
    FieldType.GEO: qe.GeoIndexParams,
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


def _new_snapshot_id() -> str:
    """A snapshot id: the UTC time now, ``YYYYmmddTHHMMSS.ffffffZ`` (sorts by time)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _tree_bytes(path: Path) -> int:
    """Disk bytes of every regular file under ``path`` (allocated blocks: Qdrant preallocates
    32 MiB WAL and storage files that stay mostly holes)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


_COPY_CHUNK = 1 << 20


def sparse_copy(src: str, dst: str) -> str:
    """Copy file ``src`` to ``dst`` (metadata as :func:`shutil.copy2`) keeping its holes: only
    the data regions (``SEEK_DATA``/``SEEK_HOLE``, Linux and macOS) are read and written, so a
    shard's preallocated, mostly empty files cost their used bytes, not their size (a 4-point
    collection: 0.6 MiB instead of 185 MiB). Falls back to :func:`shutil.copy2` where the file
    system cannot report holes. Returns ``dst`` (a ``copy_function`` for
    :func:`shutil.copytree`).

    Raises:
        OSError: reading or writing failed.
    """
    if not hasattr(os, "SEEK_DATA"):
        return shutil.copy2(src, dst)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        try:
            offset = os.lseek(fin.fileno(), 0, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at all: one hole
                offset = size
            elif exc.errno == errno.EINVAL:  # no hole support here
                fout.close()
                return shutil.copy2(src, dst)
            else:
                raise
        while offset < size:
            end = os.lseek(fin.fileno(), offset, os.SEEK_HOLE)
            fin.seek(offset)
            fout.seek(offset)
            while offset < end:
                chunk = fin.read(min(_COPY_CHUNK, end - offset))
                if not chunk:
                    break
                fout.write(chunk)
                offset += len(chunk)
            try:
                offset = os.lseek(fin.fileno(), end, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                offset = size
        fout.truncate(size)
    shutil.copystat(src, dst)
    return dst


def _shard_config(shard_dir: Path) -> Any:
    """The shard folder's own config file (qdrant-edge's ``edge_config.json``), parsed.

    Raises:
        OSError, ValueError: unreadable, or not JSON.
    """
    return json.loads((shard_dir / CONFIG_FILE).read_text())


def _config_at(shard_dir: Path, name: str) -> tuple[int, str]:
    """``(vector size, distance name)`` of the shard folder ``shard_dir`` (collection ``name``),
    read from its own config file (no lock needed).

    Raises:
        CollectionMismatchError: not a single-vector shard this version can read.
    """
    path = shard_dir / CONFIG_FILE
    try:
        params = _shard_config(shard_dir)["vectors"][""]
        return int(params["size"]), str(params["distance"]).lower()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CollectionMismatchError(
            f"collection {name!r} ({path}) is not a single-vector collection this version "
            f"can read ({type(exc).__name__}: {exc})"
        ) from exc


def _count_shard(path: Path) -> int:
    """Points of the shard folder at ``path`` (opened and closed here: a copy nobody holds)."""
    shard = qe.EdgeShard.load(str(path))
    try:
        return int(shard.count(qe.CountRequest(exact=True)))
    finally:
        shard.close()


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


VECTOR_MEMORY = qe.Memory.Cold
"""Where a new collection keeps its vectors: ``Cold``, memory-mapped files read through the
page cache, instead of qdrant-edge's default ``Cached``, which reads every vector into RAM each
time the shard opens. Every run and every command opens the shard anew, so opening gets cheaper
(``open_s`` and ``ten_changed_s`` of ``benchmarks/library.py``); the first query after an open
reads its vectors from the page cache instead. A collection created before keeps its setting."""

INDEX_MEMORY = qe.Memory.Cold
"""Where a new payload index lives: ``Cold``, files memory-mapped once its segment is optimized
(see :data:`EXACT_SEARCH`), instead of read into RAM at every open."""

EXACT_SEARCH = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
"""A new collection builds no HNSW graph (``m=0``): every query compares the query vector with
every candidate point, so results are exact. A library on one machine (up to ~200k points) is
searched this way in tens of milliseconds (``query_ms`` of ``benchmarks/library.py``); a graph
would cost minutes of CPU each time segments are optimized. ``m=0`` is how Qdrant's
multitenancy guide skips the global graph; the contract tests compare results with an exact
numpy top-k after optimizing."""

SEGMENT_KB = 20_000
"""Vector data (KiB) that the appendable segment of a new collection collects before
:meth:`EdgeVectorStore.optimize` turns it into an optimized, read-only segment (qdrant-edge's
``indexing_threshold``): 10,000 points of 512 float32 dimensions."""

SEGMENTS = 8
"""Optimized segments a new collection keeps before :meth:`EdgeVectorStore.optimize` merges the
smallest ones (qdrant-edge's ``default_segment_number``). Fewer segments open faster; each
merge rewrites what it merges (with 1 segment, every optimization rewrites the whole
collection)."""


class EdgeVectorStore(VectorStore):
    """Collections as qdrant-edge shards under ``root``.

    Args:
        root: folder of the shards (created on first write).
        wait_seconds: how long opening a collection held by another process is retried before
            :class:`QdrantBusyError` (0: fail at once).
        on_wait: called with a progress line (who holds it, for how long we waited) when a wait
            starts and every ``notify_seconds`` after; None: silent.
        poll_seconds: pause between open attempts while waiting.
        snapshots_root: folder of the snapshots (default: ``snapshots`` beside ``root``).
        segment_kb: :data:`SEGMENT_KB` of the collections created here (tests make it small).
    """

    engine = "edge"

    def __init__(
        self,
        root: Path,
        wait_seconds: float = 0.0,
        on_wait: Callable[[str], None] | None = None,
        poll_seconds: float = 0.2,
        notify_seconds: float = 5.0,
        snapshots_root: Path | None = None,
        segment_kb: int = SEGMENT_KB,
    ) -> None:
        self.root = Path(root)
        self.segment_kb = segment_kb
        self.snapshots_root = (
            Path(snapshots_root) if snapshots_root is not None else self.root.parent / "snapshots"
        )
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
        return _config_at(self._dir(name), name)

    def _ensure_indexes(self, shard: qe.EdgeShard) -> None:
        present = shard.info().payload_schema
        for field, kind in INDEXED_FIELDS.items():
            if field not in present:
                params = _FIELD_PARAMS[kind](memory=INDEX_MEMORY)
                shard.update(qe.UpdateOperation.create_field_index(field, params))

    def optimizes(self, name: str) -> bool:
        """True when ``name`` was created with :data:`EXACT_SEARCH` (no HNSW graph), so
        :meth:`optimize` is cheap there. A collection created before keeps qdrant-edge's
        default graph, which optimizing would build (minutes per 100k points): never
        optimized here."""
        try:
            hnsw = _shard_config(self._dir(name)).get("hnsw_config")
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(hnsw, dict) and hnsw.get("m") == 0

    def optimize(self, name: str) -> bool:
        """Run qdrant-edge's segment optimizers on ``name`` (in this process, blocking): once
        its appendable segment holds :data:`SEGMENT_KB` of vectors, it becomes a read-only
        segment whose payload indexes are memory-mapped, and past :data:`SEGMENTS` segments
        the smallest are merged. A shard then opens without rebuilding its payload indexes in
        RAM. True when segments were rewritten; False when nothing was due, or for a
        collection created before (see :meth:`optimizes`).

        Raises:
            CollectionNotFoundError: no such collection.
            QdrantBusyError: held by another process past ``wait_seconds``.
        """
        shard = self._shard(name)
        return self.optimizes(name) and bool(shard.optimize())

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
            params = qe.EdgeVectorParams(
                size=size, distance=_DISTANCES[distance], memory=VECTOR_MEMORY
            )
            config = qe.EdgeConfig(
                vectors=params,
                hnsw_config=EXACT_SEARCH,
                optimizers=qe.EdgeOptimizersConfig(
                    indexing_threshold=self.segment_kb, default_segment_number=SEGMENTS
                ),
            )
            qe.EdgeShard.create(str(tmp), config).close()
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
            batch = [  # a list of floats: qdrant-edge reads a numpy array item by item, slower
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

    # -- snapshots ----------------------------------------------------------------------------
    def _snapshots_of(self, name: str) -> Path:
        self._dir(name)  # validates the name
        return self.snapshots_root / name

    def _write_snapshot(
        self, name: str, folder: Path, snap_id: str, points: int, created_at: str
    ) -> SnapshotInfo:
        """Describe the partial snapshot ``folder`` (its shard copied into it) in its
        ``snapshot.json`` and rename it to ``<id>``; returns its info."""
        size, distance = _config_at(folder / SNAPSHOT_SHARD, name)
        final = self._snapshots_of(name) / snap_id
        info = SnapshotInfo(
            id=snap_id,
            collection=name,
            created_at=created_at,
            size_bytes=_tree_bytes(folder / SNAPSHOT_SHARD),
            points=points,
            location=str(final),
            engine=self.engine,
        )
        doc = {**info.as_dict(), "vector_size": size, "distance": distance}
        (folder / SNAPSHOT_META).write_text(json.dumps(doc, indent=2))
        os.rename(folder, final)  # fails rather than replace an existing snapshot
        return info

    def snapshot(self, name: str) -> SnapshotInfo:
        """Copy collection ``name``'s shard folder into ``snapshots_root/<name>/<id>/`` while
        holding it (see the module docstring); costs a copy of the folder (disk bytes as large
        as the collection's) and one open of the copy (~0.4 s at 100k points).

        Raises:
            CollectionNotFoundError: no such collection.
            QdrantBusyError: another process holds it past ``wait_seconds``.
            RuntimeError: the copy does not hold as many points as the collection (removed).
            OSError: e.g. the disk is full (the partial copy is removed).
        """
        shard = self._shard(name)
        shard.flush()
        points = int(shard.count(qe.CountRequest(exact=True)))
        folder = self._snapshots_of(name)
        folder.mkdir(parents=True, exist_ok=True)
        snap_id = _new_snapshot_id()
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        partial = folder / f".{snap_id}.partial-{os.getpid()}"
        try:
            shutil.copytree(
                self._dir(name),
                partial / SNAPSHOT_SHARD,
                symlinks=True,
                copy_function=sparse_copy,
            )
            copied = _count_shard(partial / SNAPSHOT_SHARD)
            if copied != points:
                raise RuntimeError(
                    f"snapshot of collection {name!r} holds {copied} points, the collection "
                    f"{points}: not kept"
                )
            return self._write_snapshot(name, partial, snap_id, points, created_at)
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone already when it was renamed

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        """Snapshots found under ``snapshots_root/<name>/`` (folders with a readable
        ``snapshot.json``), oldest first; they remain after the collection is deleted."""
        folder = self._snapshots_of(name)
        infos: list[SnapshotInfo] = []
        if folder.is_dir():
            for child in sorted(folder.iterdir()):
                if not _SNAPSHOT_ID_RE.match(child.name):
                    continue
                try:
                    doc = json.loads((child / SNAPSHOT_META).read_text())
                    fields = SnapshotInfo.__dataclass_fields__
                    infos.append(SnapshotInfo(**{k: doc[k] for k in fields}))
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # not a snapshot we wrote whole
        if not infos and not self.collection_exists(name):
            raise CollectionNotFoundError(f"collection {name!r} does not exist")
        return sorted(infos, key=lambda i: i.id)

    def restore_snapshot(self, name: str, snapshot_id: str) -> SnapshotInfo:
        """Put snapshot ``snapshot_id``'s shard copy in place of collection ``name`` (see the
        module docstring: what it replaces is kept as snapshot ``<id>-before-restore``).
        Costs a copy of the snapshot folder.

        Raises:
            SnapshotNotFoundError: no such snapshot of ``name``.
            QdrantBusyError: another process holds the collection past ``wait_seconds``.
            OSError: the copy or a rename failed (the collection is left as it was, or, if the
                restored copy could not be put in place, the error names where the replaced
                folder was kept).
        """
        found = {info.id: info for info in self._snapshot_infos_quiet(name)}
        info = found.get(snapshot_id) if _SNAPSHOT_ID_RE.match(snapshot_id) else None
        if info is None:
            raise SnapshotNotFoundError(
                f"no snapshot {snapshot_id!r} of collection {name!r} in "
                f"{self._snapshots_of(name)} (known: {sorted(found) or 'none'})"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".restoring-{name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(
                self._snapshots_of(name) / snapshot_id / SNAPSHOT_SHARD,
                staging,
                symlinks=True,
                copy_function=sparse_copy,
            )
            kept = self._retire(name) if self.collection_exists(name) else None
            try:
                os.rename(staging, self._dir(name))  # fails if another process created it
            except OSError as exc:
                where = f"; what it held is kept as snapshot {kept.id!r}" if kept else ""
                raise OSError(
                    f"could not put snapshot {snapshot_id!r} in place of collection {name!r} "
                    f"({self._dir(name)}): {exc}{where}"
                ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return info

    def _snapshot_infos_quiet(self, name: str) -> list[SnapshotInfo]:
        try:
            return self.list_snapshots(name)
        except CollectionNotFoundError:
            return []

    def _retire(self, name: str) -> SnapshotInfo | None:
        """Move collection ``name``'s folder out of its place while holding it, then close it
        (closing rewrites files by path: see the module docstring). It is kept as snapshot
        ``<id>-before-restore`` (returned); when the snapshots folder is on another file system
        (no rename possible) it is deleted instead (None)."""
        shard = self._shard(name)  # holding its lock: nobody else is using it
        shard.flush()
        points = int(shard.count(qe.CountRequest(exact=True)))
        snap_id = _new_snapshot_id() + BEFORE_RESTORE
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        folder = self._snapshots_of(name)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{snap_id}.partial-{os.getpid()}"
        partial.mkdir()
        trash: Path | None = None
        try:
            os.rename(self._dir(name), partial / SNAPSHOT_SHARD)
        except OSError:
            partial.rmdir()
            trash = self.root / f".deleting-{name}-{os.getpid()}-{time.time_ns()}"
            os.rename(self._dir(name), trash)
        with contextlib.suppress(Exception):
            shard.close()
        del self._shards[name]
        self._drop_holder(name)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
            return None
        return self._write_snapshot(name, partial, snap_id, points, created_at)

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        shards, self._shards = self._shards, {}
        for name, shard in shards.items():
            shard.close()
            self._drop_holder(name)
