"""The ingest summary printed by ``vibe-assets ingest``, built from a run's materializations."""

from __future__ import annotations

from typing import Any

import dagster as dg


def _metadata(
    result: dg.ExecutionResult, partition_key: str | None = None
) -> dict[str, dict[str, Any]]:
    """``{asset name: {metadata key: plain value}}`` of the run's materializations of
    ``partition_key`` (None: of any partition; the last one wins)."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        assert mat is not None
        if partition_key is not None and mat.partition not in (None, partition_key):
            continue
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


def _errors(result: dg.ExecutionResult) -> list[str]:
    errors = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            err = event.step_failure_data.error
            cause = err.cause.message.strip() if err.cause else ""
            errors.append(f"{event.step_key}: {err.message.strip()} {cause}".strip())
    return errors


def ingest_summary(
    result: dg.ExecutionResult,
    *,
    folder: str,
    partition_key: str,
    seconds: float,
    status: str | None = None,
) -> dict[str, Any]:
    """JSON-ready summary of one ingest run.

    Every count is the partition's own (its materializations' metadata, see
    :mod:`vibe_assets.report`). Keys: ``folder``, ``partition``, ``run_id``, ``success``,
    ``status`` (the run's final Dagster status, e.g. ``SUCCESS``, ``FAILURE``, ``CANCELED``;
    the ``status`` argument, else derived from ``success``), ``errors`` (step failures),
    ``folder_removed`` (the folder no longer exists: its points were deleted),
    ``files_seen``, ``processed``, ``decoded``, ``from_cache`` (images not decoded again),
    ``embedded``, ``captions`` (whether this run captioned), ``captioned``,
    ``caption_model``, ``failed``, ``failed_by_code``, ``failures`` (every failed file: path,
    code, message), ``collection``, ``points_in_collection``, ``upserted``, ``deleted`` (of
    the first collection), ``collections`` (the same per collection), ``seconds`` (wall
    clock of the run), ``images_per_s`` (newly embedded images / seconds).
    """
    md = _metadata(result, partition_key)
    files = md.get("photo_files", {})
    previews = md.get("photo_previews", {})
    embeddings = md.get("clip_embeddings", {})
    captions = md.get("blip_captions")
    collections = {k: v for k, v in md.items() if k.startswith("qdrant_")}
    qdrant = next(iter(collections.values()), {})
    embedded = int(embeddings.get("embedded", 0))
    return {
        "folder": folder,
        "partition": partition_key,
        "run_id": result.run_id,
        "success": result.success,
        "status": status or ("SUCCESS" if result.success else "FAILURE"),
        "errors": _errors(result),
        "folder_removed": bool(files.get("folder_removed", False)),
        "files_seen": int(files.get("files", 0)) + int(files.get("failed", 0)),
        "processed": int(previews.get("files_processed", 0)),
        "decoded": int(previews.get("decoded", 0)),
        "from_cache": int(previews.get("from_cache", 0)),
        "embedded": embedded,
        "embed_model": embeddings.get("model"),
        "captions": captions is not None and captions.get("captions", "on") == "on",
        "captioned": int(captions.get("captioned", 0)) if captions else 0,
        "caption_model": captions.get("caption_model") if captions else None,
        "failed": int(previews.get("failed", 0)),
        "failed_by_code": previews.get("failed_by_code", {}),
        "failures": previews.get("failures_json", []),
        "collection": qdrant.get("collection"),
        "points_in_collection": qdrant.get("points_in_collection"),
        "upserted": qdrant.get("upserted", 0),
        "deleted": qdrant.get("deleted", 0),
        "collections": {
            v["collection"]: {
                "points": v.get("points_in_collection"),
                "upserted": v.get("upserted", 0),
                "deleted": v.get("deleted", 0),
            }
            for v in collections.values()
        },
        "seconds": round(seconds, 2),
        "images_per_s": round(embedded / seconds, 2) if seconds > 0 else 0.0,
    }


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable multi-line rendering of :func:`ingest_summary`."""
    status = "ok" if s["success"] else s.get("status", "FAILED").replace("FAILURE", "FAILED")
    by_code = ", ".join(f"{c}: {n}" for c, n in s["failed_by_code"].items()) or "-"
    lines = [
        f"ingest {status}: {s['folder']} (partition {s['partition']}) in {s['seconds']:.1f} s",
        f"  files seen    {s['files_seen']}"
        + ("  (folder removed: its points are deleted)" if s.get("folder_removed") else ""),
        f"  processed     {s['processed']} files ({s['decoded']} images decoded now, "
        f"{s['from_cache']} from cache, {s['embedded']} embedded now)",
        f"  failed        {s['failed']} ({by_code})",
        (
            f"  captions      {s['captioned']} captioned now by {s['caption_model']}"
            if s["captions"]
            else "  captions      off (--captions, or recaption_schedule captions later)"
        ),
    ]
    for name, c in s["collections"].items():
        lines.append(
            f"  collection    {name}: {c['points']} points "
            f"({c['upserted']} upserted, {c['deleted']} deleted)"
        )
    lines.append(f"  speed         {s['images_per_s']:.2f} new images/s")
    for f in s["failures"]:
        lines.append(f"  ! {f['code']:<22} {f['path']}: {f['message']}")
    for err in s["errors"]:
        lines.append(f"  error: {err}")
    return "\n".join(lines)
