"""Vector-store engines through the interface: open, upsert, payload updates, scroll, query.

Usage: ``python benchmarks/vectors.py [--points 10000] [--folders 500] [--dim 512]
[--engine edge|memory|both]``. Prints one JSON object per engine:

- ``upsert_points_per_s``: points written in batches of 256 (one ``upsert`` call per batch);
- ``open_s``: close, then open the store again and count (the cost every step and command pays);
- ``set_payloads_1000_ms``: one ``set_payloads`` call with 1,000 different payloads;
- ``scroll_folder_ms``: every point of one folder by its ``folder_keys`` payload filter (p50);
- ``query_ms`` / ``query_filtered_ms``: top-10 by vector, plain and filtered by folder and
  capture-time range (p50 / p95 of 50);
- ``rss_mb``: resident memory of this process at the end (includes numpy, the payloads).

``memory`` is qdrant-client's in-memory mode (the server engine's stand-in in tests; it is not
a server, so its figures say nothing about one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from vibe_assets.vectors import Distance, PayloadUpdate, PointFilter, VectorPoint, point_id
from vibe_assets.vectors.base import UPSERT_BATCH, VectorStore


def make_points(n: int, folders: int, dim: int, seed: int = 0) -> list[VectorPoint]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = []
    for i in range(n):
        sha = f"{i:064x}"
        folder = f"folder-{i % folders:05d}"
        payload = {
            "sha256": sha,
            "paths": [f"/photos/{folder}/IMG_{i:06d}.jpg"],
            "folder_keys": [folder],
            "width": 6000,
            "height": 4000,
            "format": "jpeg",
            "embed_model": "ViT-B-32/laion2b_s34b_b79k",
            "ingested_at": "2026-11-30T10:00:00+00:00",
            "taken_at": f"20{10 + i % 15:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}T12:00:00",
            "camera_make": "FUJIFILM",
            "camera_model": ["X100V", "X-T4", "GFX100S"][i % 3],
            "lens": "XF23mmF2 R WR",
            "focal_length_mm": 23.0,
            "aperture": 2.0,
            "exposure_s": 0.004,
            "iso": 200,
        }
        points.append(VectorPoint(point_id(sha), vectors[i], payload))
    return points


def timed(fn, repeat: int) -> tuple[float, float]:
    """(p50, p95) milliseconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def run(engine: str, n: int, folders: int, dim: int, root: Path) -> dict:
    if engine == "edge":
        from vibe_assets.vectors.edge import EdgeVectorStore

        def open_store() -> VectorStore:
            return EdgeVectorStore(root / "vectors")
    else:
        from vibe_assets.vectors.server import ServerVectorStore

        memory = ServerVectorStore.in_memory()

        def open_store() -> VectorStore:
            return memory

    points = make_points(n, folders, dim)
    store = open_store()
    store.ensure_collection("bench", dim, Distance.COSINE)
    t = time.perf_counter()
    for i in range(0, n, UPSERT_BATCH):
        store.upsert("bench", points[i : i + UPSERT_BATCH])
    upsert_s = time.perf_counter() - t

    updates = [PayloadUpdate.one(p.id, {"caption": f"caption {i}"}) for i, p in enumerate(points)]
    t = time.perf_counter()
    store.set_payloads("bench", updates[:1000])
    set_payloads_ms = (time.perf_counter() - t) * 1000

    if engine == "edge":
        store.close()
        t = time.perf_counter()
        store = open_store()
        assert store.count("bench") == n
        open_s = time.perf_counter() - t
    else:
        open_s = None

    folder = PointFilter.where(folder_keys="folder-00007")
    scroll = timed(lambda: list(store.scroll("bench", folder, ["paths", "folder_keys"])), 20)
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(50, dim)).astype(np.float32)
    it = iter(queries)
    plain = timed(lambda: store.query("bench", next(it), limit=10), 50)
    it = iter(queries)
    flt = PointFilter.where(
        folder_keys=[f"folder-{i:05d}" for i in range(0, folders, 3)],
        taken_after="2015-01-01",
        taken_before="2020-01-01",
    )
    filtered = timed(lambda: store.query("bench", next(it), limit=10, flt=flt), 50)
    store.close()
    return {
        "engine": engine,
        "points": n,
        "folders": folders,
        "dim": dim,
        "upsert_points_per_s": round(n / upsert_s),
        "open_s": None if open_s is None else round(open_s, 3),
        "set_payloads_1000_ms": round(set_payloads_ms, 1),
        "scroll_folder_ms": round(scroll[0], 2),
        "scroll_folder_points": len(list(range(7, n, folders))),
        "query_ms": [round(plain[0], 2), round(plain[1], 2)],
        "query_filtered_ms": [round(filtered[0], 2), round(filtered[1], 2)],
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--folders", type=int, default=500)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--engine", choices=["edge", "memory", "both"], default="edge")
    args = parser.parse_args()
    engines = ["edge", "memory"] if args.engine == "both" else [args.engine]
    for engine in engines:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run(engine, args.points, args.folders, args.dim, Path(tmp))))


if __name__ == "__main__":
    main()
