"""Vector stores: one interface (:mod:`.base`), two engines (:mod:`.edge`, embedded default, on
qdrant-edge-py; :mod:`.server`, a Qdrant server through qdrant-client), the one-time migration
of qdrant-client local-mode folders (:mod:`.migrate`) and streaming export (:mod:`.export`).

Engine modules are imported by whoever opens a store (the resource), not here, so importing the
vocabulary costs neither engine's import time.
"""

from vibe_assets.vectors.base import (
    INDEXED_FIELDS,
    POINT_NAMESPACE,
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
    QdrantRequestError,
    QdrantUnavailableError,
    ScoredPoint,
    SnapshotInfo,
    SnapshotNotFoundError,
    SnapshotUnsupportedError,
    StoredPoint,
    VectorPoint,
    VectorStore,
    point_id,
    redact_url,
)

__all__ = [
    "INDEXED_FIELDS",
    "POINT_NAMESPACE",
    "READ_BATCH",
    "UPSERT_BATCH",
    "CollectionInfo",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "Distance",
    "FieldType",
    "PayloadUpdate",
    "PointFilter",
    "PointNotFoundError",
    "QdrantBusyError",
    "QdrantRequestError",
    "QdrantUnavailableError",
    "ScoredPoint",
    "SnapshotInfo",
    "SnapshotNotFoundError",
    "SnapshotUnsupportedError",
    "StoredPoint",
    "VectorPoint",
    "VectorStore",
    "point_id",
    "redact_url",
]
