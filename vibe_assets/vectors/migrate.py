"""One-time migration of the old embedded store (qdrant-client local mode) to qdrant-edge.

The old store is a folder (``$VIBE_HOME/qdrant``) holding ``collection/<name>/storage.sqlite``
per collection, whose points are pickles. They are never read: each collection is rebuilt in
the new engine from our own store (every registered folder's hash listing, previews' metadata,
stored embeddings of the collection's model and stored captions), which is what the
``qdrant_<collection>`` asset syncs anyway, so nothing is recomputed. Then the old folder is
renamed aside (``qdrant.local-mode-migrated-<YYYYmmdd-HHMMSS>``, kept for the user to delete)
and one line says what was migrated and where the old folder went.

Only the directory names of the old folder are looked at. Two processes that start at once
serialise on a lock file under the new store's folder; the second finds nothing left to do. An
old-version process still holding the old folder (its ``.lock``) postpones the migration.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vibe_assets.vectors.base import VectorStore

MIGRATION_LOCK = ".migration.lock"
MIGRATED_SUFFIX = ".local-mode-migrated-"

Rebuild = Callable[[VectorStore, str], int | None]
"""Rebuilds collection ``name`` in the store from our own data and returns its point count, or
None when it cannot (the collection is not configured, so its model is unknown)."""


def legacy_collections(legacy: Path) -> list[str]:
    """Names of the collections in a qdrant-client local-mode folder (directories holding a
    ``storage.sqlite``), sorted; [] when there is no such folder. Nothing is opened."""
    base = legacy / "collection"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "storage.sqlite").is_file())


@dataclass
class MigrationReport:
    """What :func:`migrate_local_mode` did: ``migrated`` {collection: points now},
    ``skipped`` (not configured: not rebuilt), ``moved_to`` (where the old folder went)."""

    legacy: Path
    migrated: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    moved_to: Path | None = None
    seconds: float = 0.0

    def message(self) -> str:
        """The one log line."""
        done = ", ".join(f"{name}: {n} points" for name, n in self.migrated.items()) or "nothing"
        line = (
            f"migrated the embedded Qdrant store (qdrant-client local mode, {self.legacy}) to "
            f"qdrant-edge from the store, nothing recomputed, in {self.seconds:.1f} s: {done}"
        )
        if self.skipped:
            line += (
                f"; not migrated (not configured, model unknown): {', '.join(self.skipped)} "
                "(configure them and ingest to rebuild them from the store)"
            )
        return f"{line}; old folder moved to {self.moved_to}"


@contextlib.contextmanager
def _exclusive(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An flock on ``path``: yields True when held (False when ``blocking`` is off and another
    process holds it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _legacy_in_use(legacy: Path) -> bool:
    """True when an old qdrant-client process holds the local-mode folder (its ``.lock``,
    taken with an exclusive flock by qdrant-client through portalocker)."""
    lock = legacy / ".lock"
    if not lock.is_file():
        return False
    with _exclusive(lock, blocking=False) as held:
        return not held


def migrate_local_mode(
    legacy: Path,
    store: VectorStore,
    rebuild: Rebuild,
    lock_dir: Path,
    log: Callable[[str], None] = lambda _: None,
) -> MigrationReport | None:
    """Rebuild every collection of the local-mode folder ``legacy`` in ``store`` with
    ``rebuild``, then rename ``legacy`` aside; log one line.

    Returns:
        The report, or None when there was nothing to migrate (or an old-version process still
        holds ``legacy``: then it is logged and tried again on the next open).

    Raises:
        Whatever ``rebuild`` raises (e.g. CollectionMismatchError, QdrantBusyError): the old
        folder is then left in place and the next open tries again (rebuilding is idempotent).
    """
    if not legacy_collections(legacy):
        return None
    with _exclusive(lock_dir / MIGRATION_LOCK):
        names = legacy_collections(legacy)  # another process may have finished meanwhile
        if not names:
            return None
        if _legacy_in_use(legacy):
            log(f"not migrating {legacy} yet: an older vibe_assets process still has it open")
            return None
        start = time.perf_counter()
        report = MigrationReport(legacy=legacy)
        for name in names:
            points = rebuild(store, name)
            if points is None:
                report.skipped.append(name)
            else:
                report.migrated[name] = points
        target = legacy.with_name(f"{legacy.name}{MIGRATED_SUFFIX}{time.strftime('%Y%m%d-%H%M%S')}")
        suffix = 1
        while target.exists():
            target = target.with_name(f"{target.name}-{suffix}")
            suffix += 1
        os.rename(legacy, target)
        report.moved_to = target
        report.seconds = time.perf_counter() - start
    log(report.message())
    return report
