"""``photo_files``: the candidate image files of each folder partition."""

import time
from pathlib import Path
from typing import Any

import dagster as dg

from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.report import (
    PER_FOLDER_LOG_MAX,
    add_partition_metadata,
    failure_metadata,
    run_metadata,
)
from vibe_assets.resources.store import StoreResource
from vibe_assets.runs import raise_if_cancelled
from vibe_assets.scan import ScanResult, scan_folder


def scan_metadata(root: Path, scan: ScanResult, seconds: float) -> dict[str, Any]:
    """One folder's ``photo_files`` metadata: ``folder`` (its path), ``files`` (candidate
    images), ``folder_removed`` (the folder no longer exists: no files, no failure),
    ``scan_seconds`` (wall seconds of its scan) and the failure entries of
    :func:`vibe_assets.report.failure_metadata` (unreadable entries)."""
    return {
        "folder": str(root),
        "files": len(scan.files),
        "folder_removed": scan.removed,
        "scan_seconds": round(seconds, 3),
        **failure_metadata(scan.failures),
    }


@dg.asset(
    partitions_def=photo_folder_partitions,
    backfill_policy=BACKFILL_POLICY,
    group_name="ingest",
    kinds={"python"},
)
def photo_files(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Scan of each folder (recursive for folders given to ``vibe-assets``, direct files only for
    those the ``new_photo_folders`` sensor found): path, size (bytes), mtime_ns, inode and the
    format sniffed from the content. Hidden entries and symlinks are skipped; unreadable
    entries are reported with an error code. The listing is stored as rows in the state database
    (:mod:`vibe_assets.state`), writing only the rows that changed (not pickled by Dagster).

    A folder whose path no longer exists is *removed*: its listing is empty (downstream assets
    delete its points), its metadata says ``folder_removed`` with no failure, and the registry
    marks it vanished (:meth:`FolderRegistry.mark_vanished`) until a scan finds it again.
    Each partition's metadata holds its own folder's numbers; a range run adds ``run_...``
    totals.
    """
    start = time.perf_counter()
    per_partition: dict[str, dict[str, Any]] = {}
    totals = {"files": 0, "failed": 0, "folders_removed": 0}
    keys = list(context.partition_keys)  # computed per access: read once
    for key in keys:
        raise_if_cancelled()
        t0 = time.perf_counter()
        folder = store.registry.require(key)
        root = folder.path
        scan = scan_folder(root, recursive=folder.recursive)
        store.set_folder_scan(key, {"root": str(root), **scan.to_json()})
        if scan.removed:
            store.registry.mark_vanished(key)
            context.log.warning(f"{key}: folder {root} no longer exists: its points are removed")
        else:
            if folder.vanished:
                store.registry.clear_vanished(key)
                context.log.info(f"{key}: folder {root} exists again")
            if len(keys) <= PER_FOLDER_LOG_MAX or scan.failures:
                context.log.info(f"{key}: {len(scan.files)} image files in {root}")
        per_partition[key] = scan_metadata(root, scan, time.perf_counter() - t0)
        totals["files"] += len(scan.files)
        totals["failed"] += len(scan.failures)
        totals["folders_removed"] += scan.removed
    add_partition_metadata(context, per_partition)
    metadata = run_metadata(keys, totals)
    if metadata:
        metadata["run_scan_seconds"] = round(time.perf_counter() - start, 3)
    return dg.MaterializeResult(metadata=metadata)
