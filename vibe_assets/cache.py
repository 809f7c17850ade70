"""The cache: recomputable data under ONE size limit. Dagster-free.

What is cached under ``VIBE_HOME`` (state is elsewhere, see :mod:`vibe_assets.state`):

- ``cache/``: a `diskcache` (SQLite + value files) holding embeddings (``embedding/<model
  id>/<sha256>``: raw float32 bytes), captions (``caption/<model id>/<sha256>``: JSON text) and
  one entry per preview file (``previewfile/<sha256>``, ``thumbfile/<sha256>``) whose value
  file IS the preview under ``previews/`` (a relative ``../previews/...`` file name), so
  diskcache counts the preview files' bytes in its size and deletes them when it evicts the
  entry. :class:`SafeDisk` refuses to pickle or unpickle anything.
- ``previews/ab/<sha256>.jpg`` (long side 512 px) and ``<sha256>.thumb.jpg`` (256 px).

One limit (``VIBE_CACHE_SIZE_LIMIT_BYTES``, default 8 GiB) covers all of it: past it, the least
recently stored entries are evicted, whatever their kind, as diskcache does when something is
stored. Evicting never touches the state: an evicted embedding or caption is computed again
when needed; an evicted preview is decoded again from the original (its decode outcome, kept
in the state, says it decodes), by the next ``photo_previews`` or on demand by the model stages.

Previews of images that no folder listing holds any more are collected by
:func:`collect_unreferenced_previews` (``photo_hashes`` calls it at the end of each run), and
``vibe-assets cache info|clear`` are :func:`cache_info` / :func:`clear_cache`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from vibe_assets.state import (
    StateDB,
    open_home_state,
    pending_unreferenced,
    take_unreferenced,
)

log = logging.getLogger(__name__)

CACHE_DIR = "cache"
PREVIEWS_DIR = "previews"
DISKCACHE_TIMEOUT_SECONDS = 60.0
GC_BATCH = 5_000
"""Most images one :func:`collect_unreferenced_previews` call collects (the rest wait for the
next call): bounds the collection's time (~1 ms per image: an index lookup and two unlinks)."""

EMBEDDING_PREFIX = "embedding/"
CAPTION_PREFIX = "caption/"
PREVIEW_PREFIX = "previewfile/"
THUMBNAIL_PREFIX = "thumbfile/"
KINDS: dict[str, tuple[str, ...]] = {
    "embeddings": (EMBEDDING_PREFIX,),
    "captions": (CAPTION_PREFIX,),
    "previews": (PREVIEW_PREFIX, THUMBNAIL_PREFIX),
}
"""Cache kinds (``vibe-assets cache info|clear``) and their key prefixes."""

_EXTERNAL = os.path.join(os.pardir, PREVIEWS_DIR) + os.sep  # preview files, seen from cache/
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class UnsafeCacheEntry(ValueError):
    """A cache entry was stored pickled (not written by us): it is never loaded."""


@dataclass(frozen=True)
class ExternalFile:
    """A cache value that is an existing file outside diskcache's own folder: ``filename``
    relative to the cache folder (``../previews/ab/<sha>.jpg``), ``size`` in bytes."""

    filename: str
    size: int


class SafeDisk(diskcache.Disk):
    """diskcache ``Disk`` that only stores ``str``/``bytes``/``int``/``float`` values (and
    :class:`ExternalFile`), never pickles, and owns the preview files of its entries.

    A preview entry's value file is the preview itself, so diskcache's size accounting, eviction
    and ``clear`` cover the previews. Deleting a preview entry deletes its file, unless the key
    is stored again (a re-decode replaced the entry: same file name), which is checked on the
    owning cache's connection (:attr:`owner`, set by :func:`open_cache`; without it preview
    files are never deleted here).

    Raises:
        TypeError: on storing any other type (which the stock ``Disk`` would pickle).
        UnsafeCacheEntry: on reading a pickled key or value.
    """

    _ALLOWED = (str, bytes, int, float)
    owner: Any = None  # weakref.ref to the diskcache.Cache using this disk

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) not in self._ALLOWED:
            raise TypeError(f"cache keys must be str/bytes/int/float, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise UnsafeCacheEntry("refusing to unpickle a cache key")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if type(value) is ExternalFile:
            return value.size, diskcache.core.MODE_BINARY, value.filename, None
        if not read and type(value) not in self._ALLOWED:
            raise TypeError(f"cache values must be str/bytes/int/float, not {type(value).__name__}")
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise UnsafeCacheEntry("refusing to unpickle a cache value")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path: str) -> None:
        if not file_path.startswith(_EXTERNAL):
            super().remove(file_path)
            return
        cache = self.owner() if self.owner is not None else None
        key = _key_of_preview_file(file_path)
        if cache is None or key is None or key in cache:
            return  # unknown owner, or the entry was stored again: the file is in use
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self._directory, file_path))


def _key_of_preview_file(file_path: str) -> str | None:
    """Cache key of a preview file name (``.../<sha>.jpg`` or ``.../<sha>.thumb.jpg``)."""
    name = os.path.basename(file_path)
    if name.endswith(".thumb.jpg"):
        prefix, sha = THUMBNAIL_PREFIX, name[: -len(".thumb.jpg")]
    elif name.endswith(".jpg"):
        prefix, sha = PREVIEW_PREFIX, name[: -len(".jpg")]
    else:
        return None
    return prefix + sha if _SHA_RE.match(sha) else None


def open_cache(home: str | Path, size_limit_bytes: int | None = None) -> diskcache.Cache:
    """The cache of ``home`` (``home/cache``), evicting the least recently stored entries past
    ``size_limit_bytes`` (None: keep the limit stored in the cache, 1 GiB for a new one, as
    diskcache does; :class:`vibe_assets.resources.store.StoreResource` always passes one)."""
    folder = Path(home) / CACHE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {"eviction_policy": "least-recently-stored"}
    if size_limit_bytes is not None:
        settings["size_limit"] = int(size_limit_bytes)
    cache = diskcache.Cache(
        str(folder), disk=SafeDisk, timeout=DISKCACHE_TIMEOUT_SECONDS, **settings
    )
    cache.disk.owner = weakref.ref(cache)
    return cache


GET_MANY_CHUNK = 500
"""Keys per query of :func:`get_many` (SQLite's default limit is 32,766 bound parameters)."""


def get_many(cache: diskcache.Cache, keys: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Values of those ``keys`` that ``cache`` holds (and have not expired), read with one query
    per :data:`GET_MANY_CHUNK` keys on the cache's own connection instead of one ``get`` each.

    diskcache has no bulk read; this runs the query of ``diskcache.Cache.get`` (its ``Cache``
    table, string keys stored raw) with ``IN (...)`` and decodes each value with the cache's
    disk (:class:`SafeDisk`, so nothing is unpickled). Like ``get`` under the
    ``least-recently-stored`` policy of :func:`open_cache`, it updates no access statistics. A
    value whose file vanished meanwhile (evicted by another process) counts as missing.

    Returns:
        ``({key: value}, unsafe)``: ``unsafe`` are keys whose entry is pickled (not written by
        vibe_assets); the caller decides whether to delete them.
    """
    found: dict[str, Any] = {}
    unsafe: list[str] = []
    wanted = list(dict.fromkeys(keys))
    now = time.time()
    for start in range(0, len(wanted), GET_MANY_CHUNK):
        chunk = wanted[start : start + GET_MANY_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = cache._sql(  # diskcache's connection of this thread (what Cache.get uses)
            "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN "
            f"({marks}) AND (expire_time IS NULL OR expire_time > ?)",
            (*chunk, now),
        ).fetchall()
        for key, mode, filename, value in rows:
            try:
                found[key] = cache.disk.fetch(mode, filename, value, False)
            except UnsafeCacheEntry:
                unsafe.append(key)
            except OSError:  # its value file is gone: as Cache.get, a miss
                continue
    return found, unsafe


def preview_files(home: str | Path, sha256: str) -> tuple[Path, Path]:
    """``(preview, thumbnail)`` paths of an image under ``home/previews``."""
    folder = Path(home) / PREVIEWS_DIR / sha256[:2]
    return folder / f"{sha256}.jpg", folder / f"{sha256}.thumb.jpg"


def _relative(home: Path, path: Path) -> str:
    return _EXTERNAL + str(path.relative_to(home / PREVIEWS_DIR))


def register_preview(cache: diskcache.Cache, home: str | Path, sha256: str) -> None:
    """Count an image's preview and thumbnail files (already written) in the cache.

    Raises:
        OSError: a file is missing.
    """
    home = Path(home)
    with cache.transact():
        pairs = zip((PREVIEW_PREFIX, THUMBNAIL_PREFIX), preview_files(home, sha256), strict=True)
        for prefix, path in pairs:
            cache.set(prefix + sha256, ExternalFile(_relative(home, path), path.stat().st_size))


def drop_preview(cache: diskcache.Cache, home: str | Path, sha256: str) -> None:
    """Delete an image's preview and thumbnail: their cache entries and files."""
    with cache.transact():
        cache.delete(PREVIEW_PREFIX + sha256)
        cache.delete(THUMBNAIL_PREFIX + sha256)
    for path in preview_files(home, sha256):
        path.unlink(missing_ok=True)


# -- collection of unreferenced previews ----------------------------------------------------------


@dataclass(frozen=True)
class Collected:
    """What :func:`collect_unreferenced_previews` did: ``images`` whose previews were deleted,
    ``bytes_freed``, ``pending`` (candidates left for later calls), ``seconds`` (wall)."""

    images: int
    bytes_freed: int
    pending: int
    seconds: float


def collect_unreferenced_previews(
    state: StateDB,
    cache: diskcache.Cache,
    home: str | Path,
    grace_seconds: float,
    limit: int = GC_BATCH,
    now: float | None = None,
) -> Collected:
    """Delete the previews (files and cache entries) and decode outcomes of images that no
    folder listing references any more, and have not for ``grace_seconds``.

    Candidates are recorded by the listing writes themselves when a file row loses its SHA-256
    (file deleted or changed, folder removed or unregistered), so the cost follows what changed,
    not the library's size; at most ``limit`` per call (the oldest), the rest wait for the next.
    The grace period spares an image moved between two folders that are ingested in different
    runs (it would be decoded again otherwise).
    """
    start = time.perf_counter()
    now = time.time() if now is None else now
    gone = take_unreferenced(state, now - grace_seconds, limit)
    freed = 0
    for sha in gone:
        for path in preview_files(home, sha):
            with contextlib.suppress(OSError):
                freed += path.stat().st_size
        drop_preview(cache, home, sha)
    pending = pending_unreferenced(state)
    seconds = time.perf_counter() - start
    if gone:
        log.info(
            "collected the previews of %d images no folder holds any more (%d bytes) in %.2f s;"
            " %d candidates pending",
            len(gone),
            freed,
            seconds,
            pending,
        )
    return Collected(len(gone), freed, pending, seconds)


# -- cache info / clear ---------------------------------------------------------------------------


@contextlib.contextmanager
def _read_index(home: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to diskcache's index (``cache/cache.db``), None when absent or
    not created yet (another process may be creating the cache right now: the file exists
    before its ``Cache`` table)."""
    path = home / CACHE_DIR / "cache.db"
    if not path.is_file():
        yield None
        return
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Cache'"
        ).fetchone()
        yield conn if has_table else None
    finally:
        conn.close()


def _prefix_range(prefix: str) -> tuple[str, str]:
    """``[low, high)`` bounds of the text keys starting with ``prefix`` (an index range)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _kind_stats(conn: sqlite3.Connection | None, prefixes: Iterable[str]) -> dict[str, int]:
    entries = size = 0
    for prefix in prefixes:
        if conn is None:
            continue
        low, high = _prefix_range(prefix)
        n, files, inline = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(LENGTH(value)), 0)"
            " FROM Cache WHERE key >= ? AND key < ? AND raw = 1",
            (low, high),
        ).fetchone()
        entries += n
        size += files + inline
    return {"entries": entries, "bytes": size}


def _walk_previews(home: Path) -> Iterator[os.DirEntry[str]]:
    root = home / PREVIEWS_DIR
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as shards:
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError), os.scandir(shard.path) as files:
                for entry in files:
                    if entry.is_file(follow_symlinks=False) and entry.name.endswith(".jpg"):
                        yield entry


def cache_info(home: str | Path, size_limit_bytes: int) -> dict[str, Any]:
    """Sizes of the state and of each cache kind under ``home`` (``vibe-assets cache info``).

    Returns:
        ``{"home", "limit_bytes", "state": {"path", "bytes" (database files on disk), "rows":
        {table: count}}, "cache": {"path", "bytes" (diskcache's own estimate of its size,
        previews included: what the limit is compared with), "kinds": {kind: {"entries",
        "bytes"}} (bytes: stored values), "other_entries"}, "previews_on_disk": {"files",
        "bytes"}, "unreferenced_pending"}`` (candidates of the preview collection). Opening
        the home imports an old layout first (see :func:`vibe_assets.state.open_home_state`).
    """
    home = Path(home).expanduser().resolve()
    state = open_home_state(home)
    try:
        info: dict[str, Any] = {
            "home": str(home),
            "limit_bytes": int(size_limit_bytes),
            "state": {
                "path": str(state.path),
                "bytes": state.files_size_bytes(),
                "rows": state.counts(),
            },
            "unreferenced_pending": pending_unreferenced(state),
        }
    finally:
        state.close()
    with _read_index(home) as conn:
        kinds = {kind: _kind_stats(conn, prefixes) for kind, prefixes in KINDS.items()}
        total_entries = conn.execute("SELECT COUNT(*) FROM Cache").fetchone()[0] if conn else 0
        if conn is not None:
            ((pages,),) = conn.execute("PRAGMA page_count").fetchall()
            ((page_size,),) = conn.execute("PRAGMA page_size").fetchall()
            sizes = conn.execute("SELECT COALESCE(SUM(size), 0) FROM Cache").fetchone()[0]
            volume = pages * page_size + sizes
        else:
            volume = 0
    files = total = 0
    for entry in _walk_previews(home):
        with contextlib.suppress(OSError):
            total += entry.stat(follow_symlinks=False).st_size
            files += 1
    info["cache"] = {
        "path": str(home / CACHE_DIR),
        "bytes": volume,
        "kinds": kinds,
        "other_entries": total_entries - sum(k["entries"] for k in kinds.values()),
    }
    info["previews_on_disk"] = {"files": files, "bytes": total}
    return info


def clear_cache(home: str | Path, kinds: Iterable[str]) -> dict[str, dict[str, int]]:
    """Delete the cached ``kinds`` (``embeddings``, ``captions``, ``previews``; all of them with
    every other cache entry when ``kinds`` holds ``all``), never the state
    (``vibe-assets cache clear``). Everything cleared is recomputed when needed: a cleared
    preview is decoded again from its original by the next run that needs it.

    Clearing previews also deletes preview files that have no cache entry (left by a crash or
    an older version). Safe while a run writes: what it loses it recomputes.

    Returns:
        ``{kind: {"entries": deleted, "bytes": freed}}`` (bytes: stored values, preview files
        included).

    Raises:
        ValueError: an unknown kind.
    """
    wanted = set(kinds)
    unknown = wanted - {*KINDS, "all"}
    if unknown:
        raise ValueError(f"unknown cache kinds {sorted(unknown)}; known: {[*KINDS, 'all']}")
    everything = "all" in wanted
    if everything:
        wanted = set(KINDS)
    home = Path(home).expanduser().resolve()
    open_home_state(home).close()  # an old layout's state documents are imported first
    with _read_index(home) as conn:
        before = {kind: _kind_stats(conn, KINDS[kind]) for kind in wanted}
    result: dict[str, dict[str, int]] = {}
    cache = open_cache(home)
    try:
        if everything:
            cache.clear(retry=True)
        else:
            for kind in sorted(wanted):
                _delete_prefixes(cache, home, KINDS[kind])
        result = {kind: dict(before[kind]) for kind in sorted(wanted)}
        if "previews" in wanted:  # files no entry points to
            for entry in _walk_previews(home):
                with contextlib.suppress(OSError):
                    size = entry.stat(follow_symlinks=False).st_size
                    os.remove(entry.path)
                    result["previews"]["bytes"] += size
    finally:
        cache.close()
    return result


def _delete_prefixes(cache: diskcache.Cache, home: Path, prefixes: Iterable[str]) -> None:
    """Delete every entry whose key starts with one of ``prefixes``, 1,000 per transaction."""
    for prefix in prefixes:
        low, high = _prefix_range(prefix)
        while True:
            with _read_index(home) as conn:
                keys = (
                    [
                        k
                        for (k,) in conn.execute(
                            "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1"
                            " LIMIT 1000",
                            (low, high),
                        )
                    ]
                    if conn is not None
                    else []
                )
            if not keys:
                break
            with cache.transact(retry=True):
                done = sum(bool(cache.delete(key, retry=True)) for key in keys)
            if not done:  # nothing deletable left (never loop forever)
                break


def describe_cache_info(info: dict[str, Any]) -> str:
    """:func:`cache_info` as lines for people."""
    from vibe_assets.report import human_size

    rows = info["state"]["rows"]
    lines = [
        f"VIBE_HOME {info['home']}",
        f"state  {human_size(info['state']['bytes']):>10}  {info['state']['path']} (never "
        f"evicted): {rows['folders']} folders, {rows['listing_files']} listed files, "
        f"{rows['decode_outcomes']} decode outcomes, {rows['sensor_folders']} sensor folders, "
        f"{rows['device_probes']} device probes",
        f"cache  {human_size(info['cache']['bytes']):>10}  of {human_size(info['limit_bytes'])}"
        f" limit ({info['cache']['path']} and previews/)",
    ]
    for kind, stats in info["cache"]["kinds"].items():
        lines.append(f"  {kind:<11}{human_size(stats['bytes']):>10}  {stats['entries']} entries")
    disk = info["previews_on_disk"]
    lines.append(f"  previews on disk: {disk['files']} files, {human_size(disk['bytes'])}")
    if info["unreferenced_pending"]:
        lines.append(
            f"  {info['unreferenced_pending']} images no folder holds any more: their previews "
            "are collected after the grace period"
        )
    return "\n".join(lines)


def describe_cleared(result: dict[str, dict[str, int]]) -> str:
    """:func:`clear_cache`'s result as one line for people."""
    from vibe_assets.report import human_size

    total = sum(r["bytes"] for r in result.values())
    parts = [
        f"{kind} {r['entries']} entries ({human_size(r['bytes'])})" for kind, r in result.items()
    ]
    return (
        f"cleared {', '.join(parts)}: {human_size(total)} freed; state kept (recomputed when "
        "needed: nothing hashed or registered again)"
    )
