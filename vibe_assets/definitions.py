"""The Dagster code location: assets, resources and the ingest job.

Loaded by ``dagster dev -w workspace.yaml``, the daemon and the ``vibe-assets`` CLI. Nothing here
loads a model or opens a store: resources do that lazily inside runs.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from vibe_assets.assets import (
    blip_captions,
    build_decode_and_embed,
    build_qdrant_asset,
    photo_files,
    photo_hashes,
)
from vibe_assets.assets.duplicates import (
    DEFAULT_DUPLICATES_CRON,
    DUPLICATES_CRON_ENV,
    DUPLICATES_JOB,
    build_duplicates_asset,
    build_duplicates_schedule,
)
from vibe_assets.automation import build_new_photo_folders_sensor, build_recaption_schedule
from vibe_assets.collections import CollectionSpec, load_collections
from vibe_assets.executor import vibe_in_process_executor
from vibe_assets.resources import (
    BlipResource,
    ClipResource,
    InferenceDeviceResource,
    StoreResource,
    VectorStoreResource,
)
from vibe_assets.resources.blip import DEFAULT_BLIP_MODEL
from vibe_assets.resources.device import resolve_device
from vibe_assets.resources.vectors import DEFAULT_COMMAND_WAIT_SECONDS
from vibe_assets.settings import (
    VECTORS_WAIT_ENV,
    captions_mode,
    decide_captions,
    env_float,
    env_int,
    env_str,
    vibe_home,
)

INGEST_JOB = "ingest_job"
CAPTION_JOB = "caption_job"
DEFAULT_RECAPTION_CRON = "0 3 * * 0"  # Sundays 03:00


def default_resources() -> dict[str, Any]:
    """Resources configured from the environment (see README's configuration table).

    ``QDRANT_API_KEY`` is passed as ``dg.EnvVar`` (read at launch, hidden in the UI, never
    logged); it is only bound when the variable exists. The vector store (resource key
    ``qdrant``) is qdrant-edge under ``$VIBE_HOME/vectors`` unless ``QDRANT_URL`` is set; the
    old local-mode folder ``$VIBE_HOME/qdrant`` is migrated from there on first use.

    Raises:
        ValueError: a numeric variable is not a number (message names it).
    """
    home = vibe_home()
    url = os.environ.get("QDRANT_URL") or None
    first = load_collections()[0]  # the CLIP resource's own model: the first collection's
    return {
        "store": StoreResource(home=str(home)),
        "clip": ClipResource(
            model_name=first.model,
            weights=first.weights,
            batch_size=env_int("VIBE_CLIP_BATCH_SIZE", 0) or None,  # None: probe
            device=env_str("VIBE_DEVICE", "auto"),
        ),
        "device": InferenceDeviceResource(
            device=env_str("VIBE_DEVICE", "auto"),
            max_batch_size=env_int("VIBE_MAX_BATCH_SIZE", 512),
            cpu_threads=env_int("VIBE_TORCH_THREADS", 0),  # 0: the CPUs this process may use
        ),
        "blip": BlipResource(
            model_name=env_str("VIBE_BLIP_MODEL", DEFAULT_BLIP_MODEL),
            random_weights=env_str("VIBE_BLIP_WEIGHTS", "pretrained") == "random",
            batch_size=env_int("VIBE_BLIP_BATCH_SIZE", 8),
            max_new_tokens=env_int("VIBE_BLIP_MAX_TOKENS", 20),
            num_beams=env_int("VIBE_BLIP_BEAMS", 1),
            prompt=env_str("VIBE_BLIP_PROMPT", ""),
            device=env_str("VIBE_DEVICE", "auto"),
            idle_unload_seconds=env_int("VIBE_BLIP_IDLE_UNLOAD_SECONDS", 300),
            captions=captions_mode(),
        ),
        "qdrant": VectorStoreResource(
            path=str(home / "vectors"),
            legacy_path=str(home / "qdrant"),
            url=url,
            api_key=dg.EnvVar("QDRANT_API_KEY") if "QDRANT_API_KEY" in os.environ else None,
            command_wait_seconds=env_float(VECTORS_WAIT_ENV, DEFAULT_COMMAND_WAIT_SECONDS),
        ),
    }


def captions_enabled() -> bool:
    """Whether a run executed by this process captions (``VIBE_CAPTIONS``; ``auto``: on with a
    CUDA GPU here; see :func:`vibe_assets.settings.decide_captions`). Imports torch for
    ``auto``: call it only where runs execute (the CLI), never in a sensor tick.

    Raises:
        ValueError: ``VIBE_CAPTIONS`` has another value.
    """
    enabled, _ = decide_captions(
        captions_mode(), device=lambda: resolve_device(env_str("VIBE_DEVICE", "auto"))
    )
    return enabled


def build_assets(collections: list[CollectionSpec]) -> list[dg.AssetsDefinition]:
    """The ingest chain, scan to Qdrant (captions included), with one ``qdrant_<name>`` asset
    per collection, and one ``decode_and_embed`` step (``photo_previews`` and
    ``clip_embeddings``) embedding with each distinct model."""
    return [
        photo_files,
        photo_hashes,
        build_decode_and_embed([(c.model, c.weights) for c in collections]),
        blip_captions,
        *(build_qdrant_asset(c, all_collections=collections) for c in collections),
    ]


def build_definitions(
    collections: list[CollectionSpec] | None = None, resources: dict[str, Any] | None = None
) -> dg.Definitions:
    """Definitions for ``collections`` (default :func:`load_collections`) with ``resources``
    (default :func:`default_resources`).

    The unpartitioned ``duplicate_groups`` assets (one per collection) stay out of
    ``ingest_job`` and ``caption_job``, whose assets all share the ``photo_folder`` partitions
    and one backfill policy; ``duplicates_job`` (run by ``duplicates_schedule``) materializes
    them."""
    collections = collections or load_collections()
    assets = build_assets(collections)
    duplicate_assets = [build_duplicates_asset(c) for c in collections]
    qdrant_assets = [
        a for a in assets if all(k.to_user_string().startswith("qdrant_") for k in a.keys)
    ]
    ingest_job = dg.define_asset_job(
        INGEST_JOB,
        selection=dg.AssetSelection.assets(*assets),
        executor_def=vibe_in_process_executor,  # one process: each model loads once per run
        description=(
            "Scan, hash, decode, embed, caption and upsert the selected folder partitions "
            "(`vibe-assets ingest` leaves blip_captions out unless captions are on)."
        ),
    )
    caption_job = dg.define_asset_job(
        CAPTION_JOB,
        selection=dg.AssetSelection.assets(blip_captions, *qdrant_assets),
        executor_def=vibe_in_process_executor,
        description="Caption images that lack a caption from the current model; update payloads.",
    )
    schedule = build_recaption_schedule(
        caption_job,
        cron=env_str("VIBE_RECAPTION_CRON", DEFAULT_RECAPTION_CRON),
        max_per_run=env_int("VIBE_MAX_PARTITIONS_PER_RUN", 32),
    )
    duplicates_job = dg.define_asset_job(
        DUPLICATES_JOB,
        selection=dg.AssetSelection.assets(*duplicate_assets),
        executor_def=vibe_in_process_executor,
        description="Recompute the duplicate groups (exact, near, similar) of every collection.",
    )
    duplicates_schedule = build_duplicates_schedule(
        duplicates_job, cron=env_str(DUPLICATES_CRON_ENV, DEFAULT_DUPLICATES_CRON)
    )
    new_folders_sensor = build_new_photo_folders_sensor(
        ingest_job,
        max_per_run=env_int("VIBE_MAX_PARTITIONS_PER_RUN", 32),
        max_folders_per_tick=env_int("VIBE_SENSOR_MAX_FOLDERS_PER_TICK", 2000),
    )
    return dg.Definitions(
        assets=[*assets, *duplicate_assets],
        jobs=[ingest_job, caption_job, duplicates_job],
        schedules=[schedule, duplicates_schedule],
        sensors=[new_folders_sensor],
        resources=resources if resources is not None else default_resources(),
        # UI "Materialize" and backfills run __ASSET_JOB: one process per run, like the CLI.
        executor=vibe_in_process_executor,
    )


defs = build_definitions()


def ingest_job() -> dg.JobDefinition:
    """``ingest_job`` built from the environment now, for ``dg.reconstructable``: the CLI
    executes it with ``dg.execute_job``, which keeps the job's executor (``execute_in_process``
    would replace it with a plain one)."""
    return build_definitions().resolve_job_def(INGEST_JOB)
