"""``photo_hashes``: SHA-256 of every scanned file, skipped when its stat is unchanged."""

import time
from typing import Any

import dagster as dg

from vibe_assets.assets.files import photo_files
from vibe_assets.hashing import hash_many, is_unchanged
from vibe_assets.imaging.errors import PhotoError
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.report import failure_metadata
from vibe_assets.resources.store import StoreResource

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
    The SHA-256 is the content address of everything derived from the pixels.
    """
    start = time.perf_counter()
    reused = hashed = bytes_hashed = 0
    all_failures: list[dict[str, str]] = []
    for key in context.partition_keys:
        scan = require_scan(store, key)
        previous = (store.folder_hashes(key) or {}).get("files", {})
        files: dict[str, dict[str, Any]] = {}
        todo: dict[str, dict[str, Any]] = {}
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
            key, {"root": scan["root"], "files": dict(sorted(files.items())), "failures": failures}
        )
        all_failures.extend(failures)
        context.log.info(
            f"{key}: {len(files)} files hashed ({len(todo)} read, rest unchanged), "
            f"{len(failures)} failed"
        )
    seconds = time.perf_counter() - start
    return dg.MaterializeResult(
        metadata={
            "files": reused + hashed,
            "hashed": hashed,
            "unchanged": reused,
            "bytes_hashed": bytes_hashed,
            "hash_seconds": round(seconds, 3),
            **failure_metadata(all_failures),
        }
    )
