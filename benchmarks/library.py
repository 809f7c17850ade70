"""A photographer's whole library through the real ``qdrant_<collection>`` asset (issue 13).

Usage: ``python benchmarks/library.py [--images 100000] [--folders 5000] [--engine edge|local]
[--range 200] [--home DIR] [--instance sqlite|postgres]``. Prints one JSON object.
``--instance postgres`` records the runs in Dagster on PostgreSQL (``dagster.postgres.yaml``;
the server of ``DAGSTER_PG_*``, else a private one started on loopback), connections kept open
as ``vibe-assets`` does.

A synthetic library of ``--images`` images in ``--folders`` folders is written straight into a
temporary ``VIBE_HOME``: registered folders, their listings (state database), decode outcomes
with EXIF (``taken_at``, camera) and stub embeddings (random unit (512,) float32 vectors of
ViT-B-32, the model's vector size; no model runs). Then the real ``qdrant_photos`` asset (the
same code as a run's Qdrant step: per-partition metadata, checks, pool) syncs it in range runs
of ``--range`` folders, each phase in a fresh subprocess (its peak RSS is its own):

- ``initial_points_per_s``: every folder synced into an empty collection, points / the Qdrant
  step's seconds (from the run's step events, summed over the range runs); beside it
  ``initial_sync_code_points_per_s``, points / the summed per-folder ``sync_seconds`` (the sync
  itself: state diff, point building, writes), which leaves out Dagster's bookkeeping in the
  step (one materialization event per folder written to the instance's event log);
  ``initial_other_s_per_run``: the rest of a range run's step, (step - sync) seconds / runs
  (opening and closing the store, the asset checks, Dagster's events, optimizing);
  ``initial_optimize_s``: of that, the seconds spent optimizing segments (summed);
- ``dagster_ms_per_partition`` / ``engine_points_per_s``: measured apart, over the first range
  runs holding about :data:`FLOOR_POINTS` points (:func:`phase_floors`): Dagster's own seconds
  per folder partition in a range run's step (a no-op asset recording the same metadata), and
  the store's own upsert points/s (the synced points written again, one call per folder);
  ``initial_step_ceiling_points_per_s``: 1 / (1 / engine points/s + Dagster's seconds per
  partition / images per folder), what the initial sync's step would reach if our code,
  opening the store and optimizing took no time;
- ``unchanged_range_s``: the Qdrant step of one range run over ``--range`` unchanged folders
  (``unchanged_range_sync_code_s``: its folders' ``sync_seconds``);
- ``ten_changed_s``: the Qdrant step of a run over the one folder where 10 files changed bytes;
- ``open_s``: a fresh process opens the store and counts the points (``open_imports_s``: the
  imports before that, Dagster and the resources, reported apart);
- ``query_ms`` / ``filtered_query_ms``: top-10 by vector, plain / filtered by one folder and a
  capture-time range (p50 and p95 of 50 queries, after 5 warm-up queries);
- ``peak_rss_mb``: the largest peak RSS of a sync phase's process (``ru_maxrss``);
- ``state_mb`` / ``cache_mb`` / ``vectors_mb``: disk space they take afterwards (allocated
  blocks, what ``du`` reports); ``vectors_apparent_mb``: the vectors' file sizes summed (``du
  --apparent-size``), larger, as qdrant-edge preallocates files that stay sparse until
  written (WAL files and each segment's payload pages, 32 MiB each; index flag files).

``--engine local`` runs the same asset on qdrant-client's local mode (``QdrantClient(path=)``,
the embedded engine before issue 13: it stores points pickled in SQLite, so it is only ever
used here, on data this script wrote) for the side-by-side ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL, WEIGHTS, DIM = "ViT-B-32", "random", 512
FLOOR_POINTS = 20_000  # about how many points (whole range runs) the floors phase measures
CAMERAS = ("X100V", "X-T4", "GFX100S", "EOS R5", "Z 8")


def _sha(i: int, generation: int = 0) -> str:
    return f"{generation:08x}{i:056x}"


def _resources(home: Path, engine: str) -> dict[str, Any]:
    from vibe_assets.resources import BlipResource, ClipResource, StoreResource
    from vibe_assets.resources.vectors import VectorStoreResource

    vectors: Any
    if engine == "local":

        class LocalModeVectors(VectorStoreResource):
            """qdrant-client local mode, for the side-by-side figure only."""

            def open(self, *args: Any, **kwargs: Any) -> Any:
                from qdrant_client import QdrantClient

                from vibe_assets.vectors.server import ServerVectorStore

                folder = str(home / "qdrant-local")
                return ServerVectorStore(QdrantClient(path=folder), f"local:{folder}", local=True)

        vectors = LocalModeVectors(path=str(home / "vectors"))
    else:
        vectors = VectorStoreResource(path=str(home / "vectors"))
    return {
        "store": StoreResource(home=str(home)),
        "clip": ClipResource(model_name=MODEL, weights=WEIGHTS),
        "blip": BlipResource(),  # its model id only: never loaded here
        "qdrant": vectors,
    }


def setup(home: Path, images: int, folders: int, instance: str = "sqlite") -> list[str]:
    """Write the synthetic library; returns the folder partition keys in order. The Dagster
    instance under ``home/dagster`` uses the repository's ``dagster.yaml`` (``sqlite``) or
    ``dagster.postgres.yaml`` (``postgres``: ``DAGSTER_PG_*`` must be set)."""
    import dagster as dg

    from vibe_assets import state as state_db
    from vibe_assets.partitions import PARTITIONS_NAME
    from vibe_assets.resources import ClipResource, StoreResource

    store = StoreResource(home=str(home))
    model_id = ClipResource(model_name=MODEL, weights=WEIGHTS).model_id
    root = home / "library"
    paths = [
        root / f"{y}" / f"roll-{f:05d}" for f, y in ((f, 2010 + f % 15) for f in range(folders))
    ]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    registered, failures = store.registry.add_many(paths, recursive=False)
    assert not failures, failures
    keys = [f.key for f in registered]
    rng = np.random.default_rng(0)
    per_folder = images // folders
    with store.state.write():
        for f, (key, path) in enumerate(zip(keys, paths, strict=True)):
            files = []
            for j in range(per_folder):
                i = f * per_folder + j
                files.append(
                    {
                        "path": str(path / f"IMG_{i:06d}.JPG"),
                        "size": 8_000_000 + i,
                        "mtime_ns": 1_700_000_000_000_000_000 + i,
                        "inode": 1000 + i,
                        "format": "jpeg",
                        "sha256": _sha(i),
                    }
                )
                state_db.put_preview_outcome(
                    store.state,
                    _sha(i),
                    {
                        "width": 6000,
                        "height": 4000,
                        "format": "jpeg",
                        "decoder": "jpeg-draft",
                        "exif": {
                            "taken_at": f"{2010 + f % 15}-{1 + j % 12:02d}-{1 + j % 28:02d}T12:00",
                            "camera_model": CAMERAS[i % len(CAMERAS)],
                        },
                    },
                )
            scan = {"root": str(path), "files": [dict(e) for e in files], "failures": []}
            for e in scan["files"]:
                e.pop("sha256")
            state_db.write_scan(store.state, key, scan)
            state_db.write_hashes(
                store.state,
                key,
                {"root": str(path), "files": {e["path"]: e for e in files}, "failures": []},
            )
    for start in range(0, folders * per_folder, 2000):
        n = min(2000, folders * per_folder - start)
        vectors = rng.normal(size=(n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.put_embeddings(model_id, ((_sha(start + k), vectors[k]) for k in range(n)))
    store.close()
    (home / "dagster").mkdir(exist_ok=True)
    yaml_name = "dagster.postgres.yaml" if instance == "postgres" else "dagster.yaml"
    shutil.copy(REPO / yaml_name, home / "dagster" / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.add_dynamic_partitions(PARTITIONS_NAME, keys)
    return keys


def _qdrant_step_seconds(instance: Any, run_id: str, prefix: str = "qdrant_") -> float:
    times = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if (
            event
            and event.step_key
            and event.step_key.startswith(prefix)
            and event.event_type_value in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")
        ):
            times[event.event_type_value] = record.timestamp
    if "STEP_SUCCESS" not in times:
        raise RuntimeError(f"the {prefix} step of run {run_id} did not succeed: {times}")
    return times["STEP_SUCCESS"] - times["STEP_START"]


def phase_sync(home: Path, engine: str, ranges: list[tuple[str, str]]) -> dict[str, Any]:
    """Run the qdrant_photos asset over each (first, last) partition range, in this process."""
    import warnings

    import dagster as dg

    from vibe_assets.assets.qdrant import build_qdrant_asset
    from vibe_assets.collections import CollectionSpec
    from vibe_assets.instance import optimize_storage

    warnings.filterwarnings("ignore")
    asset = build_qdrant_asset(CollectionSpec("photos", MODEL, WEIGHTS))
    resources = _resources(home, engine)
    seconds, sync_seconds, optimize_seconds, points = 0.0, 0.0, 0.0, 0
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        optimize_storage(instance)  # as the CLI and the vibe_in_process executor do
        for first, last in ranges:
            result = dg.materialize(
                [asset],
                instance=instance,
                resources=resources,
                tags={
                    "dagster/asset_partition_range_start": first,
                    "dagster/asset_partition_range_end": last,
                },
            )
            seconds += _qdrant_step_seconds(instance, result.run_id)
            run_optimize = 0.0
            for event in result.get_asset_materialization_events():
                md = event.step_materialization_data.materialization.metadata
                points = int(md["points_in_collection"].value)
                sync_seconds += float(md["sync_seconds"].value)
                run_optimize = float(md["optimize_seconds"].value)  # the run's, on every event
            optimize_seconds += run_optimize
    return {
        "seconds": round(seconds, 3),
        "sync_seconds": round(sync_seconds, 3),
        "optimize_seconds": round(optimize_seconds, 3),
        "points": points,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def phase_change(home: Path, key: str, count: int) -> None:
    """Give ``count`` files of folder ``key`` new bytes (listing, decode outcome, embedding)."""
    from vibe_assets import state as state_db
    from vibe_assets.resources import ClipResource, StoreResource

    store = StoreResource(home=str(home))
    hashes = store.folder_hashes(key)
    assert hashes is not None
    files = dict(hashes["files"])
    rng = np.random.default_rng(1)
    new = []
    for n, path in enumerate(sorted(files)[:count]):
        sha = _sha(n, generation=1)
        files[path] = {**files[path], "sha256": sha, "mtime_ns": files[path]["mtime_ns"] + 1}
        info = store.preview_info(hashes["files"][path]["sha256"])
        state_db.put_preview_outcome(store.state, sha, info)
        vector = rng.normal(size=DIM).astype(np.float32)
        new.append((sha, vector / np.linalg.norm(vector)))
    scan = {"root": hashes["root"], "files": list(files.values()), "failures": []}
    state_db.write_scan(store.state, key, scan)
    store.set_folder_hashes(key, {"root": hashes["root"], "files": files, "failures": []})
    store.put_embeddings(ClipResource(model_name=MODEL, weights=WEIGHTS).model_id, new)
    store.close()


def phase_floors(home: Path, engine: str, ranges: list[tuple[str, str]]) -> dict[str, Any]:
    """What the Qdrant step costs beyond our code, measured apart on the same library:

    - ``dagster``: a no-op asset on the same folder partitions (same backfill policy, pool and
      instance) that records the per-partition metadata the real asset records, run over
      ``ranges``: Dagster's own seconds per partition in a range run's step;
    - ``engine``: the points of ``ranges``' folders read back from collection ``photos``
      (vectors and payloads as synced) and upserted into a new collection of the same store,
      one call per folder as the sync makes: the store's own points/s (for qdrant-edge, building
      its points from Python objects and applying the update).
    """
    import warnings

    import dagster as dg

    from vibe_assets.assets.qdrant import SYNC_COUNTS
    from vibe_assets.instance import optimize_storage
    from vibe_assets.partitions import BACKFILL_POLICY, photo_folder_partitions
    from vibe_assets.report import add_partition_metadata, run_totals
    from vibe_assets.vectors import Distance, VectorPoint

    warnings.filterwarnings("ignore")
    counts = {**dict.fromkeys(SYNC_COUNTS, 0), "upserted": 20}  # the real asset's counters

    @dg.asset(
        name="floor_noop",
        partitions_def=photo_folder_partitions,
        backfill_policy=BACKFILL_POLICY,
        pool="qdrant",
    )
    def floor_noop(context):  # unannotated: dg is imported in this function
        keys = list(context.partition_keys)
        extra = {"folder_removed": False, "sync_seconds": 0.001}
        add_partition_metadata(context, {key: {**counts, **extra} for key in keys})
        fixed = {"collection": "photos", "location": "embedded:" + str(home), "vector_size": DIM}
        fixed |= {"embed_model": MODEL, "points_in_collection": 0, "reconciled": 0}
        run = run_totals(keys, dict.fromkeys(keys, counts))
        return dg.MaterializeResult(metadata={**fixed, "optimize_seconds": 0.0, **run})

    partitions, seconds = 0, 0.0
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        optimize_storage(instance)
        all_keys = instance.get_dynamic_partitions(photo_folder_partitions.name)
        folders: list[str] = []
        for first, last in ranges:
            tags = {
                "dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last,
            }
            result = dg.materialize([floor_noop], instance=instance, tags=tags)
            seconds += _qdrant_step_seconds(instance, result.run_id, prefix="floor_")
            run_keys = all_keys[all_keys.index(first) : all_keys.index(last) + 1]
            partitions += len(run_keys)
            folders += run_keys

    store = _resources(home, engine)["qdrant"].open()
    by_folder: dict[str, list[Any]] = {key: [] for key in folders}
    for point in store.scroll("photos", with_vectors=True):  # one pass: local mode filters slowly
        key = point.payload["folder_keys"][0]
        if key in by_folder:
            by_folder[key].append(VectorPoint(point.id, point.vector, point.payload))
    store.ensure_collection("floor", DIM, Distance.COSINE)
    t0 = time.perf_counter()
    for points in by_folder.values():
        store.upsert("floor", points)
    engine_s = time.perf_counter() - t0
    store.delete_collection("floor")
    store.close()
    points = sum(len(p) for p in by_folder.values())
    return {
        "dagster_ms_per_partition": round(1000 * seconds / partitions, 2),
        "engine_points_per_s": round(points / engine_s, 1),
        "engine_points": points,
    }


def phase_query(home: Path, engine: str, keys: list[str]) -> dict[str, Any]:
    """Open the store (timed), then plain and filtered top-10 queries."""
    from vibe_assets.vectors import PointFilter

    t0 = time.perf_counter()
    resource = _resources(home, engine)["qdrant"]  # imports Dagster and the resources
    t1 = time.perf_counter()
    store = resource.open()
    total = store.count("photos")
    open_s = time.perf_counter() - t1
    rng = np.random.default_rng(7)

    def timed(flt: Any) -> list[float]:
        out = []
        for n in range(55):
            v = rng.normal(size=DIM).astype(np.float32)
            v /= np.linalg.norm(v)
            t = time.perf_counter()
            store.query("photos", v, limit=10, flt=flt(n) if flt else None)
            if n >= 5:
                out.append(1000 * (time.perf_counter() - t))
        return out

    plain = timed(None)
    filtered = timed(
        lambda n: PointFilter.where(
            folder_keys=keys[(n * 97) % len(keys)],
            taken_after="2010-03-01",
            taken_before="2024-10-01",
        )
    )
    store.close()

    def pct(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[int(q) - 1], 2)

    return {
        "open_s": round(open_s, 3),
        "open_imports_s": round(t1 - t0, 3),
        "points": total,
        "query_ms": {"p50": pct(plain, 50), "p95": pct(plain, 95)},
        "filtered_query_ms": {"p50": pct(filtered, 50), "p95": pct(filtered, 95)},
    }


def _subprocess(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"phase {args[0]} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mb(path: Path, apparent: bool = False) -> float:
    """MiB that ``path`` (a file or a folder) takes on disk: allocated blocks, or the files'
    sizes summed when ``apparent``."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    size = sum(s.st_size if apparent else s.st_blocks * 512 for s in stats)
    return round(size / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--folders", type=int, default=5_000)
    parser.add_argument("--engine", choices=["edge", "local"], default="edge")
    parser.add_argument("--range", type=int, default=200, help="folders per range run")
    parser.add_argument("--home", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument(
        "--instance",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="Dagster storage (postgres: the server of DAGSTER_PG_*, else a private one)",
    )
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.phase:  # a subprocess of main()
        home, extra = opts.home, json.loads(opts.args)
        if opts.phase == "sync":
            ranges = [tuple(r) for r in extra["ranges"]]
            print(json.dumps(phase_sync(home, opts.engine, ranges)))
        elif opts.phase == "change":
            phase_change(home, extra["key"], extra["count"])
            print("{}")
        elif opts.phase == "floors":
            ranges = [tuple(r) for r in extra["ranges"]]
            print(json.dumps(phase_floors(home, opts.engine, ranges)))
        elif opts.phase == "query":
            print(json.dumps(phase_query(home, opts.engine, extra["keys"])))
        return

    with contextlib.ExitStack() as stack:
        server = None
        if opts.instance == "postgres":
            sys.path.insert(0, str(REPO))
            from vibe_assets_tests.pg_cluster import postgres_env

            server = stack.enter_context(postgres_env())  # subprocesses inherit DAGSTER_PG_*
        run_phases(opts, server)


def run_phases(opts: argparse.Namespace, server: str | None) -> None:
    """The phases of :func:`main` (see the module docstring); prints the JSON."""
    home = opts.home or Path(tempfile.mkdtemp(prefix="vibe-library-"))
    os.environ["VIBE_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    t0 = time.perf_counter()
    keys = setup(home, opts.images, opts.folders, opts.instance)
    setup_s = time.perf_counter() - t0
    ranges = [
        (keys[i], keys[min(i + opts.range, len(keys)) - 1]) for i in range(0, len(keys), opts.range)
    ]
    base = ["--home", str(home), "--engine", opts.engine]
    initial = _subprocess(["--phase", "sync", *base, "--args", json.dumps({"ranges": ranges})])
    unchanged = _subprocess(
        ["--phase", "sync", *base, "--args", json.dumps({"ranges": [ranges[len(ranges) // 2]]})]
    )
    key = keys[len(keys) // 3]
    _subprocess(["--phase", "change", *base, "--args", json.dumps({"key": key, "count": 10})])
    changed = _subprocess(
        ["--phase", "sync", *base, "--args", json.dumps({"ranges": [[key, key]]})]
    )
    query = _subprocess(["--phase", "query", *base, "--args", json.dumps({"keys": keys})])
    sample = ranges[: max(1, FLOOR_POINTS * len(ranges) // max(1, opts.images))]
    floors = _subprocess(["--phase", "floors", *base, "--args", json.dumps({"ranges": sample})])
    images_per_folder = opts.images / opts.folders
    ceiling = 1 / (
        1 / floors["engine_points_per_s"]
        + floors["dagster_ms_per_partition"] / 1000 / images_per_folder
    )
    vectors = home / ("qdrant-local" if opts.engine == "local" else "vectors")
    print(
        json.dumps(
            {
                "engine": opts.engine,
                "instance": server or "sqlite",
                "images": opts.images,
                "folders": opts.folders,
                "range_folders": opts.range,
                "setup_s": round(setup_s, 1),
                "initial_sync_s": initial["seconds"],
                "initial_points_per_s": round(initial["points"] / initial["seconds"], 1),
                "initial_sync_code_points_per_s": round(
                    initial["points"] / initial["sync_seconds"], 1
                ),
                "initial_runs": len(ranges),
                "initial_other_s_per_run": round(
                    (initial["seconds"] - initial["sync_seconds"]) / len(ranges), 3
                ),
                "initial_optimize_s": initial["optimize_seconds"],
                "initial_step_ceiling_points_per_s": round(ceiling, 1),
                "dagster_ms_per_partition": floors["dagster_ms_per_partition"],
                "engine_points_per_s": floors["engine_points_per_s"],
                "unchanged_range_sync_code_s": unchanged["sync_seconds"],
                "unchanged_range_s": unchanged["seconds"],
                "ten_changed_s": changed["seconds"],
                "open_s": query["open_s"],
                "open_imports_s": query["open_imports_s"],
                "query_ms": query["query_ms"],
                "filtered_query_ms": query["filtered_query_ms"],
                "peak_rss_mb": max(initial["peak_rss_mb"], unchanged["peak_rss_mb"]),
                "points": query["points"],
                "state_mb": _mb(home / "state.sqlite3"),
                "cache_mb": _mb(home / "cache"),
                "vectors_mb": _mb(vectors),
                "vectors_apparent_mb": _mb(vectors, apparent=True),
            }
        )
    )
    if opts.home is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
