"""``photo_files``: the candidate image files of each folder partition."""

import time

import dagster as dg

from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.report import failure_metadata
from vibe_assets.resources.store import StoreResource
from vibe_assets.scan import scan_folder


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
    entries are reported with an error code. The listing is stored per folder in the store (not
    pickled by Dagster).
    """
    start = time.perf_counter()
    files = failed_entries = 0
    failures: list[dict[str, str]] = []
    for key in context.partition_keys:
        folder = store.registry.require(key)
        root = folder.path
        scan = scan_folder(root, recursive=folder.recursive)
        store.set_folder_scan(key, {"root": str(root), **scan.to_json()})
        files += len(scan.files)
        failed_entries += len(scan.failures)
        failures.extend(scan.failures)
        context.log.info(f"{key}: {len(scan.files)} image files in {root}")
    seconds = time.perf_counter() - start
    return dg.MaterializeResult(
        metadata={
            "folders": len(context.partition_keys),
            "files": files,
            "scan_seconds": round(seconds, 3),
            **failure_metadata(failures),
        }
    )
