"""Runs that never wedge (issue 12): dead-run cleanup, visible and interruptible waiting for a
pool slot, Ctrl-C mid-embedding.

The integration tests run the real ``vibe-assets`` CLI in subprocesses
(:mod:`vibe_assets_tests.cli_harness`: the tiny CLIP, optional stalls) against a persistent
instance whose ``dagster.yaml`` is the repository's own (pool limits of 1), and kill or
interrupt them with real signals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
from dagster._core.test_utils import create_run_for_test

from vibe_assets.runs import (
    WORKER_HOST_TAG,
    WORKER_PID_TAG,
    Worker,
    cleanup_dead_runs,
    find_dead_runs,
)
from vibe_assets_tests.conftest import TINY_CLIP
from vibe_assets_tests.test_faults import library

REPO = Path(__file__).resolve().parents[1]
IMAGES = 10


# -- units: worker identity and cleanup on a real instance -------------------------------------


def test_worker_tags_round_trip_and_liveness() -> None:
    me = Worker.current()
    assert Worker.from_tags(me.tags()) == me
    assert me.is_local() and me.gone_reason() is None
    assert Worker.from_tags({WORKER_HOST_TAG: "h", WORKER_PID_TAG: "x"}) is None

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    dead = Worker(me.host, child.pid, started)
    assert "no longer exists" in (dead.gone_reason() or "")
    recycled = Worker(me.host, os.getpid(), me.started - 3600)  # same pid, another process
    assert "another process" in (recycled.gone_reason() or "")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A persistent instance configured by the repository's dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


def _started_run(instance: dg.DagsterInstance, tags: dict[str, str], pool: str) -> str:
    run = create_run_for_test(instance, status=dg.DagsterRunStatus.STARTED, tags=tags)
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(pool)
    assert storage.claim_concurrency_slot(pool, run.run_id, "step").is_claimed
    return run.run_id


def test_cleanup_ends_dead_local_runs_only_and_frees_their_slots(
    instance: dg.DagsterInstance,
) -> None:
    me = Worker.current()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    dead = _started_run(instance, Worker(me.host, child.pid, started).tags(), "gpu")
    alive = _started_run(instance, me.tags(), "qdrant")
    elsewhere = _started_run(instance, Worker("other-host", 1, 1.0).tags(), "other")
    untagged = create_run_for_test(instance, status=dg.DagsterRunStatus.STARTED).run_id

    found, unknown = find_dead_runs(instance)
    assert [r.run_id for r, _ in found] == [dead]
    assert {u.run_id for u in unknown} == {elsewhere, untagged}

    assert cleanup_dead_runs(instance, dry_run=True)[0].run_id == dead
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.STARTED  # dry run

    lines: list[str] = []
    [cleaned] = cleanup_dead_runs(instance, log_fn=lines.append)
    assert (cleaned.run_id, cleaned.pools, cleaned.new_status) == (dead, ("gpu",), "FAILURE")
    assert dead in lines[0] and "no longer exists" in lines[0] and "gpu" in lines[0]
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    storage = instance.event_log_storage
    assert not storage.get_concurrency_info("gpu").claimed_slots
    assert len(storage.get_concurrency_info("qdrant").claimed_slots) == 1  # alive: untouched
    for run_id in (alive, elsewhere, untagged):
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    assert cleanup_dead_runs(instance) == []  # idempotent


# -- integration: the real CLI in subprocesses -------------------------------------------------


@dataclass
class Cli:
    """Environment for ``vibe-assets`` subprocesses sharing one VIBE_HOME and instance."""

    tmp: Path
    env: dict[str, str]
    home: Path

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    def start(self, *args: str, stall: str = "none", name: str = "run", **cfg: Any) -> Proc:
        marker, log = self.tmp / f"{name}.marker", self.tmp / f"{name}.log"
        config = {"config_dir": self.env["VIBE_TEST_CLIP_DIR"], "marker": str(marker)}
        config.update(stall=stall, **cfg)
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "vibe_assets_tests.cli_harness", json.dumps(config), *args],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return Proc(popen, marker, log)

    def run(self, *args: str, timeout: float = 240) -> tuple[int, str]:
        proc = self.start(*args, name=f"run{time.monotonic_ns()}")
        rc = proc.popen.wait(timeout=timeout)
        return rc, proc.log.read_text()

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.dagster_home))


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    marker: Path
    log: Path

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.popen.poll() is not None:
                pytest.fail(f"ended (rc {self.popen.returncode}) before {what}:\n{self.text()}")
            if time.monotonic() > deadline:
                self.popen.kill()
                pytest.fail(f"no {what} after {timeout} s:\n{self.text()[-4000:]}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        assert self.popen.wait(timeout=30) == -signal.SIGKILL


@pytest.fixture
def cli(tmp_path: Path, tiny_clip_checkpoint: Path) -> Cli:
    home = tmp_path / "vibe_home"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIBE_", "QDRANT_"))}
    env.update(
        PYTHONPATH=str(REPO),
        VIBE_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        VIBE_CLIP_MODEL=TINY_CLIP,
        VIBE_CLIP_WEIGHTS=str(tiny_clip_checkpoint),
        VIBE_CLIP_BATCH_SIZE="4",
        VIBE_CAPTIONS="off",
        VIBE_TEST_CLIP_DIR=str(tiny_clip_checkpoint.parent),
    )
    return Cli(tmp_path, env, home)


def _summary(text: str) -> dict[str, Any]:
    """The JSON summary that ``ingest --json --quiet`` printed last."""
    start = text.rindex("\n{") + 1 if not text.startswith("{") else 0
    return json.loads(text[start:])


def _slots(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    storage = instance.event_log_storage
    infos = storage.get_concurrency_infos(sorted(storage.get_concurrency_keys()))
    return {k: [s.run_id for s in info.claimed_slots] for k, info in infos.items()}


def _cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@pytest.mark.slow
@pytest.mark.parametrize(("stall", "pool"), [("clip", "gpu"), ("upsert", "qdrant")])
def test_killed_run_is_cleaned_up_by_the_next_ingest(cli: Cli, stall: str, pool: str) -> None:
    photos = library(cli.tmp / "lib", IMAGES)
    first = cli.start("ingest", str(photos), "--quiet", stall=stall, name="killed")
    first.wait_for(first.marker.exists, "the stall marker")
    first.kill()
    with cli.instance() as instance:
        [dead] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert _slots(instance)[pool] == [dead.run_id]  # wedged: Dagster never frees it

    rc, text = cli.run("ingest", str(photos), "--json", "--quiet")
    assert rc == 0, text
    assert f"cleaned up dead run {dead.run_id}" in text and "no longer exists" in text
    summary = _summary(text)
    assert summary["success"] and summary["points_in_collection"] == IMAGES
    with cli.instance() as instance:
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert all(not held for held in _slots(instance).values())


@pytest.mark.slow
def test_waiting_ingest_logs_idles_and_stops_on_sigint_then_runs(cli: Cli) -> None:
    first_photos = library(cli.tmp / "first", IMAGES)
    second_photos = library(cli.tmp / "second", 3, first_seed=100)
    holder = cli.start("ingest", str(first_photos), stall="clip", name="holder")
    holder.wait_for(holder.marker.exists, "the holder in CLIP")
    waiter = cli.start("ingest", str(second_photos), name="waiter")

    def waits() -> int:
        return waiter.text().count("for a slot in pool")

    waiter.wait_for(lambda: waits() >= 1, "a waiting message")
    cpu0, t0 = _cpu_seconds(waiter.popen.pid), time.monotonic()
    waiter.wait_for(lambda: waits() >= 2, "a second waiting message", timeout=15)
    cpu_share = (_cpu_seconds(waiter.popen.pid) - cpu0) / (time.monotonic() - t0)
    assert time.monotonic() - t0 <= 11.5  # a line at least every 10 s (+ one poll, load)
    assert cpu_share < 0.2, f"waiting used {cpu_share:.0%} of a core"
    line = next(x for x in waiter.text().splitlines() if "for a slot in pool" in x)
    assert "pool 'gpu'" in line and "held by run" in line and "since" in line

    waiter.popen.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    rc = waiter.popen.wait(timeout=30)
    seconds = time.monotonic() - t0
    assert rc == 130, waiter.text()
    assert seconds < 5, f"exited {seconds:.1f} s after SIGINT"
    with cli.instance() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"vibe/trigger": "cli"}))
        waiter_run = next(r for r in runs if r.tags["dagster/partition"].startswith("second"))
        assert waiter_run.status == dg.DagsterRunStatus.CANCELED
        held = [r for ids in _slots(instance).values() for r in ids]
        assert waiter_run.run_id not in held
        pending = instance.event_log_storage.get_concurrency_info("gpu").pending_steps
        assert all(p.run_id != waiter_run.run_id for p in pending)

    holder.kill()  # the first ends (here: dies); the second now runs, cleaning it up
    rc, text = cli.run("ingest", str(second_photos), "--json", "--quiet")
    assert rc == 0, text
    assert _summary(text)["embedded"] == 3


@pytest.mark.slow
def test_sigint_mid_embedding_cancels_after_the_batch_and_resumes(cli: Cli) -> None:
    photos = library(cli.tmp / "lib", IMAGES)
    proc = cli.start("ingest", str(photos), stall="slow_clip", name="slow", batch_seconds=0.7)

    def batches_done() -> int:
        return len(proc.marker.read_text().split()) if proc.marker.exists() else 0

    proc.wait_for(lambda: batches_done() >= 1, "one batch embedded")
    done_at_signal = batches_done()
    proc.popen.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    rc = proc.popen.wait(timeout=60)
    seconds = time.monotonic() - t0
    assert rc == 130, proc.text()
    assert seconds < 15, f"exited {seconds:.1f} s after SIGINT"
    assert "force" not in proc.text()  # stopped by itself after the batch
    with cli.instance() as instance:
        [run] = instance.get_runs(limit=1)
        assert run.status == dg.DagsterRunStatus.CANCELED
        assert all(not held for held in _slots(instance).values())

    rc, text = cli.run("ingest", str(photos), "--json", "--quiet")
    assert rc == 0, text
    summary = _summary(text)
    stored_before = IMAGES - summary["embedded"]
    assert stored_before >= done_at_signal * 4  # nothing finished before the signal is redone
    assert summary["points_in_collection"] == IMAGES
