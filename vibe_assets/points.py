"""Incremental sync of one folder's images into a Qdrant collection.

One point per unique image (id = UUID5 of its SHA-256). A point's ``paths`` payload lists every
path holding those bytes, across folders; ``folder_keys`` lists the partitions that contributed a
path. Syncing folder K (root R) makes the collection agree with K's current listing:

- a new image gets a point (vector + payload), upserted in batches;
- an existing point gets its ``paths``/``folder_keys`` rewritten when they changed, and its
  caption fields when a newer caption exists (payload only, the vector is not re-sent);
- paths under R that are no longer in the listing are removed; a point left with no path is
  deleted.

Every write is idempotent, so a run killed half-way is finished by the next run.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from vibe_assets.vectors.base import (
    READ_BATCH,
    PayloadUpdate,
    PointFilter,
    StoredPoint,
    VectorPoint,
    VectorStore,
    point_id,
)

_SYNC_FIELDS = ["sha256", "paths", "folder_keys", "caption", "caption_model"]
_CAPTION_COMPARED = ("caption", "caption_model")


def payload_path(path: str) -> str:
    """``path`` as it is stored in a payload: valid UTF-8 text.

    On Linux a file name is any bytes; Python keeps undecodable ones as lone surrogates
    (``surrogateescape``), which JSON cannot carry: the Qdrant server client refuses the whole
    upsert. Such bytes are written as ``\\xNN`` instead; every other path is unchanged.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def _under(root: str) -> Callable[[str], bool]:
    prefix = root.rstrip(os.sep) + os.sep
    return lambda path: path.startswith(prefix)


def _scroll_folder(vectors: VectorStore, collection: str, folder_key: str) -> Iterator[StoredPoint]:
    return vectors.scroll(
        collection, PointFilter.where(folder_keys=folder_key), _SYNC_FIELDS, page_size=READ_BATCH
    )


def sync_folder(
    vectors: VectorStore,
    collection: str,
    folder_key: str,
    root: str,
    current: dict[str, list[str]],
    make_point: Callable[[str, list[str]], VectorPoint | None],
    caption_for: Callable[[str], dict[str, Any] | None] = lambda _: None,
) -> Counter[str]:
    """Make ``collection`` agree with one folder's current images.

    Paths are stored as :func:`payload_path` gives them. Writes go through the vector-store
    interface: new points in upsert batches, payload changes as one batched
    :meth:`~vibe_assets.vectors.base.VectorStore.set_payloads` call, deletes by id lists.

    Args:
        vectors: the open store (either engine).
        current: ``{sha256: [absolute paths under root]}`` of the images that should have points.
        make_point: builds the full point of a new image from (sha256, its paths in this folder),
            or returns None when it cannot (e.g. no embedding yet); such images are counted as
            ``skipped``.
        caption_for: the caption payload (``caption``, ``caption_model``, ``captioned_at``) an
            image should carry, or None to leave its caption fields as they are.

    Returns:
        Counter with ``upserted``, ``payload_updated`` (of which ``captioned`` got a new
        caption), ``deleted``, ``unchanged``, ``skipped``.
    """
    mine = _under(payload_path(root))
    current = {sha: [payload_path(p) for p in paths] for sha, paths in current.items()}
    existing: dict[str, dict[str, Any]] = {
        r.id: r.payload for r in _scroll_folder(vectors, collection, folder_key)
    }
    wanted = {point_id(sha): sha for sha in current}
    unseen = [pid for pid in wanted if pid not in existing]
    for r in vectors.retrieve(collection, unseen, with_payload=_SYNC_FIELDS):
        existing[r.id] = r.payload

    counts: Counter[str] = Counter()
    new_points: list[VectorPoint] = []
    updates: list[tuple[str, dict[str, Any]]] = []
    deletes: list[str] = []
    for pid, sha in wanted.items():
        paths_here = sorted(set(current[sha]))
        old = existing.get(pid)
        if old is None:
            point = make_point(sha, paths_here)
            if point is None:
                counts["skipped"] += 1
            else:
                new_points.append(point)
            continue
        old_paths = old.get("paths", [])
        paths = sorted({p for p in old_paths if not mine(p)} | set(paths_here))
        keys = sorted(set(old.get("folder_keys", [])) | {folder_key})
        update: dict[str, Any] = {}
        if paths != old_paths or keys != old.get("folder_keys"):
            update.update(paths=paths, folder_keys=keys)
        caption = caption_for(sha)
        if caption and any(caption[k] != old.get(k) for k in _CAPTION_COMPARED):
            update.update(caption)
            counts["captioned"] += 1
        if update:
            updates.append((pid, update))
        else:
            counts["unchanged"] += 1
    for pid, old in existing.items():
        if pid in wanted:
            continue
        paths = sorted(p for p in old.get("paths", []) if not mine(p))
        if not paths:
            deletes.append(pid)
        else:
            keys = sorted(set(old.get("folder_keys", [])) - {folder_key})
            updates.append((pid, {"paths": paths, "folder_keys": keys}))

    vectors.upsert(collection, new_points)  # in requests of UPSERT_BATCH points
    counts["upserted"] += len(new_points)
    vectors.set_payloads(collection, [PayloadUpdate.one(pid, payload) for pid, payload in updates])
    counts["payload_updated"] += len(updates)
    vectors.delete(collection, deletes)
    counts["deleted"] += len(deletes)
    return counts
