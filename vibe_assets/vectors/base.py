"""The vector-store interface: what the assets, the CLI and the benchmarks may ask of a store.

Two engines implement it (:mod:`vibe_assets.vectors.edge`, embedded, the default; and
:mod:`vibe_assets.vectors.server`, a Qdrant server through qdrant-client), and one contract test
suite (``vibe_assets_tests/test_vectors_contract.py``) runs against both.

The vocabulary is our own and small, so no engine's types leak into the rest of the code
(qdrant-edge-py has its own classes, not qdrant-client's ``models``):

- a point id is a UUID string (:func:`point_id` of the image's SHA-256);
- a vector is a ``(D,)`` float32 numpy array (the CLIP embeddings are L2-normalised);
- a payload is a JSON-like ``dict`` (str keys; str, int, float, bool, None, lists, dicts);
- a filter is a :class:`PointFilter` over the fields we filter by (folder keys, SHA-256,
  capture time range, camera model, caption model); every field given must match (AND), and
  within a field any of the values (OR).

Every method raises :class:`CollectionNotFoundError` for a collection that does not exist
(except :meth:`VectorStore.collection_exists`, :meth:`~VectorStore.collection_info`,
:meth:`~VectorStore.delete_collection` and :meth:`~VectorStore.restore_snapshot`, which
re-creates it), :class:`QdrantBusyError` when an embedded collection is
held by another process past the store's wait, and :class:`QdrantUnavailableError` /
:class:`QdrantRequestError` for server faults. Writes are durable when the call returns
(server: ``wait=True``; embedded: written to the write-ahead log).

Snapshots (:meth:`VectorStore.snapshot`, :meth:`~VectorStore.list_snapshots`,
:meth:`~VectorStore.restore_snapshot`): the server engine uses Qdrant's snapshot API (archives on
the server); the embedded engine copies the collection's shard folder while it holds the shard
(``$VIBE_HOME/snapshots/<collection>/<id>/``). qdrant-client's in-memory mode has none
(:class:`SnapshotUnsupportedError`).
"""

from __future__ import annotations

import abc
import functools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import numpy as np

# Fixed namespace for point ids: id = UUID5(namespace, sha256 hex). Changing it would orphan
# every existing point, so it is a constant, not configuration.
POINT_NAMESPACE = uuid.UUID("6f6b1c1e-3c1a-5b0e-9d55-76a1b0e5a7c1")

READ_BATCH = 1000  # ids per retrieve / delete request, points per scroll page (default)
UPSERT_BATCH = 256  # points per upsert request


@functools.lru_cache(maxsize=1 << 15)
def point_id(sha256: str) -> str:
    """Point id of an image: UUID5 of its SHA-256 hex digest (idempotent upserts). Memoised
    for the last 32,768 images (~10 MB): a sync asks for each new image's id three times."""
    return str(uuid.uuid5(POINT_NAMESPACE, sha256))


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment (where credentials could hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- errors -------------------------------------------------------------------------------------


class QdrantBusyError(RuntimeError):
    """An embedded collection is held by another process (retryable). The message names the
    folder and, when known, the holder (pid, command, since when)."""


class QdrantUnavailableError(RuntimeError):
    """The Qdrant server cannot be reached, timed out, or answered 5xx/408/429 (retryable)."""


class QdrantRequestError(RuntimeError):
    """The Qdrant server refused a request for a reason retrying does not fix (401, 403, other
    4xx): the message names the server and the status, never the API key."""


class CollectionMismatchError(RuntimeError):
    """An existing collection has another vector size or distance than the configured model."""


class CollectionNotFoundError(KeyError):
    """The collection does not exist (create it with :meth:`VectorStore.ensure_collection`)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else "collection not found"


class PointNotFoundError(KeyError):
    """A payload update named a point that does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "point not found"


class SnapshotNotFoundError(KeyError):
    """No snapshot of that id exists for the collection (see
    :meth:`VectorStore.list_snapshots`)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "snapshot not found"


class SnapshotUnsupportedError(RuntimeError):
    """The store cannot take or restore snapshots (qdrant-client's local/in-memory mode)."""


# -- vocabulary ---------------------------------------------------------------------------------


class Distance(StrEnum):
    """Vector distance of a collection (both engines support all four)."""

    COSINE = "cosine"
    DOT = "dot"
    EUCLID = "euclid"
    MANHATTAN = "manhattan"


class FieldType(StrEnum):
    """Type of a payload index."""

    KEYWORD = "keyword"
    DATETIME = "datetime"
    GEO = "geo"


INDEXED_FIELDS: dict[str, FieldType] = {
    "sha256": FieldType.KEYWORD,
    "folder_keys": FieldType.KEYWORD,
    "format": FieldType.KEYWORD,
    "embed_model": FieldType.KEYWORD,
    "caption_model": FieldType.KEYWORD,
    "camera_model": FieldType.KEYWORD,
    "taken_at": FieldType.DATETIME,
    "location": FieldType.GEO,
}
"""Payload fields we filter by, indexed in every collection (qdrant-client's in-memory/local
mode, the server engine's test stand-in, ignores payload indexes)."""


@dataclass(frozen=True)
class VectorPoint:
    """A point to write: ``id`` (UUID string), ``vector`` ((D,) float32, L2-normalised for our
    CLIP vectors), ``payload`` (JSON-like dict)."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    """A point read back: ``id``, ``payload`` (the fields asked for; ``{}`` when none),
    ``vector`` ((D,) float32, or None when not asked for)."""

    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class ScoredPoint:
    """A query hit: ``id``, ``score`` (cosine/dot: higher is closer; euclid/manhattan: the
    distance, lower is closer), ``payload``."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class PayloadUpdate:
    """Set ``payload``'s keys (others are kept) on the points ``ids``. A list of these is one
    batched call (:meth:`VectorStore.set_payloads`), each update with its own payload."""

    ids: tuple[str, ...]
    payload: dict[str, Any]

    @classmethod
    def one(cls, pid: str, payload: dict[str, Any]) -> PayloadUpdate:
        """The update of a single point."""
        return cls((pid,), payload)


def _values(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class PointFilter:
    """Which points: every field given must match; within a field, any of its values.

    Attributes:
        folder_keys: points whose ``folder_keys`` payload holds any of these partition keys.
        sha256: points whose ``sha256`` is any of these.
        taken_after: ``taken_at >= taken_after`` (ISO 8601, e.g. ``2024-05-01`` or
            ``2024-05-01T12:00:00``; without a zone it is UTC).
        taken_before: ``taken_at < taken_before`` (ISO 8601). A point without a (parsable)
            ``taken_at`` never matches a time bound.
        camera_models: points whose ``camera_model`` is any of these (exact EXIF text).
        caption_models: points whose ``caption_model`` is any of these.
    """

    folder_keys: tuple[str, ...] = ()
    sha256: tuple[str, ...] = ()
    taken_after: str | None = None
    taken_before: str | None = None
    camera_models: tuple[str, ...] = ()
    caption_models: tuple[str, ...] = ()

    @classmethod
    def where(
        cls,
        *,
        folder_keys: str | Sequence[str] | None = None,
        sha256: str | Sequence[str] | None = None,
        taken_after: str | None = None,
        taken_before: str | None = None,
        camera_models: str | Sequence[str] | None = None,
        caption_models: str | Sequence[str] | None = None,
    ) -> PointFilter:
        """A filter from single values or sequences (``where(folder_keys="k")``)."""
        return cls(
            folder_keys=_values(folder_keys),
            sha256=_values(sha256),
            taken_after=taken_after,
            taken_before=taken_before,
            camera_models=_values(camera_models),
            caption_models=_values(caption_models),
        )

    def keyword_conditions(self) -> list[tuple[str, tuple[str, ...]]]:
        """``[(payload field, values)]`` of the keyword conditions that are set."""
        pairs = [
            ("folder_keys", self.folder_keys),
            ("sha256", self.sha256),
            ("camera_model", self.camera_models),
            ("caption_model", self.caption_models),
        ]
        return [(name, values) for name, values in pairs if values]

    @property
    def is_empty(self) -> bool:
        """True when the filter matches every point."""
        return not (self.keyword_conditions() or self.taken_after or self.taken_before)


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection is: ``points`` (exact count), ``vector_size`` D, ``distance``,
    ``engine`` (``edge`` | ``server``), ``indexed_fields`` ({payload field: index type} as the
    engine reports them; empty where the engine does not report indexes)."""

    name: str
    points: int
    vector_size: int
    distance: Distance
    engine: str
    indexed_fields: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``distance`` as its name)."""
        return {
            "name": self.name,
            "points": self.points,
            "vector_size": self.vector_size,
            "distance": self.distance.value,
            "engine": self.engine,
            "indexed_fields": dict(self.indexed_fields),
        }


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of a collection.

    Attributes:
        id: what :meth:`VectorStore.restore_snapshot` takes (embedded: the UTC time it was taken,
            ``YYYYmmddTHHMMSS.ffffffZ``; server: the snapshot file name the server gave it).
        collection: the collection it is a copy of.
        created_at: when it was taken (ISO 8601, UTC), None when the server does not say.
        size_bytes: bytes on disk (embedded: the copied shard folder; server: the archive).
        points: points the collection held when it was taken (None when unknown: a server's
            snapshots listed later).
        location: where it is, without secrets (embedded: its folder; server:
            ``<redacted url>/collections/<name>/snapshots/<id>``).
        engine: ``edge`` or ``server``.
    """

    id: str
    collection: str
    created_at: str | None
    size_bytes: int
    points: int | None
    location: str
    engine: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "collection": self.collection,
            "created_at": self.created_at,
            "size_bytes": self.size_bytes,
            "points": self.points,
            "location": self.location,
            "engine": self.engine,
        }


def mismatch_message(name: str, size: int, distance: str, want_size: int, want: Distance) -> str:
    """The :class:`CollectionMismatchError` message (same words for both engines)."""
    return (
        f"collection {name!r} holds {size}-d {distance} vectors, but the configured model makes "
        f"{want_size}-d {want.value} vectors; use another collection name or delete this one "
        "(`vibe-assets collections delete`)"
    )


def as_vector(values: Any) -> np.ndarray:
    """An engine's vector (list of floats) as a (D,) float32 array."""
    return np.asarray(values, dtype=np.float32)


# -- the interface ------------------------------------------------------------------------------


class VectorStore(abc.ABC):
    """One open connection to a vector store (a context manager: ``with store: ...`` closes it).

    Implementations: :class:`~vibe_assets.vectors.edge.EdgeVectorStore` (embedded, one folder
    per collection, one process at a time per collection) and
    :class:`~vibe_assets.vectors.server.ServerVectorStore` (qdrant-client). Open one through
    :class:`vibe_assets.resources.vectors.VectorStoreResource`.
    """

    engine: str = "?"
    """Engine name shown in ``collections list`` and run metadata: ``edge`` or ``server``."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the vectors are, without secrets (``embedded:/path`` or a redacted URL)."""

    # -- collections --------------------------------------------------------------------------
    @abc.abstractmethod
    def ensure_collection(self, name: str, size: int, distance: Distance) -> bool:
        """Create collection ``name`` for ``size``-d vectors with ``distance`` and the
        :data:`INDEXED_FIELDS` payload indexes if it is missing (missing indexes of an existing
        collection are added). True when it was created.

        Raises:
            CollectionMismatchError: it exists with another vector size or distance.
        """

    @abc.abstractmethod
    def collection_exists(self, name: str) -> bool:
        """True when collection ``name`` exists (never waits for a busy embedded collection)."""

    @abc.abstractmethod
    def collection_info(self, name: str) -> CollectionInfo | None:
        """Points, vector size, distance and indexes of ``name``; None when it does not exist."""

    @abc.abstractmethod
    def list_collections(self) -> list[CollectionInfo]:
        """Every collection, sorted by name."""

    @abc.abstractmethod
    def delete_collection(self, name: str) -> bool:
        """Drop collection ``name`` and its points; False when it did not exist."""

    # -- points -------------------------------------------------------------------------------
    @abc.abstractmethod
    def count(self, name: str, flt: PointFilter | None = None) -> int:
        """Exact number of points (matching ``flt``)."""

    @abc.abstractmethod
    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        """Insert or replace ``points`` (vector and whole payload), in requests of at most
        :data:`UPSERT_BATCH` points."""

    @abc.abstractmethod
    def set_payloads(self, name: str, updates: Sequence[PayloadUpdate]) -> None:
        """Apply every :class:`PayloadUpdate` (set keys, keep the others; vectors untouched) as
        one batched operation where the engine has one (server: ``batch_update_points``, one
        request per 500 updates; embedded: in-process updates, no network).

        Raises:
            PointNotFoundError: an update names a point that does not exist (the updates
                before it may have been applied).
        """

    @abc.abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete the points ``ids`` (missing ids are ignored), :data:`READ_BATCH` per request."""

    def optimize(self, name: str) -> bool:
        """Let the engine reorganise what recent writes left in ``name`` (blocking); True when
        it rewrote anything. Points, payloads and results are unchanged. A Qdrant server
        optimizes on its own in the background, so by default this does nothing and returns
        False; the embedded engine overrides it."""
        return False

    @abc.abstractmethod
    def retrieve(
        self,
        name: str,
        ids: Sequence[str],
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
    ) -> list[StoredPoint]:
        """The points among ``ids`` that exist (any order), with the whole payload (True), the
        named payload fields, or none (False), and their vectors when asked."""

    @abc.abstractmethod
    def scroll(
        self,
        name: str,
        flt: PointFilter | None = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
        page_size: int = READ_BATCH,
    ) -> Iterator[StoredPoint]:
        """Every point matching ``flt``, read ``page_size`` at a time (memory is one page),
        in id order."""

    @abc.abstractmethod
    def query(
        self,
        name: str,
        vector: np.ndarray,
        limit: int = 10,
        flt: PointFilter | None = None,
        with_payload: bool | Sequence[str] = True,
    ) -> list[ScoredPoint]:
        """The ``limit`` points nearest to ``vector`` ((D,) float32) among those matching
        ``flt``, best first."""

    # -- snapshots ----------------------------------------------------------------------------
    @abc.abstractmethod
    def snapshot(self, name: str) -> SnapshotInfo:
        """Take a consistent snapshot of collection ``name`` (every point, vector and payload,
        the payload indexes) and return what it is. Writes made before the call are in it.

        Raises:
            CollectionNotFoundError: no such collection.
            SnapshotUnsupportedError: the store has no snapshots (qdrant-client's local mode).
        """

    @abc.abstractmethod
    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        """Every snapshot of collection ``name``, oldest first; ``[]`` when it has none.

        Raises:
            CollectionNotFoundError: the collection does not exist (embedded: and no snapshot of
                it remains; snapshots outlive a deleted embedded collection and can restore it).
        """

    @abc.abstractmethod
    def restore_snapshot(self, name: str, snapshot_id: str) -> SnapshotInfo:
        """Replace collection ``name``'s points with snapshot ``snapshot_id``'s (re-creating the
        collection if it was deleted) and return the snapshot restored. The collection then
        holds what it held when the snapshot was taken: whoever records what a collection holds
        must forget it (:func:`vibe_assets.state.reset_synced`).

        Raises:
            SnapshotNotFoundError: no snapshot ``snapshot_id`` of ``name``.
            SnapshotUnsupportedError: the store has no snapshots.
            QdrantBusyError: embedded: another process holds the collection past the wait.
        """

    # -- lifetime -----------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (embedded: close every open collection and its lock). Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
