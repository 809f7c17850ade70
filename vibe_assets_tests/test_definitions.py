"""The code location loads, and the repository's dagster.yaml matches the one the CLI writes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from vibe_assets import definitions
from vibe_assets.instance import INSTANCE_YAML

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_with_partitioned_assets_jobs_and_schedule() -> None:
    dg.Definitions.validate_loadable(definitions.defs)
    graph = definitions.defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "photo_files",
        "photo_hashes",
        "photo_previews",
        "clip_embeddings",
        "blip_captions",
        "qdrant_photos",
    }
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.partitions_def is not None and node.partitions_def.name == "photo_folder"
        assert node.backfill_policy == dg.BackfillPolicy.multi_run(32)
    job = definitions.defs.resolve_job_def(definitions.INGEST_JOB)
    assert job.partitions_def is not None
    caption_job = definitions.defs.resolve_job_def(definitions.CAPTION_JOB)
    assert {k.to_user_string() for k in caption_job.asset_layer.executable_asset_keys} == {
        "blip_captions",
        "qdrant_photos",
    }
    schedule = definitions.defs.resolve_schedule_def("recaption_schedule")
    assert schedule.cron_schedule == "0 3 * * 0"  # weekly
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_repo_dagster_yaml_matches_cli_copy() -> None:
    assert (REPO / "dagster.yaml").read_text() == INSTANCE_YAML


def test_sensor_runs_leave_captions_out_when_captions_are_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from vibe_assets.resources import StoreResource

    root = tmp_path / "root"
    (root / "trip").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "trip" / "a.jpg")
    monkeypatch.setenv("VIBE_PHOTO_ROOTS", str(root))
    monkeypatch.setenv("VIBE_HOME", str(tmp_path / "home"))
    for mode, expect_captions in (("off", False), ("on", True)):
        monkeypatch.setenv("VIBE_CAPTIONS", mode)
        defs = definitions.build_definitions()
        sensor = defs.resolve_sensor_def("new_photo_folders")
        store = StoreResource(home=str(tmp_path / f"home-{mode}"))
        with (
            dg.instance_for_test() as instance,
            dg.build_sensor_context(instance=instance, resources={"store": store}) as context,
        ):
            [request] = sensor.evaluate_tick(context).run_requests
        keys = None if request.asset_selection is None else set(request.asset_selection)
        has_captions = keys is None or dg.AssetKey("blip_captions") in keys
        assert has_captions is expect_captions
        assert keys is None or dg.AssetKey("qdrant_photos") in keys
