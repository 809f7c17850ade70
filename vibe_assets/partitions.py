"""Folder partitions: one Dagster dynamic partition per registered photo folder.

A partition key is a slug of the folder's name plus a short hash of its absolute path, so it only
contains ``[a-z0-9_-]`` (``/ , | [ ]`` and spaces break Dagster's UI, backfills and IO managers) and
two folders with the same name never collide. The key -> absolute path mapping lives in the state
database under ``VIBE_HOME`` (:mod:`vibe_assets.state`); per-file state lives there too, never in
Dagster.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from vibe_assets.settings import env_int
from vibe_assets.state import StateDB, drop_listing

PARTITIONS_NAME = "photo_folder"

photo_folder_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)

_KEY_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
_SLUG_MAX = 40
_HASH_CHARS = 10  # 40 bits of SHA-1: collisions need ~1M folders with the same slug.


class FolderError(ValueError):
    """A folder cannot be registered or looked up (message says why)."""


def folder_key(path: str | Path) -> str:
    """Partition key of a folder: ``<slug of its name>-<10 hex chars of SHA-1 of its abs path>``.

    Only ``[a-z0-9_-]``, at most 51 characters. Deterministic for a given absolute path.
    """
    abs_path = str(Path(path).expanduser().resolve())
    slug = re.sub(r"[^a-z0-9]+", "_", Path(abs_path).name.lower()).strip("_")[:_SLUG_MAX]
    digest = hashlib.sha1(abs_path.encode("utf-8", "surrogateescape")).hexdigest()[:_HASH_CHARS]
    return f"{slug or 'folder'}-{digest}"


def is_valid_key(key: str) -> bool:
    """True when ``key`` has the shape :func:`folder_key` produces (``[a-z0-9_-]``, <= 64)."""
    return bool(_KEY_RE.match(key))


def resolve_folder(path: str | Path) -> Path:
    """Absolute, symlink-free path of an existing directory.

    Raises:
        FolderError: the path does not exist or is not a directory.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FolderError(f"folder does not exist: {p}")
    if not p.is_dir():
        raise FolderError(f"not a directory: {p}")
    return p.resolve()


def is_within(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` is ``root`` or lies under it, both resolved (symlinks followed, ``..``
    removed) first, so a symlink or ``..`` pointing outside ``root`` is outside. Never raises:
    an unresolvable path is outside."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError, ValueError):
        return False


@dataclass(frozen=True)
class Folder:
    """A registered folder: partition ``key``, absolute ``path``, ``added_at`` (Unix seconds),
    ``recursive`` (its partition covers subfolders too: folders given to ``vibe-assets``; the
    ``new_photo_folders`` sensor registers each photo folder on its own, not recursive) and
    ``vanished_at`` (Unix seconds when ``photo_files`` first found its path gone, its points
    then removed; None while it exists or before any scan saw it gone)."""

    key: str
    path: Path
    added_at: float
    recursive: bool = True
    vanished_at: float | None = None

    @property
    def vanished(self) -> bool:
        """True when the last ``photo_files`` scan found the folder's path gone."""
        return self.vanished_at is not None


_COLUMNS = "key, path, added_at, recursive, vanished_at"
_INSERT = "INSERT OR IGNORE INTO folders (key, path, added_at, recursive) VALUES (?, ?, ?, ?)"


def _folder(
    key: str, path: str, added_at: float, recursive: int, vanished_at: float | None
) -> Folder:
    return Folder(key, Path(path), added_at, bool(recursive), vanished_at)


class FolderRegistry:
    """Map of partition key -> absolute folder path, with whether the folder has vanished
    (:meth:`mark_vanished`, :meth:`clear_vanished`, :attr:`Folder.vanished_at`): table
    ``folders`` of the state database (:mod:`vibe_assets.state`, ``VIBE_HOME/state.sqlite3``).

    All SQL is parameterized. Safe to use from several threads and processes (WAL, busy
    timeout, short transactions).

    Args:
        state: the state database, or the path of one (opened, and migrated, here).
    """

    def __init__(self, state: StateDB | str | Path) -> None:
        self.state = state if isinstance(state, StateDB) else StateDB(state)

    @property
    def db_path(self) -> Path:
        """The state database file."""
        return self.state.path

    def add(self, path: str | Path, recursive: bool = True) -> Folder:
        """Register an existing directory (idempotent: an existing entry is kept as it is) and
        return it; ``recursive``: its partition covers subfolders too.

        Raises:
            FolderError: the path does not exist or is not a directory.
        """
        abs_path = resolve_folder(path)
        key = folder_key(abs_path)
        now = time.time()
        with self.state.write() as db:
            db.execute(_INSERT, (key, str(abs_path), now, int(recursive)))
        found = self.get(key)
        assert found is not None
        return found

    def add_many(
        self, paths: Iterable[str | Path], recursive: bool = True
    ) -> tuple[list[Folder], dict[str, str]]:
        """Register many existing directories in ONE transaction (idempotent), each
        ``recursive`` or not (see :class:`Folder`).

        One commit for all (the sensor registers up to 2,000 new folders per tick).

        Returns:
            ``(folders, failures)``: the registered folders in input order, and
            ``{path: reason}`` for paths that are missing, not directories, or not encodable
            as UTF-8 (SQLite text). Never raises for one bad path.
        """
        rows: list[tuple[str, str]] = []
        failures: dict[str, str] = {}
        for path in paths:
            try:
                abs_path = resolve_folder(path)
                text = str(abs_path)
                text.encode("utf-8")
                rows.append((folder_key(abs_path), text))
            except (FolderError, OSError, RuntimeError, UnicodeError) as exc:
                failures[str(path)] = str(exc)
        now = time.time()
        found: dict[str, Folder] = {}
        with self.state.write() as db:
            db.executemany(
                _INSERT,
                [(key, text, now, int(recursive)) for key, text in rows],
            )
            for i in range(0, len(rows), 500):
                keys = [key for key, _ in rows[i : i + 500]]
                marks = ",".join("?" * len(keys))
                for row in db.execute(
                    f"SELECT {_COLUMNS} FROM folders WHERE key IN ({marks})", keys
                ):
                    found[row[0]] = _folder(*row)
        return [found[key] for key, _ in rows if key in found], failures

    def get(self, key: str) -> Folder | None:
        """The folder registered under ``key``, or None."""
        with self.state.read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM folders WHERE key = ?", (key,)).fetchone()
        return _folder(*row) if row else None

    def require(self, key: str) -> Folder:
        """The folder registered under ``key``.

        Raises:
            FolderError: no folder is registered under that key.
        """
        folder = self.get(key)
        if folder is None:
            raise FolderError(
                f"no folder is registered for partition {key!r}; add it with "
                "`vibe-assets folders add PATH`"
            )
        return folder

    def path_for(self, key: str) -> Path:
        """Absolute path registered under ``key`` (raises like :meth:`require`)."""
        return self.require(key).path

    def find(self, key_or_path: str | Path) -> Folder | None:
        """Look a folder up by partition key or by path (resolved)."""
        if isinstance(key_or_path, str) and is_valid_key(key_or_path):
            found = self.get(key_or_path)
            if found is not None:
                return found
        with contextlib.suppress(OSError):
            return self.get(folder_key(Path(key_or_path)))
        return None

    def mark_vanished(self, key: str, when: float | None = None) -> bool:
        """Record that ``key``'s folder path no longer exists (``photo_files`` calls it when a
        scan finds the root gone). The first time is kept: marking an already vanished folder
        again changes nothing. ``when``: Unix seconds, default now.

        Returns:
            True when the folder was not marked before (and is registered).
        """
        with self.state.write() as db:
            cur = db.execute(
                "UPDATE folders SET vanished_at = ? WHERE key = ? AND vanished_at IS NULL",
                (time.time() if when is None else when, key),
            )
        return cur.rowcount > 0

    def clear_vanished(self, key: str) -> bool:
        """Forget that ``key``'s folder had vanished (``photo_files`` calls it when a scan finds
        the root again). Returns True when it was marked."""
        with self.state.write() as db:
            cur = db.execute(
                "UPDATE folders SET vanished_at = NULL WHERE key = ? AND vanished_at IS NOT NULL",
                (key,),
            )
        return cur.rowcount > 0

    def remove(self, key: str) -> bool:
        """Unregister ``key`` and delete its folder listing (one transaction): its images become
        candidates for the preview collection, and registering the folder again scans and
        hashes it anew. True when it was registered."""
        with self.state.write() as db:
            cur = db.execute("DELETE FROM folders WHERE key = ?", (key,))
            drop_listing(db, key)
        return cur.rowcount > 0

    def list(self) -> list[Folder]:
        """All registered folders, oldest first."""
        with self.state.read() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM folders ORDER BY added_at, rowid").fetchall()
        return [_folder(*row) for row in rows]


def backfill_policy(max_partitions_per_run: int = 32) -> dg.BackfillPolicy:
    """Backfill policy shared by every asset of the ingest job.

    ``multi_run(N)``: a backfill of F folders runs as ceil(F / N) runs, each loading the models
    once and working through ``context.partition_keys``. All assets of one job must share it, or
    Dagster falls back to one partition per run.
    """
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=max_partitions_per_run)


BACKFILL_POLICY = backfill_policy(env_int("VIBE_MAX_PARTITIONS_PER_RUN", 32))
