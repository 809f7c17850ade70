"""Streaming export of a collection: JSON lines or Parquet, one page of points in memory.

Each point becomes one record:

- ``id`` (str, the point id: UUID5 of the SHA-256),
- ``sha256`` (str) and ``paths`` (list of str) from its payload,
- ``payload`` (every other payload field; JSON object in JSON lines, JSON text in Parquet, as
  fields vary from point to point),
- ``vector`` (list of D float32 values) when asked for.

Parquet files have the schema :func:`parquet_schema` and one row group per scroll page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from vibe_assets.vectors.base import READ_BATCH, CollectionNotFoundError, StoredPoint, VectorStore

FORMATS = ("jsonl", "parquet")


def record(point: StoredPoint, with_vectors: bool) -> dict[str, Any]:
    """The export record of ``point`` (see the module docstring)."""
    payload = dict(point.payload)
    out: dict[str, Any] = {
        "id": point.id,
        "sha256": payload.pop("sha256", None),
        "paths": payload.pop("paths", []),
        "payload": payload,
    }
    if with_vectors:
        out["vector"] = None if point.vector is None else point.vector.tolist()
    return out


def _pages(
    store: VectorStore, collection: str, with_vectors: bool, page_size: int
) -> Iterator[list[StoredPoint]]:
    page: list[StoredPoint] = []
    for point in store.scroll(collection, with_vectors=with_vectors, page_size=page_size):
        page.append(point)
        if len(page) == page_size:
            yield page
            page = []
    if page:
        yield page


def write_jsonl(
    store: VectorStore,
    collection: str,
    out: TextIO,
    with_vectors: bool = False,
    page_size: int = READ_BATCH,
) -> int:
    """Write every point of ``collection`` to ``out`` as JSON lines (UTF-8 text); returns the
    number written.

    Raises:
        CollectionNotFoundError: no such collection.
    """
    n = 0
    for page in _pages(store, collection, with_vectors, page_size):
        for point in page:
            out.write(json.dumps(record(point, with_vectors), ensure_ascii=False) + "\n")
        n += len(page)
    out.flush()
    return n


def parquet_schema(with_vectors: bool, dim: int | None = None) -> Any:
    """The pyarrow schema of a Parquet export: ``vector`` is ``fixed_size_list<float32>[dim]``
    when the size is known, else ``list<float32>``."""
    import pyarrow as pa

    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("paths", pa.list_(pa.string())),
        pa.field("payload", pa.string()),  # JSON text
    ]
    if with_vectors:
        vector = pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())
        fields.append(pa.field("vector", vector))
    return pa.schema(fields)


def write_parquet(
    store: VectorStore,
    collection: str,
    path: Path,
    with_vectors: bool = False,
    page_size: int = READ_BATCH,
) -> int:
    """Write every point of ``collection`` to the Parquet file ``path`` (replaced), one row
    group per page; returns the number written.

    Raises:
        CollectionNotFoundError: no such collection.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = store.collection_info(collection)
    if info is None:
        raise CollectionNotFoundError(f"collection {collection!r} does not exist")
    schema = parquet_schema(with_vectors, info.vector_size)
    n = 0
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            for page in _pages(store, collection, with_vectors, page_size):
                rows = [record(p, with_vectors) for p in page]
                columns: dict[str, Any] = {
                    "id": [r["id"] for r in rows],
                    "sha256": [r["sha256"] for r in rows],
                    "paths": [r["paths"] for r in rows],
                    "payload": [json.dumps(r["payload"], ensure_ascii=False) for r in rows],
                }
                if with_vectors:
                    columns["vector"] = [r["vector"] for r in rows]
                writer.write_table(pa.Table.from_pydict(columns, schema=schema))
                n += len(page)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
