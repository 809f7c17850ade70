"""Ingest throughput against the bare model and the old services' pipeline, in one run.

    python benchmarks/ingest.py FOLDER [FOLDER ...] [--copies 4] [--baseline] [--repeat 3]
                                [--model ViT-B-32] [--weights random] [--batch-size 32]
                                [--instance sqlite|postgres] [--overhead-runs 5]

1. Builds a temporary library from FOLDERs' files, ``--copies`` times, each copy made unique by
   bytes appended after the image data (JPEG/PNG/DNG readers ignore them), so content
   addressing cannot skip the copies.
2. **Whole ingest**: materializes scan -> hash -> (decode + embed, one step) -> Qdrant
   (captions off) through the real Dagster assets into a temporary VIBE_HOME and embedded
   Qdrant, after a warm-up ingest of two generated images (imports, instance, collection:
   process start-up); images/s excludes the model load (done before decoding starts), which is
   reported apart. Repeated ``--repeat`` times on fresh copies (this VM's timings vary by 10-20 %
   from run to run); the median counts. Each run lists its steps' wall seconds, the
   ``decode_and_embed`` step's own images/s (model load excluded), ``other_seconds`` (the rest
   of the run: scan, hash, Qdrant and Dagster's per-run bookkeeping), and
   ``decode_ms_per_image``: decode + preview/thumbnail encode + store time per image, measured
   inside the decode threads (wall time there, so it grows when they wait for a core).
3. **Bare model**: the same model on the first library's previews, preprocessed beforehand:
   forward passes only, timed right after each whole ingest.
4. **Embed stage**: `embed_previews` on those previews (preview files in -> vectors stored),
   right after each bare-model timing. Ratios are taken per repeat (same machine conditions)
   and their median is reported.
5. With ``--baseline``, **old services' pipeline** on the first library's files and the same
   model, after each embed-stage timing: full-size decode of every original (RAW: full
   ``postprocess()``, done twice as the old services did), sequential preprocessing, batches of
   8.

6. With ``--instance postgres``, the runs above are recorded in a Dagster instance on PostgreSQL
   (``dagster.postgres.yaml``: the server named by ``DAGSTER_PG_*`` when ``DAGSTER_PG_HOST`` is
   set, else a private PostgreSQL started on loopback for the benchmark, fsync on as a real
   server runs), and **per-run overhead** is measured on both storages side by side
   (``run_overhead``): ``--overhead-runs`` re-runs of an already ingested two-image folder
   (nothing to decode, embed or upsert: the run is Dagster's bookkeeping, the scan, the hash
   check and the Qdrant diff) on the repository's ``dagster.yaml`` (SQLite) and on PostgreSQL,
   with events per run and milliseconds per event; PostgreSQL twice: as dagster-postgres opens
   it (``postgres_new_connection_per_call``) and with connections kept open as ``vibe-assets``
   does (``postgres``, :func:`vibe_assets.instance.optimize_storage`). The default
   (``--instance sqlite``) is the
   temporary SQLite instance as before, without that comparison.

Prints JSON with images/s of each and the ratios. Weights default to random (explicit, warned):
throughput does not depend on weight values. Random weights are saved to a temporary checkpoint
file and loaded through the real checkpoint path, so ``model_load_seconds`` is what a user's run
pays to load a downloaded or local checkpoint (``--weights random-init`` builds them in memory
instead, as ``VIBE_CLIP_WEIGHTS=random`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import rawpy
import torch
from PIL import Image

from vibe_assets.assets.embeddings import embed_previews
from vibe_assets.assets.previews import previewed_shas
from vibe_assets.collections import CollectionSpec
from vibe_assets.definitions import build_assets
from vibe_assets.imaging.formats import read_head, sniff_format
from vibe_assets.instance import optimize_storage
from vibe_assets.partitions import PARTITIONS_NAME
from vibe_assets.resources import (
    BlipResource,
    ClipResource,
    InferenceDeviceResource,
    StoreResource,
    VectorStoreResource,
)

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
REPO = Path(__file__).resolve().parents[1]


def postgres_env() -> contextlib.AbstractContextManager[str]:
    """:func:`vibe_assets_tests.pg_cluster.postgres_env` (the repository's test helper)."""
    sys.path.insert(0, str(REPO))
    from vibe_assets_tests.pg_cluster import postgres_env as env

    return env()


@contextlib.contextmanager
def instance_from(yaml_file: Path, folder: Path) -> Iterator[dg.DagsterInstance]:
    """A persistent instance in ``folder`` configured by ``yaml_file`` (as its dagster.yaml)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(yaml_file, folder / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(folder)) as instance:
        yield instance


def run_overhead(
    instance: dg.DagsterInstance,
    ingest: Callable[..., tuple[float, dg.ExecuteInProcessResult]],
    folder: Path,
    runs: int,
) -> dict[str, float | int]:
    """Seconds per run of ``runs`` re-runs of ``folder`` (ingested once first, so the re-runs
    find nothing to compute), with the events each run wrote."""
    ingest(folder, instance)
    seconds, events = [], []
    for _ in range(runs):
        took, result = ingest(folder, instance)
        seconds.append(took)
        events.append(len(instance.all_logs(result.run_id)))
    median = statistics.median(seconds)
    return {
        "runs": runs,
        "seconds_per_run": round(median, 3),
        "seconds_per_run_min": round(min(seconds), 3),
        "seconds_per_run_max": round(max(seconds), 3),
        "events_per_run": int(statistics.median(events)),
        "ms_per_event": round(1000 * median / statistics.median(events), 2),
    }


def random_checkpoint(model: str, folder: Path) -> Path:
    """Random ``model`` weights (seed 0) saved as an open_clip checkpoint file in ``folder``."""
    import open_clip

    print(f"benchmark: {model} with RANDOM WEIGHTS saved as a checkpoint", file=sys.stderr)
    torch.manual_seed(0)
    path = folder / f"random-{model}.pt"
    torch.save({"state_dict": open_clip.create_model(model, pretrained=None).state_dict()}, path)
    return path


def build_library(folders: list[Path], copies: int, dest: Path, salt: str = "") -> int:
    """Copy every file of ``folders`` into ``dest`` ``copies`` times with unique trailing bytes
    (``salt`` makes libraries built for different repeats distinct too); returns the number of
    files written."""
    dest.mkdir(parents=True)
    n = 0
    for folder in folders:
        for src in sorted(p for p in folder.iterdir() if p.is_file()):
            data = src.read_bytes()
            for c in range(copies):
                out = dest / f"{c:03d}_{src.name}"
                tag = f"{salt}{c}" if salt or c else ""
                out.write_bytes(data + (f"vibe-copy-{tag}".encode() if tag else b""))
                n += 1
    return n


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Wall seconds of each step of a run, from its STEP_START / STEP_SUCCESS events."""
    starts: dict[str, float] = {}
    out: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            out[event.step_key] = round(entry.timestamp - starts[event.step_key], 3)
    return out


def bare_model_images_per_s(clip: ClipResource, tensors: list[torch.Tensor], bs: int) -> float:
    """images/s of ``clip.encode_images`` alone over ``tensors`` in batches of ``bs``."""
    start = time.perf_counter()
    for i in range(0, len(tensors), bs):
        clip.encode_images(torch.stack(tensors[i : i + bs]))
    return len(tensors) / (time.perf_counter() - start)


def old_services_images_per_s(clip: ClipResource, files: list[Path]) -> tuple[float, int]:
    """The replaced services' pipeline: full-size decode of originals (RAW decoded twice: once
    for metadata/validation, once for pixels), sequential preprocessing, batches of 8."""
    preprocess = clip.load().preprocess
    batch: list[torch.Tensor] = []
    done = 0
    start = time.perf_counter()
    for path in files:
        try:
            if sniff_format(read_head(path), path) == "raw":
                for _ in range(2):
                    with rawpy.imread(str(path)) as raw:
                        pixels = raw.postprocess()
                image = Image.fromarray(pixels)
            else:
                with Image.open(path) as im:
                    image = im.convert("RGB")
        except Exception:
            continue
        batch.append(preprocess(image))
        if len(batch) == 8:
            clip.encode_images(torch.stack(batch))
            done += len(batch)
            batch = []
    if batch:
        clip.encode_images(torch.stack(batch))
        done += len(batch)
    return done / (time.perf_counter() - start), done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument(
        "--weights",
        default="random",
        help="random (saved as a checkpoint), random-init (built in memory), a tag or a path",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--baseline", action="store_true", help="also run the old pipeline")
    parser.add_argument(
        "--repeat", type=int, default=3, help="whole-ingest runs (new copies each); median"
    )
    parser.add_argument(
        "--instance",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="Dagster storage of the runs; postgres also compares per-run overhead with SQLite",
    )
    parser.add_argument(
        "--overhead-runs", type=int, default=5, help="re-runs per storage (--instance postgres)"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        postgres_server = None
        if args.instance == "postgres":
            postgres_server = stack.enter_context(postgres_env())
            instance = stack.enter_context(
                instance_from(REPO / "dagster.postgres.yaml", Path(tmp) / "dagster_pg")
            )
        else:
            instance = stack.enter_context(dg.instance_for_test())
        return _benchmark(args, Path(tmp), instance, postgres_server)


def _benchmark(
    args: argparse.Namespace,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    postgres_server: str | None,
) -> int:
    """The measurements of :func:`main` in ``tmp_path`` with runs recorded in ``instance``."""
    tmp = str(tmp_path)
    home = Path(tmp) / "home"
    store = StoreResource(home=str(home))
    weights = {"random": None, "random-init": "random"}.get(args.weights, args.weights)
    if weights is None:
        weights = str(random_checkpoint(args.model, Path(tmp)))
    clip = ClipResource(model_name=args.model, weights=weights, batch_size=args.batch_size)
    spec = CollectionSpec("bench", args.model, weights)
    resources = {
        "store": store,
        "clip": clip,
        "device": InferenceDeviceResource(cache_dir=str(home / "probe-cache")),
        "blip": BlipResource(),  # never loaded: captions off
        "qdrant": VectorStoreResource(path=str(home / "vectors")),
    }
    assets = build_assets([spec])
    selection = [k for a in assets for k in a.keys if k.to_user_string() != "blip_captions"]

    def ingest(
        folder: Path, inst: dg.DagsterInstance = instance
    ) -> tuple[float, dg.ExecuteInProcessResult]:
        key = store.registry.add(folder).key
        if not inst.has_dynamic_partition(PARTITIONS_NAME, key):
            inst.add_dynamic_partitions(PARTITIONS_NAME, [key])
        t0 = time.perf_counter()
        result = dg.materialize(
            assets,
            selection=selection,
            resources=resources,
            partition_key=key,
            instance=inst,
            run_config=QUIET,
        )
        return time.perf_counter() - t0, result

    # Warm-up ingest of two generated images: imports (open_clip alone takes 4-8 s), the
    # Dagster instance and the Qdrant collection are process start-up, not ingest.
    warm = Path(tmp) / "warm-up"
    warm.mkdir()
    for i in range(2):
        Image.new("RGB", (640, 480), (40 * i, 90, 160)).save(warm / f"{i}.jpg")
    ingest(warm)

    bs = args.batch_size
    loaded = clip.load()
    runs = []
    shas: list[str] = []
    tensors: list[torch.Tensor] = []
    for r in range(args.repeat):
        library = Path(tmp) / f"library{r}"
        n_files = build_library(args.folders, args.copies, library, salt=f"r{r}-" if r else "")
        ingest_seconds, result = ingest(library)
        md = {
            e.step_materialization_data.materialization.asset_key.to_user_string(): {
                k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()
            }
            for e in result.get_asset_materialization_events()
        }
        load_seconds = md["clip_embeddings"].get("model_load_seconds", 0.0)
        whole = md["clip_embeddings"]["embedded"] / (ingest_seconds - load_seconds)
        if not tensors:  # the first library's previews, for the bare model and embed stage
            shas = previewed_shas(store, [store.registry.add(library).key])
            for sha in shas:
                with Image.open(store.preview_path(sha)) as im:
                    tensors.append(loaded.preprocess(im.convert("RGB")))
            clip.encode_images(torch.stack(tensors[:bs]))  # warm-up
        # Right after each ingest, on the same machine "weather" (this VM's speed drifts):
        bare = bare_model_images_per_s(clip, tensors, bs)
        embed = embed_previews(store, clip, shas, batch_size=bs).images_per_s
        extra = {}
        if args.baseline:  # the old services' pipeline on the first library's originals
            old, n_old = old_services_images_per_s(clip, sorted((Path(tmp) / "library0").iterdir()))
            extra = {
                "old_services_images_per_s": round(old, 2),
                "old_services_images": n_old,
                "ratio_to_old_services": round(whole / old, 3),
            }
        steps = step_seconds(instance, result.run_id)
        # the decode_and_embed step alone (model load excluded): decode + embed, overlapped
        embedded = md["clip_embeddings"]["embedded"]
        step_rate = embedded / (steps["decode_and_embed"] - load_seconds)
        runs.append(
            {
                "seconds": round(ingest_seconds, 2),
                "model_load_seconds": load_seconds,
                "images_per_s": round(whole, 2),
                "bare_model_images_per_s": round(bare, 2),
                "embed_stage_images_per_s": round(embed, 2),
                "ratio_to_bare": round(whole / bare, 3),
                "embed_ratio_to_bare": round(embed / bare, 3),
                "steps_seconds": steps,
                "decode_and_embed_images_per_s": round(step_rate, 2),
                "decode_and_embed_ratio_to_bare": round(step_rate / bare, 3),
                "other_seconds": round(ingest_seconds - steps["decode_and_embed"], 2),
                "decode_ms_per_image": md["photo_previews"].get("run_decode_ms_per_image"),
                "model_images_per_s": md["clip_embeddings"].get("run_model_images_per_s"),
                **extra,
            }
        )
    images = md["photo_previews"]["unique_images"]

    def median(field: str) -> float:
        return statistics.median(run[field] for run in runs)

    out = {
        "folders": [str(f) for f in args.folders],
        "copies": args.copies,
        "files": n_files,
        "unique_images": images,
        "model": clip.model_id,
        "weights": args.weights,
        "device": loaded.device,
        "batch_size": bs,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "whole_ingest_runs": runs,
        "whole_ingest_images_per_s": median("images_per_s"),
        "embed_stage_images_per_s": median("embed_stage_images_per_s"),
        "bare_model_images_per_s": median("bare_model_images_per_s"),
        "ratio_embed_stage_to_bare": median("embed_ratio_to_bare"),
        "ratio_whole_ingest_to_bare": median("ratio_to_bare"),
        "ratio_decode_and_embed_step_to_bare": median("decode_and_embed_ratio_to_bare"),
    }
    if args.baseline:
        out["old_services_images_per_s"] = median("old_services_images_per_s")
        out["ratio_whole_ingest_to_old_services"] = median("ratio_to_old_services")
    if postgres_server is not None:
        # Per-run overhead on both storages: same process, resources and folder, one after the
        # other.
        sqlite_home = Path(tmp) / "dagster_sqlite"
        with instance_from(REPO / "dagster.yaml", sqlite_home) as sqlite_instance:
            sqlite = run_overhead(sqlite_instance, ingest, warm, args.overhead_runs)
        # dagster-postgres as configured: a new connection per storage call ...
        unpooled = run_overhead(instance, ingest, warm, args.overhead_runs)
        # ... and as `vibe-assets` uses it: connections kept open (vibe_assets.instance)
        optimize_storage(instance)
        postgres = run_overhead(instance, ingest, warm, args.overhead_runs)
        out["instance"] = "postgres"
        out["postgres_server"] = postgres_server
        out["run_overhead"] = {
            "sqlite": sqlite,
            "postgres": postgres,
            "postgres_new_connection_per_call": unpooled,
            "postgres_minus_sqlite_seconds": round(
                postgres["seconds_per_run"] - sqlite["seconds_per_run"], 3
            ),
        }
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=2))
    shutil.rmtree(Path(tmp) / "library0", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
