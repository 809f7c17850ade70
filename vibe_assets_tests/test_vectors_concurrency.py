"""Concurrent access to the embedded store, with real processes: qdrant-edge lets one process open
a collection at a time (no read-only open), so a command that needs a collection another process
holds waits for it, says so on stderr, and answers once it is released; past its wait it fails
naming the holder. It never crashes on the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from vibe_assets.cli import main
from vibe_assets.vectors import Distance, QdrantBusyError
from vibe_assets.vectors.edge import EdgeVectorStore
from vibe_assets_tests.conftest import TINY_CLIP
from vibe_assets_tests.test_faults import library

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys
from pathlib import Path

from vibe_assets.vectors import Distance
from vibe_assets.vectors.edge import EdgeVectorStore

store = EdgeVectorStore(Path(sys.argv[1]))
store.ensure_collection("photos", 32, Distance.COSINE)  # opens the shard and holds it
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
store.close()
print("released", flush=True)
"""


@pytest.fixture
def ingested(tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A VIBE_HOME with 3 images ingested; returns the environment for subprocesses."""
    home = tmp_path / "home"
    env = {
        "VIBE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VIBE_CLIP_MODEL": TINY_CLIP,
        "VIBE_CLIP_WEIGHTS": str(tiny_clip_checkpoint),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("QDRANT_URL", "QDRANT_API_KEY", "VIBE_COLLECTION", "VIBE_COLLECTIONS_FILE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["ingest", str(library(tmp_path / "lib", 3)), "--quiet"])
    assert result.exit_code == 0, result.output
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIBE_", "QDRANT_"))}
    return {**clean, **env, "PYTHONPATH": str(REPO), "home": str(home)}


@pytest.fixture
def holder(ingested: dict) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the ``photos`` collection until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(Path(ingested["home"]) / "vectors")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in ingested.items() if k != "home"},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def cli(ingested: dict, tiny_clip_checkpoint: Path, tmp_path: Path, *args: str, **env: str):
    """Start ``vibe-assets ARGS`` in a subprocess (the real CLI, the tiny CLIP registered);
    returns (process, stderr file)."""
    cfg = json.dumps({"config_dir": str(tiny_clip_checkpoint.parent)})
    err = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
    environment = {k: v for k, v in ingested.items() if k != "home"} | env
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vibe_assets_tests.cli_harness", cfg, *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=environment,
        )
    return proc, err


def wait_for(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if proc.poll() is not None:
            pytest.fail(f"ended (rc {proc.returncode}) before {text!r}:\n{path.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} after {timeout} s:\n{path.read_text()}")
        time.sleep(0.05)


@pytest.mark.parametrize("command", ["search", "export"])
def test_a_command_waits_for_a_held_collection_then_answers_once_released(
    ingested: dict,
    holder: subprocess.Popen[str],
    tiny_clip_checkpoint: Path,
    tmp_path: Path,
    command: str,
) -> None:
    args = ["search", "a photo", "--json"] if command == "search" else ["export", "--vectors"]
    proc, err = cli(ingested, tiny_clip_checkpoint, tmp_path, *args)
    wait_for(err, "waiting for collection 'photos'", proc)
    assert f"held by pid {holder.pid} " in err.read_text()  # the holder is named
    time.sleep(1.0)
    assert proc.poll() is None  # still waiting, not crashed
    released = time.monotonic()
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.stdout is not None and holder.stdout.readline().strip() == "released"
    out, _ = proc.communicate(timeout=60)
    answered = time.monotonic() - released
    assert proc.returncode == 0, err.read_text()
    if command == "search":
        assert len(json.loads(out)) == 3
    else:
        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) == 3 and all(len(r["vector"]) == 32 for r in rows)
    assert answered < 5.0, answered  # polled every 0.2 s: answers soon after the release


def test_a_command_gives_up_after_its_wait_naming_the_holder(
    ingested: dict, holder: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIBE_VECTORS_WAIT_SECONDS", "1")
    start = time.monotonic()
    result = CliRunner().invoke(main, ["collections", "list", "--json"])
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and isinstance(result.exception, SystemExit)  # no crash
    assert "waiting for collection 'photos'" in result.stderr  # said so while it waited
    assert "in use by another process" in result.stderr and f"pid {holder.pid} " in result.stderr
    assert "docker compose up -d qdrant" in result.stderr
    assert time.monotonic() - start >= 1.0


def test_lock_is_per_collection_and_released_by_a_killed_holder(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    with EdgeVectorStore(root) as store:
        store.ensure_collection("photos", 4, Distance.COSINE)
        store.ensure_collection("other", 4, Distance.COSINE)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.replace("32", "4"), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with EdgeVectorStore(root) as store:
            assert store.count("other") == 0  # another collection: not blocked
            started = time.monotonic()
            with pytest.raises(QdrantBusyError, match=f"pid {proc.pid} "):
                store.count("photos")  # wait_seconds=0: at once
            assert time.monotonic() - started < 1.0
        proc.kill()  # SIGKILL: the kernel drops its lock
        proc.wait()
        with EdgeVectorStore(root) as store:
            assert store.count("photos") == 0
            assert "another process" not in store.holder("photos")  # now us
    finally:
        proc.kill()
        proc.wait()
