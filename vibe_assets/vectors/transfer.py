"""Copy collections from one vector store to another, verified: the embedded store to a Qdrant
server (``vibe-assets collections migrate-to-server``, :mod:`vibe_assets.cli_migrate`).

Each collection is re-upserted from what we already hold, nothing is decoded or embedded again:
its points (id, vector, whole payload) are read from the source one page at a time
(:data:`~vibe_assets.vectors.base.READ_BATCH` points, vectors included) and upserted to the
target, which creates the collection with the same vector size and distance and the payload
indexes (:meth:`~vibe_assets.vectors.base.VectorStore.ensure_collection`). Point ids are the
UUID5 of each image's SHA-256 in both engines, so the state database's recorded syncs (kept per
collection name) stay true on the target and later ingests continue incrementally there.

Then the copy is verified: the target holds exactly as many points as the source, and a random
sample of points (chosen while reading, ``sample`` of them) has the same payload and the same
vector on both sides (to :data:`VECTOR_TOLERANCE`: a cosine collection normalises vectors on
upsert, and normalising our already unit-length CLIP vectors again may move the last bit).

Copying is idempotent (upserts by id), so an interrupted migration is simply run again. The
source is left as it is. While it is read, the embedded store holds the collection, so an ingest
that wants it waits (its ``qdrant`` step retries) and nothing changes under the copy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vibe_assets.vectors.base import (
    READ_BATCH,
    CollectionNotFoundError,
    StoredPoint,
    VectorPoint,
    VectorStore,
)

VECTOR_TOLERANCE = 1e-5
"""Largest absolute difference allowed between a vector's components on both sides."""
DEFAULT_SAMPLE = 64
"""Points whose vectors and payloads are compared after a collection is copied."""


@dataclass
class TransferReport:
    """What :func:`copy_collection` did to one collection.

    Attributes:
        collection: its name.
        source / target: where from and to (no secrets: redacted URL or ``embedded:<path>``).
        vector_size / distance: the collection's (same on both sides).
        copied: points read from the source and upserted to the target.
        source_points / target_points: exact counts after the copy.
        sampled: points whose vector and payload were compared.
        problems: what verification found wrong (empty: verified).
        replaced: the target's collection was dropped first (``replace``).
        seconds: wall time of copy and verification.
    """

    collection: str
    source: str
    target: str
    vector_size: int
    distance: str
    copied: int = 0
    source_points: int = 0
    target_points: int = 0
    sampled: int = 0
    problems: list[str] = field(default_factory=list)
    replaced: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the counts agree and every sampled point is the same on both sides."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (with ``ok``)."""
        return {
            "collection": self.collection,
            "source": self.source,
            "target": self.target,
            "vector_size": self.vector_size,
            "distance": self.distance,
            "copied": self.copied,
            "source_points": self.source_points,
            "target_points": self.target_points,
            "sampled": self.sampled,
            "replaced": self.replaced,
            "ok": self.ok,
            "problems": list(self.problems),
            "seconds": round(self.seconds, 2),
        }

    def message(self) -> str:
        """One line for people."""
        head = (
            f"{self.collection}: copied {self.copied} points ({self.vector_size}-d "
            f"{self.distance}) from {self.source} to {self.target} in {self.seconds:.1f} s"
        )
        if self.ok:
            return (
                f"{head}; verified: {self.target_points} points on both sides, {self.sampled} "
                "sampled vectors and payloads identical"
            )
        return f"{head}; NOT verified: {'; '.join(self.problems)}"


class _Sampler:
    """A uniform random sample of ``k`` ids from a stream (reservoir sampling, seeded)."""

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.seen = 0
        self.ids: list[str] = []
        self._rng = random.Random(seed)

    def add(self, pid: str) -> None:
        self.seen += 1
        if len(self.ids) < self.k:
            self.ids.append(pid)
            return
        j = self._rng.randrange(self.seen)
        if j < self.k:
            self.ids[j] = pid


def compare_points(
    source: VectorStore, target: VectorStore, name: str, ids: Sequence[str]
) -> list[str]:
    """What differs between ``source`` and ``target`` for the points ``ids`` of collection
    ``name``: a point missing on either side, another payload, or a vector farther than
    :data:`VECTOR_TOLERANCE` in any component. Empty when they agree.

    Raises:
        CollectionNotFoundError: ``name`` is missing on either side.
    """
    if not ids:
        return []
    left = {p.id: p for p in source.retrieve(name, ids, with_payload=True, with_vectors=True)}
    right = {p.id: p for p in target.retrieve(name, ids, with_payload=True, with_vectors=True)}
    problems: list[str] = []
    for pid in ids:
        a, b = left.get(pid), right.get(pid)
        if a is None or b is None:
            where = "source" if a is None else "target"
            problems.append(f"point {pid} is missing on the {where}")
            continue
        if a.payload != b.payload:
            keys = sorted(
                k for k in {*a.payload, *b.payload} if a.payload.get(k) != b.payload.get(k)
            )
            problems.append(f"point {pid} has another payload on the target (fields {keys})")
        diff = _vector_difference(a, b)
        if diff is not None:
            problems.append(f"point {pid} has another vector on the target ({diff})")
    return problems


def _vector_difference(a: StoredPoint, b: StoredPoint) -> str | None:
    if a.vector is None or b.vector is None:
        return None if a.vector is None and b.vector is None else "one side has no vector"
    if a.vector.shape != b.vector.shape:
        return f"shape {a.vector.shape} vs {b.vector.shape}"
    worst = float(np.max(np.abs(a.vector.astype(np.float64) - b.vector.astype(np.float64))))
    return None if worst <= VECTOR_TOLERANCE else f"largest component difference {worst:.3g}"


def copy_collection(
    source: VectorStore,
    target: VectorStore,
    name: str,
    *,
    replace: bool = False,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    page_size: int = READ_BATCH,
    progress: Callable[[str], None] = lambda _: None,
) -> TransferReport:
    """Copy collection ``name`` from ``source`` to ``target`` and verify it (see the module
    docstring).

    Args:
        replace: drop the target's collection first (when the target holds points the source
            does not, verification fails and says to use this).
        sample: how many points to compare after the copy (0: counts only).
        seed: seeds the choice of sampled points.
        page_size: points read (with vectors) and upserted per page.
        progress: called with a line after every page.

    Returns:
        The report; ``report.ok`` is False when verification found a difference (nothing is
        raised for that).

    Raises:
        CollectionNotFoundError: ``name`` does not exist in ``source``.
        CollectionMismatchError: the target has ``name`` with another vector size or distance
            (and ``replace`` is off).
        QdrantUnavailableError, QdrantRequestError, QdrantBusyError: as the stores raise them.
    """
    start = time.perf_counter()
    info = source.collection_info(name)
    if info is None:
        raise CollectionNotFoundError(f"collection {name!r} does not exist in {source.location}")
    report = TransferReport(
        name, source.location, target.location, info.vector_size, info.distance.value
    )
    if replace and target.collection_exists(name):
        target.delete_collection(name)
        report.replaced = True
    target.ensure_collection(name, info.vector_size, info.distance)
    sampler = _Sampler(sample, seed)
    page: list[VectorPoint] = []

    def flush() -> None:
        target.upsert(name, page)
        report.copied += len(page)
        progress(f"{name}: {report.copied}/{info.points} points copied")
        page.clear()

    for point in source.scroll(name, with_payload=True, with_vectors=True, page_size=page_size):
        if point.vector is None:  # every point of ours has one; a point without is not copied
            report.problems.append(f"point {point.id} has no vector in the source")
            continue
        page.append(VectorPoint(point.id, point.vector, point.payload))
        sampler.add(point.id)
        if len(page) >= page_size:
            flush()
    if page:
        flush()
    report.source_points = source.count(name)
    report.target_points = target.count(name)
    if not report.source_points == report.target_points == report.copied:
        more = report.target_points > report.source_points
        report.problems.append(
            f"counts differ: source {report.source_points}, target {report.target_points}, "
            f"copied {report.copied}"
            + (
                " (the target's collection holds points the source does not: run again with "
                "replace to drop it first)"
                if more
                else ""
            )
        )
    report.problems.extend(compare_points(source, target, name, sampler.ids))
    report.sampled = len(sampler.ids)
    report.seconds = time.perf_counter() - start
    return report
