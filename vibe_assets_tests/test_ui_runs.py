"""Runs launched from the Dagster UI behave like CLI runs (issue 12, item 4).

``dagster dev`` (webserver, daemon, code server) runs in a subprocess against an instance
configured by the repository's dagster.yaml; the run is launched through the webserver's GraphQL
API exactly as the UI's "Materialize all" does (``__ASSET_JOB`` with every asset selected, one
partition), then ``dagster dev`` is stopped with SIGINT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vibe_assets.partitions import PARTITIONS_NAME, FolderRegistry
from vibe_assets_tests.conftest import TINY_CLIP
from vibe_assets_tests.test_faults import free_port, library

REPO = Path(__file__).resolve().parents[1]
ASSETS = ["photo_files", "photo_hashes", "photo_previews", "clip_embeddings", "blip_captions"]
LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
STATUS = "query Run($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }"


def _graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _wait(check: Any, what: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"no {what} after {timeout} s:\n{log.read_text()[-5000:]}")


@pytest.mark.slow
def test_ui_materialize_all_runs_in_one_process_and_leaves_captions_off_on_cpu(
    tmp_path: Path, tiny_clip_checkpoint: Path
) -> None:
    home = tmp_path / "vibe_home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    photos = library(tmp_path / "trip", 5)
    folder = FolderRegistry(home / "state.sqlite3").add(photos)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions(PARTITIONS_NAME, [folder.key])

    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: vibe_assets_tests.ui_location\n"
        "      location_name: vibe_assets\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIBE_", "QDRANT_"))}
    env.update(
        PYTHONPATH=str(REPO),
        VIBE_HOME=str(home),
        DAGSTER_HOME=str(dagster_home),
        VIBE_CLIP_MODEL=TINY_CLIP,
        VIBE_CLIP_WEIGHTS=str(tiny_clip_checkpoint),
        VIBE_CLIP_BATCH_SIZE="4",
        VIBE_CAPTIONS="auto",
        VIBE_DEVICE="cpu",  # auto captions: no CUDA here, so off
        VIBE_TEST_CLIP_DIR=str(tiny_clip_checkpoint.parent),
    )
    port = free_port()
    log = tmp_path / "dagster_dev.log"
    dagster = str(Path(sys.executable).parent / "dagster")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [dagster, "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(lambda: _graphql(port, "{ version }").get("data"), "webserver", 120, proc, log)
        params = {
            "selector": {
                "repositoryLocationName": "vibe_assets",
                "repositoryName": "__repository__",
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": [a]} for a in [*ASSETS, "qdrant_photos"]],
            },
            "runConfigData": {},
            "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": folder.key}]},
        }

        def launch() -> dict[str, Any] | None:
            answer = _graphql(port, LAUNCH, {"executionParams": params})["data"]
            result = answer["launchPipelineExecution"]
            if result["__typename"] == "LaunchRunSuccess":
                return result
            if "not found" in json.dumps(result).lower():
                return None  # the code location is still loading
            pytest.fail(f"launch failed: {result}")

        launched = _wait(launch, "a launched run", 120, proc, log)
        run_id = launched["run"]["runId"]

        def finished() -> str | None:
            status = _graphql(port, STATUS, {"runId": run_id})["data"]["runOrError"]["status"]
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        status = _wait(finished, "the end of the run", 240, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.all_logs(run_id)
        run = instance.get_run_by_id(run_id)
        assert status == "SUCCESS", "\n".join(
            str(r.dagster_event.event_specific_data)[:2000]
            for r in records
            if r.dagster_event and r.dagster_event.is_step_failure
        )
        # One process per run: every step's events come from the run worker the tags name.
        starts = [
            r.dagster_event
            for r in records
            if r.dagster_event and r.dagster_event.event_type_value == "STEP_START"
        ]
        assert len(starts) == 5  # photo_files, photo_hashes, decode_and_embed, blip, qdrant
        assert {e.pid for e in starts} == {int(run.tags["vibe/worker_pid"])}
        materialized: dict[str, dict[str, Any]] = {}
        for r in records:
            if r.dagster_event and r.dagster_event.is_step_materialization:
                mat = r.dagster_event.step_materialization_data.materialization
                md = {k: v.value for k, v in mat.metadata.items()}
                materialized[mat.asset_key.to_user_string()] = md
    assert set(materialized) == {*ASSETS, "qdrant_photos"}
    loaded = [a for a, md in materialized.items() if md.get("model_loaded")]
    assert loaded == ["clip_embeddings"]  # CLIP loaded once; BLIP never
    captions = materialized["blip_captions"]
    assert captions["captions"] == "off" and "no CUDA" in captions["captions_reason"]
    assert materialized["qdrant_photos"]["points_in_collection"] == 5
