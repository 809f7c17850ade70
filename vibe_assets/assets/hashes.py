"""``photo_hashes``: SHA-256 of every scanned file, skipped when its stat is unchanged."""

import time
from typing import Any

import dagster as dg

from vibe_assets.assets.files import photo_files
from vibe_assets.hashing import hash_many, is_unchanged
from vibe_assets.imaging.errors import PhotoError
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.report import (
    add_partition_metadata,
    failure_metadata,
    human_size,
    run_totals,
)
from vibe_assets.resources.store import Collected, StoreResource
from vibe_assets.runs import raise_if_cancelled

PROGRESS_EVERY_SECONDS = 10.0


def require_scan(store: StoreResource, key: str) -> dict[str, Any]:
    """The stored ``photo_files`` listing of a partition.

    Raises:
        dg.Failure: ``photo_files`` has not been materialized for that partition.
    """
    scan = store.folder_scan(key)
    if scan is None:
        raise dg.Failure(f"no scan for partition {key!r}: materialize photo_files first")
    return scan


def hashes_metadata(
    hashed: int, unchanged: int, bytes_hashed: int, seconds: float, failures: list[dict[str, str]]
) -> dict[str, Any]:
    """One folder's ``photo_hashes`` metadata: ``files`` (hashed files), ``hashed`` (read and
    hashed now), ``unchanged`` (stat unchanged: hash kept), ``bytes_hashed`` (bytes read now, a
    number so that Dagster plots it), ``hashed_size`` (the same for people, e.g. "1.2 GiB"),
    ``hash_seconds`` (wall seconds) and the failure entries (scan and read failures)."""
    return {
        "files": hashed + unchanged,
        "hashed": hashed,
        "unchanged": unchanged,
        "bytes_hashed": bytes_hashed,
        "hashed_size": human_size(bytes_hashed),
        "hash_seconds": round(seconds, 3),
        **failure_metadata(failures),
    }


@dg.asset(
    deps=[photo_files],
    partitions_def=photo_folder_partitions,
    backfill_policy=BACKFILL_POLICY,
    group_name="ingest",
    kinds={"python"},
)
def photo_hashes(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """SHA-256 of each scanned file's bytes, hashed in a thread pool. A file whose
    (path, size, mtime_ns, inode) equals the previous listing keeps its hash without reading it.
    The SHA-256 is the content address of everything derived from the pixels. Each partition's
    metadata holds its own folder's numbers; a range run adds ``run_...`` totals.

    The listing is stored as rows in the state database, writing only what changed. At the end
    the previews of images that no folder holds any more (for longer than
    ``VIBE_PREVIEW_GC_GRACE_SECONDS``) are deleted (``run_previews_collected``); the cost follows
    what changed, at most 5,000 images per run.
    """
    start = time.perf_counter()
    per_partition: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    keys = list(context.partition_keys)  # computed per access: read once
    for key in keys:
        t0 = time.perf_counter()
        scan = require_scan(store, key)
        previous = (store.folder_hashes(key) or {}).get("files", {})
        files: dict[str, dict[str, Any]] = {}
        todo: dict[str, dict[str, Any]] = {}
        reused = hashed = bytes_hashed = 0
        for entry in scan["files"]:
            prev = previous.get(entry["path"])
            if is_unchanged(entry, prev):
                files[entry["path"]] = {**entry, "sha256": prev["sha256"]}
                reused += 1
            else:
                todo[entry["path"]] = entry
        failures = list(scan["failures"])
        last_log = time.perf_counter()
        for done, (path, result) in enumerate(hash_many(todo), start=1):
            raise_if_cancelled()  # Ctrl-C: hashes of this folder so far are not stored
            if isinstance(result, PhotoError):
                failures.append({"path": path, **result.to_dict()})
                continue
            files[path] = {**todo[path], "sha256": result}
            hashed += 1
            bytes_hashed += todo[path]["size"]
            if time.perf_counter() - last_log > PROGRESS_EVERY_SECONDS:
                context.log.info(f"{key}: hashed {done}/{len(todo)} files")
                last_log = time.perf_counter()
        store.set_folder_hashes(
            key,
            {
                "root": scan["root"],
                "files": dict(sorted(files.items())),
                "failures": failures,
                "removed": bool(scan.get("removed")),
            },
        )
        per_partition[key] = hashes_metadata(
            hashed, reused, bytes_hashed, time.perf_counter() - t0, failures
        )
        counts[key] = {
            "files": len(files),
            "hashed": hashed,
            "unchanged": reused,
            "bytes_hashed": bytes_hashed,
            "failed": len(failures),
        }
        context.log.info(
            f"{key}: {len(files)} files hashed ({len(todo)} read, rest unchanged), "
            f"{len(failures)} failed"
        )
    add_partition_metadata(context, per_partition)
    metadata = run_totals(keys, counts)
    if metadata:
        metadata["run_hashed_size"] = human_size(metadata["run_bytes_hashed"])
        metadata["run_hash_seconds"] = round(time.perf_counter() - start, 3)
    # every listing of this run is written: previews of images no folder holds any more go
    try:
        collected = store.collect_unreferenced_previews()
    except Exception as exc:  # housekeeping: never fails the hashes it follows
        context.log.warning(f"preview collection skipped this run: {exc}")
    else:
        _report_collection(context, collected, metadata)
    return dg.MaterializeResult(metadata=metadata)


def _report_collection(
    context: dg.AssetExecutionContext, collected: Collected, metadata: dict[str, Any]
) -> None:
    """Log and record (``run_previews_collected``) what the preview collection did."""
    if collected.images:
        metadata["run_previews_collected"] = collected.images
        context.log.info(
            f"collected the previews of {collected.images} images no folder holds any more "
            f"({human_size(collected.bytes_freed)}, {collected.seconds:.2f} s); "
            f"{collected.pending} candidates wait for the grace period or the next run"
        )
