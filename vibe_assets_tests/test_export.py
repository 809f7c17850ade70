"""``vibe-assets export`` (JSON lines and Parquet, streamed page by page) and
``vibe-assets collections list --json``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vibe_assets.cli import main
from vibe_assets.vectors import Distance, VectorPoint, point_id
from vibe_assets.vectors.edge import EdgeVectorStore
from vibe_assets.vectors.export import write_jsonl, write_parquet
from vibe_assets_tests.conftest import use_home
from vibe_assets_tests.test_faults import library


@pytest.fixture
def home(tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A VIBE_HOME where 3 images of ``lib`` were ingested with the tiny CLIP."""
    home = use_home(monkeypatch, tmp_path / "home", tiny_clip_checkpoint)
    result = CliRunner().invoke(main, ["ingest", str(library(tmp_path / "lib", 3)), "--quiet"])
    assert result.exit_code == 0, result.output
    return home


def stored(home: Path) -> dict[str, dict]:
    with EdgeVectorStore(home / "vectors") as vectors:
        return {
            r.id: {"payload": r.payload, "vector": r.vector}
            for r in vectors.scroll("photos", with_vectors=True)
        }


def test_export_jsonl_to_stdout_and_to_a_file(home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    points = stored(home)
    result = runner.invoke(main, ["export"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert "exported 3 points of 'photos' to stdout (jsonl)" in result.stderr
    assert {r["id"] for r in rows} == set(points)
    for row in rows:
        payload = points[row["id"]]["payload"]
        assert row["id"] == point_id(row["sha256"]) and row["sha256"] == payload["sha256"]
        assert row["paths"] == payload["paths"] and Path(row["paths"][0]).is_file()
        assert row["payload"] == {k: v for k, v in payload.items() if k not in ("sha256", "paths")}
        assert "vector" not in row

    out = tmp_path / "points.jsonl"
    with_vectors = runner.invoke(main, ["export", "--vectors", "--output", str(out)])
    assert with_vectors.exit_code == 0 and with_vectors.stdout == ""
    for line in out.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        vector = np.asarray(row["vector"], dtype=np.float32)
        np.testing.assert_allclose(vector, points[row["id"]]["vector"], atol=1e-7)


def test_export_parquet_reads_back_with_pyarrow(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "points.parquet"
    result = CliRunner().invoke(
        main, ["export", "--format", "parquet", "--vectors", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["id", "sha256", "paths", "payload", "vector"]
    vector_type = table.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vector_type) and vector_type.list_size == 32
    assert vector_type.value_type == pa.float32()
    points = stored(home)
    assert table.num_rows == 3
    for row in table.to_pylist():
        payload = points[row["id"]]["payload"]
        assert row["sha256"] == payload["sha256"] and row["paths"] == payload["paths"]
        assert json.loads(row["payload"])["embed_model"] == payload["embed_model"]
        np.testing.assert_allclose(row["vector"], points[row["id"]]["vector"], atol=1e-7)
    assert not list(tmp_path.glob(".*.partial"))


def test_export_errors(home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    no_output = runner.invoke(main, ["export", "--format", "parquet"])
    assert no_output.exit_code == 2 and "--output" in no_output.stderr
    missing = runner.invoke(main, ["export", "--collection", "nope"])
    assert missing.exit_code == 2 and "'nope' does not exist" in missing.stderr
    missing = runner.invoke(
        main,
        ["export", "--collection", "nope", "--format", "parquet", "--output", str(tmp_path / "x")],
    )
    assert missing.exit_code == 2 and not list(tmp_path.glob("*x*"))


def test_export_streams_one_page_at_a_time(tmp_path: Path) -> None:
    with EdgeVectorStore(tmp_path / "vectors") as vectors:
        vectors.ensure_collection("c", 4, Distance.COSINE)
        vectors.upsert(
            "c",
            [
                VectorPoint(point_id(f"{i:064d}"), np.ones(4, np.float32), {"sha256": f"{i:064d}"})
                for i in range(25)
            ],
        )
        pages: list[int] = []
        real_scroll = vectors.scroll

        def scroll(*args, **kwargs):  # every read is one page of page_size points
            pages.append(kwargs["page_size"])
            return real_scroll(*args, **kwargs)

        vectors.scroll = scroll  # type: ignore[method-assign]
        text = io.StringIO()
        assert write_jsonl(vectors, "c", text, page_size=10) == 25
        assert write_parquet(vectors, "c", tmp_path / "c.parquet", True, page_size=10) == 25
    assert pages == [10, 10]
    assert len(text.getvalue().splitlines()) == 25
    assert pq.ParquetFile(tmp_path / "c.parquet").num_row_groups == 3  # 10 + 10 + 5


def test_collections_list_json(home: Path) -> None:
    listed = CliRunner().invoke(main, ["collections", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["name"] == "photos" and row["configured"] and row["exists"]
    assert (row["points"], row["vector_size"], row["distance"], row["engine"]) == (
        3,
        32,
        "cosine",
        "edge",
    )
    assert {"folder_keys", "sha256", "taken_at", "camera_model", "caption_model"} <= set(
        row["indexed_fields"]
    )
    human = CliRunner().invoke(main, ["collections", "list"])
    assert "3 points, 32-d cosine (edge)" in human.stdout
