"""Moving a library from the embedded store to a Qdrant server (issue 16): one command that
re-upserts every point from the embedded store (no model runs), verified by counts and a sample
of vectors and payloads. qdrant-client's in-memory mode stands in for the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vibe_assets import cli_migrate
from vibe_assets.cli import main
from vibe_assets.cli_migrate import collections_migrate_to_server
from vibe_assets.vectors import Distance, point_id
from vibe_assets.vectors.base import CollectionMismatchError, VectorPoint, VectorStore
from vibe_assets.vectors.edge import EdgeVectorStore
from vibe_assets.vectors.server import ServerVectorStore
from vibe_assets.vectors.transfer import copy_collection
from vibe_assets_tests import test_cli as cli_tests

DIM = 16


def _points(n: int, seed: int = 0) -> list[VectorPoint]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        VectorPoint(
            point_id(f"{seed}-{i:064d}"),
            vectors[i],
            {"sha256": f"{seed}-{i:064d}", "paths": [f"/p/{i}.jpg"], "width": i, "iso": 100},
        )
        for i in range(n)
    ]


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeVectorStore]:
    with EdgeVectorStore(tmp_path / "vectors") as store:
        store.ensure_collection("photos", DIM, Distance.COSINE)
        store.upsert("photos", _points(250))
        yield store


@pytest.fixture
def server() -> Iterator[ServerVectorStore]:
    with ServerVectorStore.in_memory() as store:
        yield store


def test_copy_is_exact_verified_and_idempotent(edge: VectorStore, server: VectorStore) -> None:
    lines: list[str] = []
    report = copy_collection(
        edge, server, "photos", sample=40, page_size=100, progress=lines.append
    )
    assert report.ok, report.problems
    assert (report.copied, report.source_points, report.target_points) == (250, 250, 250)
    assert report.sampled == 40 and len(lines) == 3  # one line per page of 100
    info = server.collection_info("photos")
    assert (info.vector_size, info.distance) == (DIM, Distance.COSINE)
    source = {p.id: p for p in edge.scroll("photos", with_vectors=True)}
    for p in server.scroll("photos", with_vectors=True):  # every point, not only the sample
        assert p.payload == source[p.id].payload
        np.testing.assert_allclose(p.vector, source[p.id].vector, atol=1e-6)
    assert "verified: 250 points on both sides, 40 sampled" in report.message()

    again = copy_collection(edge, server, "photos")  # an interrupted migration is run again
    assert again.ok and again.target_points == 250


def test_verification_finds_extra_points_changed_vectors_and_replace_fixes_them(
    edge: VectorStore, server: VectorStore
) -> None:
    server.ensure_collection("photos", DIM, Distance.COSINE)
    server.upsert("photos", _points(3, seed=9))  # points the embedded store does not hold
    report = copy_collection(edge, server, "photos")
    assert not report.ok and report.target_points == 253
    assert "counts differ" in report.problems[0] and "replace" in report.problems[0]

    fixed = copy_collection(edge, server, "photos", replace=True)
    assert fixed.ok and fixed.replaced and fixed.target_points == 250

    class Skewed(ServerVectorStore):  # a target that stores other vectors and payloads
        def upsert(self, name: str, points: list[VectorPoint]) -> None:  # type: ignore[override]
            bent = [
                VectorPoint(p.id, np.roll(p.vector, 1), {**p.payload, "width": -1}) for p in points
            ]
            super().upsert(name, bent)

    skewed = Skewed(server.client, "memory:", local=True)
    bad = copy_collection(edge, skewed, "photos", replace=True, sample=5)
    assert not bad.ok and len(bad.problems) == 10  # 5 sampled points: vector and payload each
    assert any("another vector" in p for p in bad.problems)
    assert any("fields ['width']" in p for p in bad.problems)
    assert "NOT verified" in bad.message()


def test_a_server_collection_of_another_size_is_refused(
    edge: VectorStore, server: VectorStore
) -> None:
    server.ensure_collection("photos", DIM * 2, Distance.COSINE)
    with pytest.raises(CollectionMismatchError):
        copy_collection(edge, server, "photos")
    assert server.count("photos") == 0  # nothing written


# -- the command, after a real ingest ---------------------------------------------------------


class _KeptOpen(ServerVectorStore):
    """The in-memory server, shared by every command of a test (closing it is a no-op)."""

    def close(self) -> None:
        pass


def test_command_moves_an_ingested_library_and_search_then_uses_the_server(
    cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    library = cli_tests._library(tmp_path / "lib")
    assert runner.invoke(main, ["ingest", str(library), "--quiet"]).exit_code == 0
    before = runner.invoke(main, ["search", "a photo", "--limit", "3", "--json"])
    assert before.exit_code == 0, before.output

    memory = _KeptOpen(ServerVectorStore.in_memory().client, "memory:", local=True)
    opened: list[tuple[str, str | None]] = []

    def open_server(url: str, api_key: str | None, timeout: int) -> VectorStore:
        opened.append((url, api_key))
        return memory

    monkeypatch.setattr(cli_migrate, "open_server", open_server)
    monkeypatch.setenv("QDRANT_API_KEY", "k-secret")

    from vibe_assets.resources.clip import ClipResource

    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("the migration ran a model")

    with monkeypatch.context() as m:  # no model may load or run while migrating
        m.setattr(ClipResource, "encode_images", no_model)
        m.setattr(ClipResource, "load", no_model)
        usage = runner.invoke(collections_migrate_to_server, [])
        assert usage.exit_code == 2 and "QDRANT_URL" in usage.output

        args = ["--url", "http://qdrant:6333", "--json", "--sample", "2"]
        result = runner.invoke(collections_migrate_to_server, args)
        assert result.exit_code == 0, result.output
        [report] = json.loads(result.stdout)
        assert report["ok"] and report["collection"] == "photos"
        assert report["copied"] == report["target_points"] == 3 and report["sampled"] == 2
        assert opened == [("http://qdrant:6333", "k-secret")]
        assert "k-secret" not in result.output

        args = ["--url", "http://q", "--collection", "x"]
        missing = runner.invoke(collections_migrate_to_server, args)
        assert missing.exit_code == 2 and "not in the embedded store" in missing.output

    # The library now works from the server: search gives the same hits there.
    connected: list[str] = []

    def connect(cls: type, url: str, *_: object, **__: object) -> VectorStore:
        connected.append(url)
        return memory

    monkeypatch.setattr(ServerVectorStore, "connect", classmethod(connect))
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    after = runner.invoke(main, ["search", "a photo", "--limit", "3", "--json"])
    assert after.exit_code == 0, after.output
    rows = json.loads(after.stdout)
    assert [r["path"] for r in rows] == [r["path"] for r in json.loads(before.stdout)]
    assert connected and set(connected) == {"http://qdrant:6333"}  # the server, not the folder
