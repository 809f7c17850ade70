"""Captions: BLIP through the real from_pretrained path, caption-optional ingest, the re-caption
schedule's range runs, payload-only updates, lazy load and idle unload."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from vibe_assets.assets import blip_captions
from vibe_assets.automation import RANGE_END_TAG, RANGE_START_TAG, build_recaption_schedule
from vibe_assets.definitions import build_assets
from vibe_assets.resources import BlipResource
from vibe_assets.resources.blip import BlipWeightsError
from vibe_assets_tests.conftest import COLLECTION, SAMPLES, Env, metadata, needs_samples


@pytest.fixture
def blip_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts BLIP model loads and captioned images."""
    counts: Counter[str] = Counter()
    real_load, real_caption = BlipResource._load, BlipResource.caption

    def load(self):
        counts["loads"] += 1
        return real_load(self)

    def caption(self, images):
        counts["captioned"] += len(images)
        return real_caption(self, images)

    monkeypatch.setattr(BlipResource, "_load", load)
    monkeypatch.setattr(BlipResource, "caption", caption)
    return counts


def schedule_requests(env: Env, blip: BlipResource | None = None) -> list[dg.RunRequest]:
    """Evaluate the re-caption schedule once against ``env``; [] when it skips."""
    assets = build_assets(env.collections)
    job = dg.define_asset_job(
        "caption_job", selection=[blip_captions.key, dg.AssetKey(f"qdrant_{COLLECTION}")]
    )
    schedule = build_recaption_schedule(job, cron="0 3 * * 0", max_per_run=32)
    dg.Definitions(assets=assets, jobs=[job], schedules=[schedule])  # must be loadable
    with dg.build_schedule_context(
        instance=env.instance,
        scheduled_execution_time=datetime(2026, 11, 29, 3, tzinfo=UTC),
        resources={"store": env.store, "blip": blip or env.resources["blip"]},
    ) as context:
        data = schedule.evaluate_tick(context)
    return list(data.run_requests or [])


def run_request(env: Env, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Execute a schedule's run request the way the daemon would: the caption job's assets over
    the request's partition range."""
    return env.materialize(only_captions=True, tags=dict(request.tags))


def _photos(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@needs_samples
def test_ingest_without_captions_then_schedule_captions_every_point(
    env: Env, blip_calls: Counter[str]
) -> None:
    key = env.add_folder(SAMPLES / "photos")
    assert env.materialize(key).success  # captions off
    assert blip_calls["loads"] == 0  # BLIP never loaded when captions are off
    before = env.points(with_vectors=True)
    assert len(before) == 11 and all("caption" not in p for p in before.values())

    [request] = schedule_requests(env)
    assert request.tags[RANGE_START_TAG] == request.tags[RANGE_END_TAG] == key
    result = run_request(env, request)
    assert result.success and blip_calls["loads"] == 1 and blip_calls["captioned"] == 11

    after = env.points(with_vectors=True)
    model_id = env.resources["blip"].model_id
    assert after.keys() == before.keys()
    for sha, payload in after.items():
        assert isinstance(payload["caption"], str) and payload["caption"]
        assert payload["caption_model"] == model_id
        datetime.fromisoformat(payload["captioned_at"])
        assert payload["caption"] == env.store.get_caption(model_id, sha)["text"]
        np.testing.assert_array_equal(payload["_vector"], before[sha]["_vector"])  # unchanged
    md = metadata(result, "blip_captions")
    assert md["captioned"] == 11 and len(md["samples"].records) == 11
    names = {p.name for p in (SAMPLES / "photos").iterdir()}
    assert {r.data["file"] for r in md["samples"].records} <= names  # file names, not SHA paths
    # small pictures in the Dagster UI: Markdown images served by `vibe-assets serve`
    first = md["samples"].records[0].data["file"]
    assert (
        "](http://127.0.0.1:8765/mini/" in md["pictures"]
        and first.replace("_", "\\_") in md["pictures"]
    )
    assert len(md["pictures"]) < 1000  # shown inline by the UI
    assert metadata(result, f"qdrant_{COLLECTION}")["captions_updated"] == 11

    # Nothing left to do: the schedule skips and a re-run generates nothing.
    assert schedule_requests(env) == []
    blip_calls.clear()
    again = env.materialize(key, only_captions=True)
    assert again.success and blip_calls == Counter()
    assert metadata(again, "blip_captions")["model_loaded"] is False


def test_schedule_requests_one_range_run_over_folders_needing_work(
    env: Env, tmp_path: Path, blip_calls: Counter[str]
) -> None:
    keys = [env.add_folder(_photos(tmp_path / name, 2, seed=i)) for i, name in enumerate("abcd")]
    assert env.materialize(*keys).success  # one range run, captions off
    assert schedule_requests(env)[0].tags[RANGE_END_TAG] == keys[3]
    # Caption c and d by hand: only a and b still need work.
    assert env.materialize(keys[2], keys[3], only_captions=True).success

    [request] = schedule_requests(env)
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == (keys[0], keys[1])
    blip_calls.clear()
    assert run_request(env, request).success
    assert blip_calls["captioned"] == 4 and blip_calls["loads"] == 1
    assert schedule_requests(env) == []
    assert all(p.get("caption") for p in env.points().values())


def test_changing_the_caption_model_recaptions_everything(
    env: Env, tmp_path: Path, tiny_blip_dir: Path, blip_calls: Counter[str]
) -> None:
    key = env.add_folder(_photos(tmp_path / "lib", 3, seed=9))
    assert env.materialize(key, captions=True).success  # captions on during ingest
    old_model = env.resources["blip"].model_id
    assert {p["caption_model"] for p in env.points().values()} == {old_model}

    new_blip = BlipResource(model_name=str(tiny_blip_dir), batch_size=2, max_new_tokens=4)
    assert new_blip.model_id != old_model
    [request] = schedule_requests(env, new_blip)
    env.resources["blip"] = new_blip
    blip_calls.clear()
    assert run_request(env, request).success
    assert blip_calls["captioned"] == 3
    points = env.points()
    assert {p["caption_model"] for p in points.values()} == {new_blip.model_id}
    for sha in points:  # the old captions are kept in the store
        assert env.store.get_caption(old_model, sha) is not None


def test_blip_loads_lazily_and_unloads_when_idle(tiny_blip_dir: Path) -> None:
    blip = BlipResource(model_name=str(tiny_blip_dir), idle_unload_seconds=0.3)
    assert not blip.loaded
    captions = blip.caption([Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 40), "blue")])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert blip.loaded
    deadline = time.monotonic() + 5
    while blip.loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not blip.loaded
    assert len(blip.caption([Image.new("RGB", (32, 32))])) == 1  # reloads on demand
    blip.unload()


def test_missing_blip_model_names_the_setting(tmp_path: Path) -> None:
    blip = BlipResource(model_name=str(tmp_path / "no-such-model"))
    with pytest.raises(BlipWeightsError, match="VIBE_BLIP_MODEL"):
        blip.load()
    assert not blip.loaded


def test_random_blip_weights_only_when_asked(tiny_blip_dir: Path) -> None:
    blip = BlipResource(model_name=str(tiny_blip_dir), random_weights=True, idle_unload_seconds=0)
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        blip.load()
    assert "random" in blip.model_id
    assert BlipResource(model_name=str(tiny_blip_dir)).model_id != blip.model_id
    blip.unload()


@pytest.mark.parametrize(
    ("mode", "device", "tags", "expect"),
    [
        ("auto", "cpu", {}, "off"),  # "Materialize all" / a backfill on a CPU
        ("on", "cpu", {}, "on"),
        ("off", "cpu", {"vibe/captions": "on"}, "on"),  # --captions
        ("on", "cpu", {"vibe/captions": "off"}, "off"),
    ],
)
def test_runs_that_ingest_follow_vibe_captions_decided_in_the_run(
    env: Env,
    tmp_path: Path,
    blip_calls: Counter[str],
    mode: str,
    device: str,
    tags: dict[str, str],
    expect: str,
) -> None:
    key = env.add_folder(_photos(tmp_path / "lib", 2, seed=5))
    blip = env.resources["blip"]
    env.resources["blip"] = BlipResource(
        model_name=blip.model_name,
        batch_size=blip.batch_size,
        max_new_tokens=blip.max_new_tokens,
        captions=mode,
        device=device,
    )
    assets = build_assets(env.collections)
    result = dg.materialize(  # every asset, as the UI's "Materialize all" does
        assets,
        instance=env.instance,
        resources=env.resources,
        partition_key=key,
        tags=tags or None,
    )
    md = metadata(result, "blip_captions")
    assert md["captions"] == expect and md["captions_reason"]
    assert (blip_calls["loads"], blip_calls["captioned"]) == ((1, 2) if expect == "on" else (0, 0))
    assert all(bool(p.get("caption")) is (expect == "on") for p in env.points().values())


def test_a_caption_run_captions_even_when_vibe_captions_is_off(
    env: Env, tmp_path: Path, blip_calls: Counter[str]
) -> None:
    key = env.add_folder(_photos(tmp_path / "lib", 2, seed=6))
    blip = env.resources["blip"]
    env.resources["blip"] = BlipResource(
        model_name=blip.model_name, batch_size=blip.batch_size, captions="off"
    )
    assert env.materialize(key).success
    result = env.materialize(key, only_captions=True)  # blip_captions selected on its own
    assert metadata(result, "blip_captions")["captions"] == "on"
    assert blip_calls["captioned"] == 2
