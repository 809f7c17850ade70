"""The code location loads, and the repository's dagster.yaml matches the one the CLI writes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

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
