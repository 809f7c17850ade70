"""Nothing lost (issue 7), process part: an ingest killed with SIGKILL in the middle of
``clip_embeddings`` or of the Qdrant upsert resumes without recomputing stored work; two ingests
of one folder at once; the embedded Qdrant folder held by another process.

The ingest runs in a subprocess: :data:`SCRIPT`, written to a temporary file, builds the same
resources as ``conftest.env`` (the tiny CLIP registered with ``open_clip.add_model_config`` and
loaded from its checkpoint) and calls ``dg.materialize``. To be killed at a known point it writes
a marker file there and sleeps; the test kills it with SIGKILL as soon as the marker appears, then
resumes in-process and counts the images embedded again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import vibe_assets.assets.qdrant as qdrant_assets
from vibe_assets.resources import StoreResource, VectorStoreResource
from vibe_assets_tests.conftest import TINY_CLIP, Env, metadata
from vibe_assets_tests.test_faults import counts, failure_text, hashes_by_name, library, step_events

__all__ = ["counts"]  # fixture imported from test_faults

REPO = Path(__file__).resolve().parents[1]
IMAGES = 10
BATCH = 4

SCRIPT = r'''
"""One ingest of one folder partition in its own process (see test_crash.py).

argv[1] is a JSON config. ``stall`` says where the process writes ``marker`` and then sleeps
until it is killed: ``clip`` (batch 1 stored, batch 2 about to be encoded), ``clip_txn`` (inside
the store transaction of batch 2, one vector written), ``upsert`` (inside the vector-store
upsert, 3 points persisted), ``none`` (run to the end and print a JSON summary as the last line).
"""
import json
import sys
import time
from pathlib import Path

cfg = json.loads(sys.argv[1])

import open_clip

open_clip.add_model_config(cfg["config_dir"])

import dagster as dg

import vibe_assets.assets.qdrant as qdrant_assets
from vibe_assets.collections import CollectionSpec
from vibe_assets.definitions import build_assets
from vibe_assets.partitions import PARTITIONS_NAME
from vibe_assets.resources import (
    BlipResource,
    ClipResource,
    InferenceDeviceResource,
    StoreResource,
    VectorStoreResource,
)


def stall(where):
    Path(cfg["marker"]).write_text(where)
    time.sleep(600)


if cfg["stall"] == "clip":
    real_encode = ClipResource.encode_images
    batches = []

    def encode_images(self, batch):
        batches.append(len(batch))
        if len(batches) == 2:  # batch 1 is in the store by now
            stall("clip")
        return real_encode(self, batch)

    ClipResource.encode_images = encode_images
elif cfg["stall"] == "clip_txn":
    real_put = StoreResource.put_embeddings
    puts = []

    def put_embeddings(self, model_id, items):
        puts.append(model_id)

        def then_stall():
            for i, item in enumerate(items):
                if len(puts) == 2 and i == 1:
                    stall("clip_txn")  # one vector of batch 2 set, transaction open
                yield item

        return real_put(self, model_id, then_stall())

    StoreResource.put_embeddings = put_embeddings
elif cfg["stall"] == "upsert":
    from vibe_assets.vectors.edge import EdgeVectorStore

    real_upsert = EdgeVectorStore.upsert

    def upsert(self, name, points):
        real_upsert(self, name, points[:3])  # in the write-ahead log when this returns
        stall("upsert")

    EdgeVectorStore.upsert = upsert

qdrant_assets.BUSY_RETRY_SECONDS = cfg["busy_retry_seconds"]
qdrant_assets.BUSY_RETRIES = cfg["busy_retries"]

home = Path(cfg["home"])
resources = {
    "store": StoreResource(home=str(home)),
    "clip": ClipResource(model_name=cfg["model"], weights=cfg["ckpt"], batch_size=cfg["batch"]),
    "device": InferenceDeviceResource(cache_dir=str(home / "probe-cache")),
    "blip": BlipResource(model_name="unused-captions-are-off"),
    "qdrant": VectorStoreResource(path=str(home / "vectors")),
}
assets = build_assets([CollectionSpec("photos", cfg["model"], cfg["ckpt"])])
selection = [k for a in assets for k in a.keys if k.to_user_string() != "blip_captions"]
instance = dg.DagsterInstance.ephemeral()
instance.add_dynamic_partitions(PARTITIONS_NAME, [cfg["key"]])
result = dg.materialize(
    assets,
    selection=selection,
    resources=resources,
    partition_key=cfg["key"],
    instance=instance,
    raise_on_error=False,
)
embedded = 0
for event in result.get_asset_materialization_events():
    mat = event.step_materialization_data.materialization
    if mat.asset_key.to_user_string() == "clip_embeddings":
        embedded = mat.metadata["embedded"].value
retries = [e.step_key for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
print(json.dumps({"success": result.success, "embedded": embedded, "retries": retries}))
'''


def start_ingest(
    env: Env, key: str, ckpt: Path, tmp_path: Path, stall: str, name: str = "ingest"
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start :data:`SCRIPT` on ``key``: ``(process, marker path, log path)``."""
    script = tmp_path / "ingest_script.py"
    script.write_text(SCRIPT)
    marker, log = tmp_path / f"{name}.marker", tmp_path / f"{name}.log"
    cfg = {
        "home": str(env.home),
        "key": key,
        "model": TINY_CLIP,
        "ckpt": str(ckpt),
        "config_dir": str(ckpt.parent),
        "batch": BATCH,
        "stall": stall,
        "marker": str(marker),
        "busy_retry_seconds": 0.5,
        "busy_retries": 60,
    }
    environment = {**os.environ, "PYTHONPATH": str(REPO), "VIBE_HOME": str(env.home)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(cfg)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    return proc, marker, log


def kill_at_marker(proc: subprocess.Popen[bytes], marker: Path, log: Path) -> str:
    """SIGKILL ``proc`` as soon as it writes ``marker``; returns the marker's text."""
    deadline = time.monotonic() + 150
    while not marker.exists():
        if proc.poll() is not None:
            rc = proc.returncode
            pytest.fail(f"ingest ended (rc {rc}) before the marker:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no marker after 150 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    return marker.read_text()


def summary(proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """The JSON summary printed by a ``stall: none`` ingest (after waiting for it)."""
    rc = proc.wait(timeout=240)
    lines = log.read_text().strip().splitlines()
    assert rc == 0, "\n".join(lines[-40:])
    return json.loads(lines[-1])


def store_state(env: Env, key: str) -> set[str]:
    """Check a fresh handle on the store is healthy and readable; return the SHA-256s of the
    folder that have a stored (valid) embedding."""
    store = StoreResource(home=str(env.home))
    try:
        assert store.cache.check() == []  # SQLite integrity and files
        for k in list(store.cache.iterkeys()):
            store._get(k)  # every entry reads back through SafeDisk
        model_id = env.resources["clip"].model_id
        return {s for s in hashes_by_name(env, key).values() if store.has_embedding(model_id, s)}
    finally:
        store.close()


def one_point_per_image(env: Env, key: str) -> dict[str, dict[str, Any]]:
    points = env.points()
    expected = set(hashes_by_name(env, key).values())
    assert len(expected) == IMAGES and set(points) == expected
    with env.resources["qdrant"].open() as vectors:
        assert vectors.count("photos") == IMAGES
    return points


@pytest.mark.slow
@pytest.mark.parametrize("stall", ["clip", "clip_txn"])
def test_kill_during_clip_embeddings_resumes_without_recomputing_stored_batches(
    env: Env, tmp_path: Path, tiny_clip_checkpoint: Path, counts: Counter[str], stall: str
) -> None:
    key = env.add_folder(library(tmp_path / "lib", IMAGES))
    proc, marker, log = start_ingest(env, key, tiny_clip_checkpoint, tmp_path, stall)
    assert kill_at_marker(proc, marker, log) == stall

    stored = store_state(env, key)
    assert len(stored) == BATCH  # batch 1 committed; batch 2 (or its half-written txn) lost
    assert env.points() == {}

    result = env.materialize(key)
    assert counts["embedded"] == IMAGES - len(stored)  # only what was not stored
    # Previews stored before the kill survived; a preview of the last batch may still have been
    # in a decode thread, waiting for the cache lock that the stalled transaction holds.
    assert counts["decoded"] <= IMAGES - 2 * BATCH
    assert metadata(result, "clip_embeddings")["from_cache"] == BATCH
    one_point_per_image(env, key)
    assert len(store_state(env, key)) == IMAGES
    assert all(c.passed for c in result.get_asset_check_evaluations())


@pytest.mark.slow
def test_kill_during_qdrant_upsert_resumes_with_one_point_per_image(
    env: Env, tmp_path: Path, tiny_clip_checkpoint: Path, counts: Counter[str]
) -> None:
    key = env.add_folder(library(tmp_path / "lib", IMAGES))
    proc, marker, log = start_ingest(env, key, tiny_clip_checkpoint, tmp_path, "upsert")
    assert kill_at_marker(proc, marker, log) == "upsert"

    assert len(store_state(env, key)) == IMAGES  # every embedding was stored before the upsert
    assert len(env.points()) == 3  # the kill left the embedded store readable, lock released

    result = env.materialize(key)
    assert counts == Counter()  # nothing decoded or embedded again
    md = metadata(result, "qdrant_photos")
    # The 3 points written before the kill were not recorded: the collection is read back once
    # (reconciled), those 3 get their paths rewritten (payload only), the 7 others are upserted.
    assert md["reconciled"] == 1
    assert (md["upserted"], md["payload_updated"], md["points_in_collection"]) == (7, 3, IMAGES)
    one_point_per_image(env, key)
    assert all(c.passed for c in result.get_asset_check_evaluations())


@pytest.mark.slow
def test_two_ingests_of_one_folder_at_once(
    env: Env, tmp_path: Path, tiny_clip_checkpoint: Path, counts: Counter[str]
) -> None:
    key = env.add_folder(library(tmp_path / "lib", IMAGES))
    runs = [
        start_ingest(env, key, tiny_clip_checkpoint, tmp_path, "none", name=f"ingest{i}")
        for i in range(2)
    ]
    results = [summary(proc, log) for proc, _, log in runs]
    assert all(r["success"] for r in results), results
    # Both may embed (duplicate work, same vectors); each retries while the other holds Qdrant.
    assert all(set(r["retries"]) <= {"qdrant_photos"} for r in results), results

    assert len(store_state(env, key)) == IMAGES
    points = one_point_per_image(env, key)
    assert all(len(p["paths"]) == 1 for p in points.values())
    result = env.materialize(key)
    assert counts == Counter() and metadata(result, "qdrant_photos")["unchanged"] == IMAGES
    assert all(c.passed for c in result.get_asset_check_evaluations())


HOLD = """
import sys
from pathlib import Path

from vibe_assets.vectors import Distance
from vibe_assets.vectors.edge import EdgeVectorStore

store = EdgeVectorStore(Path(sys.argv[1]))
store.ensure_collection("photos", int(sys.argv[2]), Distance.COSINE)  # opens and holds it
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
store.close()
"""


def test_embedded_qdrant_held_by_another_process_is_retried_then_succeeds_once_released(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = env.add_folder(library(tmp_path / "lib", 3))
    monkeypatch.setattr(qdrant_assets, "BUSY_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(qdrant_assets, "BUSY_RETRIES", 2)
    folder = env.home / "vectors"
    env.resources["qdrant"] = VectorStoreResource(path=str(folder), step_wait_seconds=0)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), "32"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        held = env.materialize(key, raise_on_error=False)
        assert not held.success
        assert len(step_events(held, "qdrant_photos", "STEP_UP_FOR_RETRY")) == 2
        text = failure_text(held, "qdrant_photos")
        assert "in use by another process" in text and str(folder) in text
        assert f"pid {holder.pid} " in text  # the holder is named
        model_id = env.resources["clip"].model_id
        assert all(env.store.has_embedding(model_id, s) for s in hashes_by_name(env, key).values())

        # Released while the step waits to retry: the retry succeeds.
        real_open = VectorStoreResource.open
        attempts: list[int] = []

        def open_store(self: VectorStoreResource, *args: Any, **kwargs: Any) -> Any:
            attempts.append(1)
            if len(attempts) == 2:
                assert holder.stdin is not None
                holder.stdin.close()
                holder.wait(timeout=30)
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(VectorStoreResource, "open", open_store)
        released = env.materialize(key)
        assert len(attempts) == 2
        assert len(step_events(released, "qdrant_photos", "STEP_UP_FOR_RETRY")) == 1
        assert len(env.points()) == 3
    finally:
        holder.kill()
        holder.wait()
