"""Server engine: a Qdrant server through qdrant-client (``QDRANT_URL`` + ``QDRANT_API_KEY``).

Every write waits for the server to apply it (``wait=True``). Upserts go through
``upload_points`` (Qdrant's bulk-load path: batches of ``UPSERT_BATCH`` points, each retried
``upload_retries`` times), payload updates through ``batch_update_points`` (one request per
:data:`PAYLOAD_OPS_PER_REQUEST` updates, each update with its own payload), deletes by id
lists. Payload indexes (:data:`~vibe_assets.vectors.base.INDEXED_FIELDS`) are created
with the collection and added when missing.

Transport and HTTP errors are re-raised as errors that name the server (redacted URL, never
the API key) and say whether retrying can help: :class:`QdrantUnavailableError` (refused,
timeout, 5xx, 408, 429; the ``qdrant_<collection>`` step's retry policy retries these) and
:class:`QdrantRequestError` (other 4xx). A missing collection is
:class:`CollectionNotFoundError`.

Snapshots use Qdrant's collection snapshot API: ``create_snapshot`` (an archive written on the
server, under its ``storage.snapshots_path``, ``/qdrant/snapshots`` in the official image),
``list_snapshots``, and ``recover_snapshot`` from the server's own file
``file://<snapshots path>/<collection>/<snapshot>`` with ``priority=snapshot`` (the snapshot's
data replaces the collection's; a missing collection is created). The snapshots path is the
server's, not ours: ``snapshots_path`` (default ``/qdrant/snapshots``) must match the server's
configuration, and the folder should be a volume that outlives the container.

For tests, ``ServerVectorStore.in_memory()`` uses qdrant-client's in-memory mode in place of a
server (it ignores payload indexes and has no snapshots: qdrant-client 1.20's local mode raises
``NotImplementedError`` for ``create_snapshot``/``recover_snapshot`` and lists none, which this
engine reports as :class:`SnapshotUnsupportedError`; everything else behaves like a server here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

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
    QdrantRequestError,
    QdrantUnavailableError,
    ScoredPoint,
    SnapshotInfo,
    SnapshotNotFoundError,
    SnapshotUnsupportedError,
    StoredPoint,
    VectorPoint,
    VectorStore,
    as_vector,
    mismatch_message,
    redact_url,
)

PAYLOAD_OPS_PER_REQUEST = 500  # PayloadUpdates per batch_update_points request
DEFAULT_SNAPSHOTS_PATH = "/qdrant/snapshots"  # the official image's storage.snapshots_path
RETRYABLE_STATUS = {408, 429}  # plus every 5xx

_DISTANCES = {
    Distance.COSINE: models.Distance.COSINE,
    Distance.DOT: models.Distance.DOT,
    Distance.EUCLID: models.Distance.EUCLID,
    Distance.MANHATTAN: models.Distance.MANHATTAN,
}
_FROM_QDRANT = {v: k for k, v in _DISTANCES.items()}
_FIELD_TYPES = {
    FieldType.KEYWORD: models.PayloadSchemaType.KEYWORD,
    FieldType.DATETIME: models.PayloadSchemaType.DATETIME,
    FieldType.GEO: models.PayloadSchemaType.GEO,
}


def server_filter(flt: PointFilter | None) -> models.Filter | None:
    """A :class:`PointFilter` as a qdrant-client filter (None when it matches everything)."""
    if flt is None or flt.is_empty:
        return None
    must: list[Any] = []
    for key, values in flt.keyword_conditions():
        match: Any = (
            models.MatchValue(value=values[0])
            if len(values) == 1
            else models.MatchAny(any=list(values))
        )
        must.append(models.FieldCondition(key=key, match=match))
    if flt.taken_after or flt.taken_before:
        rng = models.DatetimeRange(gte=flt.taken_after, lt=flt.taken_before)
        must.append(models.FieldCondition(key="taken_at", range=rng))
    return models.Filter(must=must)


def _selector(with_payload: bool | Sequence[str]) -> bool | list[str]:
    return with_payload if isinstance(with_payload, bool) else list(with_payload)


def _stored(record: Any, with_vectors: bool) -> StoredPoint:
    vector = as_vector(record.vector) if with_vectors and record.vector is not None else None
    return StoredPoint(id=str(record.id), payload=record.payload or {}, vector=vector)


class ServerVectorStore(VectorStore):
    """Collections on a Qdrant server (or qdrant-client's in-memory stand-in).

    Args:
        client: an open qdrant-client; closed by :meth:`close`.
        location: where it points, for messages (already redacted).
        local: True for qdrant-client's local/in-memory mode (no payload indexes there).
        upload_retries: retries of one upsert batch inside ``upload_points`` (no backoff; the
            step's retry policy handles longer outages).
        snapshots_path: the server's snapshots folder, as the server sees it (its
            ``storage.snapshots_path``); snapshots are recovered from files under it.
    """

    engine = "server"

    def __init__(
        self,
        client: QdrantClient,
        location: str,
        local: bool = False,
        upload_retries: int = 2,
        snapshots_path: str = DEFAULT_SNAPSHOTS_PATH,
    ) -> None:
        self.client = client
        self._location = location
        self.local = local
        self.upload_retries = upload_retries
        self.snapshots_path = snapshots_path.rstrip("/") or "/"

    @classmethod
    def connect(
        cls,
        url: str,
        api_key: str | None = None,
        timeout: int = 30,
        snapshots_path: str = DEFAULT_SNAPSHOTS_PATH,
    ) -> ServerVectorStore:
        """A store on the server at ``url`` (``https://`` uses TLS). No request is made yet.
        ``snapshots_path``: the server's snapshots folder (see the module docstring)."""
        return cls(
            QdrantClient(url=url, api_key=api_key, timeout=timeout),
            redact_url(url),
            snapshots_path=snapshots_path,
        )

    @classmethod
    def in_memory(cls) -> ServerVectorStore:
        """qdrant-client's in-memory mode (``location=":memory:"``), the tests' server."""
        return cls(QdrantClient(location=":memory:"), "memory:", local=True)

    @property
    def location(self) -> str:
        return self._location

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Re-raise qdrant-client's transport and HTTP errors raised in the block as errors that
        name the server and say whether retrying can help.

        Raises:
            QdrantUnavailableError: connection refused, timeout, 5xx, 408 or 429 (retryable).
            QdrantRequestError: any other HTTP error status (401/403: check QDRANT_API_KEY).
            CollectionNotFoundError: 404 for a collection, or the local mode's "not found".
            PointNotFoundError: 404 for a point (a payload update of a missing point).
        """
        try:
            yield
        except ResponseHandlingException as exc:
            source = getattr(exc, "source", exc)
            raise QdrantUnavailableError(
                f"Qdrant server {self.location} is unreachable ({type(source).__name__}: "
                f"{source}); check QDRANT_URL and that the server runs "
                "(docker compose up -d qdrant)"
            ) from exc
        except UnexpectedResponse as exc:
            status = exc.status_code
            what = f"HTTP {status} {exc.reason_phrase}".strip()
            if status is None or status >= 500 or status in RETRYABLE_STATUS:
                raise QdrantUnavailableError(
                    f"Qdrant server {self.location} answered {what}; it may be starting, "
                    "overloaded or out of disk"
                ) from exc
            if status == 404 and "ollection" in str(exc.content):
                raise CollectionNotFoundError(f"{self.location}: {what}") from exc
            if status == 404 and "point" in str(exc.content).lower():
                raise PointNotFoundError(f"{self.location}: {what}: {exc.content!r}") from exc
            hint = " (check QDRANT_API_KEY)" if status in (401, 403) else ""
            raise QdrantRequestError(
                f"Qdrant server {self.location} refused a request: {what}{hint}"
            ) from exc
        except ValueError as exc:  # local mode: "Collection x not found"
            if self.local and "not found" in str(exc) and "ollection" in str(exc):
                raise CollectionNotFoundError(str(exc)) from exc
            raise
        except KeyError as exc:  # local mode: a payload update of a missing point id
            if self.local and not isinstance(exc, CollectionNotFoundError):
                raise PointNotFoundError(f"no point with id {exc}") from exc
            raise

    # -- collections --------------------------------------------------------------------------
    def _params(self, name: str) -> models.VectorParams:
        params = self.client.get_collection(name).config.params.vectors
        if not isinstance(params, models.VectorParams):
            raise CollectionMismatchError(
                f"collection {name!r} uses named vectors; vibe_assets expects one vector"
            )
        return params

    def _ensure_indexes(self, name: str, present: set[str]) -> None:
        if self.local:
            return  # local mode ignores payload indexes (and warns for each)
        for field, kind in INDEXED_FIELDS.items():
            if field not in present:
                self.client.create_payload_index(
                    name, field_name=field, field_schema=_FIELD_TYPES[kind], wait=True
                )

    def ensure_collection(self, name: str, size: int, distance: Distance) -> bool:
        distance = Distance(distance)
        with self.errors():
            if self.client.collection_exists(name):
                params = self._params(name)
                if params.size != size or params.distance != _DISTANCES[distance]:
                    have = _FROM_QDRANT.get(params.distance)
                    shown = have.value if have else str(params.distance)
                    raise CollectionMismatchError(
                        mismatch_message(name, params.size, shown, size, distance)
                    )
                schema = self.client.get_collection(name).payload_schema or {}
                self._ensure_indexes(name, set(schema))
                return False
            self.client.create_collection(
                name, vectors_config=models.VectorParams(size=size, distance=_DISTANCES[distance])
            )
            self._ensure_indexes(name, set())
            return True

    def collection_exists(self, name: str) -> bool:
        with self.errors():
            return bool(self.client.collection_exists(name))

    def collection_info(self, name: str) -> CollectionInfo | None:
        with self.errors():
            if not self.client.collection_exists(name):
                return None
            info = self.client.get_collection(name)
            params = self._params(name)
            points = self.client.count(name, exact=True).count
        return CollectionInfo(
            name=name,
            points=int(points),
            vector_size=int(params.size),
            distance=_FROM_QDRANT[params.distance],
            engine=self.engine,
            indexed_fields={
                field: str(getattr(schema.data_type, "value", schema.data_type))
                for field, schema in sorted((info.payload_schema or {}).items())
            },
        )

    def list_collections(self) -> list[CollectionInfo]:
        with self.errors():
            names = sorted(c.name for c in self.client.get_collections().collections)
        infos = [self.collection_info(name) for name in names]
        return [info for info in infos if info is not None]

    def delete_collection(self, name: str) -> bool:
        with self.errors():
            if not self.client.collection_exists(name):
                return False
            self.client.delete_collection(name)
            return True

    # -- points -------------------------------------------------------------------------------
    def count(self, name: str, flt: PointFilter | None = None) -> int:
        with self.errors():
            return int(self.client.count(name, count_filter=server_filter(flt), exact=True).count)

    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=p.id, vector=np.asarray(p.vector, dtype=np.float32).tolist(), payload=p.payload
            )
            for p in points
        ]
        with self.errors():
            self.client.upload_points(
                name,
                points=structs,
                batch_size=UPSERT_BATCH,
                max_retries=self.upload_retries,
                wait=True,
            )

    def set_payloads(self, name: str, updates: Sequence[PayloadUpdate]) -> None:
        operations = [
            models.SetPayloadOperation(
                set_payload=models.SetPayload(payload=u.payload, points=list(u.ids))
            )
            for u in updates
            if u.ids
        ]
        with self.errors():
            for i in range(0, len(operations), PAYLOAD_OPS_PER_REQUEST):
                chunk = operations[i : i + PAYLOAD_OPS_PER_REQUEST]
                self.client.batch_update_points(name, update_operations=chunk, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        with self.errors():
            for i in range(0, len(ids), READ_BATCH):
                selector = models.PointIdsList(points=list(ids[i : i + READ_BATCH]))
                self.client.delete(name, points_selector=selector, wait=True)

    def retrieve(
        self,
        name: str,
        ids: Sequence[str],
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
    ) -> list[StoredPoint]:
        out: list[StoredPoint] = []
        with self.errors():
            for i in range(0, len(ids), READ_BATCH):
                records = self.client.retrieve(
                    name,
                    ids=list(ids[i : i + READ_BATCH]),
                    with_payload=_selector(with_payload),
                    with_vectors=with_vectors,
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
        condition = server_filter(flt)
        offset: Any = None
        while True:
            with self.errors():
                records, offset = self.client.scroll(
                    name,
                    scroll_filter=condition,
                    limit=page_size,
                    offset=offset,
                    with_payload=_selector(with_payload),
                    with_vectors=with_vectors,
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
        with self.errors():
            hits = self.client.query_points(
                name,
                query=np.asarray(vector, dtype=np.float32).tolist(),
                limit=limit,
                query_filter=server_filter(flt),
                with_payload=_selector(with_payload),
            ).points
        return [ScoredPoint(str(h.id), float(h.score), h.payload or {}) for h in hits]

    # -- snapshots ----------------------------------------------------------------------------
    def _unsupported(self) -> SnapshotUnsupportedError:
        return SnapshotUnsupportedError(
            f"{self.location}: qdrant-client's local/in-memory mode has no snapshots "
            "(use the embedded engine or a Qdrant server)"
        )

    def _info(
        self, name: str, desc: models.SnapshotDescription, points: int | None
    ) -> SnapshotInfo:
        return SnapshotInfo(
            id=desc.name,
            collection=name,
            created_at=desc.creation_time,
            size_bytes=int(desc.size),
            points=points,
            location=f"{self.location}/collections/{name}/snapshots/{desc.name}",
            engine=self.engine,
        )

    def snapshot(self, name: str) -> SnapshotInfo:
        """``create_snapshot`` (waits until the server wrote it); ``points`` is the count read
        just before (another writer could change it in between)."""
        if self.local:
            raise self._unsupported()
        with self.errors():
            if not self.client.collection_exists(name):
                raise CollectionNotFoundError(f"collection {name!r} does not exist")
            points = int(self.client.count(name, exact=True).count)
            desc = self.client.create_snapshot(name, wait=True)
        if desc is None:  # only with wait=False
            raise QdrantRequestError(f"{self.location}: create_snapshot returned no description")
        return self._info(name, desc, points)

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        """``list_snapshots``, oldest first (by creation time, then name)."""
        if self.local:
            raise self._unsupported()
        with self.errors():
            if not self.client.collection_exists(name):
                raise CollectionNotFoundError(f"collection {name!r} does not exist")
            found = self.client.list_snapshots(name)
        infos = [self._info(name, desc, None) for desc in found]
        return sorted(infos, key=lambda i: (i.created_at or "", i.id))

    def restore_snapshot(self, name: str, snapshot_id: str) -> SnapshotInfo:
        """``recover_snapshot`` from ``file://<snapshots_path>/<name>/<snapshot_id>`` with
        ``priority=snapshot``, waiting until the server has applied it. The server keeps no copy
        of what it replaced: take a snapshot first to be able to go back."""
        if self.local:
            raise self._unsupported()
        known = {info.id: info for info in self.list_snapshots(name)}
        info = known.get(snapshot_id)
        if info is None or "/" in snapshot_id:
            raise SnapshotNotFoundError(
                f"no snapshot {snapshot_id!r} of collection {name!r} on {self.location} "
                f"(known: {sorted(known) or 'none'})"
            )
        location = f"file://{self.snapshots_path.rstrip('/')}/{name}/{snapshot_id}"
        with self.errors():
            self.client.recover_snapshot(
                name, location, priority=models.SnapshotPriority.SNAPSHOT, wait=True
            )
        return info

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
