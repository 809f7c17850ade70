"""The `vibe-assets` command: ingest (human and --json), search, folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from vibe_assets.cli import main


def _library(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / f"p{i}.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (root / "empty.png").write_bytes(b"")
    return root


def test_ingest_json_search_and_folders(cli_env: Path, tmp_path: Path) -> None:
    library = _library(tmp_path / "My Library")
    runner = CliRunner()

    result = runner.invoke(main, ["ingest", str(library), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] and summary["files_seen"] == 5
    assert summary["processed"] == 3 and summary["embedded"] == 3
    assert summary["points_in_collection"] == 3 and summary["collection"] == "photos"
    codes = {Path(f["path"]).name: f["code"] for f in summary["failures"]}
    assert codes == {"broken.jpg": "ERR_DECODE_IMAGE", "empty.png": "ERR_EMPTY_FILE"}
    assert summary["failed_by_code"] == {"ERR_DECODE_IMAGE": 1, "ERR_EMPTY_FILE": 1}
    assert (cli_env / "dagster" / "dagster.yaml").is_file()

    again = runner.invoke(main, ["ingest", str(library), "--quiet"])
    assert again.exit_code == 0, again.output
    assert "0 embedded now" in again.stdout and "ERR_EMPTY_FILE" in again.stdout

    hits = runner.invoke(main, ["search", "a photo", "--limit", "2", "--json"])
    assert hits.exit_code == 0, hits.output
    rows = json.loads(hits.stdout)
    assert len(rows) == 2 and all(Path(r["path"]).parent == library.resolve() for r in rows)
    assert rows[0]["score"] >= rows[1]["score"]

    listed = runner.invoke(main, ["folders", "list"])
    assert str(library.resolve()) in listed.stdout
    removed = runner.invoke(main, ["folders", "remove", str(library)])
    assert removed.exit_code == 0, removed.output
    assert "3 points deleted" in removed.stdout
    assert runner.invoke(main, ["folders", "list"]).stdout.strip() == ""


def test_ingest_rejects_a_missing_folder(cli_env: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_failed_run_exits_1(cli_env: Path, tmp_path: Path) -> None:
    from vibe_assets.vectors import Distance
    from vibe_assets.vectors.edge import EdgeVectorStore

    with EdgeVectorStore(cli_env / "vectors") as vectors:
        vectors.ensure_collection("photos", 8, Distance.DOT)
    result = CliRunner().invoke(main, ["ingest", str(_library(tmp_path / "lib")), "--quiet"])
    assert result.exit_code == 1
    assert "FAILED" in result.stdout and "8-d" in result.stdout


def test_cache_info_and_clear_keep_state(cli_env: Path, tmp_path: Path) -> None:
    library = _library(tmp_path / "lib")
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(library), "--quiet"]).exit_code == 0

    info = runner.invoke(main, ["cache", "info", "--json"])
    assert info.exit_code == 0, info.output
    kinds = json.loads(info.stdout)["cache"]["kinds"]
    assert kinds["embeddings"]["entries"] == 3 and kinds["previews"]["entries"] >= 3

    cleared = runner.invoke(main, ["cache", "clear", "--embeddings", "--yes"])
    assert cleared.exit_code == 0, cleared.output
    assert "embeddings 3 entries" in cleared.stdout
    again = runner.invoke(main, ["ingest", str(library), "--json", "--quiet"])
    summary = json.loads(again.stdout)
    # state kept: nothing decoded again; the cleared embeddings are recomputed; points unchanged
    assert (summary["decoded"], summary["embedded"]) == (0, 3)
    assert summary["points_in_collection"] == 3
