"""Schedules (and, later, sensors) that start runs by themselves.

``recaption_schedule`` (weekly by default) captions every folder whose images lack a caption from
the current caption model, as range runs over many folders: never one run per folder, and no run
at all when every folder is captioned. Changing the caption model changes its id, so the next
tick re-captions everything; the old captions stay in Qdrant until the new ones replace them.
"""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import dagster as dg

from vibe_assets.assets.previews import paths_by_sha
from vibe_assets.partitions import PARTITIONS_NAME
from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.store import StoreResource

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
                tags={RANGE_START_TAG: start, RANGE_END_TAG: end, "caption_model": caption_model},
            )
            for start, end in ranges
        ]

    return recaption_schedule
