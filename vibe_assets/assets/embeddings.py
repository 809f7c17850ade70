"""``clip_embeddings``: CLIP image embeddings of every preview, stored per (model, SHA-256)."""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from PIL import Image

from vibe_assets.assets.previews import photo_previews, preview_batches, previewed_shas
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.resources.clip import ClipResource
from vibe_assets.resources.device import (
    InferenceDeviceResource,
    image_batch_runner,
    precision_for,
)
from vibe_assets.resources.store import StoreResource

DEFAULT_BATCH_SIZE = 32  # CPU: ViT-B-32 is flat from 8 to 32 images per pass (DESIGN.md)
_logger = logging.getLogger(__name__)  # OOM-split warnings


def shas_to_embed(
    store: StoreResource, partition_keys: list[str], model_id: str
) -> tuple[list[str], int]:
    """Unique SHA-256s with a preview but no embedding by ``model_id``, and the count of those
    already embedded."""
    shas = previewed_shas(store, partition_keys)
    todo = [sha for sha in shas if not store.has_embedding(model_id, sha)]
    return todo, len(shas) - len(todo)


@dataclass
class EmbedStats:
    """What :func:`embed_previews` did: images ``embedded``, previews ``missing`` (forgotten, to
    be re-decoded), wall ``seconds`` (previews in -> vectors stored) and ``model_seconds`` (time
    inside the forward passes)."""

    embedded: int = 0
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    model_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def embed_previews(
    store: StoreResource,
    clip: ClipResource,
    shas: Sequence[str],
    log: Callable[[str], None] = lambda _: None,
    batch_size: int | None = None,
    device: InferenceDeviceResource | None = None,
) -> EmbedStats:
    """Embed the previews of ``shas`` with ``clip`` and store each batch as soon as it is done.

    Previews are opened and preprocessed in a thread pool up to two batches ahead of the model.
    A preview that cannot be read is forgotten (the next run re-decodes it) and counted in
    ``missing``; it never stops the batch. With ``device``, a batch that runs out of memory is
    split in half and retried instead of failing. ``batch_size`` defaults to
    ``clip.batch_size`` (32 when that is None).
    """
    import torch

    loaded = clip.load()
    model_id = clip.model_id

    def load_preview(sha: str) -> Any:
        with Image.open(store.preview_path(sha)) as im:
            return loaded.preprocess(im.convert("RGB"))

    stats = EmbedStats()
    start = time.perf_counter()
    size = batch_size or clip.batch_size or DEFAULT_BATCH_SIZE
    for batch in preview_batches(store, shas, load_preview, size, log, "embedded"):
        stats.missing.extend(sha for sha, _ in batch.errors)
        t0 = time.perf_counter()
        stacked = torch.stack(batch.values)
        if device is None:
            vectors = clip.encode_images(stacked)
        else:
            vectors = device.run_with_oom_split(stacked, clip.encode_images, logger=_logger)
        stats.model_seconds += time.perf_counter() - t0
        store.put_embeddings(model_id, zip(batch.items, vectors, strict=True))
        stats.embedded += len(batch.items)
    stats.seconds = time.perf_counter() - start
    return stats


def resolve_batch_size(clip: ClipResource, device: InferenceDeviceResource) -> int:
    """``clip.batch_size`` when configured, else the device's safe batch for this model
    (probed with real forward passes once per machine, then cached)."""
    if clip.batch_size:
        return clip.batch_size
    loaded = clip.load()
    precision = precision_for(loaded.device)
    runner = image_batch_runner(
        loaded.model.encode_image, loaded.model.visual.image_size, loaded.device, precision
    )
    return device.safe_batch_size(clip.model_id, runner, precision)


def _embed_with(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    clip: ClipResource,
    device: InferenceDeviceResource,
) -> dict[str, Any]:
    """Embed this run's missing previews with one model; returns that model's metadata."""
    model_id = clip.model_id
    todo, cached = shas_to_embed(store, context.partition_keys, model_id)
    md: dict[str, Any] = {"model": model_id, "embedded": 0, "from_cache": cached}
    if clip.is_random:
        md["weights_warning"] = "RANDOM WEIGHTS: embeddings are meaningless for search"
    if not todo:
        context.log.info(f"nothing to embed: {cached} images already embedded by {model_id}")
        return {**md, "model_loaded": False}
    loaded = clip.load()
    if clip.is_random:
        context.log.warning(f"CLIP {clip.model_name} uses RANDOM WEIGHTS (explicitly requested)")
    batch_size = resolve_batch_size(clip, device)
    context.log.info(
        f"embedding {len(todo)} images with {model_id} on {loaded.device}, "
        f"batch size {batch_size} ({cached} already embedded)"
    )
    stats = embed_previews(
        store, clip, todo, log=context.log.info, batch_size=batch_size, device=device
    )
    context.log.info(f"embedded {stats.embedded} images ({stats.images_per_s:.1f} img/s)")
    return {
        **md,
        "model_loaded": True,
        "embedded": stats.embedded,
        "previews_missing": len(stats.missing),
        **device.describe(),
        "device": loaded.device,
        "precision": precision_for(loaded.device),
        "batch_size": batch_size,
        "batch_size_source": "config" if clip.batch_size else "probe",
        "embed_seconds": round(stats.seconds, 3),
        "images_per_s": round(stats.images_per_s, 2),
        "model_images_per_s": (
            round(stats.embedded / stats.model_seconds, 2) if stats.model_seconds else 0.0
        ),
        "model_load_seconds": round(loaded.load_seconds, 2),
    }


def build_clip_embeddings(models: list[tuple[str, str]]) -> dg.AssetsDefinition:
    """The ``clip_embeddings`` asset for the distinct ``(model, weights)`` pairs of the
    configured collections (embeddings are shared by collections with the same model)."""
    models = list(dict.fromkeys(models))

    @dg.asset(
        name="clip_embeddings",
        deps=[photo_previews],
        partitions_def=photo_folder_partitions,
        backfill_policy=BACKFILL_POLICY,
        group_name="ingest",
        kinds={"pytorch"},
        pool="gpu",  # one model-loading step at a time (dagster.yaml: limit 1)
    )
    def clip_embeddings(
        context: dg.AssetExecutionContext,
        store: StoreResource,
        clip: ClipResource,
        device: InferenceDeviceResource,
    ) -> dg.MaterializeResult:
        """L2-normalised CLIP image embeddings, (D,) float32 per unique image and model, of the
        previews not yet embedded by each configured model (one model in memory at a time).
        Previews are loaded and preprocessed in a thread pool ahead of the model; each batch is
        written to the store as soon as it is computed, so a crash loses at most one batch. A
        model is not loaded when there is nothing for it to embed.
        """
        per_model = [_embed_with(context, store, clip.for_model(m, w), device) for m, w in models]
        if len(per_model) == 1:
            return dg.MaterializeResult(metadata=per_model[0])
        return dg.MaterializeResult(
            metadata={
                "model": ", ".join(md["model"] for md in per_model),
                "embedded": sum(md["embedded"] for md in per_model),
                "from_cache": sum(md["from_cache"] for md in per_model),
                "model_loaded": any(md["model_loaded"] for md in per_model),
                "by_model": dg.MetadataValue.json(per_model),
            }
        )

    return clip_embeddings
