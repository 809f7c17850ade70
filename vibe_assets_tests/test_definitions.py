"""The code location loads, and the repository's dagster.yaml matches the one the CLI writes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from vibe_assets import definitions
from vibe_assets.instance import INSTANCE_YAML

REPO = Path(__file__).resolve().parents[1]


def test_definitions_load_with_five_partitioned_assets() -> None:
    dg.Definitions.validate_loadable(definitions.defs)
    graph = definitions.defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "photo_files",
        "photo_hashes",
        "photo_previews",
        "clip_embeddings",
        "qdrant_photos",
    }
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.partitions_def is not None and node.partitions_def.name == "photo_folder"
        assert node.backfill_policy == dg.BackfillPolicy.multi_run(32)
    job = definitions.defs.resolve_job_def(definitions.INGEST_JOB)
    assert job.partitions_def is not None


def test_repo_dagster_yaml_matches_cli_copy() -> None:
    assert (REPO / "dagster.yaml").read_text() == INSTANCE_YAML
