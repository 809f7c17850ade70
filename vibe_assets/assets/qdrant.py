"""``qdrant_<collection>``: one Qdrant point per unique image, synced incrementally."""

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from qdrant_client import models

from vibe_assets.assets.captions import blip_captions
from vibe_assets.assets.embeddings import clip_embeddings
from vibe_assets.assets.previews import paths_by_sha, require_hashes
from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
from vibe_assets.points import sync_folder
from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.clip import ClipResource
from vibe_assets.resources.qdrant import QdrantResource, point_id
from vibe_assets.resources.store import StoreResource


def exif_payload(exif: dict[str, Any]) -> dict[str, Any]:
    """Payload fields from a photo's EXIF (:func:`vibe_assets.imaging.exif.photo_metadata`):
    the fields as they are (taken_at, camera_make, camera_model, lens, focal_length_mm,
    aperture, exposure_s, iso, gps_lat, gps_lon), plus ``location`` ``{"lat", "lon"}`` (Qdrant's
    geo format) when both coordinates are present."""
    payload = dict(exif)
    if "gps_lat" in exif and "gps_lon" in exif:
        payload["location"] = {"lat": exif["gps_lat"], "lon": exif["gps_lon"]}
    return payload


def build_qdrant_asset(collection: str) -> dg.AssetsDefinition:
    """Asset ``qdrant_<collection>`` that syncs each folder partition into that collection.

    The collection is created on first use with the CLIP model's vector size and Cosine
    distance; an existing collection with another size or distance fails the run with a clear
    message (never a silent mix of models).
    """

    @dg.asset(
        name=f"qdrant_{collection}",
        deps=[clip_embeddings, blip_captions],
        partitions_def=photo_folder_partitions,
        backfill_policy=BACKFILL_POLICY,
        group_name="ingest",
        kinds={"qdrant"},
        description=(
            f"Qdrant collection {collection!r}: one point per unique image (id = UUID5 of its "
            "SHA-256) with its CLIP vector and payload (sha256, paths, folder_keys, width, height, "
            "format, embed_model, EXIF fields (taken_at, camera, lens, exposure, GPS location), "
            "and caption/caption_model/captioned_at once captioned). Upserts new images, "
            "rewrites the paths of moved or copied files and the captions of newly captioned "
            "images (payload only), and deletes points whose files are all gone."
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
        totals: Counter[str] = Counter()

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

        with qdrant.client() as client:
            if qdrant.ensure_collection(client, collection, dim):
                context.log.info(f"created collection {collection!r} ({dim}-d, Cosine)")
            for key in context.partition_keys:
                hashes = require_hashes(store, key)
                current = {
                    sha: paths
                    for sha, paths in paths_by_sha(hashes).items()
                    if store.preview_info(sha) is not None
                }
                counts = sync_folder(
                    client, collection, key, hashes["root"], current, make_point(key), caption_for
                )
                totals.update(counts)
                context.log.info(f"{key}: {dict(counts)}")
            points = client.count(collection, exact=True).count
        return dg.MaterializeResult(
            metadata={
                "collection": collection,
                "location": qdrant.location,
                "vector_size": dim,
                "embed_model": model_id,
                "upserted": totals["upserted"],
                "payload_updated": totals["payload_updated"],
                "captions_updated": totals["captioned"],
                "deleted": totals["deleted"],
                "unchanged": totals["unchanged"],
                "skipped_no_embedding": totals["skipped"],
                "points_in_collection": points,
                "sync_seconds": round(time.perf_counter() - start, 3),
            }
        )

    return _qdrant_asset
