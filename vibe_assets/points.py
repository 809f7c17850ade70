"""Incremental sync of folder listings into a vector collection: cost follows what changed.

One point per unique image (id = UUID5 of its SHA-256). Its ``paths`` payload lists every listed
file holding those bytes, across folder partitions, and ``folder_keys`` the partitions that list
them. A path belongs to the partition that scanned it (a row of that partition's listing in the
state database), never to a folder by path prefix: when a parent folder and its child are both
partitions, syncing one never strips or deletes the other's paths.

Syncing folder K into collection C (:func:`sync_folder`) compares K's current listing with what
the last sync of K into C recorded (:func:`vibe_assets.state.synced_files`), plus which images
already have a point and with which caption (:func:`vibe_assets.state.synced_points`), so an
unchanged folder costs a few local reads and no request to the collection. For each image whose
files in K changed, that is new, or that has a newer caption:

- the paths of every listing holding it are read from the state database;
- no listing holds it any more: its point is deleted;
- it has no point yet: the full point (vector + payload) is upserted, if its embedding exists;
- otherwise its ``paths``/``folder_keys`` (and caption fields) are set, payload only.

Writes go in batches (upserts of :data:`~vibe_assets.vectors.base.UPSERT_BATCH`, one
``set_payloads`` call, one delete call), then the sync is recorded; a crash in between only makes
the next run write the same (idempotent) changes again. When the collection does not hold what
the recorded syncs say (its point count differs: deleted, migrated, a crash between a write and
its record), :func:`reconcile_collection` reads it back once and the folders are synced anew.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vibe_assets import state as state_db
from vibe_assets.state import Caption, StateDB, SyncRecord
from vibe_assets.vectors.base import (
    READ_BATCH,
    PayloadUpdate,
    PointNotFoundError,
    VectorPoint,
    VectorStore,
    point_id,
)

MakePoint = Callable[[str, list[str], list[str]], VectorPoint | None]
"""Builds the full point of an image from (sha256, its paths, its folder keys), or None when it
cannot (no preview, no embedding of the collection's model yet)."""
CaptionFor = Callable[[str], dict[str, Any] | None]
"""The caption payload (``caption``, ``caption_model``, ``captioned_at``) an image should carry,
or None when it has none."""


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


def _caption_of(payload: dict[str, Any] | None) -> Caption:
    if not payload:
        return (None, None)
    return (payload.get("caption_model"), payload.get("captioned_at"))


@dataclass
class SyncResult:
    """What :func:`sync_folder` did: ``counts`` (``upserted``, ``payload_updated`` of which
    ``captioned`` got a new caption, ``deleted``, ``unchanged``, ``skipped``: no embedding yet),
    the point ids it ``upserted`` and ``updated`` (for the asset checks), and ``has_point``:
    the SHA-256s of the folder's images that have a point after the sync (all of ``current``
    but the skipped ones)."""

    counts: Counter[str] = field(default_factory=Counter)
    upserted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    has_point: set[str] = field(default_factory=set)


def sync_folder(
    vectors: VectorStore,
    state: StateDB,
    collection: str,
    folder_key: str,
    current: dict[str, list[str]],
    make_point: MakePoint,
    caption_for: CaptionFor = lambda _: None,
    leaving: bool = False,
) -> SyncResult:
    """Make ``collection`` agree with folder ``folder_key``'s current images (see the module).

    Args:
        vectors: the open store (either engine).
        state: the state database (listings of every folder, what earlier syncs wrote).
        current: ``{sha256: [paths]}`` of the folder's images that should have points (decoded
            ones); ``{}`` for a removed or unregistered folder (drop its listing first, so the
            other partitions' paths are what remains).
        make_point: see :data:`MakePoint`; images it cannot build are counted as ``skipped``
            and tried again next run.
        caption_for: see :data:`CaptionFor`.
        leaving: the folder is being unregistered (``vibe-assets folders remove``): pass
            ``current={}``; its own listing no longer counts, while it still exists until every
            collection is synced (so a failed sync can simply be run again).

    Raises:
        PointNotFoundError: a recorded point is missing from the collection (the caller
            reconciles, :func:`reconcile_collection`, and syncs again).
    """
    result = SyncResult()
    counts = result.counts
    before = state_db.synced_files(state, collection, folder_key)
    now = {path: sha for sha, paths in current.items() for path in paths}
    moved = {sha for path, sha in before.items() if now.get(path) != sha}
    moved |= {sha for path, sha in now.items() if before.get(path) != sha}
    have = state_db.synced_points(state, collection, {*current, *moved})

    captions: dict[str, dict[str, Any]] = {}
    for sha in current:
        caption = caption_for(sha)
        if caption and sha in have and _caption_of(caption) != have[sha]:
            captions[sha] = caption
    todo = moved | captions.keys() | {sha for sha in current if sha not in have}
    listed = state_db.listed_paths(state, todo, exclude_folder=folder_key if leaving else None)

    new_points: list[VectorPoint] = []
    new_captions: dict[str, Caption] = {}
    updates: list[PayloadUpdate] = []
    updated_captions: dict[str, Caption] = {}
    deletes: set[str] = set()
    for sha in sorted(todo):
        rows = listed.get(sha, [])
        paths = sorted({payload_path(path) for path, _ in rows})
        keys = sorted({key for _, key in rows})
        if not rows:
            if sha in have:
                deletes.add(sha)
            continue
        if sha not in have:
            point = make_point(sha, paths, keys)
            if point is None:
                counts["skipped"] += 1
                continue
            new_points.append(point)
            new_captions[sha] = _caption_of(point.payload)
            continue
        payload: dict[str, Any] = {}
        if sha in moved:
            payload.update(paths=paths, folder_keys=keys)
        if sha in captions:
            payload.update(captions[sha])
            updated_captions[sha] = _caption_of(captions[sha])
            counts["captioned"] += 1
        updates.append(PayloadUpdate.one(point_id(sha), payload))
    touched = {*new_captions, *deletes, *(sha for sha in todo if sha in have)}
    counts["unchanged"] = sum(1 for sha in current if sha in have and sha not in touched)

    vectors.upsert(collection, new_points)  # in requests of UPSERT_BATCH points
    vectors.set_payloads(collection, updates)  # one batched call
    vectors.delete(collection, [point_id(sha) for sha in sorted(deletes)])
    counts["upserted"] += len(new_points)
    counts["payload_updated"] += len(updates)
    counts["deleted"] += len(deletes)
    result.upserted = [p.id for p in new_points]
    result.updated = [u.ids[0] for u in updates]
    result.has_point = {sha for sha in current if sha in have or sha in new_captions}
    synced = {path: sha for path, sha in now.items() if sha in result.has_point}
    state_db.record_sync(
        state,
        collection,
        folder_key,
        SyncRecord(
            files=synced,
            upserted=new_captions,
            captioned=updated_captions,
            deleted=frozenset(deletes),
        ),
    )
    return result


def collection_is_consistent(vectors: VectorStore, state: StateDB, collection: str) -> bool:
    """True when ``collection`` holds as many points as the recorded syncs say (one count)."""
    return vectors.count(collection) == state_db.synced_point_count(state, collection)


def reconcile_collection(
    vectors: VectorStore,
    state: StateDB,
    collection: str,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, int]:
    """Re-learn what ``collection`` holds when it differs from the recorded syncs: read every
    point's ``sha256`` and caption fields (no vectors, :data:`READ_BATCH` per page), delete the
    points of images no folder lists any more, record the rest, and forget every folder's
    synced paths, so each folder's next sync rewrites its points' paths (payload only).

    Returns:
        ``{"points": read, "deleted": orphans deleted}``.
    """
    fields = ["sha256", "caption_model", "captioned_at"]
    held: dict[str, Caption] = {}
    stray: list[str] = []  # points without a sha256 payload: not ours
    for point in vectors.scroll(collection, with_payload=fields, page_size=READ_BATCH):
        sha = point.payload.get("sha256")
        if isinstance(sha, str):
            held[sha] = _caption_of(point.payload)
        else:
            stray.append(point.id)
    listed = state_db.listed_paths(state, held)
    orphans = [sha for sha in held if sha not in listed]
    vectors.delete(collection, [point_id(sha) for sha in orphans] + stray)
    for sha in orphans:
        held.pop(sha)
    state_db.reset_synced(state, collection, held)
    log(
        f"{collection}: the collection did not hold what earlier syncs recorded; read back "
        f"{len(held) + len(orphans)} points, deleted {len(orphans) + len(stray)} that no folder "
        "lists; every folder's next sync rewrites its points' paths"
    )
    return {"points": len(held) + len(orphans) + len(stray), "deleted": len(orphans) + len(stray)}


def sync_folders(
    vectors: VectorStore,
    state: StateDB,
    collection: str,
    folders: Iterable[tuple[str, dict[str, list[str]]]],
    make_point: Callable[[str], MakePoint],
    caption_for: CaptionFor = lambda _: None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, SyncResult]:
    """:func:`sync_folder` for each ``(folder key, current)``, reconciling first when the
    collection and the recorded syncs disagree, and again (once) when a recorded point turns
    out to be missing. ``make_point(folder_key)`` gives that folder's point builder."""
    if not collection_is_consistent(vectors, state, collection):
        reconcile_collection(vectors, state, collection, log)
    results: dict[str, SyncResult] = {}
    for key, current in folders:
        try:
            results[key] = sync_folder(
                vectors, state, collection, key, current, make_point(key), caption_for
            )
        except PointNotFoundError:
            reconcile_collection(vectors, state, collection, log)
            results[key] = sync_folder(
                vectors, state, collection, key, current, make_point(key), caption_for
            )
    return results


def sample_ids(ids: Iterable[str], k: int, seed: int | None = None) -> list[str]:
    """Up to ``k`` of ``ids``, chosen at random (``seed`` for a repeatable choice)."""
    pool = sorted(set(ids))
    if len(pool) <= k:
        return pool
    return random.Random(seed).sample(pool, k)
