"""``qdrant_<collection>``: one Qdrant point per unique image, synced incrementally."""

import os
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np

from vibe_assets import state as state_db
from vibe_assets.assets.captions import blip_captions
from vibe_assets.assets.previews import require_hashes
from vibe_assets.collections import CollectionSpec
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.point_source import PointSource, exif_payload, store_rebuilder
from vibe_assets.points import (
    collection_is_consistent,
    reconcile_collection,
    sample_ids,
    sync_folder,
)
from vibe_assets.report import (
    MAX_TABLE_ROWS,
    PER_FOLDER_LOG_MAX,
    add_partition_metadata,
    run_totals,
)
from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.clip import ClipResource
from vibe_assets.resources.store import StoreResource
from vibe_assets.resources.vectors import VectorStoreResource
from vibe_assets.runs import raise_if_cancelled
from vibe_assets.settings import env_int
from vibe_assets.state import StateDB
from vibe_assets.vectors.base import (
    READ_BATCH,
    CollectionMismatchError,
    PointNotFoundError,
    QdrantBusyError,
    QdrantRequestError,
    VectorStore,
    point_id,
)

__all__ = ["build_qdrant_asset", "exif_payload", "qdrant_retry_policy"]

BUSY_RETRIES = 5  # the embedded store is busy: retry up to 5 times, 20 s apart
BUSY_RETRY_SECONDS = 20
RETRIES_ENV = "VIBE_QDRANT_RETRIES"
RETRY_DELAY_ENV = "VIBE_QDRANT_RETRY_DELAY_SECONDS"
DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY_SECONDS = 5.0


def qdrant_retry_policy() -> dg.RetryPolicy:
    """Retry policy of the ``qdrant_<collection>`` steps (read when the assets are built):
    ``VIBE_QDRANT_RETRIES`` retries (default 3) with exponential backoff from
    ``VIBE_QDRANT_RETRY_DELAY_SECONDS`` (default 5 s: waits of 5, 15 and 35 s, Dagster's
    ``(2**n - 1) * delay``) for an unreachable or failing server. Errors that retrying cannot
    fix (a collection of another vector size, a refused API key) fail at once.

    Raises:
        ValueError: a variable is set but is not a number (message names it).
    """
    raw = os.environ.get(RETRY_DELAY_ENV)
    try:
        delay = float(raw) if raw else DEFAULT_RETRY_DELAY_SECONDS
    except ValueError:
        raise ValueError(f"{RETRY_DELAY_ENV} must be a number of seconds, got {raw!r}") from None
    return dg.RetryPolicy(
        max_retries=max(0, env_int(RETRIES_ENV, DEFAULT_RETRIES)),
        delay=max(0.0, delay),
        backoff=dg.Backoff.EXPONENTIAL,
    )


CHECK_POINTS = "every_image_has_a_point"
CHECK_VECTORS = "vectors_finite_unit_norm"
CHECK_SIZE = "vector_size_matches_model"
NORM_TOLERANCE = 1e-3  # float32 L2 norm of a normalised vector is 1 within ~1e-6; be generous


CHECK_SAMPLE = 64
"""Points of the run's folders, beyond those the run wrote, read back by the checks."""
CHECK_VECTOR_SAMPLE = 256
"""Points the run wrote whose vectors the checks read back (all written ids are checked)."""


@dataclass
class CheckFindings:
    """What the checks found: SHA-256s ``missing`` (an embedded image of the run's folders with
    no point: none recorded by the syncs, or not found when read back), ``bad`` (a point read
    back whose vector is not a finite, unit-norm (D,) vector), and how many ids and vectors
    were read back (``ids_checked``, ``vectors_checked``)."""

    missing: list[str]
    bad: list[str]
    ids_checked: int
    vectors_checked: int


def _check_points(
    vectors: VectorStore,
    state: StateDB,
    collection: str,
    expected: dict[str, str],
    written: Sequence[str],
    dim: int,
    seed: int,
) -> CheckFindings:
    """Check this run's work without downloading every vector: every expected image
    (``{point id: sha256}``) has a point recorded by the syncs (state, no request); the points
    the run wrote (``written`` ids) all exist; the vectors of up to :data:`CHECK_VECTOR_SAMPLE`
    of them and of :data:`CHECK_SAMPLE` other expected points are finite and unit-norm."""
    recorded = state_db.synced_points(state, collection, expected.values())
    missing = sorted({sha for sha in expected.values() if sha not in recorded})
    bad: list[str] = []
    sha_of = {**expected, **{pid: "" for pid in written if pid not in expected}}
    written_set = set(written)
    with_vector = set(sample_ids(written_set, CHECK_VECTOR_SAMPLE, seed))
    with_vector |= set(sample_ids(set(expected) - written_set, CHECK_SAMPLE, seed))
    batches = ((sorted(written_set - with_vector), False), (sorted(with_vector), True))
    for ids, vectors_too in batches:
        for i in range(0, len(ids), READ_BATCH):
            chunk = ids[i : i + READ_BATCH]
            found = {
                r.id: r.vector
                for r in vectors.retrieve(
                    collection, chunk, with_payload=False, with_vectors=vectors_too
                )
            }
            missing.extend(sha_of[pid] or pid for pid in chunk if pid not in found)
            if vectors_too:
                bad.extend(
                    sha_of[pid] or pid for pid, v in found.items() if not _is_unit_vector(v, dim)
                )
    return CheckFindings(
        sorted(set(missing)), sorted(set(bad)), len(written_set | with_vector), len(with_vector)
    )


BY_FOLDER_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("partition", "string"),
        dg.TableColumn("expected", "int"),
        dg.TableColumn("missing", "int"),
        dg.TableColumn("bad_vectors", "int"),
    ]
)


def by_folder_table(
    expected: dict[str, set[str]], missing: list[str], bad: list[str]
) -> dg.TableMetadataValue:
    """Check breakdown per partition of the run: ``expected`` points (the folder's embedded
    images), ``missing`` and ``bad_vectors`` among them; folders with problems first, at most
    :data:`~vibe_assets.report.MAX_TABLE_ROWS` rows. An image shared by folders counts in each."""
    missing_set, bad_set = set(missing), set(bad)
    rows = [
        {
            "partition": key,
            "expected": len(shas),
            "missing": len(shas & missing_set),
            "bad_vectors": len(shas & bad_set),
        }
        for key, shas in expected.items()
    ]
    rows.sort(key=lambda r: (-(r["missing"] + r["bad_vectors"]), r["partition"]))
    return dg.MetadataValue.table(
        records=[dg.TableRecord(r) for r in rows[:MAX_TABLE_ROWS]], schema=BY_FOLDER_SCHEMA
    )


SYNC_COUNTS = {  # metadata key: sync_folder counter
    "upserted": "upserted",
    "payload_updated": "payload_updated",
    "captions_updated": "captioned",
    "deleted": "deleted",
    "unchanged": "unchanged",
    "skipped_no_embedding": "skipped",
}


def _is_unit_vector(vector: object, dim: int) -> bool:
    v = np.asarray(vector, dtype=np.float64)
    if v.shape != (dim,) or not np.isfinite(v).all():
        return False
    return abs(float(np.linalg.norm(v)) - 1.0) <= NORM_TOLERANCE


def build_qdrant_asset(
    spec: CollectionSpec,
    retry_policy: dg.RetryPolicy | None = None,
    all_collections: Sequence[CollectionSpec] | None = None,
) -> dg.AssetsDefinition:
    """Asset ``qdrant_<collection>`` that syncs each folder partition into that collection.

    A failing server (unreachable, timeout, 5xx) is retried with ``retry_policy`` (default
    :func:`qdrant_retry_policy`), then the step fails with a message naming the server URL
    (never the API key); everything computed upstream stays in the store. A busy embedded
    collection (another process holds it past the resource's ``step_wait_seconds``) is retried
    ``BUSY_RETRIES`` times, ``BUSY_RETRY_SECONDS`` apart.

    The first embedded open migrates an old qdrant-client local-mode store: every collection of
    ``all_collections`` (default ``[spec]``; the definitions pass every configured one) found
    there is rebuilt from the store (see :mod:`vibe_assets.vectors.migrate`).

    The collection is created on first use with the model's vector size and the configured
    distance; an existing collection with another size or distance fails the run with a clear
    message (never a silent mix of models). Three asset checks run with every materialization,
    over the partitions of the run (one evaluation per run: pass/fail is the run's, and a
    ``by_folder`` table breaks it down per partition): every decoded and embedded image has a
    point; the points' vectors are finite and unit-norm; the collection's vector size matches
    the model.

    After the syncs, the embedded engine optimizes the collection's segments when enough new
    points have gathered (:meth:`~vibe_assets.vectors.edge.EdgeVectorStore.optimize`, once
    :data:`~vibe_assets.vectors.edge.SEGMENT_KB` of new vectors, so that every later open of
    the collection is cheaper); ``optimize_seconds`` in the metadata says how long it took (0:
    nothing was due).

    Each partition's metadata holds its own folder's sync counts (``upserted``,
    ``payload_updated``, ``captions_updated``, ``deleted``, ``unchanged``,
    ``skipped_no_embedding``, ``sync_seconds``, ``folder_removed``: a vanished folder's points
    are deleted and counted here); ``points_in_collection`` is the whole collection's; a range
    run adds ``run_...`` totals.
    """
    collection = spec.name
    key = dg.AssetKey(spec.asset_name)
    policy = retry_policy or qdrant_retry_policy()
    migrate_specs = list(all_collections or [spec])

    @dg.asset(
        name=spec.asset_name,
        deps=["clip_embeddings", blip_captions],
        partitions_def=photo_folder_partitions,
        backfill_policy=BACKFILL_POLICY,
        group_name="ingest",
        kinds={"qdrant"},
        pool="qdrant",  # an embedded collection admits one process at a time (dagster.yaml: 1)
        retry_policy=policy,
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_POINTS, asset=key, description="every embedded image has a point"
            ),
            dg.AssetCheckSpec(CHECK_VECTORS, asset=key, description="vectors finite, L2 norm 1"),
            dg.AssetCheckSpec(CHECK_SIZE, asset=key, description="vector size = model's size"),
        ],
        description=(
            f"Qdrant collection {collection!r} ({spec.model} / {spec.weights}, {spec.distance}): "
            "one point per unique image (id = UUID5 of its SHA-256) with its CLIP vector and "
            "payload (sha256, paths, folder_keys, width, height, format, embed_model, EXIF fields "
            "(taken_at, camera, lens, exposure, GPS location), and caption/caption_model/"
            "captioned_at once captioned). Upserts new images, rewrites the paths of moved or "
            "copied files and the captions of newly captioned images (payload only), and deletes "
            "points whose files are all gone."
        ),
    )
    def _qdrant_asset(
        context: dg.AssetExecutionContext,
        store: StoreResource,
        clip: ClipResource,
        blip: BlipResource,
        qdrant: VectorStoreResource,
    ) -> dg.MaterializeResult:
        start = time.perf_counter()
        keys = list(context.partition_keys)  # computed per access: read once
        rebuild = store_rebuilder(store, clip, migrate_specs, blip)  # used only to migrate
        clip = clip.for_model(spec.model, spec.weights)
        model_id = clip.model_id
        dim = clip.embedding_dim()
        # blip.model_id is an id only: BLIP is never loaded here
        source = PointSource(store, model_id, dim, blip.model_id)
        counts_by_folder: dict[str, dict[str, int]] = {}
        per_partition: dict[str, dict[str, Any]] = {}
        expected_by_folder: dict[str, set[str]] = {}
        expected: dict[str, str] = {}  # point id -> sha of every image that should have a point
        written: list[str] = []  # ids of the points this run upserted or updated
        reconciled = 0
        attempt = f"attempt {context.retry_number + 1} of {policy.max_retries + 1}"
        state = store.state
        try:
            with qdrant.open(rebuild=rebuild, log=context.log.info) as vectors:
                if vectors.ensure_collection(collection, dim, spec.vector_distance):
                    made = f"({dim}-d, {spec.distance})"
                    context.log.info(f"created collection {collection!r} {made}")
                if not collection_is_consistent(vectors, state, collection):
                    reconcile_collection(vectors, state, collection, context.log.warning)
                    reconciled += 1
                for folder_key in keys:
                    raise_if_cancelled()  # every write is idempotent: the next run finishes
                    t0 = time.perf_counter()
                    hashes = require_hashes(store, folder_key)
                    current = source.current(hashes)
                    args = (collection, folder_key, current, source.point_builder(folder_key))
                    try:
                        result = sync_folder(vectors, state, *args, source.caption_for)
                    except PointNotFoundError:  # a recorded point is gone: re-learn, once
                        reconcile_collection(vectors, state, collection, context.log.warning)
                        reconciled += 1
                        result = sync_folder(vectors, state, *args, source.caption_for)
                    counts = result.counts
                    written += result.upserted + result.updated
                    if len(keys) <= PER_FOLDER_LOG_MAX or counts["deleted"]:
                        context.log.info(f"{folder_key}: {dict(counts)}")
                    # every decoded image should have a point, but those still without an
                    # embedding (skipped: the next run adds them)
                    embedded = result.has_point | {
                        sha
                        for sha in current
                        if sha not in result.has_point and store.has_embedding(model_id, sha)
                    }
                    expected.update((point_id(sha), sha) for sha in embedded)
                    expected_by_folder[folder_key] = embedded
                    counts_by_folder[folder_key] = {
                        name: counts[counter] for name, counter in SYNC_COUNTS.items()
                    }
                    per_partition[folder_key] = {
                        **counts_by_folder[folder_key],
                        "folder_removed": bool(hashes.get("removed")),
                        "sync_seconds": round(time.perf_counter() - t0, 3),
                    }
                totals = Counter()
                for folder_counts in counts_by_folder.values():
                    totals.update(folder_counts)
                context.log.info(f"synced {len(keys)} folders into {collection!r}: {dict(totals)}")
                t0 = time.perf_counter()
                if vectors.optimize(collection):  # the next open is cheaper (see the docs)
                    optimize_seconds = round(time.perf_counter() - t0, 3)
                    context.log.info(f"optimized {collection!r}'s segments in {optimize_seconds} s")
                else:
                    optimize_seconds = 0.0
                points = vectors.count(collection)
                recorded_points = state_db.synced_point_count(state, collection)
                info = vectors.collection_info(collection)
                size = info.vector_size if info is not None else None
                seed = zlib.crc32(context.run.run_id.encode())
                findings = _check_points(vectors, state, collection, expected, written, dim, seed)
        except QdrantBusyError as exc:
            context.log.warning(f"{exc}; retrying in {BUSY_RETRY_SECONDS} s")
            raise dg.RetryRequested(
                max_retries=BUSY_RETRIES, seconds_to_wait=BUSY_RETRY_SECONDS
            ) from exc
        except (CollectionMismatchError, QdrantRequestError) as exc:
            raise dg.Failure(str(exc), allow_retries=False) from exc  # retrying cannot help
        except Exception as exc:
            context.log.warning(f"{collection}: {exc} ({attempt})")
            raise
        missing, bad_vectors = findings.missing, findings.bad
        by_folder = by_folder_table(expected_by_folder, missing, bad_vectors)
        checks = [
            dg.AssetCheckResult(
                check_name=CHECK_POINTS,
                passed=not missing and points == recorded_points,
                metadata={
                    "expected": len(expected),
                    "missing": len(missing),
                    "sample": missing[:10],
                    "points_written": len(written),
                    "ids_read_back": findings.ids_checked,
                    "points_in_collection": points,
                    "points_recorded": recorded_points,
                    "by_folder": by_folder,
                },
            ),
            dg.AssetCheckResult(
                check_name=CHECK_VECTORS,
                passed=not bad_vectors,
                metadata={
                    "checked": findings.vectors_checked,
                    "bad": len(bad_vectors),
                    "sample": bad_vectors[:10],
                    "by_folder": by_folder,
                },
            ),
            dg.AssetCheckResult(
                check_name=CHECK_SIZE,
                passed=size == dim,
                metadata={"collection_size": size, "model_size": dim, "model": model_id},
            ),
        ]
        add_partition_metadata(context, per_partition)
        run_md = run_totals(keys, counts_by_folder)
        if run_md:
            run_md["run_sync_seconds"] = round(time.perf_counter() - start, 3)
        return dg.MaterializeResult(
            check_results=checks,
            metadata={
                "collection": collection,
                "location": qdrant.location,
                "vector_size": dim,
                "embed_model": model_id,
                "points_in_collection": points,
                "reconciled": reconciled,
                "optimize_seconds": optimize_seconds,
                **run_md,
            },
        )

    return _qdrant_asset
