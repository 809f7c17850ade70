"""Path ownership by partition, and a Qdrant stage whose cost follows what changed (issue 13,
items 4 and 5).

A photo's path belongs to the partition that scanned it, never to a folder by path prefix:
nested partitions (a parent and its child both registered, recursive or not) holding the same
bytes never strip or delete each other's paths. An unchanged folder costs no request that reads
or writes points beyond the checks' sample.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vibe_assets.assets.qdrant import CHECK_SAMPLE
from vibe_assets.partitions import PARTITIONS_NAME
from vibe_assets.vectors.edge import EdgeVectorStore
from vibe_assets_tests.conftest import Env, metadata
from vibe_assets_tests.test_faults import make_photo


def _register(env: Env, path: Path, recursive: bool) -> str:
    """Register ``path`` the way the sensor (``recursive=False``) or the CLI (True) does."""
    folder = env.store.registry.add(path, recursive=recursive)
    env.instance.add_dynamic_partitions(PARTITIONS_NAME, [folder.key])
    return folder.key


def _sha(env: Env, path: Path) -> str:
    from vibe_assets.hashing import sha256_file

    return sha256_file(str(path))


def _point(env: Env, sha: str) -> dict[str, Any] | None:
    return env.points().get(sha)


@pytest.fixture
def nested(tmp_path: Path) -> tuple[Path, Path]:
    """parent/: a.jpg (bytes X), b.jpg (Y); parent/child/: c.jpg (a copy of X), d.jpg (Z)."""
    parent, child = tmp_path / "parent", tmp_path / "parent" / "child"
    child.mkdir(parents=True)
    make_photo(parent / "a.jpg", seed=1, size=(64, 48))
    make_photo(parent / "b.jpg", seed=2, size=(64, 48))
    shutil.copy(parent / "a.jpg", child / "c.jpg")
    make_photo(child / "d.jpg", seed=3, size=(64, 48))
    return parent, child


def test_nested_partitions_never_strip_or_delete_each_others_paths(
    env: Env, nested: tuple[Path, Path]
) -> None:
    parent, child = nested
    p = _register(env, parent, recursive=False)  # as the sensor registers photo folders
    c = _register(env, child, recursive=False)
    assert env.materialize(p).success and env.materialize(c).success
    x = _sha(env, parent / "a.jpg")
    both = sorted([str(parent / "a.jpg"), str(child / "c.jpg")])
    assert _point(env, x)["paths"] == both
    assert _point(env, x)["folder_keys"] == sorted([p, c])

    # Syncing the parent again keeps the child's path (a path prefix would strip it).
    assert env.materialize(p).success
    assert _point(env, x)["paths"] == both

    # The parent's copy goes: the point stays for the child's copy (a prefix would delete it).
    (parent / "a.jpg").unlink()
    result = env.materialize(p)
    assert metadata(result, "qdrant_photos")["deleted"] == 0
    assert _point(env, x)["paths"] == [str(child / "c.jpg")]
    assert _point(env, x)["folder_keys"] == [c]

    # The child's copy goes too: now the point goes.
    (child / "c.jpg").unlink()
    result = env.materialize(c)
    assert metadata(result, "qdrant_photos")["deleted"] == 1
    assert _point(env, x) is None
    assert len(env.points()) == 2  # b.jpg and d.jpg
    assert all(check.passed for check in result.get_asset_check_evaluations())


def test_removing_a_child_partition_keeps_what_its_recursive_parent_lists(
    env: Env, nested: tuple[Path, Path]
) -> None:
    from click.testing import CliRunner

    from vibe_assets.cli import main

    parent, child = nested
    p = _register(env, parent, recursive=True)  # lists child/ too
    c = _register(env, child, recursive=False)
    assert env.materialize(p, c).success
    z = _sha(env, child / "d.jpg")
    assert _point(env, z)["folder_keys"] == sorted([p, c])

    runner = CliRunner()
    environment = {"VIBE_HOME": str(env.home), "DAGSTER_HOME": str(env.home / "dagster")}
    out = runner.invoke(main, ["folders", "remove", c], env=environment)
    assert out.exit_code == 0, out.output
    assert "0 points deleted" in out.output
    # parent still lists child/d.jpg: the point keeps that path, only the child's key goes
    assert _point(env, z)["paths"] == [str(child / "d.jpg")]
    assert _point(env, z)["folder_keys"] == [p]
    assert len(env.points()) == 3

    out = runner.invoke(main, ["folders", "remove", p], env=environment)
    assert out.exit_code == 0, out.output
    assert env.points() == {}


def test_a_file_moved_from_parent_to_child_keeps_its_point(
    env: Env, nested: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, child = nested
    p = _register(env, parent, recursive=False)
    c = _register(env, child, recursive=False)
    assert env.materialize(p, c).success
    y = _sha(env, parent / "b.jpg")
    (parent / "b.jpg").rename(child / "b-moved.jpg")

    calls = _count_store_calls(monkeypatch)
    result = env.materialize(p, c)  # the sensor's range run over both
    assert metadata(result, "qdrant_photos")["run_upserted"] == 0  # never deleted, re-sent
    assert calls["upsert_points"] == 0 and calls["delete_points"] == 0
    assert _point(env, y)["paths"] == [str(child / "b-moved.jpg")]
    assert _point(env, y)["folder_keys"] == [c]


def _count_store_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the embedded store's point reads and writes (calls, and points for writes)."""
    calls: Counter[str] = Counter()

    def wrap(name: str, size_arg: int | None) -> None:
        real = getattr(EdgeVectorStore, name)

        def counted(self: EdgeVectorStore, *args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            if size_arg is not None:
                calls[f"{name}_points"] += len(args[size_arg])
            out = real(self, *args, **kwargs)
            if isinstance(out, Iterator):  # scroll: count what is read
                return _counting(out, calls, f"{name}_points")
            return out

        monkeypatch.setattr(EdgeVectorStore, name, counted)

    for name, size_arg in (
        ("upsert", 1),
        ("set_payloads", 1),
        ("delete", 1),
        ("retrieve", 1),
        ("scroll", None),
    ):
        wrap(name, size_arg)
    return calls


def _counting(points: Iterator[Any], calls: Counter[str], name: str) -> Iterator[Any]:
    for point in points:
        calls[name] += 1
        yield point


def test_unchanged_folders_cost_no_point_requests_and_one_change_costs_one_point(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = []
    for f in range(3):
        folder = tmp_path / f"f{f}"
        folder.mkdir()
        for i in range(30):
            make_photo(folder / f"{i}.jpg", seed=100 * f + i, size=(48, 32))
        folders.append(_register(env, folder, recursive=True))
    assert env.materialize(*folders).success

    calls = _count_store_calls(monkeypatch)
    result = env.materialize(*folders)
    md = metadata(result, "qdrant_photos")
    assert md["run_unchanged"] == 90
    assert calls["upsert_points"] == calls["set_payloads_points"] == calls["delete_points"] == 0
    assert calls["scroll_points"] == 0  # nothing read back from the collection by the sync
    assert calls["retrieve_points"] <= CHECK_SAMPLE  # the checks' sample only
    assert all(check.passed for check in result.get_asset_check_evaluations())

    calls.clear()
    make_photo(tmp_path / "f1" / "new.jpg", seed=999, size=(48, 32))
    result = env.materialize(*folders)
    assert metadata(result, "qdrant_photos")["run_upserted"] == 1
    assert calls["upsert_points"] == 1 and calls["set_payloads_points"] == 0
    assert calls["scroll_points"] == 0


def test_a_collection_deleted_behind_our_back_is_reconciled_and_rebuilt(
    env: Env, tmp_path: Path
) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    for i in range(5):
        make_photo(folder / f"{i}.jpg", seed=i, size=(48, 32))
    key = _register(env, folder, recursive=True)
    assert env.materialize(key).success
    with env.resources["qdrant"].open() as vectors:
        vectors.delete_collection("photos")  # the recorded syncs now say 5 points that are gone
    result = env.materialize(key)
    md = metadata(result, "qdrant_photos")
    assert md["reconciled"] == 1 and md["upserted"] == 5 and md["points_in_collection"] == 5
    assert all(check.passed for check in result.get_asset_check_evaluations())
