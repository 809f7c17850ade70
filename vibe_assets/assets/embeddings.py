"""The ``decode_and_embed`` step: ``photo_previews`` and ``clip_embeddings`` in one step.

Decoding originals into previews and embedding previews with CLIP run as one pipeline: a thread
pool decodes (and stores) the next batches while the model embeds the current one, so decoding
hides behind inference instead of adding to it (on a GPU almost entirely; on 2 vCPU partly, as
decoding and the model share the cores). Either asset can still be materialized alone.
"""

import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from PIL import Image

from vibe_assets.assets.previews import (
    PHOTO_PREVIEWS,
    PROGRESS_EVERY_SECONDS,
    DecodeOutcome,
    DecodePlan,
    PreviewWriteError,
    decode_all,
    decode_and_store,
    listed_paths,
    open_preview,
    paths_by_sha,
    photo_previews_spec,
    plan_decode,
    previews_metadata,
    require_hashes,
)
from vibe_assets.batching import prefetch_batches
from vibe_assets.imaging.errors import PhotoError
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.report import RUN_PREFIX, add_partition_metadata, run_metadata
from vibe_assets.resources.clip import ClipResource
from vibe_assets.resources.device import (
    InferenceDeviceResource,
    image_batch_runner,
    precision_for,
)
from vibe_assets.resources.store import StoreResource
from vibe_assets.runs import raise_if_cancelled

CLIP_EMBEDDINGS = dg.AssetKey("clip_embeddings")
DECODE_AND_EMBED = "decode_and_embed"  # the op (step) materializing both assets
DEFAULT_BATCH_SIZE = 32  # CPU: ViT-B-32 is flat from 8 to 32 images per pass (DESIGN.md)
_logger = logging.getLogger(__name__)  # OOM-split warnings


@dataclass
class EmbedStats:
    """What :func:`embed_previews` did: images ``embedded`` (their SHA-256s in
    ``embedded_shas``), previews ``missing`` (forgotten, to be re-decoded), wall ``seconds``
    (previews in -> vectors stored) and ``model_seconds`` (time inside the forward passes)."""

    embedded: int = 0
    embedded_shas: set[str] = field(default_factory=set)
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
    prefetch: int = 2,
) -> EmbedStats:
    """Embed the stored previews of ``shas`` with ``clip`` (no decoding): previews are opened
    and preprocessed in a thread pool up to two batches ahead of the model, and each batch is
    stored as soon as it is done. See :func:`decode_and_embed_previews`; ``batch_size``
    defaults to ``clip.batch_size`` (32 when that is None)."""
    plan = DecodePlan(listings={})
    done = decode_and_embed_previews(store, clip, plan, shas, log, batch_size, device, prefetch)
    return done.embed


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


@dataclass
class DecodeEmbedStats:
    """What :func:`decode_and_embed_previews` did: ``embed`` (as :class:`EmbedStats`; its
    ``seconds`` is the wall time of the whole pipeline), ``failures`` (this run's decode failures
    by SHA-256), ``decoded`` (previews stored) and ``decode_thread_seconds`` (time spent
    decoding, encoding and storing, summed over the pool's threads)."""

    embed: EmbedStats = field(default_factory=EmbedStats)
    failures: dict[str, PhotoError] = field(default_factory=dict)
    decoded: int = 0
    decode_thread_seconds: float = 0.0


def _open_jpeg(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def decode_and_embed_previews(
    store: StoreResource,
    clip: ClipResource,
    plan: DecodePlan,
    embed_shas: Sequence[str],
    log: Callable[[str], None] = lambda _: None,
    batch_size: int | None = None,
    device: InferenceDeviceResource | None = None,
    prefetch: int = 2,
) -> DecodeEmbedStats:
    """Decode ``plan.todo`` and embed ``embed_shas`` with ``clip`` in one pipeline.

    A thread pool (one thread per core) prepares batches ``prefetch`` batches ahead of the
    model (:func:`vibe_assets.batching.prefetch_batches`): it decodes an
    original and stores its preview and thumbnail (:func:`decode_and_store`), then resizes and
    crops that preview for the model (PIL only; normalisation happens batched on this thread,
    see :meth:`LoadedClip.split_preprocess`); images of ``embed_shas`` that already had a
    preview are read from the store instead. Embeddings are computed from the stored JPEG
    preview's pixels either way, so an image's embedding does not depend on which run made it.
    Each batch's embeddings are stored as soon as they are computed (a crash loses at most one
    batch), and a batch that runs out of memory is split (with ``device``).

    A photo that cannot be decoded is recorded in ``failures`` and never stops the others. A
    preview evicted from the cache is decoded again from its original (paths from
    ``plan.listings``); one that cannot be read (or decoded again) is forgotten (re-decoded next
    run) and counted in ``embed.missing``.

    Raises:
        PreviewWriteError: a preview cannot be written under the store (e.g. disk full).
    """
    loaded = clip.load()
    model_id = clip.model_id
    prepare, to_batch = loaded.split_preprocess()
    wanted = set(embed_shas)
    items = [*plan.todo, *(sha for sha in embed_shas if sha not in plan.todo)]

    paths, listed_stats = listed_paths(plan.listings.values())

    def load(sha: str) -> tuple[DecodeOutcome | None, Any]:
        if sha in plan.todo:
            outcome = decode_and_store(store, sha, plan.todo[sha], plan.stats)
            if outcome.preview is None or sha not in wanted:
                return outcome, None
            return outcome, prepare(_open_jpeg(outcome.preview))
        # a preview evicted from the cache is decoded again from its original here
        return None, prepare(open_preview(store, sha, paths.get(sha, ()), listed_stats))

    out = DecodeEmbedStats()
    stats = out.embed
    size = batch_size or clip.batch_size or DEFAULT_BATCH_SIZE
    start = last_log = time.perf_counter()
    for batch in prefetch_batches(items, load, size, prefetch=prefetch):
        for sha, exc in batch.errors:
            if sha in plan.todo or isinstance(exc, PreviewWriteError):
                raise exc  # PreviewWriteError (ours: fails the run) or a bug: never hidden
            log(f"preview of {sha} unreadable ({exc}); it will be re-decoded next run")
            store.forget_preview(sha)
            stats.missing.append(sha)
        shas: list[str] = []
        tensors: list[Any] = []
        for sha, (outcome, tensor) in zip(batch.items, batch.values, strict=True):
            if outcome is not None:
                out.decode_thread_seconds += outcome.seconds
                if outcome.error is not None:
                    out.failures[sha] = outcome.error
                else:
                    out.decoded += 1
            if tensor is not None:
                shas.append(sha)
                tensors.append(tensor)
        if tensors:
            t0 = time.perf_counter()
            stacked = to_batch(tensors)
            if device is None:
                vectors = clip.encode_images(stacked)
            else:
                vectors = device.run_with_oom_split(stacked, clip.encode_images, logger=_logger)
            stats.model_seconds += time.perf_counter() - t0
            store.put_embeddings(model_id, zip(shas, vectors, strict=True))
            stats.embedded += len(shas)
            stats.embedded_shas.update(shas)
        raise_if_cancelled()  # Ctrl-C: stop after the stored batch (prefetched loads dropped)
        now = time.perf_counter()
        if now - last_log > PROGRESS_EVERY_SECONDS:
            log(
                f"decoded {out.decoded + len(out.failures)}/{len(plan.todo)} "
                f"({len(out.failures)} failed), embedded {stats.embedded}/{len(wanted)} "
                f"({stats.embedded / (now - start):.2f} img/s)"
            )
            last_log = now
    stats.seconds = time.perf_counter() - start
    return out


def embeddable_shas(
    store: StoreResource, plan: DecodePlan, model_id: str
) -> tuple[list[str], set[str]]:
    """Unique SHA-256s, in listing order, that have a preview or are about to be decoded
    (``plan.todo``) and have no embedding by ``model_id``; and those already embedded."""
    todo: list[str] = []
    cached: set[str] = set()
    seen: set[str] = set()
    for hashes in plan.listings.values():
        for sha in paths_by_sha(hashes):
            if sha in seen:
                continue
            seen.add(sha)
            if sha not in plan.todo and store.preview_info(sha) is None:
                continue  # failed to decode (cached failure)
            if store.has_embedding(model_id, sha):
                cached.add(sha)
            else:
                todo.append(sha)
    return todo, cached


def folder_embed_counts(
    plan: DecodePlan, embedded: set[str], cached: set[str], missing: set[str]
) -> dict[str, dict[str, int]]:
    """``{partition key: {"embedded", "from_cache", "previews_missing"}}``: how many of each
    folder's unique images were embedded by this run, already had an embedding, or had a
    stored preview that could not be read. An image shared by two folders counts in each."""
    out: dict[str, dict[str, int]] = {}
    for key, hashes in plan.listings.items():
        shas = paths_by_sha(hashes)
        out[key] = {
            "embedded": sum(sha in embedded for sha in shas),
            "from_cache": sum(sha in cached for sha in shas),
            "previews_missing": sum(sha in missing for sha in shas),
        }
    return out


@dataclass
class ModelReport:
    """The ``clip_embeddings`` metadata of one model in a run: ``run`` (run-level: model,
    device, batch size, ``run_...`` timings, and ``run_...`` totals in range runs) and
    ``folders`` (``{partition key: {"embedded", "from_cache", "previews_missing"}}``)."""

    run: dict[str, Any]
    folders: dict[str, dict[str, int]]


def _embed_with(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    clip: ClipResource,
    device: InferenceDeviceResource,
    plan: DecodePlan,
) -> tuple[ModelReport, DecodeEmbedStats | None]:
    """Decode ``plan.todo`` (if any) while embedding this run's missing images with one model;
    returns that model's metadata and what was done (None when nothing was)."""
    model_id = clip.model_id
    keys = list(plan.listings)
    todo, cached = embeddable_shas(store, plan, model_id)
    md: dict[str, Any] = {"model": model_id}
    if clip.is_random:
        md["weights_warning"] = "RANDOM WEIGHTS: embeddings are meaningless for search"
    if not todo:
        context.log.info(f"nothing to embed: {len(cached)} images already embedded by {model_id}")
        md["model_loaded"] = False
        md.update(run_metadata(keys, {"embedded": 0, "from_cache": len(cached)}))
        report = ModelReport(md, folder_embed_counts(plan, set(), cached, set()))
        if not plan.todo:
            return report, None
        failures = decode_all(context, store, plan)
        return report, DecodeEmbedStats(failures=failures, decoded=len(plan.todo) - len(failures))
    loaded = clip.load()
    if clip.is_random:
        context.log.warning(f"CLIP {clip.model_name} uses RANDOM WEIGHTS (explicitly requested)")
    batch_size = resolve_batch_size(clip, device)
    context.log.info(
        f"decoding {len(plan.todo)} and embedding {len(todo)} images with {model_id} on "
        f"{loaded.device}, batch size {batch_size} ({len(cached)} already embedded)"
    )
    done = decode_and_embed_previews(
        store, clip, plan, todo, log=context.log.info, batch_size=batch_size, device=device
    )
    stats = done.embed
    context.log.info(
        f"decoded {done.decoded} ({len(done.failures)} failed), embedded {stats.embedded} "
        f"images ({stats.images_per_s:.1f} img/s)"
    )
    totals = {
        "embedded": stats.embedded,
        "from_cache": len(cached),
        "previews_missing": len(stats.missing),
    }
    md = {
        **md,
        "model_loaded": True,
        **run_metadata(keys, totals),
        **device.describe(),
        "device": loaded.device,
        "precision": precision_for(loaded.device),
        "batch_size": batch_size,
        "batch_size_source": "config" if clip.batch_size else "probe",
        "run_embed_seconds": round(stats.seconds, 3),
        "run_images_per_s": round(stats.images_per_s, 2),
        "run_model_images_per_s": (
            round(stats.embedded / stats.model_seconds, 2) if stats.model_seconds else 0.0
        ),
        "model_load_seconds": round(loaded.load_seconds, 2),
    }
    folders = folder_embed_counts(plan, stats.embedded_shas, cached, set(stats.missing))
    return ModelReport(md, folders), done


def _combined_metadata(
    reports: list[ModelReport],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-partition and run-level ``clip_embeddings`` metadata of the run's models.

    Per partition: ``embedded``, ``from_cache``, ``previews_missing`` (summed over models) and,
    with several models, ``embedded_by_model`` (JSON ``{model: counts}``). Run level: the one
    model's run metadata, or with several models ``model`` (comma-separated), ``model_loaded``
    (any), ``run_...`` totals summed and ``by_model`` (JSON list of each model's run metadata).
    """
    keys = list(reports[0].folders) if reports else []
    per_partition: dict[str, dict[str, Any]] = {}
    for key in keys:
        counts = [r.folders[key] for r in reports]
        per_partition[key] = {
            name: sum(c[name] for c in counts)
            for name in ("embedded", "from_cache", "previews_missing")
        }
        if len(reports) > 1:
            per_partition[key]["embedded_by_model"] = dg.MetadataValue.json(
                {r.run["model"]: r.folders[key] for r in reports}
            )
    if len(reports) == 1:
        return per_partition, reports[0].run
    run_counts = {
        name: sum(r.run.get(name, 0) for r in reports)
        for name in (f"{RUN_PREFIX}embedded", f"{RUN_PREFIX}from_cache")
        if any(name in r.run for r in reports)
    }
    return per_partition, {
        "model": ", ".join(r.run["model"] for r in reports),
        "model_loaded": any(r.run["model_loaded"] for r in reports),
        **run_counts,
        "by_model": dg.MetadataValue.json([r.run for r in reports]),
    }


def build_decode_and_embed(models: list[tuple[str, str]]) -> dg.AssetsDefinition:
    """The ``decode_and_embed`` step materializing ``photo_previews`` and ``clip_embeddings``
    for the distinct ``(model, weights)`` pairs of the configured collections (embeddings are
    shared by collections with the same model). Either asset can be materialized alone."""
    models = list(dict.fromkeys(models))

    @dg.multi_asset(
        name=DECODE_AND_EMBED,
        specs=[
            photo_previews_spec(),
            dg.AssetSpec(
                CLIP_EMBEDDINGS,
                deps=[PHOTO_PREVIEWS],
                partitions_def=photo_folder_partitions,
                group_name="ingest",
                kinds={"pytorch"},
                description=(
                    "L2-normalised CLIP image embeddings, (D,) float32 per unique image and "
                    "model, of the previews not yet embedded by each configured model (one "
                    "model in memory at a time). New images are decoded in a thread pool ahead "
                    "of the model, in the same step; each batch is written to the store as soon "
                    "as it is computed, so a crash loses at most one batch. A model is not "
                    "loaded when there is nothing for it to embed."
                ),
            ),
        ],
        can_subset=True,
        backfill_policy=BACKFILL_POLICY,
        pool="gpu",  # one model-loading step at a time (dagster.yaml: limit 1)
    )
    def decode_and_embed(
        context: dg.AssetExecutionContext,
        store: StoreResource,
        clip: ClipResource,
        device: InferenceDeviceResource,
    ) -> Iterator[dg.MaterializeResult]:
        """Decode new originals into previews and embed them while decoding (see module)."""
        selected = context.selected_asset_keys
        start = time.perf_counter()
        if PHOTO_PREVIEWS in selected:
            plan = plan_decode(store, context.partition_keys)
            context.log.info(f"{len(plan.todo)} new images to decode of {plan.unique} unique")
        else:  # embeddings only: previews made by earlier runs
            listings = {k: require_hashes(store, k) for k in context.partition_keys}
            plan = DecodePlan(listings=listings)
        failures: dict[str, PhotoError] = {}
        thread_seconds = 0.0
        if CLIP_EMBEDDINGS not in selected:
            failures = decode_all(context, store, plan) if plan.todo else {}
        reports: list[ModelReport] = []
        for model, weights in models if CLIP_EMBEDDINGS in selected else []:
            report, done = _embed_with(context, store, clip.for_model(model, weights), device, plan)
            reports.append(report)
            if plan.todo:  # the first model's pass decoded everything: report it now
                failures = done.failures if done else {}
                thread_seconds = done.decode_thread_seconds if done else 0.0
                if PHOTO_PREVIEWS in selected:
                    yield _previews_result(context, store, plan, failures, start, thread_seconds)
                plan = DecodePlan(listings=plan.listings)  # decoded: the next models only embed
                selected = selected - {PHOTO_PREVIEWS}
        if PHOTO_PREVIEWS in selected:
            yield _previews_result(context, store, plan, failures, start, thread_seconds)
        if CLIP_EMBEDDINGS in selected:
            per_partition, run_md = _combined_metadata(reports)
            add_partition_metadata(context, per_partition, CLIP_EMBEDDINGS)
            yield dg.MaterializeResult(asset_key=CLIP_EMBEDDINGS, metadata=run_md)

    return decode_and_embed


def _previews_result(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    plan: DecodePlan,
    failures: dict[str, PhotoError],
    start: float,
    thread_seconds: float,
) -> dg.MaterializeResult:
    """``photo_previews``: each folder's file report on its partition
    (:func:`previews_metadata`), run totals (range runs) and the decode timing, which belongs
    to the run: ``run_decode_ms_per_image`` (thread time per decoded image) when decoding ran
    beside the model, else ``run_decode_seconds`` (wall seconds)."""
    per_partition, md = previews_metadata(context, store, plan, failures)
    add_partition_metadata(context, per_partition, PHOTO_PREVIEWS)
    if thread_seconds and plan.todo:  # decoded beside the model: no wall time of its own
        md[f"{RUN_PREFIX}decode_ms_per_image"] = round(1000 * thread_seconds / len(plan.todo), 1)
    else:
        md[f"{RUN_PREFIX}decode_seconds"] = round(time.perf_counter() - start, 3)
    processed = sum(m["files_processed"] for m in per_partition.values())
    failed = sum(m["failed"].value for m in per_partition.values())
    context.log.info(f"{processed} files processed, {failed} failed")
    return dg.MaterializeResult(asset_key=PHOTO_PREVIEWS, metadata=md)
