"""``duplicate_groups``: one collection's duplicates report (exact, near and similar groups).

Dagster glue only: the grouping is :func:`vibe_assets.duplicates.find_groups`. One
unpartitioned asset per configured collection, downstream of its ``qdrant_<collection>`` asset,
so a folder partition materialized since the last report marks it stale through lineage:
``duplicate_groups`` for the default collection name ``photos``, ``duplicate_groups_<name>`` for
any other (the asset of the usual single-collection setup keeps the plain name the issue and the
docs use; ``qdrant_<name>`` assets cannot collide with it). Materialize it from the UI, or let
``duplicates_schedule`` (weekly, ``VIBE_DUPLICATES_CRON``) do it.
"""

import time
from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from pydantic import Field

from vibe_assets.collections import CollectionSpec
from vibe_assets.duplicates import (
    DEFAULT_NEAR_THRESHOLD,
    DEFAULT_SIMILAR_THRESHOLD,
    TIERS,
    DuplicateGroup,
    build_report,
    find_groups,
    report_path,
    write_report,
)
from vibe_assets.report import human_size
from vibe_assets.resources.clip import ClipResource
from vibe_assets.resources.store import StoreResource
from vibe_assets.settings import DEFAULT_COLLECTION
from vibe_assets.web.config import web_base_url
from vibe_assets.web.dagster_md import groups_markdown

DUPLICATES_GROUP = "duplicates"
DUPLICATES_JOB = "duplicates_job"
DUPLICATES_SCHEDULE = "duplicates_schedule"
DUPLICATES_CRON_ENV = "VIBE_DUPLICATES_CRON"
DEFAULT_DUPLICATES_CRON = "0 4 * * 0"
"""Sundays 04:00: weekly, after ``recaption_schedule`` (03:00)."""
TABLE_ROWS = 50
"""Rows of the ``largest_groups`` metadata table (the JSON report holds every group)."""
TABLE_PATHS = 10
"""Paths listed per row of that table (then ``(+N more)``)."""

LARGEST_GROUPS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("tier", "string"),
        dg.TableColumn("images", "int"),
        dg.TableColumn("files", "int"),
        dg.TableColumn("keep", "string"),
        dg.TableColumn("reason", "string"),
        dg.TableColumn("distance", "float", description="near: max Hamming distance (bits)"),
        dg.TableColumn("score", "float", description="similar: min CLIP cosine"),
        dg.TableColumn("paths", "string"),
        dg.TableColumn("id", "string"),
    ]
)


class DuplicatesConfig(dg.Config):
    """Thresholds of a ``duplicate_groups`` run (the launchpad can change them per run)."""

    near_threshold: int = Field(
        default=DEFAULT_NEAR_THRESHOLD, description="largest pHash Hamming distance (bits of 64)"
    )
    similar_threshold: float = Field(
        default=DEFAULT_SIMILAR_THRESHOLD, description="smallest CLIP cosine of similar images"
    )
    time_window_s: float | None = Field(
        default=None,
        description="similar images only when taken at most this many seconds apart (None: any)",
    )


def duplicates_asset_name(collection: str) -> str:
    """``duplicate_groups`` for the collection ``photos``, else ``duplicate_groups_<name>``."""
    if collection == DEFAULT_COLLECTION:
        return "duplicate_groups"
    return f"duplicate_groups_{collection}"


def largest_groups(
    groups: Sequence[DuplicateGroup], rows: int = TABLE_ROWS
) -> list[DuplicateGroup]:
    """Up to ``rows`` groups, the largest (most paths) of each tier taken in turn, so that one
    tier with many groups does not hide the others; in tier order, largest first."""
    by_tier = {
        t: sorted((g for g in groups if g.tier == t), key=lambda g: (-len(g.paths), g.id))
        for t in TIERS
    }
    picked: list[DuplicateGroup] = []
    depth = 0
    while len(picked) < rows and any(len(v) > depth for v in by_tier.values()):
        for tier_groups in by_tier.values():
            if depth < len(tier_groups) and len(picked) < rows:
                picked.append(tier_groups[depth])
        depth += 1
    return sorted(picked, key=lambda g: (TIERS.index(g.tier), -len(g.paths), g.id))


def largest_groups_table(groups: Sequence[DuplicateGroup]) -> dg.TableMetadataValue:
    """The ``largest_groups`` metadata table (:func:`largest_groups`)."""
    records = []
    for g in largest_groups(groups):
        paths = g.paths
        shown = "\n".join(paths[:TABLE_PATHS])
        if len(paths) > TABLE_PATHS:
            shown += f"\n(+{len(paths) - TABLE_PATHS} more)"
        records.append(
            dg.TableRecord(
                {
                    "tier": g.tier,
                    "images": len(g.members),
                    "files": len(paths),
                    "keep": g.keep.path,
                    "reason": g.reason,
                    "distance": g.distance,
                    "score": g.score,
                    "paths": shown,
                    "id": g.id,
                }
            )
        )
    return dg.MetadataValue.table(records=records, schema=LARGEST_GROUPS_SCHEMA)


def build_duplicates_asset(spec: CollectionSpec) -> dg.AssetsDefinition:
    """The ``duplicate_groups`` asset of collection ``spec`` (see the module docstring)."""
    name = duplicates_asset_name(spec.name)

    @dg.asset(
        name=name,
        deps=[dg.AssetKey(spec.asset_name)],
        group_name=DUPLICATES_GROUP,
        kinds={"python"},
        description=(
            f"Duplicate groups of the images of collection {spec.name!r}, in three tiers reported "
            "apart: exact (identical bytes at several paths), near (the same picture "
            "re-encoded, resized, converted or lightly edited: preview pHash within "
            f"{DEFAULT_NEAR_THRESHOLD} bits by default) and similar (different shots of one "
            f"scene: CLIP cosine of {spec.model} at least {DEFAULT_SIMILAR_THRESHOLD} by "
            "default), each with a suggested keeper (largest pixel count, then most EXIF, then "
            "oldest) and why. Metadata: counts per tier and the largest groups; the full report "
            "is JSON under VIBE_HOME/reports (read by `vibe-assets duplicates report --saved`)."
        ),
    )
    def _duplicates_asset(
        context: dg.AssetExecutionContext,
        config: DuplicatesConfig,
        store: StoreResource,
        clip: ClipResource,
    ) -> dg.MaterializeResult:
        start = time.perf_counter()
        model_id = clip.for_model(spec.model, spec.weights).model_id  # an id: no model loaded
        groups = find_groups(
            store,
            model_id,
            near_threshold=config.near_threshold,
            similar_threshold=config.similar_threshold,
            time_window_s=config.time_window_s,
            log=context.log.info,
        )
        report = build_report(
            groups,
            collection=spec.name,
            model_id=model_id,
            near_threshold=config.near_threshold,
            similar_threshold=config.similar_threshold,
            time_window_s=config.time_window_s,
        )
        path = report_path(store.root, spec.name)
        write_report(path, report)
        counts = report["counts"]
        context.log.info(
            "; ".join(f"{t}: {c['groups']} groups, {c['images']} images" for t, c in counts.items())
        )
        per_tier = {}
        for tier, c in counts.items():
            per_tier[f"{tier}_groups"] = dg.MetadataValue.int(c["groups"])
            per_tier[f"{tier}_images"] = dg.MetadataValue.int(c["images"])
            per_tier[f"{tier}_reclaimable"] = dg.MetadataValue.text(
                human_size(c["reclaimable_bytes"])
            )
        return dg.MaterializeResult(
            metadata={
                **per_tier,
                "counts": dg.MetadataValue.json(counts),
                "largest_groups": largest_groups_table(groups),
                # thumbnails of the largest groups, served by `vibe-assets serve`
                "largest_groups_pictures": dg.MetadataValue.md(
                    groups_markdown(largest_groups(groups), web_base_url()) or "no duplicate groups"
                ),
                "report_path": dg.MetadataValue.path(str(path)),
                "collection": spec.name,
                "embed_model": model_id,
                "near_threshold_bits": config.near_threshold,
                "similar_threshold": config.similar_threshold,
                "time_window_s": config.time_window_s,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )

    return _duplicates_asset


def build_duplicates_schedule(
    job: UnresolvedAssetJobDefinition, cron: str
) -> dg.ScheduleDefinition:
    """``duplicates_schedule``: materializes the ``duplicate_groups`` assets of ``job`` on
    ``cron`` (``VIBE_DUPLICATES_CRON``, default weekly), running by default."""
    return dg.ScheduleDefinition(
        name=DUPLICATES_SCHEDULE,
        job=job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Recompute every collection's duplicate groups (exact, near, similar) and their "
            "JSON reports under VIBE_HOME/reports."
        ),
    )
