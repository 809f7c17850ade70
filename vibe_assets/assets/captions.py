"""``blip_captions``: BLIP captions of every preview, stored per (caption model, SHA-256)."""

import time
from typing import Any

import dagster as dg
from PIL import Image

from vibe_assets.assets.previews import PHOTO_PREVIEWS, preview_batches, previewed_shas
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.store import StoreResource

SAMPLE_ROWS = 20  # captions shown in the materialization's sample table

SAMPLE_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn("thumbnail", "string"), dg.TableColumn("caption", "string")]
)


def shas_to_caption(
    store: StoreResource, partition_keys: list[str], model_id: str
) -> tuple[list[str], int]:
    """Unique SHA-256s with a preview but no caption by ``model_id``, and the count already
    captioned."""
    shas = previewed_shas(store, partition_keys)
    todo = [sha for sha in shas if not store.has_caption(model_id, sha)]
    return todo, len(shas) - len(todo)


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
    vectors are not re-sent); older captions stay until a new one replaces them.
    """
    model_id = blip.model_id
    todo, cached = shas_to_caption(store, context.partition_keys, model_id)
    metadata: dict[str, Any] = {"caption_model": model_id, "captioned": 0, "from_cache": cached}
    if not todo:
        context.log.info(f"nothing to caption: {cached} images already captioned by {model_id}")
        return dg.MaterializeResult(metadata={**metadata, "model_loaded": False})

    loaded = blip.load()
    if blip.random_weights:
        context.log.warning(f"BLIP {blip.model_name} uses RANDOM WEIGHTS (explicitly requested)")
        metadata["weights_warning"] = "RANDOM WEIGHTS: captions are gibberish"
    context.log.info(
        f"captioning {len(todo)} images with {model_id} on {loaded.device}, "
        f"batch size {blip.batch_size} ({cached} already captioned)"
    )

    def load_preview(sha: str) -> Image.Image:
        with Image.open(store.preview_path(sha)) as im:
            return im.convert("RGB")

    captioned = 0
    samples: list[dg.TableRecord] = []
    start = time.perf_counter()
    batches = preview_batches(
        store, todo, load_preview, blip.batch_size, context.log.info, "captioned"
    )
    for batch in batches:
        texts = blip.caption(batch.values)
        store.put_captions(model_id, zip(batch.items, texts, strict=True))
        captioned += len(batch.items)
        for sha, text in zip(batch.items, texts, strict=True):
            if len(samples) < SAMPLE_ROWS:
                thumb = str(store.thumbnail_path(sha))
                samples.append(dg.TableRecord({"thumbnail": thumb, "caption": text}))
    seconds = time.perf_counter() - start
    context.log.info(f"captioned {captioned} images in {seconds:.1f} s")
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "model_loaded": True,
            "captioned": captioned,
            "device": loaded.device,
            "batch_size": blip.batch_size,
            "caption_seconds": round(seconds, 3),
            "captions_per_s": round(captioned / seconds, 3) if seconds else 0.0,
            "model_load_seconds": round(loaded.load_seconds, 2),
            "samples": dg.MetadataValue.table(records=samples, schema=SAMPLE_SCHEMA),
        }
    )
