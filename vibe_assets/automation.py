"""Schedules and sensors that start runs by themselves.

``recaption_schedule`` (weekly by default) captions every folder whose images lack a caption from
the current caption model, as range runs over many folders: never one run per folder, and no run
at all when every folder is captioned. Changing the caption model changes its id, so the next
tick re-captions everything; the old captions stay in Qdrant until the new ones replace them.

``new_photo_folders`` (every minute) walks the photo roots (``VIBE_PHOTO_ROOTS``), registers new
photo folders as partitions and requests range runs for new, changed and vanished folders; see
:func:`build_new_photo_folders_sensor`.
"""

import json
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import dagster as dg

from vibe_assets.assets.previews import paths_by_sha
from vibe_assets.imaging.formats import IMAGE_EXTENSIONS
from vibe_assets.partitions import PARTITIONS_NAME, photo_folder_partitions
from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.store import StoreResource
from vibe_assets.scan import ARCHIVE_DIR_NAMES
from vibe_assets.settings import CAPTIONS_TAG, PHOTO_ROOTS_ENV, check_photo_roots
from vibe_assets.state import StateDB

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_ranges(
    keys: Sequence[str], needs_work: Callable[[str], bool], max_per_run: int
) -> list[tuple[str, str]]:
    """Group the keys that need work into ``(first, last)`` ranges of at most ``max_per_run``
    consecutive keys (in partition order), each starting and ending on a key that needs work.

    Keys in between that need nothing ride along (a no-op for them); keys before the first and
    after the last key needing work are never included.
    """
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(keys):
        if not needs_work(keys[i]):
            i += 1
            continue
        start = end = i
        j = i + 1
        while j < len(keys) and j - start < max_per_run:
            if needs_work(keys[j]):
                end = j
            j += 1
        ranges.append((keys[start], keys[end]))
        i = j
    return ranges


def folder_needs_captions(store: StoreResource, key: str, caption_model: str) -> bool:
    """True when a decoded image of folder ``key`` has no caption by ``caption_model``."""
    hashes = store.folder_hashes(key)
    if hashes is None:
        return False  # never ingested: the ingest run comes first
    return any(
        store.preview_info(sha) is not None and not store.has_caption(caption_model, sha)
        for sha in paths_by_sha(hashes)
    )


def build_recaption_schedule(
    job: "UnresolvedAssetJobDefinition", cron: str, max_per_run: int
) -> dg.ScheduleDefinition:
    """The re-caption schedule for ``job`` (``blip_captions`` + the Qdrant assets)."""

    @dg.schedule(
        name="recaption_schedule",
        job=job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Captions every folder whose images lack a caption from the current caption model, "
            f"as range runs of up to {max_per_run} folders; skips when all are captioned."
        ),
    )
    def recaption_schedule(
        context: dg.ScheduleEvaluationContext, store: StoreResource, blip: BlipResource
    ) -> Sequence[dg.RunRequest] | dg.SkipReason:
        caption_model = blip.model_id
        keys = context.instance.get_dynamic_partitions(PARTITIONS_NAME)
        ranges = partition_ranges(
            keys, lambda key: folder_needs_captions(store, key, caption_model), max_per_run
        )
        if not ranges:
            return dg.SkipReason(f"all {len(keys)} folders are captioned by {caption_model}")
        tick = (
            context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else ""
        )
        return [
            dg.RunRequest(
                run_key=f"recaption:{caption_model}:{start}:{end}:{tick}",
                tags={
                    RANGE_START_TAG: start,
                    RANGE_END_TAG: end,
                    "caption_model": caption_model,
                    CAPTIONS_TAG: "on",  # the schedule is how captions happen on a CPU
                },
            )
            for start, end in ranges
        ]

    return recaption_schedule


# -- new_photo_folders sensor -------------------------------------------------------------------

NEW_FOLDERS_SENSOR = "new_photo_folders"
DEFAULT_SENSOR_INTERVAL_SECONDS = 60
DEFAULT_MAX_FOLDERS_PER_TICK = 2_000
"""Folders listed per tick. ``benchmarks/sensor.py`` (5,000 folders x 20 files, warm page cache,
2 vCPU): 2,000 folders take 0.4-0.6 s unchanged and 1.1 s when all are new (registration
included), far below the daemon's 60 s sensor timeout; a 5,000-folder library is one pass of 3
ticks (3 minutes at the 60 s interval)."""
DEFAULT_SECONDS_PER_TICK = 20.0
"""Time budget of a tick's walk (seconds): a second bound for slow disks (network shares)."""
TRIGGER_TAG = "vibe/trigger"

log = logging.getLogger(__name__)


def is_image_name(name: str) -> bool:
    """Cheap photo-folder test for one file name: not hidden and an extension in
    :data:`~vibe_assets.imaging.formats.IMAGE_EXTENSIONS` (case-insensitive). Never reads the
    file: the sensor lists every folder of the library on every pass."""
    return not name.startswith(".") and PurePath(name).suffix.lower() in IMAGE_EXTENSIONS


def folder_fingerprint(files: Sequence[os.DirEntry[str]]) -> bytes:
    """16-byte BLAKE2b digest of the sorted ``(name, size in bytes, mtime_ns)`` of ``files``.

    One ``lstat`` per file, no read. Adding, removing, renaming, resizing or touching a file
    changes it; a file that vanishes between the listing and its ``lstat`` is left out.
    """
    digest = blake2b(digest_size=16)
    for entry in sorted(files, key=lambda e: e.name):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        digest.update(os.fsencode(entry.name) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.digest()


@dataclass(frozen=True)
class _Listed:
    """One folder listed by :func:`_walk`: relative components, path, direct regular files."""

    rel: tuple[str, ...]
    path: str
    files: list[os.DirEntry[str]]
    error: OSError | None = None


def _walk(root: str, after: tuple[str, ...] | None, stats: Counter[str]) -> Iterator[_Listed]:
    """Pre-order walk of ``root`` with sorted children, so the order is the order of the
    relative component tuples; folders up to and including ``after`` are skipped (their
    subtrees are never listed, only the ancestors of ``after``). Hidden entries and symlinks
    (to folders or files) are skipped: nothing outside ``root`` is ever listed. Archive folders
    (:data:`~vibe_assets.scan.ARCHIVE_DIR_NAMES`, at any depth) are never entered, so nothing
    archived is registered again (counted in ``stats["archives_skipped"]``)."""
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, *rel)
        todo = after is None or rel > after
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            if todo:
                yield _Listed(rel, path, [], exc)
            continue
        dirs: list[str] = []
        files: list[os.DirEntry[str]] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink():
                    stats["symlinks_skipped"] += 1
                elif entry.is_dir(follow_symlinks=False):
                    if entry.name in ARCHIVE_DIR_NAMES:
                        stats["archives_skipped"] += 1
                    else:
                        dirs.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry)
            except OSError:
                continue
        for name in sorted(dirs, reverse=True):
            child = (*rel, name)
            if after is not None and child <= after and after[: len(child)] != child:
                continue  # this whole subtree was done before ``after``
            stack.append(child)
        if todo:
            yield _Listed(rel, path, files)


@dataclass(frozen=True)
class _Row:
    root: bytes
    key: str
    fingerprint: bytes | None
    seen_pass: int
    tick: int


class FolderFingerprints:
    """The sensor's memory: one row per photo folder seen under a root (table
    ``sensor_folders`` of the state database, :mod:`vibe_assets.state`): path, root, partition
    key, 16-byte fingerprint (NULL once reported vanished), the walk pass that last saw it and
    the tick that last requested a run for it.

    Paths are stored as ``os.fsencode`` bytes, so any file name round-trips.

    Args:
        state: the state database, or the path of one.
    """

    def __init__(self, state: StateDB | str | Path) -> None:
        self.state = state if isinstance(state, StateDB) else StateDB(state)

    def rows(self) -> dict[bytes, _Row]:
        """Every row, by path."""
        with self.state.read() as db:
            return {
                bytes(r[0]): _Row(bytes(r[1]), r[2], None if r[3] is None else bytes(r[3]), *r[4:])
                for r in db.execute(
                    "SELECT path, root, key, fingerprint, seen_pass, tick FROM sensor_folders"
                )
            }

    def write(
        self,
        upserts: Sequence[tuple[bytes, bytes, str, bytes | None, int, int]],
        seen: Sequence[bytes],
        seen_pass: int,
        confirm_after: int,
        tick: int,
    ) -> None:
        """One transaction: upsert ``(path, root, key, fingerprint, seen_pass, tick)`` rows,
        stamp ``seen`` paths with ``seen_pass``, move rows of unconfirmed ticks
        (``> confirm_after``) to ``tick``."""
        with self.state.write() as db:
            db.execute("UPDATE sensor_folders SET tick = ? WHERE tick > ?", (tick, confirm_after))
            db.executemany(
                "INSERT INTO sensor_folders (path, root, key, fingerprint, seen_pass, tick)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET"
                " root = excluded.root, key = excluded.key,"
                " fingerprint = excluded.fingerprint, seen_pass = excluded.seen_pass,"
                " tick = excluded.tick",
                upserts,
            )
            db.executemany(
                "UPDATE sensor_folders SET seen_pass = ? WHERE path = ? AND seen_pass != ?",
                [(seen_pass, p, seen_pass) for p in seen],
            )


@dataclass(frozen=True)
class _Cursor:
    """Sensor cursor (small JSON): last tick number, current walk pass, and where the walk
    stopped (root + relative components of the last folder listed), None at a pass end."""

    tick: int
    walk_pass: int
    root: str | None = None
    after: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, raw: str | None) -> "_Cursor | None":
        if not raw:
            return None
        try:
            doc = json.loads(raw)
            after = doc.get("after")
            return cls(
                int(doc["tick"]),
                int(doc["pass"]),
                doc.get("root"),
                tuple(str(c) for c in after) if after is not None else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s: unreadable cursor %r: starting a new pass", NEW_FOLDERS_SENSOR, raw)
            return None

    def dump(self) -> str:
        return json.dumps(
            {
                "tick": self.tick,
                "pass": self.walk_pass,
                "root": self.root,
                "after": list(self.after) if self.after is not None else None,
            }
        )


def _evaluate_new_photo_folders(
    context: dg.SensorEvaluationContext,
    store: StoreResource,
    roots: list[Path],
    root_problems: list[str],
    max_per_run: int,
    max_folders_per_tick: int,
    max_seconds_per_tick: float,
) -> dg.SensorResult:
    started = time.monotonic()
    for problem in root_problems:
        context.log.warning(f"{PHOTO_ROOTS_ENV}: {problem}")
    table = FolderFingerprints(store.state)
    rows = table.rows()
    cursor = _Cursor.parse(context.cursor)
    stored_pass = max((r.seen_pass for r in rows.values()), default=0)
    # Rows written by a tick whose cursor was never saved (the evaluation failed or timed out
    # after our write) may have no run and no partition: they are requested again (same run
    # keys, which Dagster deduplicates). No cursor at all (first tick, a reset cursor, a new
    # Dagster instance over an old VIBE_HOME) confirms nothing: every known folder is requested.
    confirmed = cursor.tick if cursor is not None else 0
    # Re-evaluating with the same cursor gives the same tick number, hence the same run keys.
    # Without a cursor the number continues after the stored ones, so run keys never collide
    # with an earlier tick's (a collision would make Dagster drop a needed run).
    if cursor is not None:
        tick = cursor.tick + 1
    else:
        tick = max((r.tick for r in rows.values()), default=0) + 1
    root_names = [str(r) for r in roots]
    if cursor is not None and cursor.root is not None and cursor.root in root_names:
        walk_pass, start_root, after = cursor.walk_pass, root_names.index(cursor.root), cursor.after
    else:
        walk_pass = max(cursor.walk_pass if cursor else 0, stored_pass) + 1
        start_root, after = 0, None

    stats: Counter[str] = Counter()
    needs: dict[str, str] = {r.key: "unconfirmed" for r in rows.values() if r.tick > confirmed}
    changed: list[tuple[Path, _Listed, bytes]] = []
    seen: list[bytes] = []
    position: tuple[str, tuple[str, ...]] | None = None
    for index in range(start_root, len(roots)):
        root = roots[index]
        for listed in _walk(str(root), after if index == start_root else None, stats):
            stats["listed"] += 1
            pkey = os.fsencode(listed.path)
            row = rows.get(pkey)
            if listed.error is not None:
                if not isinstance(listed.error, FileNotFoundError) and row is not None:
                    seen.append(pkey)  # unreadable for now: keep its state, never "vanished"
                stats["unreadable"] += 1
                context.log.warning(f"cannot list {listed.path}: {listed.error}")
            elif any(is_image_name(e.name) for e in listed.files):
                stats["photo_folders"] += 1
                fingerprint = folder_fingerprint(listed.files)
                if row is not None and row.fingerprint == fingerprint:
                    seen.append(pkey)
                else:
                    changed.append((root, listed, fingerprint))
            if (
                stats["listed"] >= max_folders_per_tick
                or time.monotonic() - started >= max_seconds_per_tick
            ):
                position = (str(root), listed.rel)
                break
        if position is not None:
            break

    partitions = list(context.instance.get_dynamic_partitions(PARTITIONS_NAME))
    known = set(partitions)
    new_keys: list[str] = []
    if any(key not in known for key in needs):  # unconfirmed rows: their partitions too
        registered = {f.key for f in store.registry.list()}
        for path in sorted(p for p, r in rows.items() if r.tick > confirmed):
            key = rows[path].key
            if key not in known and key in registered:
                known.add(key)
                new_keys.append(key)
    upserts: list[tuple[bytes, bytes, str, bytes | None, int, int]] = []
    inside: list[tuple[Path, _Listed, bytes, Path]] = []
    for root, listed, fingerprint in changed:
        try:
            resolved = Path(listed.path).resolve()
        except (OSError, RuntimeError) as exc:
            context.log.warning(f"cannot resolve {listed.path}: {exc}")
            stats["not_registered"] += 1
            continue
        if not resolved.is_relative_to(root):  # e.g. swapped for a symlink during the walk
            context.log.warning(f"{listed.path} resolves outside {root}: not registered")
            stats["outside_root"] += 1
            continue
        inside.append((root, listed, fingerprint, resolved))
    try:
        folders, failures = store.registry.add_many((r for *_, r in inside), recursive=False)
    except sqlite3.Error as exc:  # registry locked or unwritable: retried next tick
        context.log.warning(f"cannot write the folder registry: {exc}")
        folders, failures = [], {str(r): str(exc) for *_, r in inside}
    by_path = {str(f.path): f for f in folders}
    for root, listed, fingerprint, resolved in inside:
        folder = by_path.get(str(resolved))
        if folder is None:
            context.log.warning(f"cannot register {listed.path}: {failures.get(str(resolved))}")
            stats["not_registered"] += 1
            continue
        is_new = os.fsencode(listed.path) not in rows
        stats["new" if is_new else "changed"] += 1
        needs[folder.key] = "new" if is_new else "changed"
        if folder.key not in known:
            known.add(folder.key)
            new_keys.append(folder.key)
        upserts.append(
            (
                os.fsencode(listed.path),
                os.fsencode(str(root)),
                folder.key,
                fingerprint,
                walk_pass,
                tick,
            )
        )

    if position is None:  # the pass is complete: whatever it did not see has vanished
        seen_now = {p: rows[p].root for p in seen} | {u[0]: u[1] for u in upserts}
        vanished = _vanished_folders(context, store, roots, rows, seen_now, walk_pass)
        for pkey, root_b, key in vanished:
            stats["vanished"] += 1
            needs.setdefault(key, "vanished")
            upserts.append((pkey, root_b, key, None, walk_pass, tick))

    order = partitions + new_keys
    ranges = partition_ranges(order, needs.__contains__, max_per_run)
    stats["not_partitions"] = sum(1 for k in needs if k not in known)
    table.write(upserts, seen, walk_pass, confirmed, tick)

    next_cursor = _Cursor(
        tick, walk_pass, position[0] if position else None, position[1] if position else None
    )
    reasons = Counter(needs[k] for k in needs if k in known)
    where = f"continues after {os.path.join(position[0], *position[1])}" if position else "complete"
    summary = (
        f"tick {tick}, pass {walk_pass} {where}: listed {stats['listed']} folders"
        f" ({stats['photo_folders']} photo folders) in {time.monotonic() - started:.2f}s;"
        f" new {stats['new']}, changed {stats['changed']}, vanished {stats['vanished']},"
        f" re-requested {reasons['unconfirmed']}, symlinks skipped {stats['symlinks_skipped']},"
        f" archive folders skipped {stats['archives_skipped']},"
        f" unreadable {stats['unreadable']},"
        f" not registered {stats['not_registered'] + stats['outside_root']}"
    )
    if not roots:
        summary = f"no photo roots to walk ({PHOTO_ROOTS_ENV} is unset or lists none that exist)"
    context.log.info(summary)
    if not ranges:
        return dg.SensorResult(
            skip_reason=f"nothing to ingest; {summary}", cursor=next_cursor.dump()
        )
    run_requests = [
        dg.RunRequest(
            run_key=f"{NEW_FOLDERS_SENSOR}:{tick}:{start}:{end}",
            tags={RANGE_START_TAG: start, RANGE_END_TAG: end, TRIGGER_TAG: NEW_FOLDERS_SENSOR},
        )
        for start, end in ranges
    ]
    context.log.info(
        f"requesting {len(run_requests)} range runs for {sum(reasons.values())} folders"
        f" ({dict(reasons)}); {len(new_keys)} new partitions"
    )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [photo_folder_partitions.build_add_request(new_keys)] if new_keys else []
        ),
        cursor=next_cursor.dump(),
    )


def _vanished_folders(
    context: dg.SensorEvaluationContext,
    store: StoreResource,
    roots: list[Path],
    rows: dict[bytes, _Row],
    seen_now: dict[bytes, bytes],
    walk_pass: int,
) -> list[tuple[bytes, bytes, str]]:
    """``(path, root, key)`` of the folders under ``roots`` that this pass did not see as photo
    folders although they were (fingerprint set), plus registered folders under a root whose
    directory is gone and that were never reported. ``seen_now`` maps the paths seen by this
    tick to their root; earlier ticks of the pass stamped their rows with ``walk_pass``.

    A root where the whole pass saw no photo folder while some were known is assumed unmounted
    (an empty mount point): nothing under it counts as vanished, a warning says so."""
    registered = store.registry.list()
    found: list[tuple[bytes, bytes, str]] = []
    for root in roots:
        root_b = os.fsencode(str(root))
        mine = {p: r for p, r in rows.items() if r.root == root_b}
        present = sum(1 for r in seen_now.values() if r == root_b) + sum(
            1
            for p, r in mine.items()
            if r.seen_pass == walk_pass and r.fingerprint is not None and p not in seen_now
        )
        stale = [
            (p, r.key)
            for p, r in mine.items()
            if r.fingerprint is not None and r.seen_pass != walk_pass and p not in seen_now
        ]
        stale += [
            (os.fsencode(str(f.path)), f.key)
            for f in registered
            if os.fsencode(str(f.path)) not in rows
            and os.fsencode(str(f.path)) not in seen_now
            and f.path.is_relative_to(root)
            and not f.path.is_dir()
        ]
        if stale and present == 0:
            context.log.warning(
                f"{root} holds no photo folder now, {len(stale)} were known: assuming it is not"
                " mounted; nothing under it is treated as vanished"
            )
            continue
        for p, key in stale:
            context.log.warning(
                f"photo folder {os.fsdecode(p)} ({key}) vanished or holds no image any more:"
                " requesting a run to remove its points"
            )
            found.append((p, root_b, key))
    return found


def build_new_photo_folders_sensor(
    job: "UnresolvedAssetJobDefinition | dg.JobDefinition",
    max_per_run: int,
    max_folders_per_tick: int = DEFAULT_MAX_FOLDERS_PER_TICK,
    *,
    roots: Sequence[str | Path] | None = None,
    max_seconds_per_tick: float = DEFAULT_SECONDS_PER_TICK,
    minimum_interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS,
    default_status: dg.DefaultSensorStatus | None = None,
) -> dg.SensorDefinition:
    """The ``new_photo_folders`` sensor: keeps the folder partitions in step with the photo roots.

    Each tick lists folders of the roots in a fixed order (``os.scandir``, sorted names,
    pre-order; hidden entries and symlinks skipped, so nothing outside a root is ever listed, and
    a new folder is registered only when its resolved path is inside its root; archive folders,
    ``_VibeDuplicates`` and ``_VibeArchive`` at any depth, are never entered). A *photo folder*
    directly holds a file whose extension is in ``IMAGE_EXTENSIONS`` (names only, no file read).
    Its fingerprint is a 16-byte hash of its direct files' names, sizes and mtime_ns.

    - new or changed photo folder: registered in the :class:`FolderRegistry`, added as a dynamic
      partition (same :class:`dg.SensorResult`) and covered by a range run;
    - at the end of each full pass, a known photo folder that was not seen (deleted, or no image
      left) gets a run (``photo_files`` reports the folder as removed, the
      Qdrant asset deletes its points) and its fingerprint is forgotten (NULL), so it is
      requested once; if it comes back it is new again. A root with no photo folder left at all
      is assumed unmounted and nothing under it is treated as vanished;
    - runs are ``partition_ranges`` over the partitions in insertion order (new keys last), at
      most ``max_per_run`` partitions each, run key ``new_photo_folders:<tick>:<start>:<end>``;
      nothing to do gives a ``SkipReason``. They target the whole job: ``blip_captions`` decides
      in the run, on the machine it executes on, whether to caption (``VIBE_CAPTIONS``), so a
      tick never imports torch.

    Fingerprints live in the state database (:class:`FolderFingerprints`), not in the cursor:
    5,000 folders would make a ~300 KB cursor, rewritten every minute into the instance's
    storage. The cursor only holds the tick number, the pass number and where the walk
    stopped. Rows carry the tick that wrote them; rows newer than the cursor's tick come from an
    evaluation whose cursor was never saved and are requested again with the same run keys
    (Dagster drops runs whose key exists), so no change is lost or run twice. With no cursor at
    all (first tick, a reset cursor, a new Dagster instance over an old ``VIBE_HOME``) every
    known folder is requested again and its partition re-added. A folder removed by hand
    (``vibe-assets folders remove``) stays out until it changes.

    Args:
        job: the job the runs target (``ingest_job``; its assets use the photo_folder
            partitions).
        max_per_run: most partitions per run (``VIBE_MAX_PARTITIONS_PER_RUN``, 32 by default).
        max_folders_per_tick: most folders listed per tick (photo folders or not); the next tick
            continues after the last one (cursor). Default from ``benchmarks/sensor.py``.
        roots: photo roots; None reads ``VIBE_PHOTO_ROOTS`` at every tick (a drive mounted later
            is picked up). Missing roots are logged each tick, never fatal.
        max_seconds_per_tick: walk time budget (seconds), the other per-tick bound.
        minimum_interval_seconds: seconds between ticks.
        default_status: None: RUNNING when roots are given or ``VIBE_PHOTO_ROOTS`` is set when
            definitions load (what a photographer who configured roots expects), else STOPPED.

    Raises:
        ValueError: ``max_per_run`` or ``max_folders_per_tick`` is below 1.
    """
    if max_per_run < 1 or max_folders_per_tick < 1:
        raise ValueError("max_per_run and max_folders_per_tick must be at least 1")
    if default_status is None:
        configured = roots if roots is not None else os.environ.get(PHOTO_ROOTS_ENV, "").strip()
        default_status = (
            dg.DefaultSensorStatus.RUNNING if configured else dg.DefaultSensorStatus.STOPPED
        )
    fixed_roots = list(roots) if roots is not None else None

    @dg.sensor(
        name=NEW_FOLDERS_SENSOR,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Walks the photo roots ({PHOTO_ROOTS_ENV}), up to {max_folders_per_tick} folders per"
            " tick, registers new photo folders as partitions and requests range runs of up to"
            f" {max_per_run} folders for new, changed and vanished folders."
        ),
    )
    def new_photo_folders(
        context: dg.SensorEvaluationContext, store: StoreResource
    ) -> dg.SensorResult:
        raw: Sequence[Any] = (
            fixed_roots
            if fixed_roots is not None
            else os.environ.get(PHOTO_ROOTS_ENV, "").split(os.pathsep)
        )
        usable, problems = check_photo_roots(raw)
        return _evaluate_new_photo_folders(
            context,
            store,
            usable,
            problems,
            max_per_run,
            max_folders_per_tick,
            max_seconds_per_tick,
        )

    return new_photo_folders
