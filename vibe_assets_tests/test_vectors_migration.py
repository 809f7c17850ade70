"""Old embedded stores (qdrant-client local mode, ``$VIBE_HOME/qdrant``) are migrated to qdrant-edge
on first use: rebuilt from our store (nothing decoded or embedded again, the old points' pickles
never read), the old folder renamed aside, one log line."""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from vibe_assets.cli import main
from vibe_assets.vectors import Distance, point_id
from vibe_assets.vectors.edge import EdgeVectorStore
from vibe_assets.vectors.migrate import legacy_collections, migrate_local_mode
from vibe_assets_tests.conftest import Env, metadata, use_home
from vibe_assets_tests.test_faults import Boom, counts, library

__all__ = ["counts"]  # fixture imported from test_faults

VOLATILE = {"ingested_at", "_vector"}  # set when a point is (re)built


def build_local_mode(
    folder: Path, collection: str, points: dict[str, dict[str, Any]], size: int
) -> None:
    """What the old ``qdrant_<collection>`` asset left: a qdrant-client local-mode folder with
    one point per image (the old code path: ``QdrantClient(path=...)``, create, upsert)."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(folder))
    client.create_collection(
        collection, vectors_config=models.VectorParams(size=size, distance=models.Distance.COSINE)
    )
    structs = [
        models.PointStruct(
            id=point_id(sha),
            vector=np.asarray(p["_vector"]).tolist(),
            payload={k: v for k, v in p.items() if k != "_vector"},
        )
        for sha, p in points.items()
    ]
    if structs:
        client.upsert(collection, points=structs, wait=True)
    client.close()


def plant_pickle(storage: Path, marker: Path) -> None:
    """A row whose unpickling would create ``marker`` (stands in for a planted payload)."""
    with contextlib.closing(sqlite3.connect(storage)) as db:
        db.execute(
            "INSERT INTO points VALUES (?, ?)",
            ("planted", sqlite3.Binary(pickle.dumps(Boom(marker)))),
        )
        db.commit()


def stable(points: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {sha: {k: v for k, v in p.items() if k not in VOLATILE} for sha, p in points.items()}


def migration_lines(env: Env) -> list[str]:
    lines = []
    for run in env.instance.get_runs():
        for record in env.instance.all_logs(run.run_id):
            if "migrated the embedded Qdrant store" in (record.user_message or ""):
                lines.append(record.user_message)
    return lines


def test_first_run_migrates_the_local_mode_store_from_the_store_without_recomputing(
    env: Env, tmp_path: Path, counts: Counter[str]
) -> None:
    lib = library(tmp_path / "lib", 4)
    copies = library(tmp_path / "copies", 1)  # p0.jpg: the same bytes as lib/p0.jpg
    k1, k2 = env.add_folder(lib), env.add_folder(copies)
    env.materialize(k1, k2)
    before = env.points(with_vectors=True)
    assert len(before) == 4 and any(len(p["paths"]) == 2 for p in before.values())

    # The state before this version: the same points in a local-mode folder, no vectors/ yet.
    shutil.rmtree(env.home / "vectors")
    legacy = env.home / "qdrant"
    build_local_mode(legacy, "photos", before, 32)
    marker = tmp_path / "pwned"
    plant_pickle(legacy / "collection" / "photos" / "storage.sqlite", marker)
    assert legacy_collections(legacy) == ["photos"]
    counts.clear()

    result = env.materialize(k1)  # first use of the new store

    assert counts == Counter()  # nothing decoded or embedded again
    assert not marker.exists()  # the old points were never unpickled
    md = metadata(result, "qdrant_photos")
    assert (md["upserted"], md["unchanged"], md["points_in_collection"]) == (0, 4, 4)
    assert all(c.passed for c in result.get_asset_check_evaluations())
    after = env.points(with_vectors=True)
    assert stable(after) == stable(before)  # paths of both folders, folder_keys, EXIF, ...
    for sha, point in after.items():
        np.testing.assert_allclose(point["_vector"], before[sha]["_vector"], atol=1e-6)

    assert not legacy.exists()
    (moved,) = env.home.glob("qdrant.local-mode-migrated-*")
    assert (moved / "collection" / "photos" / "storage.sqlite").is_file()  # kept, not deleted
    (line,) = migration_lines(env)
    assert "photos: 4 points" in line and str(moved) in line and "nothing recomputed" in line

    again = env.materialize(k1, k2)  # migrated once: nothing more to do
    assert metadata(again, "qdrant_photos")["run_unchanged"] == 5
    assert len(migration_lines(env)) == 1


@pytest.fixture
def cli_home(tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_home(monkeypatch, tmp_path / "home", tiny_clip_checkpoint)


def test_any_command_migrates_first_and_unconfigured_collections_are_named(
    cli_home: Path, tmp_path: Path, counts: Counter[str]
) -> None:
    runner = CliRunner()
    ingested = runner.invoke(main, ["ingest", str(library(tmp_path / "lib", 3)), "--quiet"])
    assert ingested.exit_code == 0, ingested.output
    with EdgeVectorStore(cli_home / "vectors") as vectors:
        before = {
            r.payload["sha256"]: r.payload | {"_vector": r.vector}
            for r in vectors.scroll("photos", with_vectors=True)
        }
    shutil.rmtree(cli_home / "vectors")
    build_local_mode(cli_home / "qdrant", "photos", before, 32)
    build_local_mode(cli_home / "qdrant", "old_model", {}, 16)  # not configured any more
    counts.clear()

    listed = runner.invoke(main, ["collections", "list", "--json"])

    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["photos"]["points"] == 3 and rows["photos"]["engine"] == "edge"
    assert "old_model" not in rows  # not rebuilt: its model is unknown
    assert "photos: 3 points" in listed.stderr
    assert "not migrated (not configured, model unknown): old_model" in listed.stderr
    (moved,) = cli_home.glob("qdrant.local-mode-migrated-*")
    assert legacy_collections(moved) == ["old_model", "photos"] and str(moved) in listed.stderr
    assert counts == Counter()
    hits = runner.invoke(main, ["search", "a photo", "--json"])
    assert hits.exit_code == 0 and len(json.loads(hits.stdout)) == 3
    assert "migrated" not in hits.stderr


def test_migration_waits_for_an_old_process_holding_the_local_mode_folder(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    legacy = tmp_path / "qdrant"
    build_local_mode(legacy, "photos", {}, 4)
    rebuilt: list[str] = []

    def rebuild(store: Any, name: str) -> int:
        rebuilt.append(name)
        store.ensure_collection(name, 4, Distance.COSINE)
        return 0

    lines: list[str] = []
    old = QdrantClient(path=str(legacy))  # an old vibe_assets still running
    try:
        with EdgeVectorStore(tmp_path / "vectors") as store:
            assert (
                migrate_local_mode(legacy, store, rebuild, tmp_path / "vectors", lines.append)
                is None
            )
        assert rebuilt == [] and legacy.exists() and "still has it open" in lines[0]
    finally:
        old.close()
    with EdgeVectorStore(tmp_path / "vectors") as store:
        report = migrate_local_mode(legacy, store, rebuild, tmp_path / "vectors", lines.append)
    assert report is not None and report.migrated == {"photos": 0} and rebuilt == ["photos"]
    assert not legacy.exists() and report.moved_to is not None and report.moved_to.is_dir()
