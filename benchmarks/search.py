"""Cold ``vibe-assets search``: the fast text path (ONNX text tower) beside the old one (open_clip).

Usage: ``python benchmarks/search.py [--points 100000] [--repeats 5] [--model ViT-B-32]
[--weights checkpoint|random] [--home DIR]``. Prints one JSON object.

Setup (not timed): a ``VIBE_HOME`` (temporary unless ``--home``) with a collection of
``--points`` synthetic points (``benchmarks/vectors.py``'s payloads, D from the model), and
the model's weights: ``checkpoint`` (default) saves the architecture's random initialisation
as a checkpoint file, which loads exactly like downloaded weights (no hub here); ``random`` is
``VIBE_CLIP_WEIGHTS=random`` (the old path then also pays the random initialisation).

Measured, each in a fresh process (``python -m vibe_assets.cli search QUERY --json``: process
start to answer): one warm-up per path (the new path's exports the text tower: ``export``),
then ``--repeats`` rounds alternating new and old:

- ``new`` / ``old``: ``wall_s`` and ``peak_rss_mb`` (``ru_maxrss`` of the child, MB = 10^6
  bytes) per run, and their medians; ``old`` is ``VIBE_TEXT_ENCODER=torch`` (the full open_clip
  model: both towers);
- ``split_new`` / ``split_old``: medians of the phases, timed in ``--repeats`` more fresh
  processes that do what the command does step by step: ``python_s`` (an empty interpreter),
  ``imports_s`` (the CLI module, resources and the vector-store vocabulary, from process
  start), ``resources_s`` (``default_resources()`` and the model id), new: ``tokenizer_s``,
  ``session_s`` (ONNX Runtime import and session), old: ``model_load_s`` (torch, open_clip and
  the model), both: ``encode_s``, ``store_open_s`` (opening the collection), ``query_s``
  (top-10), and ``peak_rss_mb``.

Targets (issue 14): a cold text search <= 3 s and <= 1 GB RSS with ViT-B-32 on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vectors import make_points

QUERY = "beach + sunset - people"
COLLECTION = "photos"
TARGET_WALL_S = 3.0
TARGET_RSS_MB = 1000.0

SPLIT = r"""
import json, resource, sys, time
t0 = time.perf_counter()
path = sys.argv[1]
import vibe_assets.cli  # noqa: F401  (what the command imports first)
from vibe_assets.definitions import default_resources
from vibe_assets.vectors.edge import EdgeVectorStore
from vibe_assets.query import parse_query, combine_terms
out = {"imports_s": time.perf_counter() - t0}
t = time.perf_counter()
from vibe_assets.resources.clip import ClipResource
from vibe_assets.settings import vibe_home
from vibe_assets.text_encoder import digest_cache_file
base = default_resources()
clip = ClipResource(model_name=base["clip"].model_name, weights=base["clip"].weights,
                    digest_cache=str(digest_cache_file(vibe_home())))
clip.model_id
out["resources_s"] = time.perf_counter() - t
terms = parse_query(sys.argv[2])
texts = [t.text for t in terms]
if path == "new":
    from vibe_assets.text_encoder import OnnxTextEncoder, export_key, text_encoders_dir
    t = time.perf_counter()
    encoder = OnnxTextEncoder.open(text_encoders_dir(vibe_home()) / export_key(clip.model_id))
    out["tokenizer_s"] = encoder.timings["tokenizer_s"]
    out["session_s"] = time.perf_counter() - t - out["tokenizer_s"]
    t = time.perf_counter()
    vectors = encoder.encode(texts)
    out["encode_s"] = time.perf_counter() - t
    encoder.close()
else:
    t = time.perf_counter()
    clip.load()
    out["model_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    vectors = clip.encode_texts(texts)
    out["encode_s"] = time.perf_counter() - t
q = combine_terms(terms, dict(zip(terms, vectors)))
t = time.perf_counter()
store = EdgeVectorStore(vibe_home() / "vectors")
store._shard(sys.argv[3])
out["store_open_s"] = time.perf_counter() - t
t = time.perf_counter()
store.query(sys.argv[3], q, limit=10)
out["query_s"] = time.perf_counter() - t
store.close()
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
print(json.dumps(out))
"""


def run_child(args: list[str], env: dict[str, str]) -> tuple[float, float, str, str]:
    """``(wall seconds, peak RSS MB, stdout, stderr)`` of a child process (``wait4``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    # communicate() reaped the child: its rusage is in RUSAGE_CHILDREN only as a maximum over
    # all children, so measure each child alone through /usr/bin/time-free wait4 instead:
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:4]} failed ({proc.returncode}): {stderr[-2000:]}")
    return wall, _last_child_rss_mb, stdout, stderr


_last_child_rss_mb = 0.0


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float, str, str]:
    """``(wall seconds, peak RSS MB, stdout, stderr)`` of one child process: wall from fork to
    exit, peak RSS from ``wait4``'s ``ru_maxrss`` (KB on Linux)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_r)
        os.close(err_r)
        os.execve(args[0], args, env)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out_f, os.fdopen(err_r) as err_f:
        stdout = out_f.read()  # the answer is small: reading both in turn cannot deadlock
        stderr = err_f.read()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args[2:5]} failed: {stderr[-3000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e6, stdout, stderr


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def build_home(home: Path, n: int, model: str, weights: str) -> tuple[str, int, dict]:
    """Collection and weights under ``home``; returns (VIBE_CLIP_WEIGHTS, dim, facts)."""
    import open_clip
    import torch

    from vibe_assets.vectors import Distance
    from vibe_assets.vectors.edge import EdgeVectorStore

    dim = int(open_clip.get_model_config(model)["embed_dim"])
    facts: dict = {}
    if weights == "checkpoint":
        ckpt = home / f"{model}-random-init.pt"
        if not ckpt.is_file():
            torch.manual_seed(0)
            clip = open_clip.create_model(model, pretrained=None)
            torch.save({"state_dict": clip.state_dict()}, ckpt)
            del clip
        setting = str(ckpt)
        facts["checkpoint_mb"] = round(ckpt.stat().st_size / 1e6, 1)
    else:
        setting = "random"
    vectors_dir = home / "vectors"
    with EdgeVectorStore(vectors_dir) as store:
        if not store.collection_exists(COLLECTION) or store.count(COLLECTION) != n:
            store.delete_collection(COLLECTION)
            store.ensure_collection(COLLECTION, dim, Distance.COSINE)
            t = time.perf_counter()
            for start in range(0, n, 10_000):
                points = make_points(min(10_000, n - start), 500, dim, seed=start)
                points = [
                    type(p)(f"{p.id[:-12]}{start + i:012x}", p.vector, p.payload)
                    for i, p in enumerate(points)
                ]
                store.upsert(COLLECTION, points)
            facts["upsert_s"] = round(time.perf_counter() - t, 1)
        facts["points"] = store.count(COLLECTION)
    return setting, dim, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--weights", choices=["checkpoint", "random"], default="checkpoint")
    parser.add_argument("--home", type=Path, default=None, help="VIBE_HOME to build and reuse")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vibe-search-bench-") as tmp:
        home = (args.home or Path(tmp)).resolve()
        home.mkdir(parents=True, exist_ok=True)
        setting, dim, facts = build_home(home, args.points, args.model, args.weights)
        env = {
            **os.environ,
            "VIBE_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            "VIBE_CLIP_MODEL": args.model,
            "VIBE_CLIP_WEIGHTS": setting,
            "PYTHONWARNINGS": "ignore",
        }
        for name in ("QDRANT_URL", "VIBE_COLLECTION", "VIBE_COLLECTIONS_FILE"):
            env.pop(name, None)
        old_env = {**env, "VIBE_TEXT_ENCODER": "torch"}
        new_env = {**env, "VIBE_TEXT_ENCODER": "auto"}
        command = [sys.executable, "-m", "vibe_assets.cli", "search", QUERY, "--json"]

        export_wall, export_rss, _, export_err = run_measured(command, new_env)  # exports
        run_measured(command, old_env)  # warm-up: page cache, checkpoint digest
        results: dict[str, dict[str, list[float]]] = {
            p: {"wall_s": [], "peak_rss_mb": []} for p in ("new", "old")
        }
        answers = {}
        for _ in range(args.repeats):
            for path, path_env in (("new", new_env), ("old", old_env)):
                wall, rss, stdout, _ = run_measured(command, path_env)
                results[path]["wall_s"].append(round(wall, 3))
                results[path]["peak_rss_mb"].append(round(rss, 1))
                answers[path] = [r["sha256"] for r in json.loads(stdout)]
        splits: dict[str, list[dict]] = {"new": [], "old": []}
        python_s = []
        for _ in range(args.repeats):
            python_s.append(run_measured([sys.executable, "-c", "pass"], env)[0])
            for path, path_env in (("new", new_env), ("old", old_env)):
                _, _, stdout, _ = run_measured(
                    [sys.executable, "-c", SPLIT, path, QUERY, COLLECTION], path_env
                )
                splits[path].append(json.loads(stdout))

        onnx_dir = next((home / "models" / "text").iterdir())
        out = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "model": args.model,
            "weights": args.weights,
            "dim": dim,
            "query": QUERY,
            "repeats": args.repeats,
            **facts,
            "export": {
                "first_search_wall_s": round(export_wall, 2),
                "first_search_peak_rss_mb": round(export_rss, 1),
                "onnx_mb": round(sum(f.stat().st_size for f in onnx_dir.iterdir()) / 1e6, 1),
                "where": str(onnx_dir.relative_to(home)),
            },
            "same_hits": answers["new"] == answers["old"],
        }
        for path in ("new", "old"):
            out[path] = {
                **results[path],
                "wall_s_median": median(results[path]["wall_s"]),
                "peak_rss_mb_median": median(results[path]["peak_rss_mb"]),
            }
        for path in ("new", "old"):
            phases = splits[path][0].keys()
            out[f"split_{path}"] = {"python_s": median(python_s)} | {
                k: median([s[k] for s in splits[path]]) for k in phases
            }
        out["speedup_wall"] = round(out["old"]["wall_s_median"] / out["new"]["wall_s_median"], 2)
        out["targets"] = {
            "wall_s": TARGET_WALL_S,
            "peak_rss_mb": TARGET_RSS_MB,
            "met": out["new"]["wall_s_median"] <= TARGET_WALL_S
            and out["new"]["peak_rss_mb_median"] <= TARGET_RSS_MB,
        }
        print(json.dumps(out, indent=2))
        _ = (export_err, resource)


if __name__ == "__main__":
    main()
