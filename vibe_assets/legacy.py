"""One-time import of the layout before the state database (Dagster-free).

Until the state database (:mod:`vibe_assets.state`), ``VIBE_HOME`` kept its state in four
places: ``registry.sqlite3`` (folder registry), ``sensor_folders.sqlite3`` (the sensor's
fingerprints), ``probe-cache/*.json`` (device batch probes) and JSON documents inside the
size-limited diskcache ``cache/`` (``scan/<folder key>``, ``hashes/<folder key>``,
``preview/<sha256>``, ``failure/<sha256>``), where eviction could drop them. Preview files under
``previews/`` were not counted in any limit.

:func:`import_legacy_layout` runs when a home's state database is opened
(:func:`vibe_assets.state.open_home_state`); the first time it finds the old layout it:

1. reads everything (the cache through :class:`vibe_assets.cache.SafeDisk`, which refuses
   pickles; unreadable or malformed documents are skipped: those folders are scanned and hashed
   again, those images decoded again);
2. writes it into the state database in ONE transaction, with a marker in table ``meta``
   (another process opening the home at the same time waits, then sees the marker);
3. deletes the old state documents from the cache, counts the existing preview files in the
   cache (so the size limit covers them), and renames the old files aside to
   ``<name>.imported`` (kept for a downgrade or a post-mortem; safe to delete);
4. logs one line saying what was imported.

A crash between 2 and 3 leaves the marker without ``cleaned``: the next open finishes step 3.
Listings of folders that are not in the registry (left behind by ``folders remove`` before)
are not imported. Nothing is hashed or decoded again because of the import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from vibe_assets.state import (
    StateDB,
    put_failure_outcome,
    put_preview_outcome,
    write_hashes,
    write_scan,
)

log = logging.getLogger(__name__)

MARKER = "legacy_import"
REGISTRY_DB = "registry.sqlite3"
SENSOR_DB = "sensor_folders.sqlite3"
PROBE_DIR = "probe-cache"
IMPORTED_SUFFIX = ".imported"
STATE_PREFIXES = ("scan/", "hashes/", "preview/", "failure/")


def _old_files(home: Path) -> list[Path]:
    return [p for p in (home / REGISTRY_DB, home / SENSOR_DB, home / PROBE_DIR) if p.exists()]


def _cache_has_state_documents(home: Path) -> bool:
    from vibe_assets.cache import _prefix_range, _read_index

    with _read_index(home) as conn:
        if conn is None:
            return False
        for prefix in STATE_PREFIXES:
            low, high = _prefix_range(prefix)
            row = conn.execute(
                "SELECT 1 FROM Cache WHERE key >= ? AND key < ? LIMIT 1", (low, high)
            ).fetchone()
            if row is not None:
                return True
    return False


def _has_previews(home: Path) -> bool:
    from vibe_assets.cache import _walk_previews

    return next(iter(_walk_previews(home)), None) is not None


def import_legacy_layout(home: Path, state: StateDB) -> dict[str, Any] | None:
    """Import the old layout of ``home`` into ``state`` once (see the module docstring).

    Returns:
        What was imported (counts), or None when there was nothing to do (already imported, or
        a home created by this version).
    """
    marker = state.get_meta(MARKER)
    if marker is not None and marker.get("cleaned"):
        return None
    if marker is None and not (
        _old_files(home) or _cache_has_state_documents(home) or _has_previews(home)
    ):
        state.set_meta(MARKER, {"found": False, "cleaned": True, "at": time.time()})
        return None
    start = time.perf_counter()
    summary: dict[str, Any] = dict(marker.get("imported", {})) if marker else {}
    if marker is None:
        found = _read_old(home)
        with state.write() as conn:
            again = conn.execute("SELECT value FROM meta WHERE key = ?", (MARKER,)).fetchone()
            if again is None:
                summary = _write_new(state, conn, found)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    (
                        MARKER,
                        json.dumps({"imported": summary, "cleaned": False, "at": time.time()}),
                    ),
                )
            else:
                summary = json.loads(again[0]).get("imported", {})
    summary.update(_clean_up(home))
    state.set_meta(MARKER, {"imported": summary, "cleaned": True, "at": time.time()})
    log.info(
        "imported the old VIBE_HOME layout of %s into %s in %.1f s: %s",
        home,
        state.path.name,
        time.perf_counter() - start,
        ", ".join(f"{k} {v}" for k, v in summary.items()),
    )
    return summary


# -- read ---------------------------------------------------------------------------------------


def _sqlite_rows(path: Path, table: str) -> list[dict[str, Any]]:
    """Rows of ``table`` in the SQLite file ``path`` as dicts (read-only); [] when absent."""
    if not path.is_file():
        return []
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if not columns:
            return []
        # table and column names come from this module and from SQLite itself
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
        return [dict(zip(columns, row, strict=True)) for row in rows]
    except sqlite3.DatabaseError as exc:
        log.warning("cannot read %s (%s): not imported", path, exc)
        return []
    finally:
        conn.close()


def _read_probes(folder: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    probes = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("key"), dict)
                and isinstance(entry.get("result"), dict)
            ):
                probes.append((entry["key"], entry["result"]))
        except (OSError, ValueError):
            continue  # a corrupt probe is probed again
    return probes


def _read_documents(home: Path) -> dict[str, dict[str, Any]]:
    """``{prefix: {rest of key: parsed JSON}}`` of the old state documents in the cache."""
    from vibe_assets.cache import UnsafeCacheEntry, _prefix_range, _read_index, open_cache

    docs: dict[str, dict[str, Any]] = {prefix: {} for prefix in STATE_PREFIXES}
    with _read_index(home) as conn:
        if conn is None:
            return docs
        keys = [
            key
            for prefix in STATE_PREFIXES
            for (key,) in conn.execute(
                "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1",
                _prefix_range(prefix),
            )
        ]
    cache = open_cache(home)
    try:
        for key in keys:
            prefix = key[: key.index("/") + 1]
            try:
                raw = cache.get(key)
                docs[prefix][key[len(prefix) :]] = json.loads(raw) if isinstance(raw, str) else None
            except (UnsafeCacheEntry, ValueError):
                docs[prefix][key[len(prefix) :]] = None  # pickled or not JSON: skipped
    finally:
        cache.close()
    return docs


def _read_old(home: Path) -> dict[str, Any]:
    return {
        "registry": _sqlite_rows(home / REGISTRY_DB, "folders"),
        "sensor": _sqlite_rows(home / SENSOR_DB, "folders"),
        "probes": _read_probes(home / PROBE_DIR),
        "documents": _read_documents(home),
    }


# -- write --------------------------------------------------------------------------------------


def _valid_preview(info: Any) -> bool:
    return (
        isinstance(info, dict)
        and all(type(info.get(k)) is int and info[k] > 0 for k in ("width", "height"))
        and isinstance(info.get("format"), str)
        and isinstance(info.get("exif", {}), dict)
    )


def _write_new(state: StateDB, conn: sqlite3.Connection, found: dict[str, Any]) -> dict[str, Any]:
    """Insert what :func:`_read_old` found (inside the caller's transaction); returns counts."""
    now = time.time()
    folders = 0
    for row in found["registry"]:
        try:
            cur = conn.execute(
                "INSERT OR IGNORE INTO folders (key, path, added_at, recursive, vanished_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    str(row["key"]),
                    str(row["path"]),
                    float(row["added_at"]),
                    int(row.get("recursive", 1)),
                    row.get("vanished_at"),
                ),
            )
            folders += cur.rowcount
        except (KeyError, TypeError, ValueError, sqlite3.DatabaseError):
            continue
    sensor = 0
    for row in found["sensor"]:
        try:
            cur = conn.execute(
                "INSERT OR IGNORE INTO sensor_folders (path, root, key, fingerprint, seen_pass,"
                " tick) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    bytes(row["path"]),
                    bytes(row["root"]),
                    str(row["key"]),
                    None if row["fingerprint"] is None else bytes(row["fingerprint"]),
                    int(row["seen_pass"]),
                    int(row["tick"]),
                ),
            )
            sensor += cur.rowcount
        except (KeyError, TypeError, ValueError, sqlite3.DatabaseError):
            continue
    probes = 0
    for key, result in found["probes"]:
        cur = conn.execute(
            "INSERT OR IGNORE INTO device_probes (key, result, created_at) VALUES (?, ?, ?)",
            (
                json.dumps(key, sort_keys=True, separators=(",", ":")),
                json.dumps(result, sort_keys=True, separators=(",", ":")),
                now,
            ),
        )
        probes += cur.rowcount
    docs = found["documents"]
    registered = {k for (k,) in conn.execute("SELECT key FROM folders")}
    listings = files = skipped = 0
    for key in sorted(set(docs["scan/"]) | set(docs["hashes/"])):
        if key not in registered:
            skipped += 1
            continue
        conn.execute("SAVEPOINT folder")
        try:
            if isinstance(docs["scan/"].get(key), dict):
                write_scan(state, key, docs["scan/"][key], now=now)
            hashes = docs["hashes/"].get(key)
            if isinstance(hashes, dict):
                write_hashes(state, key, hashes, now=now)
                files += len(hashes["files"])
            conn.execute("RELEASE folder")
            listings += 1
        except (KeyError, TypeError, ValueError, AttributeError, sqlite3.DatabaseError):
            conn.execute("ROLLBACK TO folder")
            conn.execute("RELEASE folder")
            skipped += 1
    previews = failures = 0
    for sha, info in docs["preview/"].items():
        if _valid_preview(info):
            put_preview_outcome(state, sha, info)
            previews += 1
    for sha, doc in docs["failure/"].items():
        if isinstance(doc, dict) and "code" in doc:
            put_failure_outcome(state, sha, doc, doc.get("decoder"))
            failures += 1
    # images no listing holds: their previews are collected after the grace period
    conn.execute(
        "INSERT OR IGNORE INTO preview_gc (sha256, since) SELECT sha256, ? FROM decode_outcomes"
        " WHERE sha256 NOT IN (SELECT sha256 FROM listing_files WHERE sha256 IS NOT NULL)",
        (now,),
    )
    return {
        "folders": folders,
        "listings": listings,
        "hashed_files": files,
        "listings_not_imported": skipped,
        "previews": previews,
        "failures": failures,
        "sensor_folders": sensor,
        "probes": probes,
    }


# -- clean up -----------------------------------------------------------------------------------


def _rename_aside(path: Path) -> str | None:
    """Rename ``path`` (and SQLite's side files) to ``<name>.imported`` (``.imported.N`` when
    taken). Returns the new name, or None when ``path`` is gone."""
    if not path.exists():
        return None
    target = path.with_name(path.name + IMPORTED_SUFFIX)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{IMPORTED_SUFFIX}.{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another process renamed it first
        return None
    for side in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{side}", f"{target}{side}")
    return target.name


def _clean_up(home: Path) -> dict[str, Any]:
    """Delete the old state documents from the cache, count existing preview files in it, and
    rename the old files aside. Idempotent."""
    from vibe_assets.cache import _prefix_range, _read_index, _walk_previews, open_cache

    deleted = registered = 0
    cache = open_cache(home)
    try:
        for prefix in STATE_PREFIXES:
            while True:
                with _read_index(home) as conn:
                    keys = [
                        k
                        for (k,) in (
                            conn.execute(
                                "SELECT key FROM Cache WHERE key >= ? AND key < ? LIMIT 1000",
                                _prefix_range(prefix),
                            )
                            if conn is not None
                            else []
                        )
                    ]
                if not keys:
                    break
                done = 0
                with cache.transact(retry=True):
                    for key in keys:
                        done += bool(cache.delete(key, retry=True))
                deleted += done
                if not done:  # nothing deletable left (never loop forever)
                    break
        batch: list[os.DirEntry[str]] = []
        for entry in _walk_previews(home):
            batch.append(entry)
            if len(batch) >= 1000:
                registered += _register(cache, home, batch)
                batch = []
        registered += _register(cache, home, batch)
    finally:
        cache.close()
    renamed = [name for p in _old_files(home) if (name := _rename_aside(p))]
    return {"cache_documents_deleted": deleted, "preview_files_counted": registered} | (
        {"renamed": renamed} if renamed else {}
    )


def _register(cache: Any, home: Path, entries: list[os.DirEntry[str]]) -> int:
    """Count preview files in the cache (``add``: an entry that exists is kept)."""
    from vibe_assets.cache import ExternalFile, _key_of_preview_file, _relative

    added = 0
    with cache.transact(retry=True):
        for entry in entries:
            key = _key_of_preview_file(entry.path)
            if key is None:
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            added += bool(cache.add(key, ExternalFile(_relative(home, Path(entry.path)), size)))
    return added
