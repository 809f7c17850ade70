"""The state database: what was registered, scanned, hashed, decoded, probed. Never evicted.

``VIBE_HOME`` holds two kinds of data:

- **state** (this module): ``state.sqlite3`` (plus SQLite's ``-wal``/``-shm`` files). The folder
  registry, each folder's listing as rows (one per file: path, size, mtime_ns, inode, format,
  SHA-256; one per failure with its stage and code), the ``new_photo_folders`` sensor's folder
  fingerprints, device batch probes, and the decode outcome of every image (its preview info, or
  its failure with the fingerprint of the decoder that failed). Losing it means hashing and
  decoding the library again, so nothing here is ever evicted; rows go only when what they
  describe goes (a folder unregistered, a file gone, an image no folder holds any more).
- **cache** (:mod:`vibe_assets.cache`): ``cache/`` (a diskcache: embeddings, captions, and the
  index of the preview files) and ``previews/ab/<sha256>.jpg`` / ``<sha256>.thumb.jpg``. All of
  it is recomputable and shares ONE size limit (``VIBE_CACHE_SIZE_LIMIT_BYTES``, 8 GiB by
  default); evicting it never touches the state.
- ``qdrant/`` (the embedded vector store) and ``dagster/`` (the Dagster instance) are their
  owners' business. Files of the layout before this database (``registry.sqlite3``,
  ``sensor_folders.sqlite3``, ``probe-cache/``) are imported once and renamed to
  ``<name>.imported`` (see :mod:`vibe_assets.legacy`); they can be deleted.

The database has a schema version (table ``schema_version``, one row per applied migration) and
an ordered list of migrations (:data:`MIGRATIONS`, each a function of a connection): a database
at version N is brought to the latest version when opened, in one transaction; a database written
by a newer vibe_assets (a version this code does not know) is refused with
:class:`SchemaTooNewError`. It runs in WAL mode with a busy timeout, so a sensor tick, runs and
the CLI can use it at the same time (readers never wait for a writer; writers wait their turn,
every write transaction is ``BEGIN IMMEDIATE``). All SQL is parameterized. Stored values are
numbers, text or JSON text, and raw bytes only for file paths (``os.fsencode``, so any file name
round-trips) and sensor fingerprints: nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_DB_NAME = "state.sqlite3"
DEFAULT_BUSY_TIMEOUT_SECONDS = 60.0
"""How long a writer waits for another process's write transaction before failing (seconds).
The longest write is the one-time import of an old layout (seconds at 100k files); a run's own
writes take milliseconds."""

WAL_SIZE_LIMIT_BYTES = 16 * 2**20
"""Size the write-ahead log file is truncated to after a checkpoint (bytes)."""

Migration = tuple[str, Callable[[sqlite3.Connection], None]]


class StateError(RuntimeError):
    """The state database cannot be used (message says why)."""


class SchemaTooNewError(StateError):
    """The state database was written by a newer vibe_assets than this one."""


# -- schema -------------------------------------------------------------------------------------


def _v1_initial(db: sqlite3.Connection) -> None:
    """Registry, listings, sensor fingerprints, device probes, decode outcomes, GC candidates."""
    for statement in (
        # the folder registry (vibe_assets.partitions.FolderRegistry)
        "CREATE TABLE folders (key TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE,"
        " added_at REAL NOT NULL, recursive INTEGER NOT NULL DEFAULT 1, vanished_at REAL)",
        # per-folder listing header: one row per scanned (or hashed) folder
        "CREATE TABLE listings (folder_key TEXT PRIMARY KEY, root TEXT NOT NULL,"
        " removed INTEGER NOT NULL DEFAULT 0, skipped_hidden INTEGER NOT NULL DEFAULT 0,"
        " skipped_symlinks INTEGER NOT NULL DEFAULT 0, skipped_other INTEGER NOT NULL DEFAULT 0,"
        " scanned INTEGER NOT NULL DEFAULT 0, hashed INTEGER NOT NULL DEFAULT 0)",
        # one row per listed file; sha256 NULL until hashed (or when the stat changed since)
        "CREATE TABLE listing_files (id INTEGER PRIMARY KEY, folder_key TEXT NOT NULL,"
        " path BLOB NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
        " inode INTEGER NOT NULL, format TEXT, sha256 TEXT, UNIQUE (folder_key, path))",
        "CREATE INDEX listing_files_sha256 ON listing_files (sha256)",
        # one row per failed path: stage 'scan' (photo_files) or 'hash' (photo_hashes)
        "CREATE TABLE listing_failures (id INTEGER PRIMARY KEY, folder_key TEXT NOT NULL,"
        " stage TEXT NOT NULL CHECK (stage IN ('scan', 'hash')), path BLOB NOT NULL,"
        " code TEXT NOT NULL, doc TEXT NOT NULL)",
        "CREATE INDEX listing_failures_folder ON listing_failures (folder_key, stage)",
        # the new_photo_folders sensor's memory (vibe_assets.automation.FolderFingerprints)
        "CREATE TABLE sensor_folders (path BLOB PRIMARY KEY, root BLOB NOT NULL,"
        " key TEXT NOT NULL, fingerprint BLOB, seen_pass INTEGER NOT NULL,"
        " tick INTEGER NOT NULL)",
        # device batch probes: key and result are JSON text
        "CREATE TABLE device_probes (key TEXT PRIMARY KEY, result TEXT NOT NULL,"
        " created_at REAL NOT NULL)",
        # decode outcome per image: a preview (info) or a failure (code, message JSON, decoder
        # fingerprint)
        "CREATE TABLE decode_outcomes (sha256 TEXT PRIMARY KEY,"
        " status TEXT NOT NULL CHECK (status IN ('preview', 'failure')),"
        " width INTEGER, height INTEGER, format TEXT, decoder TEXT, exif TEXT,"
        " code TEXT, message TEXT, fingerprint TEXT, updated_at REAL NOT NULL)",
        # images that some listing stopped referencing: checked by the preview collection
        "CREATE TABLE preview_gc (sha256 TEXT PRIMARY KEY, since REAL NOT NULL)",
        "CREATE INDEX preview_gc_since ON preview_gc (since)",
        # small JSON facts about this database (e.g. the one-time import of the old layout)
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ):
        db.execute(statement)


def _v2_synced(db: sqlite3.Connection) -> None:
    """What each collection holds, as last written by the ``qdrant_<collection>`` sync: the
    paths of each folder it synced (``synced_files``) and the images that have a point, with
    the caption their payload carries (``synced_points``). The sync diffs a folder's listing
    against these instead of reading the collection (:mod:`vibe_assets.points`)."""
    for statement in (
        "CREATE TABLE synced_files (collection TEXT NOT NULL, folder_key TEXT NOT NULL,"
        " path BLOB NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (collection, folder_key, path))"
        " WITHOUT ROWID",
        "CREATE TABLE synced_points (collection TEXT NOT NULL, sha256 TEXT NOT NULL,"
        " caption_model TEXT, captioned_at TEXT, PRIMARY KEY (collection, sha256))"
        " WITHOUT ROWID",
    ):
        db.execute(statement)


def _v3_phash(db: sqlite3.Connection) -> None:
    """The perceptual hash of each decoded image's preview (``decode_outcomes.phash``: 16 hex
    digits, see :mod:`vibe_assets.imaging.phash`), used to group near duplicates. NULL for images
    decoded before this version: computed from the preview file when first needed."""
    db.execute("ALTER TABLE decode_outcomes ADD COLUMN phash TEXT")


MIGRATIONS: tuple[Migration, ...] = (
    ("initial", _v1_initial),
    ("synced", _v2_synced),
    ("phash", _v3_phash),
)
"""Ordered migrations: the schema version of a database is the number of migrations applied.
Append only; never edit or reorder one that shipped."""

SCHEMA_VERSION = len(MIGRATIONS)


# -- the database -------------------------------------------------------------------------------


def _table_exists(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def _schema_version(db: sqlite3.Connection) -> int:
    if not _table_exists(db, "schema_version"):
        return 0
    (version,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(version)


def switch_to_wal(conn: sqlite3.Connection, timeout_seconds: float) -> str:
    """Run ``PRAGMA journal_mode = WAL`` on ``conn``, retrying for up to ``timeout_seconds``
    while the database is locked; returns the journal mode SQLite reports.

    Two processes opening a new database at once both read it, then both need an exclusive
    lock to switch it to WAL. SQLite then answers one of them "database is locked" at once,
    without waiting out the busy timeout (it would otherwise deadlock; see "busy handler" in
    https://www.sqlite.org/c3ref/busy_handler.html), so the switch is tried again.

    Raises:
        sqlite3.OperationalError: still locked after ``timeout_seconds``, or another error.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class StateDB:
    """One SQLite state database (see the module docstring), safe to share between threads
    (one connection, a lock around each transaction) and processes (WAL, busy timeout).

    Opening it creates the file when needed and applies pending migrations.

    Args:
        path: the database file (``$VIBE_HOME/state.sqlite3``).
        migrations: the ordered migrations (default :data:`MIGRATIONS`; tests pass others).
        busy_timeout_seconds: how long a write waits for another process's write (seconds).

    Raises:
        SchemaTooNewError: the database's schema version is newer than ``len(migrations)``.
        StateError: the file is an SQLite database with tables but no schema version (not
            ours), or is not a database at all.
        sqlite3.OperationalError: e.g. still locked by another process after the busy timeout.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.migrations = tuple(migrations)
        self.busy_timeout_seconds = busy_timeout_seconds
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        with self._lock:
            self._connection()

    # -- plumbing -------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """The connection of this process (reopened after a fork: never shared across one)."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_seconds,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # guarded by self._lock
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_seconds * 1000)}")
            mode = switch_to_wal(conn, self.busy_timeout_seconds)
            if str(mode).lower() != "wal":
                raise StateError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never torn
            # after a checkpoint the WAL file shrinks back to this (a big import grows it)
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise StateError(f"{self.path} is not a usable state database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        latest = len(self.migrations)
        version = _schema_version(conn)
        self._check_known(version, latest)
        if version == latest:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not _table_exists(conn, "schema_version"):
                tables = conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                ).fetchall()
                if tables:
                    names = ", ".join(sorted(t[0] for t in tables))
                    raise StateError(
                        f"{self.path} holds tables ({names}) but no schema version: it is not a "
                        "vibe_assets state database"
                    )
                conn.execute(
                    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                    " name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
            version = _schema_version(conn)  # again, under the write lock
            self._check_known(version, latest)
            for number in range(version + 1, latest + 1):
                name, migrate = self.migrations[number - 1]
                migrate(conn)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (number, name, time.time()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _check_known(self, version: int, latest: int) -> None:
        if version > latest:
            raise SchemaTooNewError(
                f"{self.path} has schema version {version}, but this vibe_assets knows versions "
                f"up to {latest}: it was written by a newer vibe_assets. Upgrade vibe_assets "
                "(or point VIBE_HOME elsewhere); the database is left untouched."
            )

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a read transaction (one consistent snapshot; never blocks
        writers). Nested in :meth:`write` on the same thread, it joins that transaction."""
        with self._lock:
            conn = self._connection()
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a write transaction (``BEGIN IMMEDIATE``: waits up to the busy
        timeout for other writers), committed on exit, rolled back on an exception. Nested on
        the same thread, it joins the outer transaction.

        Raises:
            sqlite3.OperationalError: still locked by another writer after the busy timeout.
        """
        with self._lock:
            conn = self._connection()
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @property
    def version(self) -> int:
        """Schema version of the database (number of migrations applied)."""
        with self.read() as db:
            return _schema_version(db)

    @property
    def total_changes(self) -> int:
        """Rows inserted, updated or deleted through this handle since it opened (SQLite's
        ``total_changes``): how tests see what a write touched."""
        with self._lock:
            return self._connection().total_changes

    def close(self) -> None:
        """Close the connection (reopened on next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def files_size_bytes(self) -> int:
        """Bytes on disk of the database file and its ``-wal``/``-shm`` files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # -- meta -----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        """JSON value stored under ``key`` in table ``meta``, or None."""
        with self.read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` in table ``meta``."""
        with self.write() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, sort_keys=True)),
            )

    def counts(self) -> dict[str, int]:
        """Row counts of the state tables (for ``vibe-assets cache info``)."""
        tables = (
            "folders",
            "listings",
            "listing_files",
            "listing_failures",
            "sensor_folders",
            "device_probes",
            "decode_outcomes",
            "preview_gc",
        )
        with self.read() as db:
            # table names come from the tuple above, never from input
            return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def open_home_state(home: str | Path, *, import_legacy: bool = True) -> StateDB:
    """The state database of a ``VIBE_HOME`` (``home/state.sqlite3``), with the old layout
    (``registry.sqlite3``, ``sensor_folders.sqlite3``, ``probe-cache/``, state documents in
    ``cache/``) imported on first open (:func:`vibe_assets.legacy.import_legacy_layout`).

    Raises:
        SchemaTooNewError, StateError: see :class:`StateDB`.
    """
    db = StateDB(Path(home) / STATE_DB_NAME)
    if import_legacy:
        from vibe_assets.legacy import import_legacy_layout

        import_legacy_layout(Path(home), db)
    return db


# -- value encodings ------------------------------------------------------------------------------

_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def _to_i64(n: int) -> int:
    """An unsigned 64-bit number (e.g. an inode above 2**63 on some file systems) as SQLite's
    signed INTEGER; :func:`_from_i64` undoes it."""
    return n - _U64 if n > _I64_MAX else n


def _from_i64(n: int) -> int:
    return n + _U64 if n < 0 else n


def _path_blob(path: str) -> bytes:
    """A path as the bytes the file system uses (any name, even one that is not UTF-8)."""
    return os.fsencode(path)


def _path_str(blob: bytes) -> str:
    return os.fsdecode(bytes(blob))


def _json(value: Any) -> str:
    """Canonical ASCII JSON (escapes keep any text, even lone surrogates, reversible)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- listings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListingWrite:
    """Rows a listing write touched: file rows ``inserted``/``updated``/``deleted``, failure rows
    ``failures_inserted``/``failures_deleted``, and ``unreferenced`` SHA-256s (dropped from this
    folder's rows, now candidates for the preview collection)."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    failures_inserted: int = 0
    failures_deleted: int = 0
    unreferenced: int = 0

    @property
    def changed(self) -> int:
        return (
            self.inserted
            + self.updated
            + self.deleted
            + self.failures_inserted
            + self.failures_deleted
        )


_HEADER = (
    "root",
    "removed",
    "skipped_hidden",
    "skipped_symlinks",
    "skipped_other",
    "scanned",
    "hashed",
)
_INSERT_HEADER = (
    f"INSERT INTO listings (folder_key, {', '.join(_HEADER)})"
    f" VALUES (?, {', '.join('?' * len(_HEADER))})"
)
_FileRow = tuple[int, int, int, int, str | None, str | None]  # id, size, mtime_ns, inode, fmt, sha


def _file_rows(db: sqlite3.Connection, key: str) -> dict[bytes, _FileRow]:
    return {
        bytes(path): (rowid, size, mtime_ns, inode, fmt, sha)
        for rowid, path, size, mtime_ns, inode, fmt, sha in db.execute(
            "SELECT id, path, size, mtime_ns, inode, format, sha256 FROM listing_files"
            " WHERE folder_key = ?",
            (key,),
        )
    }


def _failure_doc(failure: dict[str, Any]) -> tuple[bytes, str, str]:
    """``(path bytes, code, JSON of the failure without its path)`` of a failure dict."""
    rest = {k: v for k, v in failure.items() if k != "path"}
    return _path_blob(str(failure.get("path", ""))), str(rest.get("code", "")), _json(rest)


def _read_failures(db: sqlite3.Connection, key: str, stage: str) -> list[dict[str, Any]]:
    return [
        {"path": _path_str(path), **json.loads(doc)}
        for path, doc in db.execute(
            "SELECT path, doc FROM listing_failures WHERE folder_key = ? AND stage = ? ORDER BY id",
            (key, stage),
        )
    ]


def _sync_failures(
    db: sqlite3.Connection, key: str, stage: str, wanted: Iterable[tuple[bytes, str, str]]
) -> tuple[int, int]:
    """Make the ``stage`` failure rows of ``key`` equal ``wanted`` (a multiset of ``(path,
    code, doc)``), touching only the rows that differ. Returns ``(inserted, deleted)``."""
    want: Counter[tuple[bytes, str]] = Counter()
    codes: dict[tuple[bytes, str], str] = {}
    for path, code, doc in wanted:
        want[(path, doc)] += 1
        codes[(path, doc)] = code
    stale: list[int] = []
    for rowid, path, doc in db.execute(
        "SELECT id, path, doc FROM listing_failures WHERE folder_key = ? AND stage = ? ORDER BY id",
        (key, stage),
    ).fetchall():
        item = (bytes(path), doc)
        if want[item] > 0:
            want[item] -= 1
        else:
            stale.append(rowid)
    db.executemany("DELETE FROM listing_failures WHERE id = ?", [(r,) for r in stale])
    rows = [(key, stage, p, codes[(p, d)], d) for (p, d), n in want.items() for _ in range(n)]
    db.executemany(
        "INSERT INTO listing_failures (folder_key, stage, path, code, doc) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows), len(stale)


def _mark_unreferenced(db: sqlite3.Connection, shas: Iterable[str], now: float) -> int:
    """Record ``shas`` as candidates for the preview collection (it checks they are really
    unreferenced when it runs). Returns how many."""
    rows = [(sha, now) for sha in set(shas) if sha]
    db.executemany(
        "INSERT INTO preview_gc (sha256, since) VALUES (?, ?)"
        " ON CONFLICT (sha256) DO UPDATE SET since = excluded.since",
        rows,
    )
    return len(rows)


def _upsert_header(db: sqlite3.Connection, key: str, values: dict[str, Any]) -> None:
    """Insert or update the ``listings`` row of ``key`` with ``values`` (column -> value; the
    names are :data:`_HEADER`'s), writing only when a value differs."""
    unknown = set(values) - set(_HEADER)
    if unknown:
        raise ValueError(f"not listing header columns: {sorted(unknown)}")
    row = db.execute(
        f"SELECT {', '.join(_HEADER)} FROM listings WHERE folder_key = ?", (key,)
    ).fetchone()
    if row is None:
        merged = dict.fromkeys(_HEADER, 0) | {"root": ""} | values
        db.execute(_INSERT_HEADER, (key, *(merged[n] for n in _HEADER)))
        return
    current = dict(zip(_HEADER, row, strict=True))
    changed = {n: v for n, v in values.items() if current[n] != v}
    if changed:
        sets = ", ".join(f"{n} = ?" for n in changed)  # names checked above
        db.execute(f"UPDATE listings SET {sets} WHERE folder_key = ?", (*changed.values(), key))


def write_scan(
    db: StateDB, key: str, scan: dict[str, Any], now: float | None = None
) -> ListingWrite:
    """Store a ``photo_files`` scan of folder ``key`` (``{"root", "files": [{"path", "size",
    "mtime_ns", "inode", "format"}], "failures": [{"path", "code", "message"}], "removed",
    "skipped_hidden", "skipped_symlinks", "skipped_other"}``), touching only the rows that
    changed: a new path is inserted, a path whose (size, mtime_ns, inode) changed is updated
    and loses its SHA-256 (its bytes may differ: ``photo_hashes`` hashes it again), a path no
    longer listed is deleted; scan failures likewise; hash failures of paths no longer listed
    are deleted. One transaction.
    """
    now = time.time() if now is None else now
    with db.write() as conn:
        existing = _file_rows(conn, key)
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        dropped: list[str] = []
        listed: set[bytes] = set()
        for entry in scan["files"]:
            path = _path_blob(entry["path"])
            listed.add(path)
            stat = (int(entry["size"]), int(entry["mtime_ns"]), _to_i64(int(entry["inode"])))
            fmt = entry.get("format")
            row = existing.pop(path, None)
            if row is None:
                inserts.append((key, path, *stat, fmt))
            elif row[1:4] != stat:
                updates.append((*stat, fmt, None, row[0]))
                if row[5]:
                    dropped.append(row[5])
            elif row[4] != fmt:
                updates.append((*stat, fmt, row[5], row[0]))
        conn.executemany(
            "INSERT INTO listing_files (folder_key, path, size, mtime_ns, inode, format)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            inserts,
        )
        conn.executemany(
            "UPDATE listing_files SET size = ?, mtime_ns = ?, inode = ?, format = ?, sha256 = ?"
            " WHERE id = ?",
            updates,
        )
        conn.executemany(
            "DELETE FROM listing_files WHERE id = ?", [(r[0],) for r in existing.values()]
        )
        dropped += [r[5] for r in existing.values() if r[5]]
        f_ins, f_del = _sync_failures(conn, key, "scan", map(_failure_doc, scan["failures"]))
        stale_hash = [
            rowid
            for rowid, path in conn.execute(
                "SELECT id, path FROM listing_failures WHERE folder_key = ? AND stage = 'hash'",
                (key,),
            ).fetchall()
            if bytes(path) not in listed
        ]
        conn.executemany("DELETE FROM listing_failures WHERE id = ?", [(r,) for r in stale_hash])
        _upsert_header(
            conn,
            key,
            {
                "root": str(scan["root"]),
                "removed": int(bool(scan.get("removed"))),
                "skipped_hidden": int(scan.get("skipped_hidden", 0)),
                "skipped_symlinks": int(scan.get("skipped_symlinks", 0)),
                "skipped_other": int(scan.get("skipped_other", 0)),
                "scanned": 1,
            },
        )
        gc = _mark_unreferenced(conn, dropped, now)
    return ListingWrite(
        len(inserts), len(updates), len(existing), f_ins, f_del + len(stale_hash), gc
    )


def read_scan(db: StateDB, key: str) -> dict[str, Any] | None:
    """The last scan of folder ``key`` (the dict :func:`write_scan` takes, files sorted by
    path), or None when it was never scanned."""
    with db.read() as conn:
        header = conn.execute(
            "SELECT root, removed, skipped_hidden, skipped_symlinks, skipped_other FROM listings"
            " WHERE folder_key = ? AND scanned = 1",
            (key,),
        ).fetchone()
        if header is None:
            return None
        files = [
            {
                "path": _path_str(path),
                "size": size,
                "mtime_ns": mtime_ns,
                "inode": _from_i64(inode),
                "format": fmt,
            }
            for path, size, mtime_ns, inode, fmt in conn.execute(
                "SELECT path, size, mtime_ns, inode, format FROM listing_files"
                " WHERE folder_key = ?",
                (key,),
            )
        ]
        failures = _read_failures(conn, key, "scan")
    files.sort(key=lambda f: f["path"])
    root, removed, hidden, symlinks, other = header
    return {
        "root": root,
        "files": files,
        "failures": failures,
        "skipped_hidden": hidden,
        "skipped_symlinks": symlinks,
        "skipped_other": other,
        "removed": bool(removed),
    }


def write_hashes(
    db: StateDB, key: str, hashes: dict[str, Any], now: float | None = None
) -> ListingWrite:
    """Store a ``photo_hashes`` listing of folder ``key`` (``{"root", "files": {path: {"size",
    "mtime_ns", "inode", "format", "sha256"}}, "failures": [...], "removed"}``), touching only
    the rows that changed. A listed file that is not in ``files`` (its hashing failed) keeps
    its row without a SHA-256; ``failures`` that are not this folder's scan failures are
    stored as hash failures. One transaction.
    """
    now = time.time() if now is None else now
    with db.write() as conn:
        existing = _file_rows(conn, key)
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        dropped: list[str] = []
        for path_text, entry in hashes["files"].items():
            path = _path_blob(path_text)
            values = (
                int(entry["size"]),
                int(entry["mtime_ns"]),
                _to_i64(int(entry["inode"])),
                entry.get("format"),
                str(entry["sha256"]),
            )
            row = existing.pop(path, None)
            if row is None:
                inserts.append((key, path, *values))
            elif row[1:] != values:
                updates.append((*values, row[0]))
                if row[5] and row[5] != values[4]:
                    dropped.append(row[5])
        for rowid, size, mtime_ns, inode, fmt, sha in existing.values():
            if sha is not None:  # listed, but not hashed this time (a read failure)
                updates.append((size, mtime_ns, inode, fmt, None, rowid))
                dropped.append(sha)
        conn.executemany(
            "INSERT INTO listing_files (folder_key, path, size, mtime_ns, inode, format, sha256)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            inserts,
        )
        conn.executemany(
            "UPDATE listing_files SET size = ?, mtime_ns = ?, inode = ?, format = ?, sha256 = ?"
            " WHERE id = ?",
            updates,
        )
        scan_failures = Counter(
            (bytes(p), doc)
            for p, doc in conn.execute(
                "SELECT path, doc FROM listing_failures WHERE folder_key = ? AND stage = 'scan'",
                (key,),
            )
        )
        hash_failures = []
        for failure in hashes.get("failures", []):
            path, code, doc = _failure_doc(failure)
            if scan_failures[(path, doc)] > 0:
                scan_failures[(path, doc)] -= 1
            else:
                hash_failures.append((path, code, doc))
        f_ins, f_del = _sync_failures(conn, key, "hash", hash_failures)
        _upsert_header(
            conn,
            key,
            {"root": str(hashes["root"]), "removed": int(bool(hashes.get("removed"))), "hashed": 1},
        )
        gc = _mark_unreferenced(conn, dropped, now)
    return ListingWrite(len(inserts), len(updates), 0, f_ins, f_del, gc)


def read_hashes(db: StateDB, key: str) -> dict[str, Any] | None:
    """The hash listing of folder ``key`` (``{"root", "files": {path: {"path", "size",
    "mtime_ns", "inode", "format", "sha256"}} sorted by path, "failures": scan then hash
    failures, "removed"}``), or None when ``photo_hashes`` never ran for it. Files whose
    SHA-256 is unknown (not hashed since their stat changed, or unreadable) are left out."""
    with db.read() as conn:
        header = conn.execute(
            "SELECT root, removed FROM listings WHERE folder_key = ? AND hashed = 1", (key,)
        ).fetchone()
        if header is None:
            return None
        rows = conn.execute(
            "SELECT path, size, mtime_ns, inode, format, sha256 FROM listing_files"
            " WHERE folder_key = ? AND sha256 IS NOT NULL",
            (key,),
        ).fetchall()
        failures = _read_failures(conn, key, "scan") + _read_failures(conn, key, "hash")
    files = {}
    for path, size, mtime_ns, inode, fmt, sha in rows:
        text = _path_str(path)
        files[text] = {
            "path": text,
            "size": size,
            "mtime_ns": mtime_ns,
            "inode": _from_i64(inode),
            "format": fmt,
            "sha256": sha,
        }
    return {
        "root": header[0],
        "files": dict(sorted(files.items())),
        "failures": failures,
        "removed": bool(header[1]),
    }


def drop_listing(conn: sqlite3.Connection, key: str, now: float | None = None) -> int:
    """Delete folder ``key``'s listing (inside the caller's write transaction); its images
    become candidates for the preview collection. Returns the file rows deleted."""
    shas = [
        sha
        for (sha,) in conn.execute(
            "SELECT DISTINCT sha256 FROM listing_files WHERE folder_key = ? AND sha256 IS NOT NULL",
            (key,),
        )
    ]
    deleted = conn.execute("DELETE FROM listing_files WHERE folder_key = ?", (key,)).rowcount
    conn.execute("DELETE FROM listing_failures WHERE folder_key = ?", (key,))
    conn.execute("DELETE FROM listings WHERE folder_key = ?", (key,))
    _mark_unreferenced(conn, shas, time.time() if now is None else now)
    return deleted


def is_referenced(db: StateDB, sha256: str) -> bool:
    """True when some folder listing holds a file with these bytes."""
    with db.read() as conn:
        row = conn.execute(
            "SELECT 1 FROM listing_files WHERE sha256 = ? LIMIT 1", (sha256,)
        ).fetchone()
    return row is not None


# -- decode outcomes ------------------------------------------------------------------------------

_PREVIEW_FIELDS = ("width", "height", "format", "decoder")


_OUTCOME_COLUMNS = "status, width, height, format, decoder, exif, code, message, fingerprint, phash"


def _outcome(row: tuple[Any, ...]) -> dict[str, Any] | None:
    """A ``decode_outcomes`` row (:data:`_OUTCOME_COLUMNS`) as :func:`get_decode_outcome`
    returns it; None when its JSON does not parse."""
    status, width, height, fmt, decoder, exif, code, message, fingerprint, phash = row
    try:
        if status == "preview":
            return {
                "status": status,
                "width": width,
                "height": height,
                "format": fmt,
                "decoder": decoder,
                "exif": json.loads(exif) if exif is not None else {},
                **({"phash": phash} if phash else {}),
            }
        return {
            "status": status,
            "code": code,
            "message": json.loads(message) if message is not None else "",
            "decoder": fingerprint,
        }
    except ValueError:
        return None


def get_decode_outcome(db: StateDB, sha256: str) -> dict[str, Any] | None:
    """The decode outcome of these bytes: ``{"status": "preview", "width", "height", "format",
    "decoder", "exif"}`` (plus ``"phash"``, 16 hex digits, once the preview's perceptual hash is
    stored) or ``{"status": "failure", "code", "message", "decoder"}`` (``decoder`` of a
    failure: the fingerprint of the decoding code that failed, None when unknown), or None. A
    row whose JSON does not parse reads as None (decoded again)."""
    with db.read() as conn:
        row = conn.execute(
            f"SELECT {_OUTCOME_COLUMNS} FROM decode_outcomes WHERE sha256 = ?", (sha256,)
        ).fetchone()
    return None if row is None else _outcome(row)


def get_decode_outcomes(db: StateDB, shas: Iterable[str]) -> dict[str, dict[str, Any]]:
    """:func:`get_decode_outcome` of many images in one read, ``{sha256: outcome}`` (images
    without a readable outcome are absent); one query per 500 SHA-256s."""
    wanted = list(dict.fromkeys(shas))
    out: dict[str, dict[str, Any]] = {}
    with db.read() as conn:
        for i in range(0, len(wanted), _OUTCOME_CHUNK):
            chunk = wanted[i : i + _OUTCOME_CHUNK]
            marks = ",".join("?" * len(chunk))
            for sha, *row in conn.execute(
                f"SELECT sha256, {_OUTCOME_COLUMNS} FROM decode_outcomes WHERE sha256 IN ({marks})",
                chunk,
            ):
                outcome = _outcome(tuple(row))
                if outcome is not None:
                    out[sha] = outcome
    return out


_OUTCOME_CHUNK = 500


def put_preview_outcome(db: StateDB, sha256: str, info: dict[str, Any]) -> None:
    """Record that these bytes decoded: ``info`` is ``{"width", "height" (pixels), "format",
    "decoder", "exif" (JSON-serialisable dict)}``; replaces a failure."""
    with db.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO decode_outcomes (sha256, status, width, height, format,"
            " decoder, exif, updated_at) VALUES (?, 'preview', ?, ?, ?, ?, ?, ?)",
            (
                sha256,
                *(info.get(name) for name in _PREVIEW_FIELDS),
                _json(info.get("exif") or {}),
                time.time(),
            ),
        )


def put_failure_outcome(
    db: StateDB, sha256: str, failure: dict[str, Any], fingerprint: str | None
) -> None:
    """Record that these bytes failed to decode: ``failure`` is ``{"code", "message"}``,
    ``fingerprint`` the decoder's (see :func:`get_decode_outcome`); replaces a preview."""
    with db.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO decode_outcomes (sha256, status, code, message, fingerprint,"
            " updated_at) VALUES (?, 'failure', ?, ?, ?, ?)",
            (
                sha256,
                str(failure.get("code", "")),
                _json(str(failure.get("message", ""))),
                fingerprint,
                time.time(),
            ),
        )


def delete_preview_outcome(db: StateDB, sha256: str) -> bool:
    """Forget that these bytes decoded (a failure is kept). True when there was a preview."""
    with db.write() as conn:
        cur = conn.execute(
            "DELETE FROM decode_outcomes WHERE sha256 = ? AND status = 'preview'", (sha256,)
        )
    return cur.rowcount > 0


# -- device probes --------------------------------------------------------------------------------


def get_probe(db: StateDB, key: dict[str, Any]) -> Any:
    """The stored probe result for ``key`` (parsed JSON, unchecked), or None."""
    with db.read() as conn:
        row = conn.execute(
            "SELECT result FROM device_probes WHERE key = ?", (_json(key),)
        ).fetchone()
    if row is None:
        return None
    try:
        return json.loads(row[0])
    except ValueError:
        return None


def put_probe(db: StateDB, key: dict[str, Any], result: dict[str, Any]) -> None:
    """Store a probe ``result`` (JSON-serialisable) for ``key``, replacing an older one."""
    with db.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO device_probes (key, result, created_at) VALUES (?, ?, ?)",
            (_json(key), _json(result), time.time()),
        )


def list_probes(db: StateDB) -> list[tuple[dict[str, Any], str]]:
    """Every stored probe: ``(key, result JSON text)``, oldest first."""
    with db.read() as conn:
        rows = conn.execute("SELECT key, result FROM device_probes ORDER BY created_at").fetchall()
    return [(json.loads(k), r) for k, r in rows]


# -- preview collection candidates ----------------------------------------------------------------


def take_unreferenced(db: StateDB, older_than: float, limit: int) -> list[str]:
    """Take up to ``limit`` candidates recorded before ``older_than`` (Unix seconds), oldest
    first, in one write transaction: each is removed from the candidates; those that no
    listing references any more also lose their decode outcome and are returned (their
    preview files are the caller's to delete). Cost: one index lookup per candidate."""
    with db.write() as conn:
        shas = [
            sha
            for (sha,) in conn.execute(
                "SELECT sha256 FROM preview_gc WHERE since <= ? ORDER BY since LIMIT ?",
                (older_than, limit),
            )
        ]
        gone = [
            sha
            for sha in shas
            if conn.execute(
                "SELECT 1 FROM listing_files WHERE sha256 = ? LIMIT 1", (sha,)
            ).fetchone()
            is None
        ]
        conn.executemany("DELETE FROM preview_gc WHERE sha256 = ?", [(s,) for s in shas])
        conn.executemany("DELETE FROM decode_outcomes WHERE sha256 = ?", [(s,) for s in gone])
    return gone


def pending_unreferenced(db: StateDB) -> int:
    """Candidates waiting for the preview collection."""
    with db.read() as conn:
        return conn.execute("SELECT COUNT(*) FROM preview_gc").fetchone()[0]


# -- what a vector collection holds (the qdrant_<collection> sync) -------------------------------

_IN_CHUNK = 500  # values per SQL IN (...) list (SQLite's default limit is 32,766 variables)

Caption = tuple[str | None, str | None]
"""``(caption_model, captioned_at)`` a point's payload carries; ``(None, None)`` uncaptioned."""


@dataclass(frozen=True)
class SyncRecord:
    """One folder sync to record with :func:`record_sync`: the folder's files now synced
    (``files``: ``{path: sha256}``), points written with their caption (``upserted``), points
    whose caption payload changed (``captioned``), points deleted (``deleted``: SHA-256s)."""

    files: dict[str, str]
    upserted: dict[str, Caption]
    captioned: dict[str, Caption]
    deleted: frozenset[str]


def synced_files(db: StateDB, collection: str, folder_key: str) -> dict[str, str]:
    """``{path: sha256}`` of folder ``folder_key`` as last synced into ``collection``."""
    with db.read() as conn:
        rows = conn.execute(
            "SELECT path, sha256 FROM synced_files WHERE collection = ? AND folder_key = ?",
            (collection, folder_key),
        ).fetchall()
    return {_path_str(path): sha for path, sha in rows}


def synced_points(db: StateDB, collection: str, shas: Iterable[str]) -> dict[str, Caption]:
    """``{sha256: (caption_model, captioned_at)}`` of those of ``shas`` that have a point in
    ``collection`` (as recorded by the sync)."""
    wanted = list(dict.fromkeys(shas))
    out: dict[str, Caption] = {}
    with db.read() as conn:
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for sha, model, at in conn.execute(
                "SELECT sha256, caption_model, captioned_at FROM synced_points"
                f" WHERE collection = ? AND sha256 IN ({marks})",
                (collection, *chunk),
            ):
                out[sha] = (model, at)
    return out


def synced_point_count(db: StateDB, collection: str) -> int:
    """Points ``collection`` holds according to the recorded syncs."""
    with db.read() as conn:
        (n,) = conn.execute(
            "SELECT COUNT(*) FROM synced_points WHERE collection = ?", (collection,)
        ).fetchone()
    return int(n)


def listed_paths(
    db: StateDB, shas: Iterable[str], exclude_folder: str | None = None
) -> dict[str, list[tuple[str, str]]]:
    """``{sha256: [(path, folder_key), ...]}``: every listed file holding these bytes, in every
    folder listing but ``exclude_folder``'s (a path listed by two nested partitions appears once
    per partition); SHA-256s no listing holds are absent. Sorted by path, then folder key."""
    wanted = list(dict.fromkeys(shas))
    out: dict[str, list[tuple[str, str]]] = {}
    with db.read() as conn:
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for sha, path, key in conn.execute(
                f"SELECT sha256, path, folder_key FROM listing_files WHERE sha256 IN ({marks})",
                chunk,
            ):
                if key != exclude_folder:
                    out.setdefault(sha, []).append((_path_str(path), key))
    return {sha: sorted(rows) for sha, rows in out.items()}


def record_sync(db: StateDB, collection: str, folder_key: str, record: SyncRecord) -> None:
    """Record what a folder sync wrote (one transaction; call it after the writes to the
    collection succeeded, so a crash in between only makes the next run write again)."""
    with db.write() as conn:
        old = {
            path: sha
            for path, sha in conn.execute(
                "SELECT path, sha256 FROM synced_files WHERE collection = ? AND folder_key = ?",
                (collection, folder_key),
            )
        }
        new = {_path_blob(path): sha for path, sha in record.files.items()}
        conn.executemany(
            "DELETE FROM synced_files WHERE collection = ? AND folder_key = ? AND path = ?",
            [(collection, folder_key, path) for path in old if path not in new],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO synced_files (collection, folder_key, path, sha256)"
            " VALUES (?, ?, ?, ?)",
            [
                (collection, folder_key, path, sha)
                for path, sha in new.items()
                if old.get(path) != sha
            ],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO synced_points (collection, sha256, caption_model,"
            " captioned_at) VALUES (?, ?, ?, ?)",
            [
                (collection, sha, model, at)
                for sha, (model, at) in {**record.upserted, **record.captioned}.items()
            ],
        )
        conn.executemany(
            "DELETE FROM synced_points WHERE collection = ? AND sha256 = ?",
            [(collection, sha) for sha in record.deleted],
        )


def reset_synced(db: StateDB, collection: str, points: dict[str, Caption] | None = None) -> None:
    """Forget what was recorded for ``collection`` (it was deleted, or found to differ from
    what the syncs recorded): every folder's next sync rewrites its points' paths. ``points``:
    the points the collection really holds (``{sha256: caption}``, e.g. read back by
    :func:`vibe_assets.points.reconcile_collection`), recorded instead."""
    with db.write() as conn:
        conn.execute("DELETE FROM synced_files WHERE collection = ?", (collection,))
        conn.execute("DELETE FROM synced_points WHERE collection = ?", (collection,))
        conn.executemany(
            "INSERT INTO synced_points (collection, sha256, caption_model, captioned_at)"
            " VALUES (?, ?, ?, ?)",
            [(collection, sha, model, at) for sha, (model, at) in (points or {}).items()],
        )
