"""The code location loads, and the repository's dagster.yaml matches the one the CLI writes."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from vibe_assets import definitions
from vibe_assets.instance import INSTANCE_YAML
from vibe_assets.settings import captions_mode, decide_captions

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
        "duplicate_groups",
    }
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if key.to_user_string() == "duplicate_groups":  # one report of the whole collection
            assert node.partitions_def is None
            assert dg.AssetKey("qdrant_photos") in node.parent_keys  # new folders make it stale
            continue
        assert node.partitions_def is not None and node.partitions_def.name == "photo_folder"
        assert node.backfill_policy == dg.BackfillPolicy.multi_run(32)
    # Runs launched from the UI (__ASSET_JOB) and the jobs: one process per run.
    assert definitions.defs.resolve_implicit_global_asset_job_def().executor_def.name == (
        "vibe_in_process"
    )
    for job in ("ingest_job", "caption_job"):
        assert definitions.defs.resolve_job_def(job).executor_def.name == "vibe_in_process"
    job = definitions.defs.resolve_job_def(definitions.INGEST_JOB)
    assert job.partitions_def is not None
    caption_job = definitions.defs.resolve_job_def(definitions.CAPTION_JOB)
    assert {k.to_user_string() for k in caption_job.asset_layer.executable_asset_keys} == {
        "blip_captions",
        "qdrant_photos",
    }
    duplicates_job = definitions.defs.resolve_job_def("duplicates_job")
    assert duplicates_job.executor_def.name == "vibe_in_process"
    assert {k.to_user_string() for k in duplicates_job.asset_layer.executable_asset_keys} == {
        "duplicate_groups"
    }
    assert definitions.defs.resolve_schedule_def("duplicates_schedule").cron_schedule == (
        "0 4 * * 0"
    )
    schedule = definitions.defs.resolve_schedule_def("recaption_schedule")
    assert schedule.cron_schedule == "0 3 * * 0"  # weekly
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_repo_dagster_yaml_matches_cli_copy() -> None:
    assert (REPO / "dagster.yaml").read_text() == INSTANCE_YAML


SENSOR_TICK = """
import sys

import dagster as dg

from vibe_assets import definitions
from vibe_assets.resources import StoreResource

sensor = definitions.defs.resolve_sensor_def("new_photo_folders")
with (
    dg.instance_for_test() as instance,
    dg.build_sensor_context(
        instance=instance, resources={"store": StoreResource(home=sys.argv[1])}
    ) as context,
):
    [request] = sensor.evaluate_tick(context).run_requests
print(request.asset_selection, "torch" in sys.modules)
"""


@pytest.mark.parametrize("mode", ["auto", "off", "on"])
def test_sensor_tick_never_imports_torch_and_requests_the_whole_job(
    tmp_path: Path, mode: str
) -> None:
    """Captions are decided in the run (blip_captions), on the machine it executes on; the tick
    runs on the code server, which may not be that machine."""
    import subprocess
    import sys

    from PIL import Image

    root = tmp_path / "root"
    (root / "trip").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "trip" / "a.jpg")
    env = {
        **os.environ,
        "VIBE_PHOTO_ROOTS": str(root),
        "VIBE_HOME": str(tmp_path / "home"),
        "VIBE_CAPTIONS": mode,
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run(
        [sys.executable, "-c", SENSOR_TICK, str(tmp_path / "store")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.strip().splitlines()[-1] == "None False"


@pytest.mark.parametrize(
    ("mode", "device", "tag", "caption_run", "expected"),
    [
        ("auto", "cpu", None, False, False),
        ("auto", "cuda", None, False, True),
        ("auto", "cuda:1", None, False, True),
        ("auto", "mps", None, False, False),
        ("on", "cpu", None, False, True),
        ("off", "cuda", None, False, False),
        ("off", "cpu", None, True, True),  # a caption run is an explicit choice
        ("on", "cuda", "off", False, False),  # the run tag wins
        ("off", "cpu", "on", False, True),
        ("auto", "cpu", "on", True, True),
    ],
)
def test_decide_captions(
    mode: str, device: str, tag: str | None, caption_run: bool, expected: bool
) -> None:
    probed: list[int] = []

    def probe() -> str:
        probed.append(1)
        return device

    enabled, why = decide_captions(mode, probe, tag=tag, caption_run=caption_run)
    assert enabled is expected and why
    assert bool(probed) == (mode == "auto" and tag is None and not caption_run)


def test_captions_mode_rejects_unknown_values() -> None:
    assert captions_mode("AUTO") == "auto" and captions_mode("") == "auto"
    with pytest.raises(ValueError, match="VIBE_CAPTIONS"):
        captions_mode("sometimes")


def test_sqlite_instance_writes_asset_events_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite, optimize_storage gives Dagster's event log batched asset-event writes
    (vibe_assets.event_log; what they store: test_event_log.py) and turns on Dagster's
    batching; the storage class itself is Dagster's."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    from vibe_assets.instance import get_instance

    monkeypatch.setenv("VIBE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    instance = get_instance()
    try:
        assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == "200"
        assert type(instance.event_log_storage) is SqliteEventLogStorage
        assert "store_event_batch" in vars(instance.event_log_storage)
        assert instance.get_runs() == []
    finally:
        instance.dispose()
