"""The Dagster code location: assets, resources and the ingest job.

Loaded by ``dagster dev -w workspace.yaml``, the daemon and the ``vibe-assets`` CLI. Nothing here
loads a model or opens a store: resources do that lazily inside runs.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from vibe_assets.assets import (
    build_qdrant_asset,
    clip_embeddings,
    photo_files,
    photo_hashes,
    photo_previews,
)
from vibe_assets.resources import ClipResource, QdrantResource, StoreResource
from vibe_assets.settings import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_WEIGHTS,
    DEFAULT_COLLECTION,
    env_int,
    env_str,
    vibe_home,
)

INGEST_JOB = "ingest_job"


def collection_name() -> str:
    """Configured collection (``VIBE_COLLECTION``, default ``photos``); ``[a-z0-9_]`` only,
    because it becomes part of the asset name ``qdrant_<collection>``.

    Raises:
        ValueError: the name has other characters.
    """
    name = env_str("VIBE_COLLECTION", DEFAULT_COLLECTION)
    if not name or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        raise ValueError(f"VIBE_COLLECTION must match [A-Za-z0-9_]+, got {name!r}")
    return name


def default_resources() -> dict[str, Any]:
    """Resources configured from the environment (see README's configuration table).

    ``QDRANT_API_KEY`` is passed as ``dg.EnvVar`` (read at launch, hidden in the UI, never
    logged); it is only bound when the variable exists.
    """
    home = vibe_home()
    url = os.environ.get("QDRANT_URL") or None
    return {
        "store": StoreResource(home=str(home)),
        "clip": ClipResource(
            model_name=env_str("VIBE_CLIP_MODEL", DEFAULT_CLIP_MODEL),
            weights=env_str("VIBE_CLIP_WEIGHTS", DEFAULT_CLIP_WEIGHTS),
            batch_size=env_int("VIBE_CLIP_BATCH_SIZE", 32),
            device=env_str("VIBE_DEVICE", "auto"),
        ),
        "qdrant": QdrantResource(
            path=str(home / "qdrant"),
            url=url,
            api_key=dg.EnvVar("QDRANT_API_KEY") if "QDRANT_API_KEY" in os.environ else None,
        ),
    }


def build_assets(collection: str) -> list[dg.AssetsDefinition]:
    """The ingest chain, scan to Qdrant, for one collection."""
    return [
        photo_files,
        photo_hashes,
        photo_previews,
        clip_embeddings,
        build_qdrant_asset(collection),
    ]


def build_definitions(
    collection: str | None = None, resources: dict[str, Any] | None = None
) -> dg.Definitions:
    """Definitions for ``collection`` (default from the environment) with ``resources``
    (default :func:`default_resources`)."""
    assets = build_assets(collection or collection_name())
    ingest_job = dg.define_asset_job(
        INGEST_JOB,
        selection=dg.AssetSelection.assets(*assets),
        executor_def=dg.in_process_executor,  # one process: the model loads once per run
        description="Scan, hash, decode, embed and upsert the selected folder partitions.",
    )
    return dg.Definitions(
        assets=assets,
        jobs=[ingest_job],
        resources=resources if resources is not None else default_resources(),
    )


defs = build_definitions()
