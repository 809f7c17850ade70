"""Archiving with undo, through the real CLI on real sample photos: `duplicates archive` (dry run,
--apply, journal, SHA-256, payload paths), `duplicates undo` (byte-identical), archive folders
never scanned, name clashes never overwrite, `curate archive` after a snapshot, `collections
snapshot|snapshots|restore`, and the sparse copy the embedded snapshots use."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from vibe_assets.cli import main
from vibe_assets.moves import KIND_CURATE, plan_paths
from vibe_assets.resources.store import StoreResource
from vibe_assets.vectors.edge import sparse_copy
from vibe_assets_tests.conftest import SAMPLES, needs_samples

pytestmark = needs_samples

PHOTOS = ["pp_elephants.jpg", "pp_dog_orange.jpg", "sklearn_china.jpg", "mei_Nikon_D90.jpg"]


@pytest.fixture
def cli_env(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIBE_TEXT_ENCODER", "torch")  # no ONNX export of the tiny model here
    return cli_env


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _library(root: Path) -> Path:
    """Four sample photos, an exact copy of one in a subfolder and a renamed copy of another."""
    (root / "sub").mkdir(parents=True)
    for name in PHOTOS:
        shutil.copyfile(SAMPLES / "photos" / name, root / name)
        os.utime(root / name, (1_600_000_000, 1_600_000_000))  # originals are the oldest
    shutil.copyfile(root / "pp_elephants.jpg", root / "sub" / "elephants_copy.jpg")
    shutil.copyfile(root / "pp_dog_orange.jpg", root / "dog_again.jpg")
    return root


def _run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result


def _paths_by_sha() -> dict[str, list[str]]:
    out = _run("export", "--format", "jsonl").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {r["sha256"]: sorted(r["paths"]) for r in rows}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_duplicates_archive_dry_run_apply_and_undo(cli_env: Path, tmp_path: Path) -> None:
    lib = _library(tmp_path / "lib")
    _run("ingest", str(lib), "--quiet")
    before_files = _files(lib)
    before_points = _paths_by_sha()
    assert len(before_points) == 4

    report = json.loads(_run("duplicates", "report", "--tier", "exact", "--json").stdout)
    assert sorted(Path(g["keep"]).name for g in report) == ["pp_dog_orange.jpg", "pp_elephants.jpg"]

    dry = json.loads(_run("duplicates", "archive", "--json").stdout)
    moves = {m["from"]: m["to"] for m in dry["plan"]["moves"]}
    assert moves == {
        str(lib / "sub" / "elephants_copy.jpg"): str(
            lib / "_VibeDuplicates/sub/elephants_copy.jpg"
        ),
        str(lib / "dog_again.jpg"): str(lib / "_VibeDuplicates/dog_again.jpg"),
    }
    assert not dry["applied"] and _files(lib) == before_files  # a dry run moves nothing

    applied = json.loads(_run("duplicates", "archive", "--apply", "--json").stdout)
    assert applied["applied"] and applied["moved"] == 2
    after = _files(lib)
    assert "sub/elephants_copy.jpg" not in after and "dog_again.jpg" not in after
    assert after["_VibeDuplicates/sub/elephants_copy.jpg"] == before_files["sub/elephants_copy.jpg"]
    assert after["_VibeDuplicates/dog_again.jpg"] == before_files["dog_again.jpg"]

    journal = Path(applied["journal"])
    assert journal.parent == cli_env / "journals"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    done = [e for e in lines if e["type"] == "move" and e["state"] == "done"]
    assert {(e["from"], e["to"]) for e in done} == set(moves.items())
    assert all(e["sha256"] == _sha(Path(e["to"])) and e["time"] for e in done)

    # the collection keeps one point per image; the moved paths left their payloads
    points = _paths_by_sha()
    assert set(points) == set(before_points)
    assert all("_VibeDuplicates" not in p for paths in points.values() for p in paths)
    assert str(lib / "dog_again.jpg") not in {p for paths in points.values() for p in paths}

    # the archive folder is never scanned: a new ingest finds nothing new
    again = json.loads(_run("ingest", str(lib), "--quiet", "--json").stdout)
    summary = again[0] if isinstance(again, list) else again
    assert "_VibeDuplicates" not in json.dumps(summary)
    assert _paths_by_sha() == points

    undone = json.loads(_run("duplicates", "undo", journal.name, "--json").stdout)
    assert len(undone["moved_back"]) == 2
    assert _files(lib) == before_files  # byte-identical, at the same paths, archive pruned
    assert not (lib / "_VibeDuplicates").exists()
    assert _paths_by_sha() == before_points
    # an undone journal cannot be undone twice
    assert _run("duplicates", "undo", journal.name, "--json").exit_code == 0
    assert _files(lib) == before_files


def test_a_name_clash_refuses_the_whole_plan(cli_env: Path, tmp_path: Path) -> None:
    lib = _library(tmp_path / "lib")
    _run("ingest", str(lib), "--quiet")
    clash = lib / "_VibeDuplicates" / "dog_again.jpg"
    clash.parent.mkdir()
    clash.write_bytes(b"somebody else's file")
    before = _files(lib)
    result = _run("duplicates", "archive", "--apply", code=1)
    assert "already exists: never overwritten" in result.output
    assert _files(lib) == before  # nothing moved, the clashing file untouched
    assert not (cli_env / "journals").exists() or not list((cli_env / "journals").iterdir())


def test_curate_archive_takes_a_snapshot_and_restore_brings_points_back(
    cli_env: Path, tmp_path: Path
) -> None:
    lib = _library(tmp_path / "lib")
    _run("ingest", str(lib), "--quiet")
    china = lib / "sklearn_china.jpg"
    china_sha = _sha(china)

    dry = _run("curate", "archive", "--path", str(china))
    assert "dry run: nothing was moved" in dry.stdout and china.exists()

    applied = json.loads(
        _run("curate", "archive", "--path", str(china), "--apply", "--json").stdout
    )
    assert applied["applied"] and applied["moved"] == 1
    archived = lib / "_VibeArchive" / "sklearn_china.jpg"
    assert not china.exists() and _sha(archived) == china_sha
    assert china_sha not in _paths_by_sha()  # its only path left: the point was deleted
    (snapshot,) = applied["snapshots"]
    assert snapshot["collection"] == "photos" and snapshot["points"] == 4

    listed = json.loads(_run("collections", "snapshots", "photos", "--json").stdout)
    assert [s["id"] for s in listed] == [snapshot["id"]]
    # a copy of a 4-point shard costs its used bytes, not Qdrant's preallocated 32 MiB files
    assert listed[0]["size_bytes"] < 8 * 2**20

    _run("collections", "restore", "photos", snapshot["id"], "--yes")
    assert china_sha in _paths_by_sha()  # the snapshot's points are back

    undone = _run("curate", "undo", Path(applied["journal"]).name)
    assert "moved back 1/1 files" in undone.stderr  # the progress line
    assert _sha(china) == china_sha and not archived.exists()
    _run("ingest", str(lib), "--quiet")  # reconciles the restored collection with the listings
    points = _paths_by_sha()
    assert points[china_sha] == [str(china)]
    assert len(points) == 4

    journals = json.loads(_run("curate", "journals", "--json").stdout)
    assert [(j["kind"], j["status"]) for j in journals] == [("curate", "undone")]


def test_a_plan_never_leaves_the_registered_folders(cli_env: Path, tmp_path: Path) -> None:
    lib = _library(tmp_path / "lib")
    _run("ingest", str(lib), "--quiet")
    outside = tmp_path / "outside.jpg"
    shutil.copyfile(lib / "pp_elephants.jpg", outside)
    store = StoreResource(home=str(cli_env))
    try:
        plan = plan_paths(store.state, [str(outside), str(lib / "mei_Nikon_D90.jpg")], KIND_CURATE)
    finally:
        store.close()
    assert [m.source for m in plan.moves] == [str(lib / "mei_Nikon_D90.jpg")]
    assert [s.path for s in plan.skipped] == [str(outside)]
    result = _run("curate", "archive", "--path", str(outside), "--apply")
    assert "nothing to move" in result.stdout and outside.exists()


def test_sparse_copy_keeps_holes_and_bytes(tmp_path: Path) -> None:
    src = tmp_path / "sparse.bin"
    with open(src, "wb") as f:
        f.truncate(32 * 2**20)  # a preallocated file: all hole
        f.seek(5 * 2**20)
        f.write(b"data in the middle" * 1000)
        f.seek(32 * 2**20 - 7)
        f.write(b"the end")
    dst = tmp_path / "copy.bin"
    assert sparse_copy(str(src), str(dst)) == str(dst)
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_size == os.stat(src).st_size
    assert os.stat(dst).st_blocks * 512 < 2**20  # the holes stayed holes
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    sparse_copy(str(empty), str(tmp_path / "empty_copy.bin"))
    assert (tmp_path / "empty_copy.bin").read_bytes() == b""


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only for this process: mode 0555 for a normal user; for root (who
    ignores modes) a read-only bind mount of it (skips when root may not mount)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"root here cannot bind-mount a read-only folder: {bind.stderr.decode()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_folder_refuses_the_plan_and_leaves_everything(
    cli_env: Path, tmp_path: Path
) -> None:
    lib = _library(tmp_path / "lib")
    _run("ingest", str(lib), "--quiet")
    before = _files(lib)
    with _read_only(lib / "sub"):
        assert not os.access(lib / "sub", os.W_OK)
        result = _run("duplicates", "archive", "--apply", code=1)
    assert f"folder {lib / 'sub'} is read-only" in result.output
    assert "nothing was moved" in result.output
    assert _files(lib) == before
