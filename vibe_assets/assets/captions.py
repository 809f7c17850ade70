"""``blip_captions``: BLIP captions of every preview, stored per (caption model, SHA-256)."""

import os
import time
from typing import Any

import dagster as dg
from PIL import Image

from vibe_assets.assets.previews import (
    PHOTO_PREVIEWS,
    listed_paths,
    open_preview,
    paths_by_sha,
    preview_batches,
    previewed_shas,
    require_hashes,
)
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.report import add_partition_metadata, run_metadata
from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.device import resolve_device
from vibe_assets.resources.store import StoreResource
from vibe_assets.runs import raise_if_cancelled
from vibe_assets.settings import CAPTIONS_TAG, decide_captions

SAMPLE_ROWS = 20  # captions shown in the materialization's sample table

SAMPLE_PICTURES = 3  # thumbnails in the Markdown ``pictures`` entry: under 1,000 chars, inline

SAMPLE_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn("file", "string"), dg.TableColumn("caption", "string")]
)


def shas_to_caption(
    store: StoreResource, partition_keys: list[str], model_id: str
) -> tuple[list[str], int]:
    """Unique SHA-256s with a preview but no caption by ``model_id``, and the count already
    captioned."""
    shas = previewed_shas(store, partition_keys)
    todo = [sha for sha in shas if not store.has_caption(model_id, sha)]
    return todo, len(shas) - len(todo)


def folder_caption_metadata(
    store: StoreResource,
    partition_keys: list[str],
    model_id: str,
    captions: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """``{partition key: metadata}`` of ``blip_captions``: ``captioned`` (the folder's unique
    previewed images captioned by this run), ``from_cache`` (already captioned by ``model_id``
    before it), ``samples`` (up to ``SAMPLE_ROWS`` of this run's captions of the folder, with
    the original file name) and ``pictures`` (Markdown: small thumbnails of the first
    ``SAMPLE_PICTURES`` of them served by ``vibe-assets serve`` at ``VIBE_WEB_URL``, see
    :mod:`vibe_assets.web.dagster_md`). ``captions`` is this run's ``{sha256: caption}``; an
    image shared by two folders counts in each."""
    from vibe_assets.web.config import web_base_url
    from vibe_assets.web.dagster_md import markdown_thumbnails

    out: dict[str, dict[str, Any]] = {}
    for key in partition_keys:
        by_sha = paths_by_sha(require_hashes(store, key))
        shas = [sha for sha in by_sha if sha in captions or store.preview_info(sha) is not None]
        mine = [sha for sha in shas if sha in captions]
        cached = sum(sha not in captions and store.has_caption(model_id, sha) for sha in shas)
        rows = [
            {"sha256": sha, "path": by_sha[sha][0], "caption": captions[sha]}
            for sha in mine[:SAMPLE_ROWS]
        ]
        samples = [
            dg.TableRecord({"file": os.path.basename(r["path"]), "caption": r["caption"]})
            for r in rows
        ]
        out[key] = {
            "captioned": len(mine),
            "from_cache": cached,
            "samples": dg.MetadataValue.table(records=samples, schema=SAMPLE_SCHEMA),
        }
        if rows:
            pictures = markdown_thumbnails(rows, web_base_url(), limit=SAMPLE_PICTURES)
            out[key]["pictures"] = dg.MetadataValue.md(pictures)
    return out


@dg.asset(
    deps=[PHOTO_PREVIEWS],
    partitions_def=photo_folder_partitions,
    backfill_policy=BACKFILL_POLICY,
    group_name="ingest",
    kinds={"pytorch"},
    pool="gpu",  # one model-loading step at a time (dagster.yaml: limit 1)
)
def blip_captions(
    context: dg.AssetExecutionContext, store: StoreResource, blip: BlipResource
) -> dg.MaterializeResult:
    """BLIP captions (one sentence per unique image) of the previews that have no caption from
    the configured caption model yet. Batched ``generate``; each batch is stored as soon as it
    is done, so a crash loses at most one batch. BLIP is not loaded when there is nothing to
    caption. Captions reach Qdrant payloads through the ``qdrant_*`` assets (payload only; the
    vectors are not re-sent); older captions stay until a new one replaces them. Each
    partition's metadata holds its own folder's counts and caption samples; timings
    (``run_...``) are the run's.

    Whether this run captions is decided here, on the machine the run executes on
    (:func:`vibe_assets.settings.decide_captions`): the run tag ``vibe/captions``, else a run
    that does not also make previews (``caption_job``, ``recaption_schedule``, this asset
    selected on its own) captions, else ``VIBE_CAPTIONS`` (``auto``: only with a CUDA GPU). When
    it does not, the step records ``captions: off`` and why, and loads nothing, so "Materialize
    all", backfills and sensor runs on a CPU stay fast.
    """
    model_id = blip.model_id
    keys = list(context.partition_keys)
    enabled, why = decide_captions(
        blip.captions,
        device=lambda: resolve_device(blip.device),
        tag=context.run.tags.get(CAPTIONS_TAG),
        caption_run=PHOTO_PREVIEWS not in context.job_def.asset_layer.selected_asset_keys,
    )
    metadata: dict[str, Any] = {
        "caption_model": model_id,
        "captions": "on" if enabled else "off",
        "captions_reason": why,
    }
    if not enabled:
        context.log.info(f"captions off in this run: {why}")
        add_partition_metadata(context, folder_caption_metadata(store, keys, model_id, {}))
        return dg.MaterializeResult(metadata={**metadata, "model_loaded": False})
    todo, cached = shas_to_caption(store, keys, model_id)
    if not todo:
        context.log.info(f"nothing to caption: {cached} images already captioned by {model_id}")
        add_partition_metadata(context, folder_caption_metadata(store, keys, model_id, {}))
        metadata.update(run_metadata(keys, {"captioned": 0, "from_cache": cached}))
        return dg.MaterializeResult(metadata={**metadata, "model_loaded": False})

    loaded = blip.load()
    if blip.random_weights:
        context.log.warning(f"BLIP {blip.model_name} uses RANDOM WEIGHTS (explicitly requested)")
        metadata["weights_warning"] = "RANDOM WEIGHTS: captions are gibberish"
    context.log.info(
        f"captioning {len(todo)} images with {model_id} on {loaded.device}, "
        f"batch size {blip.batch_size} ({cached} already captioned)"
    )

    paths, stats = listed_paths(require_hashes(store, key) for key in keys)

    def load_preview(sha: str) -> Image.Image:
        # a preview evicted from the cache is decoded again from its original here
        return open_preview(store, sha, paths.get(sha, ()), stats)

    captions: dict[str, str] = {}
    start = time.perf_counter()
    batches = preview_batches(
        store, todo, load_preview, blip.batch_size, context.log.info, "captioned"
    )
    for batch in batches:
        texts = blip.caption(batch.values)
        store.put_captions(model_id, zip(batch.items, texts, strict=True))
        captions.update(zip(batch.items, texts, strict=True))
        raise_if_cancelled()  # Ctrl-C: stop after the stored batch
    seconds = time.perf_counter() - start
    context.log.info(f"captioned {len(captions)} images in {seconds:.1f} s")
    add_partition_metadata(context, folder_caption_metadata(store, keys, model_id, captions))
    return dg.MaterializeResult(
        metadata={
            **metadata,
            **run_metadata(keys, {"captioned": len(captions), "from_cache": cached}),
            "model_loaded": True,
            "device": loaded.device,
            "batch_size": blip.batch_size,
            "run_caption_seconds": round(seconds, 3),
            "run_captions_per_s": round(len(captions) / seconds, 3) if seconds else 0.0,
            "model_load_seconds": round(loaded.load_seconds, 2),
        }
    )
