"""Embed-stage throughput versus the bare model, on the same previews, in the same run.

    python benchmarks/ingest.py FOLDER [--model ViT-B-32] [--weights random] [--repeat 4]

Steps: scan/hash/decode FOLDER into a temporary VIBE_HOME through the real Dagster assets (timed
as the decode stage); load CLIP once and warm it up; time the bare model (forward passes only, on
tensors preprocessed beforehand) before and after timing our embed stage (preview files in ->
vectors in the store, `embed_previews`); print JSON with images/s of each, their ratio and peak
RSS. Weights default to random (explicit, warned): throughput does not depend on weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg
import torch
from PIL import Image

from vibe_assets.assets import photo_files, photo_hashes, photo_previews
from vibe_assets.assets.embeddings import embed_previews, shas_to_embed
from vibe_assets.partitions import PARTITIONS_NAME
from vibe_assets.resources import ClipResource, StoreResource


def bare_model_images_per_s(clip: ClipResource, tensors: list[torch.Tensor]) -> float:
    """images/s of ``clip.encode_images`` alone over ``tensors`` in batches of clip.batch_size."""
    start = time.perf_counter()
    for i in range(0, len(tensors), clip.batch_size):
        clip.encode_images(torch.stack(tensors[i : i + clip.batch_size]))
    return len(tensors) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=4, help="embed each preview N times")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        store = StoreResource(home=tmp)
        key = store.registry.add(args.folder).key
        instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
        t0 = time.perf_counter()
        result = dg.materialize(
            [photo_files, photo_hashes, photo_previews],
            resources={"store": store},
            partition_key=key,
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        decode_seconds = time.perf_counter() - t0
        clip = ClipResource(model_name=args.model, weights=args.weights, batch_size=args.batch_size)
        shas, _ = shas_to_embed(store, [key], clip.model_id)
        if not shas:
            print("no decodable images in", args.folder, file=sys.stderr)
            return 1
        work = shas * args.repeat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = clip.load()
        tensors = []
        for sha in work:
            with Image.open(store.preview_path(sha)) as im:
                tensors.append(loaded.preprocess(im.convert("RGB")))
        clip.encode_images(torch.stack(tensors[: clip.batch_size]))  # warm-up

        bare_before = bare_model_images_per_s(clip, tensors)
        stats = embed_previews(store, clip, work)
        bare_after = bare_model_images_per_s(clip, tensors)
        bare = (bare_before + bare_after) / 2
        decoded = result.asset_materializations_for_node("photo_previews")[0].metadata
        print(
            json.dumps(
                {
                    "folder": str(args.folder),
                    "unique_images": len(shas),
                    "images_timed": len(work),
                    "model": clip.model_id,
                    "device": loaded.device,
                    "batch_size": clip.batch_size,
                    "torch_threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(),
                    "decode_stage_seconds": round(decode_seconds, 2),
                    "decode_images_per_s": decoded["decode_images_per_s"].value,
                    "embed_stage_images_per_s": round(stats.images_per_s, 2),
                    "bare_model_images_per_s": round(bare, 2),
                    "bare_model_images_per_s_runs": [round(bare_before, 2), round(bare_after, 2)],
                    "ratio_embed_stage_to_bare": round(stats.images_per_s / bare, 3),
                    "peak_rss_mib": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                    ),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
