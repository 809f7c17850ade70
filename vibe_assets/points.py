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

from qdrant_client import QdrantClient, models

from vibe_assets.batching import chunked
from vibe_assets.resources.qdrant import point_id

UPSERT_BATCH = 256  # points per upsert request
READ_BATCH = 1000  # ids per retrieve / scroll page
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


def _scroll_folder(
    client: QdrantClient, collection: str, folder_key: str
) -> Iterator[models.Record]:
    flt = models.Filter(
        must=[models.FieldCondition(key="folder_keys", match=models.MatchValue(value=folder_key))]
    )
    offset: Any = None
    while True:
        records, offset = client.scroll(
            collection,
            scroll_filter=flt,
            limit=READ_BATCH,
            offset=offset,
            with_payload=_SYNC_FIELDS,
            with_vectors=False,
        )
        yield from records
        if offset is None:
            return


def sync_folder(
    client: QdrantClient,
    collection: str,
    folder_key: str,
    root: str,
    current: dict[str, list[str]],
    make_point: Callable[[str, list[str]], models.PointStruct | None],
    caption_for: Callable[[str], dict[str, Any] | None] = lambda _: None,
) -> Counter[str]:
    """Make ``collection`` agree with one folder's current images.

    Paths are stored as :func:`payload_path` gives them.

    Args:
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
        str(r.id): r.payload or {} for r in _scroll_folder(client, collection, folder_key)
    }
    wanted = {point_id(sha): sha for sha in current}
    unseen = [pid for pid in wanted if pid not in existing]
    for ids in chunked(unseen, READ_BATCH):
        for r in client.retrieve(collection, ids=list(ids), with_payload=_SYNC_FIELDS):
            existing[str(r.id)] = r.payload or {}

    counts: Counter[str] = Counter()
    new_points: list[models.PointStruct] = []
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

    for chunk in chunked(new_points, UPSERT_BATCH):
        client.upsert(collection, points=list(chunk), wait=True)
        counts["upserted"] += len(chunk)
    for pid, payload in updates:
        client.set_payload(collection, payload=payload, points=[pid], wait=True)
        counts["payload_updated"] += 1
    for ids in chunked(deletes, READ_BATCH):
        client.delete(collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)
        counts["deleted"] += len(ids)
    return counts
