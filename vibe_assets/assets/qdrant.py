"""``qdrant_<collection>``: one Qdrant point per unique image, synced incrementally."""

import contextlib
import os
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import numpy as np
from qdrant_client import QdrantClient, models

from vibe_assets.assets.captions import blip_captions
from vibe_assets.assets.previews import paths_by_sha, require_hashes
from vibe_assets.collections import CollectionSpec
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.points import READ_BATCH, sync_folder
from vibe_assets.report import MAX_TABLE_ROWS, add_partition_metadata, run_totals
from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.clip import ClipResource
from vibe_assets.resources.qdrant import (
    CollectionMismatchError,
    QdrantBusyError,
    QdrantRequestError,
    QdrantResource,
    point_id,
)
from vibe_assets.resources.store import StoreResource
from vibe_assets.runs import raise_if_cancelled
from vibe_assets.settings import env_int

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


def exif_payload(exif: dict[str, Any]) -> dict[str, Any]:
    """Payload fields from a photo's EXIF (:func:`vibe_assets.imaging.exif.photo_metadata`):
    the fields as they are (taken_at, camera_make, camera_model, lens, focal_length_mm,
    aperture, exposure_s, iso, gps_lat, gps_lon), plus ``location`` ``{"lat", "lon"}`` (Qdrant's
    geo format) when both coordinates are present."""
    payload = dict(exif)
    if "gps_lat" in exif and "gps_lon" in exif:
        payload["location"] = {"lat": exif["gps_lat"], "lon": exif["gps_lon"]}
    return payload


CHECK_POINTS = "every_image_has_a_point"
CHECK_VECTORS = "vectors_finite_unit_norm"
CHECK_SIZE = "vector_size_matches_model"
NORM_TOLERANCE = 1e-3  # float32 L2 norm of a normalised vector is 1 within ~1e-6; be generous


def _check_points(
    client: QdrantClient, collection: str, expected: dict[str, str], dim: int
) -> tuple[list[str], list[str]]:
    """SHA-256s of the points missing among ``expected`` ``{point id: sha256}``, and of the
    stored points whose vectors are not finite, unit-norm ``dim``-d vectors."""
    missing: list[str] = []
    bad: list[str] = []
    ids = list(expected)
    for i in range(0, len(ids), READ_BATCH):
        chunk = ids[i : i + READ_BATCH]
        records = client.retrieve(collection, ids=chunk, with_payload=False, with_vectors=True)
        found = {str(r.id): r.vector for r in records}
        missing.extend(expected[pid] for pid in chunk if pid not in found)
        bad.extend(expected[pid] for pid, v in found.items() if not _is_unit_vector(v, dim))
    return missing, bad


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
    spec: CollectionSpec, retry_policy: dg.RetryPolicy | None = None
) -> dg.AssetsDefinition:
    """Asset ``qdrant_<collection>`` that syncs each folder partition into that collection.

    A failing server (unreachable, timeout, 5xx) is retried with ``retry_policy`` (default
    :func:`qdrant_retry_policy`), then the step fails with a message naming the server URL
    (never the API key); everything computed upstream stays in the store. A busy embedded store
    (another process holds it) is retried ``BUSY_RETRIES`` times, ``BUSY_RETRY_SECONDS`` apart.

    The collection is created on first use with the model's vector size and the configured
    distance; an existing collection with another size or distance fails the run with a clear
    message (never a silent mix of models). Three asset checks run with every materialization,
    over the partitions of the run (one evaluation per run: pass/fail is the run's, and a
    ``by_folder`` table breaks it down per partition): every decoded and embedded image has a
    point; the points' vectors are finite and unit-norm; the collection's vector size matches
    the model.

    Each partition's metadata holds its own folder's sync counts (``upserted``,
    ``payload_updated``, ``captions_updated``, ``deleted``, ``unchanged``,
    ``skipped_no_embedding``, ``sync_seconds``, ``folder_removed``: a vanished folder's points
    are deleted and counted here); ``points_in_collection`` is the whole collection's; a range
    run adds ``run_...`` totals.
    """
    collection = spec.name
    key = dg.AssetKey(spec.asset_name)
    policy = retry_policy or qdrant_retry_policy()

    @dg.asset(
        name=spec.asset_name,
        deps=["clip_embeddings", blip_captions],
        partitions_def=photo_folder_partitions,
        backfill_policy=BACKFILL_POLICY,
        group_name="ingest",
        kinds={"qdrant"},
        pool="qdrant",  # the embedded store admits one process at a time (dagster.yaml: limit 1)
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
        qdrant: QdrantResource,
    ) -> dg.MaterializeResult:
        start = time.perf_counter()
        clip = clip.for_model(spec.model, spec.weights)
        model_id = clip.model_id
        caption_model = blip.model_id  # an id only: BLIP is never loaded here

        def caption_for(sha: str) -> dict[str, str] | None:
            stored = store.get_caption(caption_model, sha)
            if stored is None:
                return None
            return {
                "caption": stored["text"],
                "caption_model": caption_model,
                "captioned_at": stored["captioned_at"],
            }

        dim = clip.embedding_dim()
        counts_by_folder: dict[str, dict[str, int]] = {}
        per_partition: dict[str, dict[str, Any]] = {}
        expected_by_folder: dict[str, set[str]] = {}

        def make_point(folder_key: str):
            def build(sha: str, paths: list[str]) -> models.PointStruct | None:
                info = store.preview_info(sha)
                vector = store.get_embedding(model_id, sha)
                if info is None or vector is None or vector.shape != (dim,):
                    return None
                payload = {
                    "sha256": sha,
                    "paths": paths,
                    "folder_keys": [folder_key],
                    "width": info["width"],
                    "height": info["height"],
                    "format": info["format"],
                    "embed_model": model_id,
                    "ingested_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    **exif_payload(info.get("exif") or {}),
                    **(caption_for(sha) or {}),
                }
                return models.PointStruct(id=point_id(sha), vector=vector.tolist(), payload=payload)

            return build

        try:
            client = qdrant.open_client()
        except QdrantBusyError as exc:
            context.log.warning(f"{exc}; retrying in {BUSY_RETRY_SECONDS} s")
            raise dg.RetryRequested(
                max_retries=BUSY_RETRIES, seconds_to_wait=BUSY_RETRY_SECONDS
            ) from exc
        expected: dict[str, str] = {}  # point id -> sha of every image that should have a point
        attempt = f"attempt {context.retry_number + 1} of {policy.max_retries + 1}"
        try:
            with contextlib.closing(client), qdrant.server_errors():
                if qdrant.ensure_collection(client, collection, dim, spec.qdrant_distance):
                    made = f"({dim}-d, {spec.distance})"
                    context.log.info(f"created collection {collection!r} {made}")
                for folder_key in context.partition_keys:
                    raise_if_cancelled()  # every write is idempotent: the next run finishes
                    t0 = time.perf_counter()
                    hashes = require_hashes(store, folder_key)
                    current = {
                        sha: paths
                        for sha, paths in paths_by_sha(hashes).items()
                        if store.preview_info(sha) is not None
                    }
                    counts = sync_folder(
                        client,
                        collection,
                        folder_key,
                        hashes["root"],
                        current,
                        make_point(folder_key),
                        caption_for,
                    )
                    context.log.info(f"{folder_key}: {dict(counts)}")
                    embedded = {sha for sha in current if store.has_embedding(model_id, sha)}
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
                points = client.count(collection, exact=True).count
                size = client.get_collection(collection).config.params.vectors.size
                missing, bad_vectors = _check_points(client, collection, expected, dim)
        except (CollectionMismatchError, QdrantRequestError) as exc:
            raise dg.Failure(str(exc), allow_retries=False) from exc  # retrying cannot help
        except Exception as exc:
            context.log.warning(f"{collection}: {exc} ({attempt})")
            raise
        by_folder = by_folder_table(expected_by_folder, missing, bad_vectors)
        checks = [
            dg.AssetCheckResult(
                check_name=CHECK_POINTS,
                passed=not missing,
                metadata={
                    "expected": len(expected),
                    "missing": len(missing),
                    "sample": missing[:10],
                    "by_folder": by_folder,
                },
            ),
            dg.AssetCheckResult(
                check_name=CHECK_VECTORS,
                passed=not bad_vectors,
                metadata={
                    "checked": len(expected) - len(missing),
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
        run_md = run_totals(context.partition_keys, counts_by_folder)
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
                **run_md,
            },
        )

    return _qdrant_asset
