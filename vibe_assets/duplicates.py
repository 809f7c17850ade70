"""Duplicate groups in three tiers, reported apart: ``exact``, ``near`` and ``similar``.

Dagster-free: the ``vibe-assets duplicates`` commands, the ``duplicate_groups`` assets and the
web pages all call :func:`find_groups`, which reads our store (the state database for listings,
decode outcomes and perceptual hashes; the cache for CLIP embeddings) and runs no model.

The tiers
---------
- ``exact``: identical bytes, one SHA-256 listed at several paths (over every folder listing in
  the state database, or those of ``folder_keys``; a path listed by two nested partitions is one
  path). One :class:`Member` **per path**; they differ only in path and file mtime, so the keeper
  is the oldest file. ``distance`` is 0.
- ``near``: the same picture re-encoded, resized, converted, EXIF-stripped or lightly edited:
  different SHA-256s whose 64-bit preview pHashes (:mod:`vibe_assets.imaging.phash`) are at most
  ``near_threshold`` bits apart (default :data:`DEFAULT_NEAR_THRESHOLD` = 8, measured there).
  Grouped **transitively** (connected components of the "within threshold" pairs: an edit of an
  edit stays in its original's group). One member per SHA-256 with all the paths holding those
  bytes, so an image that also has exact copies is represented once. ``distance`` is the largest
  Hamming distance (bits) between any two members: above the threshold only when the group is
  a chain.
- ``similar``: different shots of one scene (bursts): CLIP cosine of the collection's model at
  least ``similar_threshold`` (default :data:`DEFAULT_SIMILAR_THRESHOLD`), optionally only
  between images whose ``taken_at`` are at most ``time_window_s`` seconds apart (images without a
  capture time then take no part). Grouped by **leader clustering**, not transitively (CLIP
  neighbourhoods chain: sunset ~ sunset ~ beach ~ ...): images are taken in keeper order (best
  first); an image not yet in a group leads a new group made of it and every image not yet in a
  group whose cosine with it is at least the threshold. So the keeper is the leader and every
  member is within the threshold of the keeper. ``score`` is the lowest cosine between any two
  members.

Tiers are never mixed: a group holds one tier's relation only, and an image appears in at most
one group of a tier. Between near and similar: **each near group takes part in the similar tier
through its keeper only**; its other members never appear in a similar group. The keeper of a
near group may thus also be in one similar group (its :attr:`Member.near_group` then names the
near group): excluding near groups entirely would hide every burst shot as RAW + JPEG, where
each frame is a near pair. An image in an exact group is one member (with all its paths) in the
near and similar tiers.

The keeper
----------
Of a group's members, the keeper is the first by: largest pixel count (``width * height`` of
the decoded original, upright), then most EXIF fields (fields of
:func:`vibe_assets.imaging.exif.photo_metadata` found in the file: capture time, camera, lens,
exposure, GPS...), then oldest: earliest ``taken_at`` (an image without one counts as newer than
any with one; an ISO time without a UTC offset is read as UTC), then earliest file mtime (of any
of its paths), then the first path in sort order (only so the choice is deterministic).
:attr:`DuplicateGroup.reason` says which rule decided, with the values compared.

Scale (``python benchmarks/duplicates.py``, 100,000 images, this 2-vCPU machine): ``near`` runs
multi-index hashing on 4 blocks of 16 bits (:func:`near_pairs`), ``similar`` blocked float32
matrix products of the unit vectors (:func:`similar_pairs`), or a sweep over the images sorted
by capture time when a window is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vibe_assets.imaging.phash import (
    PHASH_BITS,
    phash_int,
    phash_of_jpeg,
    store_phashes,
)
from vibe_assets.state import StateDB

TIERS = ("exact", "near", "similar")
DEFAULT_NEAR_THRESHOLD = 8
"""Largest Hamming distance (bits of 64) between the pHashes of two near duplicates. Measured on
the sample photos (:mod:`vibe_assets.imaging.phash`): re-encoded, resized, PNG-converted,
EXIF-stripped, +25 % brightness and 3 %-cropped copies are at most 8 bits from their original;
unrelated sample photos at least 20 bits apart."""
MAX_NEAR_THRESHOLD = 24
"""Largest accepted ``near_threshold`` (bits): beyond it unrelated photos group (20 bits apart
in the samples) and the index probes explode (10,903 per hash block at 24 bits)."""
DEFAULT_SIMILAR_THRESHOLD = 0.92
"""Smallest CLIP cosine between a similar-tier keeper and its members. Not measured here: no
real CLIP weights can be fetched on this machine, and random weights say nothing. The choice:
Immich's near-duplicate default (CLIP distance 0.01, cosine 0.99) only catches near-identical
frames, which the pHash tier already finds; unrelated photos with ViT-B-32 sit typically
around 0.3-0.6 and photos sharing a subject but not a scene around 0.7-0.85; burst frames (the
same scene a moment apart) sit above ~0.9. Tune it with ``--similar-threshold`` on a library."""
DEFAULT_BLOCK_ROWS = 4096
"""Rows per tile of the similar tier's matrix products: a 4096 x 4096 float32 tile is 64 MiB."""
_PAIR_CHUNK = 4_000_000  # candidate pairs materialised at once by the near index
_IN_CHUNK = 500  # values per SQL IN (...) list

REPORTS_DIR = "reports"
"""Folder under ``VIBE_HOME`` holding the reports the ``duplicate_groups`` assets write."""


class _Store(Protocol):  # the parts of StoreResource used here
    @property
    def state(self) -> StateDB: ...
    def preview_path(self, sha256: str) -> Path: ...
    def get_embedding(self, model_id: str, sha256: str) -> Any: ...


# -- the groups -----------------------------------------------------------------------------------


@dataclass
class Member:
    """One image of a group.

    Attributes:
        sha256: SHA-256 of the file bytes.
        paths: the files holding these bytes, oldest first (mtime, then path: the one the
            exact tier keeps); exact tier: the one file of this member.
        width, height: pixels of the decoded original, upright (None: never decoded, e.g. a file
            that fails to decode, which only the exact tier can hold).
        exif_fields: EXIF fields found in the file (0 when none or not decoded).
        taken_at: capture time from EXIF, ISO 8601 (None when unknown).
        bytes: file size (bytes).
        mtime_ns: modification time of its oldest file (ns since the Unix epoch).
        near_group: in a similar group, the id of the near group this image keeps (else None).
    """

    sha256: str
    paths: list[str]
    width: int | None
    height: int | None
    exif_fields: int
    taken_at: str | None
    bytes: int
    mtime_ns: int
    near_group: str | None = None

    @property
    def pixels(self) -> int:
        """``width * height`` (0 when unknown)."""
        return (self.width or 0) * (self.height or 0)

    @property
    def path(self) -> str:
        """Its first path (its oldest file)."""
        return self.paths[0]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Member:
        """The member :meth:`as_dict` described."""
        return cls(**{k: doc.get(k) for k in cls.__dataclass_fields__})


def group_id(tier: str, members: Iterable[Member]) -> str:
    """Stable id of a group: the first 16 hex digits of SHA-256 of the tier and its members'
    SHA-256s, sorted (an exact group's repeat once per path, so a new copy is a new group)."""
    text = "\n".join([tier, *sorted(m.sha256 for m in members)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class DuplicateGroup:
    """One group of one tier (see the module docstring).

    Attributes:
        tier: ``"exact"``, ``"near"`` or ``"similar"``.
        members: the images, keeper first, then in keeper order.
        keep: the suggested keeper (``members[0]``).
        reason: why it is the keeper (the rule that decided and the values compared).
        distance: near: the largest Hamming distance between two members (bits of 64);
            exact: 0; similar: None.
        score: similar: the lowest CLIP cosine between two members; else None.
        id: stable id, :func:`group_id` (computed when not given).
    """

    tier: str
    members: list[Member]
    keep: Member
    reason: str
    distance: float | None = None
    score: float | None = None
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = group_id(self.tier, self.members)

    @property
    def paths(self) -> list[str]:
        """Every path of every member (members in order, each member's oldest file first)."""
        return [p for m in self.members for p in m.paths]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``id``, ``tier``, ``paths`` (every member path), ``keep`` (the
        keeper's path), ``keep_sha256``, ``reason``, ``distance``, ``score``, ``members``."""
        return {
            "id": self.id,
            "tier": self.tier,
            "paths": self.paths,
            "keep": self.keep.path,
            "keep_sha256": self.keep.sha256,
            "reason": self.reason,
            "distance": self.distance,
            "score": self.score,
            "members": [m.as_dict() for m in self.members],
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DuplicateGroup:
        """The group :meth:`as_dict` described (e.g. read back from a saved report)."""
        members = [Member.from_dict(m) for m in doc["members"]]
        keep = next(
            (m for m in members if m.sha256 == doc["keep_sha256"] and doc["keep"] in m.paths),
            members[0],
        )
        return cls(
            tier=doc["tier"],
            members=members,
            keep=keep,
            reason=doc["reason"],
            distance=doc.get("distance"),
            score=doc.get("score"),
            id=doc["id"],
        )


# -- the keeper rule ------------------------------------------------------------------------------


def taken_at_seconds(value: str | None) -> float | None:
    """Unix seconds of an ISO 8601 ``taken_at`` (without a UTC offset: read as UTC), or None
    when absent or unreadable."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def keeper_key(member: Member) -> tuple[Any, ...]:
    """Sort key of the keeper rule, best first: largest pixel count, most EXIF fields, earliest
    ``taken_at`` (none: last), earliest mtime, first path, SHA-256."""
    taken = taken_at_seconds(member.taken_at)
    return (
        -member.pixels,
        -member.exif_fields,
        taken is None,
        taken if taken is not None else 0.0,
        member.mtime_ns,
        member.path,
        member.sha256,
    )


def _size(m: Member) -> str:
    return f"{m.width}x{m.height}" if m.width and m.height else "unknown size"


def _mtime(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")


def keeper_reason(tier: str, members: Sequence[Member]) -> str:
    """Why ``members[0]`` (members in keeper order) is the keeper: the first rule on which it
    beats the runner-up ``members[1]``, with both values."""
    keep, other = members[0], members[1]
    if tier == "exact":
        if keep.mtime_ns != other.mtime_ns:
            return (
                f"identical bytes; oldest file: mtime {_mtime(keep.mtime_ns)} "
                f"(next {_mtime(other.mtime_ns)})"
            )
        return "identical bytes and mtimes; first path in sort order"
    if keep.pixels != other.pixels:
        return (
            f"largest pixel count: {_size(keep)} ({keep.pixels / 1e6:.2f} MP) vs {_size(other)} "
            f"({other.pixels / 1e6:.2f} MP)"
        )
    same = f"same pixel count ({_size(keep)})"
    if keep.exif_fields != other.exif_fields:
        return f"{same}; most EXIF fields: {keep.exif_fields} vs {other.exif_fields}"
    same += f" and EXIF fields ({keep.exif_fields})"
    a, b = taken_at_seconds(keep.taken_at), taken_at_seconds(other.taken_at)
    if a != b:
        return f"{same}; oldest: taken {keep.taken_at} vs {other.taken_at or 'unknown'}"
    same += f" and capture time ({keep.taken_at or 'unknown'})"
    if keep.mtime_ns != other.mtime_ns:
        return f"{same}; oldest file: mtime {_mtime(keep.mtime_ns)} vs {_mtime(other.mtime_ns)}"
    return f"{same} and mtime; first path in sort order"


def make_group(
    tier: str,
    members: Sequence[Member],
    distance: float | None = None,
    score: float | None = None,
) -> DuplicateGroup:
    """A group of ``members`` (two or more) with its keeper and reason (members sorted in
    keeper order)."""
    ordered = sorted(members, key=keeper_key)
    return DuplicateGroup(
        tier=tier,
        members=ordered,
        keep=ordered[0],
        reason=keeper_reason(tier, ordered),
        distance=distance,
        score=score,
    )


# -- near: multi-index hashing --------------------------------------------------------------------

_BLOCKS = 4
_BLOCK_BITS = PHASH_BITS // _BLOCKS  # 16
_BLOCK_VALUES = 1 << _BLOCK_BITS


def popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (``np.bitwise_count`` on numpy 2, a byte table otherwise)."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[values.view(np.uint8).reshape(-1, 8)].sum(axis=1)


def _block_masks(radius: int) -> np.ndarray:
    """Every 16-bit value with at most ``radius`` set bits (the XOR masks probed per block)."""
    values = np.arange(_BLOCK_VALUES, dtype=np.uint64)
    return values[popcount64(values) <= radius].astype(np.int64)


def near_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of ``hashes`` (uint64 array) at most ``threshold`` bits apart:
    ``(i, j, distance)`` int64 arrays, sorted by (i, j).

    Multi-index hashing: each 64-bit hash is cut into 4 blocks of 16 bits. Two hashes at most
    ``r`` bits apart agree within ``r // 4`` bits on at least one block (pigeonhole), so for
    each block and each 16-bit mask of at most ``r // 4`` bits (137 masks at r = 8), the hashes
    whose block equals this hash's block XOR the mask are candidates (a bucket lookup: counting
    sort of the block values), then the full distance is checked. Cost at 100,000 uniform
    random hashes and r = 8: 548 bucket passes of 100,000 lookups, ~150,000 candidates each.
    Identical hashes (a run of blank frames) should be collapsed by the caller first (see
    :func:`near_components`): the candidates of a bucket grow with its size squared.

    Raises:
        ValueError: ``threshold`` outside 0..:data:`MAX_NEAR_THRESHOLD`.
    """
    if not 0 <= threshold <= MAX_NEAR_THRESHOLD:
        raise ValueError(f"near threshold must be 0..{MAX_NEAR_THRESHOLD} bits, got {threshold}")
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty, empty
    masks = _block_masks(threshold // _BLOCKS)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    rows = np.arange(n, dtype=np.int64)
    for block in range(_BLOCKS):
        shift = np.uint64(block * _BLOCK_BITS)
        vals = ((h >> shift) & np.uint64(_BLOCK_VALUES - 1)).astype(np.int64)
        order = np.argsort(vals, kind="stable")
        counts = np.bincount(vals, minlength=_BLOCK_VALUES)
        starts = np.cumsum(counts) - counts
        for mask in masks:
            probe = vals ^ mask
            cnt = counts[probe]
            # materialise the candidates in slices of rows holding at most _PAIR_CHUNK of them
            ends = np.cumsum(cnt)
            lo = 0
            while lo < n:
                base = ends[lo - 1] if lo else 0
                hi = max(lo + 1, int(np.searchsorted(ends, base + _PAIR_CHUNK, side="right")))
                hi = min(hi, n)
                c = cnt[lo:hi]
                total = int(c.sum())
                if total:
                    src = np.repeat(rows[lo:hi], c)
                    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
                    dst = order[np.repeat(starts[probe[lo:hi]], c) + offsets]
                    keep = src < dst
                    src, dst = src[keep], dst[keep]
                    close = popcount64(h[src] ^ h[dst]) <= threshold
                    found_i.append(src[close])
                    found_j.append(dst[close])
                lo = hi
    if not found_i:
        return empty, empty, empty
    keys = np.unique(np.concatenate(found_i) * n + np.concatenate(found_j))
    i, j = keys // n, keys % n
    return i, j, popcount64(h[i] ^ h[j])


def near_components(hashes: np.ndarray, threshold: int) -> list[np.ndarray]:
    """Indices of ``hashes`` grouped transitively (connected components of the pairs at most
    ``threshold`` bits apart), groups of two or more only, each sorted. Identical hashes are
    collapsed before :func:`near_pairs` runs on the distinct values."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    if n < 2:
        return []
    distinct, inverse = np.unique(h, return_inverse=True)
    inverse = inverse.reshape(-1)
    ui, uj, _ = near_pairs(distinct, threshold)
    # graph over distinct values, plus one edge from every index to its value's node
    m = len(distinct)
    rows = np.concatenate([ui, np.arange(n, dtype=np.int64) + m])
    cols = np.concatenate([uj, inverse.astype(np.int64)])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(m + n, m + n))
    _, labels = connected_components(graph, directed=False)
    labels = labels[m:]  # the indices' components
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return [g for g in np.split(order, bounds) if len(g) >= 2]


def max_pairwise_hamming(hashes: np.ndarray) -> int:
    """Largest Hamming distance between two of ``hashes`` (uint64), in row blocks of 1,024."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    best = 0
    for a in range(0, len(h), 1024):
        block = h[a : a + 1024, None] ^ h[None, :]
        best = max(best, int(popcount64(block.reshape(-1)).max(initial=0)))
    return best


# -- similar: blocked matrix products -------------------------------------------------------------


def similar_pairs(
    vectors: np.ndarray,
    threshold: float,
    times: np.ndarray | None = None,
    window_s: float | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of rows of ``vectors`` (unit float32, (N, D)) whose cosine (dot
    product) is at least ``threshold``: ``(i, j, cosine)``; with ``window_s``, only pairs whose
    ``times`` (Unix seconds, (N,)) are at most that far apart.

    Without a window: the upper triangle of ``V @ V.T`` in ``block_rows`` x ``block_rows``
    float32 tiles (N**2 / 2 dot products: ~2.6e12 multiply-adds at 100,000 x 512). With one:
    the rows sorted by time, each tile of rows against only the rows up to its last time plus
    the window.

    Raises:
        ValueError: ``threshold`` not in (0, 1], or ``window_s`` without ``times``.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"similar threshold must be in (0, 1], got {threshold}")
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(v)
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_s: list[np.ndarray] = []
    if window_s is not None:
        if times is None:
            raise ValueError("a time window needs the images' times")
        order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
        ts = np.asarray(times, dtype=np.float64)[order]
        v = v[order]
    else:
        order = None
        ts = None
    for a in range(0, n, block_rows):
        end = min(a + block_rows, n)
        limit = n if ts is None else int(np.searchsorted(ts, ts[end - 1] + window_s, "right"))
        for c in range(a, limit, block_rows):
            stop = min(c + block_rows, limit)
            tile = v[a:end] @ v[c:stop].T
            ii, jj = np.nonzero(tile >= threshold)
            gi, gj = ii + a, jj + c
            keep = gj > gi
            if ts is not None:
                keep &= ts[gj] - ts[gi] <= window_s
            if keep.any():
                out_i.append(gi[keep])
                out_j.append(gj[keep])
                out_s.append(tile[ii[keep], jj[keep]])
    if not out_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    i, j, s = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)
    if order is not None:
        i, j = order[i], order[j]
        swap = i > j
        i[swap], j[swap] = j[swap], i[swap]
    first = np.lexsort((j, i))
    return i[first].astype(np.int64), j[first].astype(np.int64), s[first]


def leader_groups(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> list[np.ndarray]:
    """Leader clustering of ``n`` items linked by pairs ``(i, j)``: items in ``rank`` order
    (lower first); an item not yet taken takes every linked item not yet taken, if any, and
    leads their group. Returns each group's indices, leader first, then by rank; every member
    is linked to its leader, and no item is in two groups."""
    from scipy.sparse import coo_matrix

    if len(i) == 0:
        return []
    rank = np.asarray(rank)
    both_i = np.concatenate([i, j])
    both_j = np.concatenate([j, i])
    adj = coo_matrix((np.ones(len(both_i), dtype=np.int8), (both_i, both_j)), shape=(n, n))
    adj = adj.tocsr()
    taken = np.zeros(n, dtype=bool)
    linked = np.flatnonzero(np.diff(adj.indptr))
    groups: list[np.ndarray] = []
    for node in linked[np.argsort(rank[linked], kind="stable")]:
        if taken[node]:
            continue
        taken[node] = True
        neighbours = adj.indices[adj.indptr[node] : adj.indptr[node + 1]]
        free = neighbours[~taken[neighbours]]
        if len(free):
            taken[free] = True
            free = free[np.argsort(rank[free], kind="stable")]
            groups.append(np.concatenate([[node], free]))
    return groups


# -- reading the store ----------------------------------------------------------------------------


@dataclass
class _Image:
    """What the grouping knows of one image (SHA-256)."""

    sha256: str
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # path: (size, mtime_ns)
    decoded: bool = False
    width: int | None = None
    height: int | None = None
    exif_fields: int = 0
    taken_at: str | None = None
    phash: str | None = None

    def member(self, paths: list[str] | None = None) -> Member:
        if paths is None:  # oldest file first: the one the exact tier keeps
            paths = sorted(self.files, key=lambda p: (self.files[p][1], p))
        size = next(iter(self.files.values()))[0]
        return Member(
            sha256=self.sha256,
            paths=paths,
            width=self.width,
            height=self.height,
            exif_fields=self.exif_fields,
            taken_at=self.taken_at,
            bytes=size,
            mtime_ns=min(self.files[p][1] for p in paths),
        )


def _in_chunks(values: Sequence[str]) -> Iterable[tuple[Sequence[str], str]]:
    for k in range(0, len(values), _IN_CHUNK):
        chunk = values[k : k + _IN_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def load_images(db: StateDB, folder_keys: Sequence[str] | None = None) -> dict[str, _Image]:
    """Every hashed file of the folder listings (all, or those of ``folder_keys``) by SHA-256,
    with the decode outcome of its bytes (size, EXIF, capture time, pHash)."""
    images: dict[str, _Image] = {}

    def add(rows: Iterable[tuple[str, bytes, int, int]]) -> None:
        for sha, path, size, mtime_ns in rows:
            image = images.get(sha)
            if image is None:
                image = images[sha] = _Image(sha)
            image.files[os.fsdecode(bytes(path))] = (int(size), int(mtime_ns))

    with db.read() as conn:
        select = "SELECT sha256, path, size, mtime_ns FROM listing_files WHERE sha256 IS NOT NULL"
        if folder_keys is None:
            add(conn.execute(select))
        else:
            for chunk, marks in _in_chunks(list(dict.fromkeys(folder_keys))):
                add(conn.execute(f"{select} AND folder_key IN ({marks})", chunk))
        rows = conn.execute(
            "SELECT sha256, width, height, exif, phash FROM decode_outcomes"
            " WHERE status = 'preview'"
        )
        for sha, width, height, exif, phash in rows:
            image = images.get(sha)
            if image is None:
                continue  # an image no listing (of these folders) holds any more
            try:
                meta = json.loads(exif) if exif else {}
            except ValueError:
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
            taken = meta.get("taken_at")
            image.decoded = True
            image.width, image.height = width, height
            image.exif_fields = len(meta)
            image.taken_at = taken if isinstance(taken, str) else None
            image.phash = phash
    return images


def _stat_matches(path: str, size: int, mtime_ns: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


def _rehash_from_original(image: _Image) -> str | None:
    """The pHash of an image whose preview file is gone: decoded again from the first of its
    files whose size and mtime are still the listed ones (and still are after decoding), into
    the same preview JPEG :func:`vibe_assets.assets.previews.decode_and_store` makes. None when
    no file decodes."""
    from vibe_assets.imaging.decode import PREVIEW_SIZE, decode_photo, encode_preview
    from vibe_assets.imaging.errors import PhotoError

    for path, (size, mtime_ns) in sorted(image.files.items()):
        if not _stat_matches(path, size, mtime_ns):
            continue
        try:
            decoded = decode_photo(path, preview_size=PREVIEW_SIZE)
        except PhotoError:
            continue
        if _stat_matches(path, size, mtime_ns):
            return phash_of_jpeg(encode_preview(decoded.image))
    return None


def ensure_phashes(
    store: _Store,
    images: dict[str, _Image],
    log: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> int:
    """Compute the missing pHashes of decoded ``images`` (decoded before hashes were stored),
    store them in the state database and set them on ``images``; returns how many.

    Each is hashed from its stored preview file (~0.5 ms, plus reading the file); only when that
    file is gone (evicted from the cache, collected) or unreadable is the original decoded again
    (:func:`_rehash_from_original`; the preview itself is re-made by the next run that needs
    it). Images that cannot be hashed either way keep no hash and take no part in the near tier.
    Threads: ``workers`` (default: the CPUs this process may use).
    """
    from vibe_assets.settings import cpu_budget

    todo = [img for img in images.values() if img.decoded and img.phash is None]
    if not todo:
        return 0
    if log:
        log(f"computing the perceptual hash of {len(todo)} images decoded before hashes existed")

    def work(image: _Image) -> tuple[_Image, str | None]:
        try:
            data = store.preview_path(image.sha256).read_bytes()
            return image, phash_of_jpeg(data)
        except OSError:  # gone (evicted, collected) or unreadable: decode the original again
            return image, _rehash_from_original(image)

    done = 0
    batch: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers or cpu_budget()) as pool:
        for seen, (image, value) in enumerate(pool.map(work, todo), start=1):
            if log and seen % 5000 == 0:
                log(f"perceptual hashes: {seen}/{len(todo)} images")
            if value is None:
                continue
            image.phash = value
            batch.append((image.sha256, value))
            if len(batch) >= 1000:
                done += store_phashes(store.state, batch)
                batch = []
    if batch:
        done += store_phashes(store.state, batch)
    missing = sum(img.phash is None for img in todo)
    if log and missing:
        log(f"{missing} images could not be hashed (preview and originals unreadable)")
    return done


def load_vectors(store: _Store, model_id: str, shas: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The stored embeddings of ``shas`` by ``model_id``: ``(shas that have one, (N, D) float32
    unit rows)``; an embedding of another size than the first found is skipped."""
    found: list[str] = []
    rows: list[np.ndarray] = []
    dim = None
    for sha in shas:
        vector = store.get_embedding(model_id, sha)
        if vector is None:
            continue
        dim = dim or vector.shape[0]
        if vector.shape != (dim,):
            continue
        found.append(sha)
        rows.append(vector)
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    return found, np.stack(rows).astype(np.float32, copy=False)


# -- the tiers ------------------------------------------------------------------------------------


def exact_groups(images: dict[str, _Image]) -> list[DuplicateGroup]:
    """One group per SHA-256 listed at two or more paths (one member per path)."""
    groups = []
    for image in images.values():
        if len(image.files) >= 2:
            members = [image.member([path]) for path in sorted(image.files)]
            groups.append(make_group("exact", members, distance=0.0))
    return groups


def near_groups(images: dict[str, _Image], threshold: int) -> list[DuplicateGroup]:
    """Near-duplicate groups of the images that have a pHash (see the module docstring)."""
    hashed = sorted(sha for sha, img in images.items() if img.phash)
    if len(hashed) < 2:
        return []
    values = np.array([phash_int(images[sha].phash or "") for sha in hashed], dtype=np.uint64)
    groups = []
    for idx in near_components(values, threshold):
        members = [images[hashed[k]].member() for k in idx]
        distance = float(max_pairwise_hamming(values[idx]))
        groups.append(make_group("near", members, distance=distance))
    return groups


def similar_groups(
    store: _Store,
    model_id: str,
    images: dict[str, _Image],
    near: Sequence[DuplicateGroup],
    threshold: float,
    time_window_s: float | None = None,
) -> list[DuplicateGroup]:
    """Similar groups among the decoded images with an embedding by ``model_id``, a near group
    standing for all its members through its keeper (see the module docstring)."""
    left_out = {m.sha256 for g in near for m in g.members[1:]}
    keeps = {g.keep.sha256: g.id for g in near}
    candidates = sorted(sha for sha, img in images.items() if img.decoded and sha not in left_out)
    times = None
    if time_window_s is not None:
        candidates = [s for s in candidates if taken_at_seconds(images[s].taken_at) is not None]
    shas, vectors = load_vectors(store, model_id, candidates)
    if len(shas) < 2:
        return []
    members = [images[sha].member() for sha in shas]
    for m in members:
        m.near_group = keeps.get(m.sha256)
    if time_window_s is not None:
        times = np.array([taken_at_seconds(m.taken_at) for m in members], dtype=np.float64)
    i, j, _ = similar_pairs(vectors, threshold, times, time_window_s)
    order = sorted(range(len(members)), key=lambda k: keeper_key(members[k]))
    rank = np.empty(len(members), dtype=np.int64)
    rank[order] = np.arange(len(members))
    groups = []
    for idx in leader_groups(len(members), i, j, rank):
        sub = vectors[idx]
        score = float((sub @ sub.T).min())
        groups.append(make_group("similar", [members[k] for k in idx], score=round(score, 6)))
    return groups


def _check(tiers: Sequence[str], near_threshold: int, similar_threshold: float, window) -> None:
    unknown = set(tiers) - set(TIERS)
    if unknown:
        raise ValueError(f"unknown tiers {sorted(unknown)}; known: {list(TIERS)}")
    if not 0 <= near_threshold <= MAX_NEAR_THRESHOLD:
        raise ValueError(
            f"near threshold must be 0..{MAX_NEAR_THRESHOLD} bits, got {near_threshold}"
        )
    if not 0.0 < similar_threshold <= 1.0:
        raise ValueError(f"similar threshold must be in (0, 1], got {similar_threshold}")
    if window is not None and not window > 0:
        raise ValueError(f"time window must be a positive number of seconds, got {window}")


def sort_groups(groups: Iterable[DuplicateGroup]) -> list[DuplicateGroup]:
    """Tier order (exact, near, similar), then most paths first, then id."""
    return sorted(groups, key=lambda g: (TIERS.index(g.tier), -len(g.paths), g.id))


def find_groups(
    store: _Store,
    model_id: str | None,
    tiers: Sequence[str] = TIERS,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    similar_threshold: float = DEFAULT_SIMILAR_THRESHOLD,
    time_window_s: float | None = None,
    folder_keys: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[DuplicateGroup]:
    """Duplicate groups of the tiers asked for, sorted by :func:`sort_groups`.

    Args:
        store: our store (a :class:`~vibe_assets.resources.store.StoreResource`).
        model_id: the CLIP model id whose stored embeddings the similar tier compares (the
            collection's model); only read for ``similar``.
        tiers: any of :data:`TIERS`.
        near_threshold: largest pHash Hamming distance of a near pair (bits of 64, default 8).
        similar_threshold: smallest CLIP cosine of a similar pair (default 0.92).
        time_window_s: similar pairs only between images taken at most this many seconds apart
            (None: any time, images without capture time included).
        folder_keys: only the files of these folder partitions (default: every listing).
        log: called with a line of progress now and then.

    Missing pHashes (images decoded before they existed) are computed and stored first
    (:func:`ensure_phashes`). The near tier is computed whenever ``near`` or ``similar`` is
    asked for: the similar tier depends on it (a near group takes part through its keeper).

    Raises:
        ValueError: unknown tier, threshold out of range, ``similar`` without ``model_id``.
    """
    _check(tiers, near_threshold, similar_threshold, time_window_s)
    if "similar" in tiers and not model_id:
        raise ValueError("the similar tier needs the collection's CLIP model id")
    say = log or (lambda _: None)
    start = time.perf_counter()
    images = load_images(store.state, folder_keys)
    say(f"{len(images)} images in the listings ({time.perf_counter() - start:.1f} s)")
    groups: list[DuplicateGroup] = []
    if "exact" in tiers:
        groups += exact_groups(images)
    near: list[DuplicateGroup] = []
    if "near" in tiers or "similar" in tiers:
        ensure_phashes(store, images, log)
        t0 = time.perf_counter()
        near = near_groups(images, near_threshold)
        say(f"near: {len(near)} groups ({time.perf_counter() - t0:.1f} s)")
        if "near" in tiers:
            groups += near
    if "similar" in tiers:
        assert model_id is not None
        t0 = time.perf_counter()
        similar = similar_groups(store, model_id, images, near, similar_threshold, time_window_s)
        say(f"similar: {len(similar)} groups ({time.perf_counter() - t0:.1f} s)")
        groups += similar
    return sort_groups(groups)


# -- counts and saved reports ---------------------------------------------------------------------


def tier_counts(
    groups: Iterable[DuplicateGroup], tiers: Sequence[str] = TIERS
) -> dict[str, dict[str, int]]:
    """Per tier: ``groups``, ``images`` (members), ``files`` (paths) and ``reclaimable_bytes``
    (bytes of the files of every member but the keeper: what archiving the others would move
    out of the library)."""
    counts = {t: {"groups": 0, "images": 0, "files": 0, "reclaimable_bytes": 0} for t in tiers}
    for g in groups:
        c = counts.setdefault(
            g.tier, {"groups": 0, "images": 0, "files": 0, "reclaimable_bytes": 0}
        )
        c["groups"] += 1
        c["images"] += len(g.members)
        c["files"] += len(g.paths)
        c["reclaimable_bytes"] += sum(m.bytes * len(m.paths) for m in g.members[1:])
    return counts


def report_path(home: str | Path, collection: str) -> Path:
    """Where the ``duplicate_groups`` asset of ``collection`` writes its report:
    ``$VIBE_HOME/reports/duplicates-<collection>.json`` (recomputable: delete it at will)."""
    return Path(home) / REPORTS_DIR / f"duplicates-{collection}.json"


def build_report(
    groups: Sequence[DuplicateGroup],
    *,
    collection: str,
    model_id: str | None,
    tiers: Sequence[str] = TIERS,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    similar_threshold: float = DEFAULT_SIMILAR_THRESHOLD,
    time_window_s: float | None = None,
) -> dict[str, Any]:
    """The JSON document of a report: ``created_at`` (ISO 8601 UTC), ``collection``,
    ``model_id``, ``tiers``, ``near_threshold`` (bits), ``similar_threshold`` (cosine),
    ``time_window_s``, ``counts`` (:func:`tier_counts`) and ``groups`` (each
    :meth:`DuplicateGroup.as_dict`)."""
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "collection": collection,
        "model_id": model_id,
        "tiers": list(tiers),
        "near_threshold": near_threshold,
        "similar_threshold": similar_threshold,
        "time_window_s": time_window_s,
        "counts": tier_counts(groups, tiers),
        "groups": [g.as_dict() for g in groups],
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON to ``path`` atomically (temp file + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_report(path: Path) -> dict[str, Any]:
    """A report written by :func:`write_report`, its ``groups`` as :class:`DuplicateGroup`.

    Raises:
        FileNotFoundError: no report there (the asset never ran for that collection).
        ValueError: the file is not a report.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["groups"] = [DuplicateGroup.from_dict(g) for g in doc["groups"]]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a duplicates report: {exc}") from exc
    return doc


__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "DEFAULT_SIMILAR_THRESHOLD",
    "TIERS",
    "DuplicateGroup",
    "Member",
    "find_groups",
    "read_report",
    "report_path",
]
