"""Old import location of the point id and the vector-store errors, kept so that
``from vibe_assets.resources.qdrant import point_id`` (and the error classes) keeps working.

They live in :mod:`vibe_assets.vectors.base`; the resource is
:class:`vibe_assets.resources.vectors.VectorStoreResource` (resource key ``qdrant``).
"""

from vibe_assets.vectors.base import (
    INDEXED_FIELDS,
    POINT_NAMESPACE,
    CollectionMismatchError,
    QdrantBusyError,
    QdrantRequestError,
    QdrantUnavailableError,
    point_id,
    redact_url,
)

__all__ = [
    "INDEXED_FIELDS",
    "POINT_NAMESPACE",
    "CollectionMismatchError",
    "QdrantBusyError",
    "QdrantRequestError",
    "QdrantUnavailableError",
    "point_id",
    "redact_url",
]
