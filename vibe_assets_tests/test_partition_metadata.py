"""Per-partition truth in range runs (issue 12, item 3): each folder partition's materialization
carries its own folder's counts and failures, run totals only under ``run_...`` keys; a vanished
folder is "removed", not a failed file; sizes in human units."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vibe_assets.partitions import folder_key
from vibe_assets.report import RUN_PREFIX, human_size
from vibe_assets.resources.store import StoreResource
from vibe_assets.scan import scan_folder
from vibe_assets_tests.conftest import COLLECTION, Env, copy_samples, needs_samples

QDRANT = f"qdrant_{COLLECTION}"
A_PHOTOS = ["photos/mpl_grace_hopper.jpg", "photos/sklearn_china.jpg", "photos/pp_dog_orange.jpg"]
A_BROKEN = "edge/truncated_sharp.jpg"
B_PHOTOS = [
    "photos/sklearn_flower.jpg",
    "photos/pp_elephants.jpg",
    "photos/imageio_kodim03.png",
    "photos/immich_prairie_falcon.jpg",
]
SHARED_TIMINGS = ("_seconds", "_per_s", "_per_image")  # run_... timings of a shared step
ASSETS = ["photo_files", "photo_hashes", "photo_previews", "clip_embeddings", QDRANT]


def by_partition(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict[str, Any]]:
    """``{partition key: plain metadata}`` of ``asset``'s materializations in ``result``."""
    out: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat.asset_key.to_user_string() == asset:
            assert mat.partition not in out, f"two materializations of {asset} {mat.partition}"
            out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
    return out


def check_metadata(result: dg.ExecuteInProcessResult, check: str) -> dict[str, Any]:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == check]
    return {k: v.value for k, v in evaluation.metadata.items()}


def failed_paths(md: dict[str, Any]) -> list[str]:
    return [row["path"] for row in md["failures_json"]]


# -- Task A: per-partition truth -----------------------------------------------------------------


@needs_samples
def test_range_run_gives_each_partition_its_own_numbers(env: Env, tmp_path: Path) -> None:
    a = copy_samples(tmp_path / "a", *A_PHOTOS, A_BROKEN)
    b = copy_samples(tmp_path / "b", *B_PHOTOS)
    ka, kb = env.add_folder(a), env.add_folder(b)
    broken = str(a / Path(A_BROKEN).name)
    size = {k: sum(p.stat().st_size for p in d.iterdir()) for k, d in ((ka, a), (kb, b))}

    result = env.materialize(ka, kb, captions=True)
    assert result.success
    md = {asset: by_partition(result, asset) for asset in [*ASSETS, "blip_captions"]}
    for asset, parts in md.items():
        assert set(parts) == {ka, kb}, asset

    files = md["photo_files"]
    assert (files[ka]["files"], files[kb]["files"]) == (4, 4)
    assert files[ka]["folder"] == str(a) and files[kb]["folder"] == str(b)
    assert files[ka]["failed"] == files[kb]["failed"] == 0
    assert files[ka]["folder_removed"] is False and files[kb]["folder_removed"] is False
    assert files[ka]["run_files"] == files[kb]["run_files"] == 8
    assert files[ka]["run_partitions"] == 2

    hashes = md["photo_hashes"]
    for key in (ka, kb):
        assert (hashes[key]["files"], hashes[key]["hashed"], hashes[key]["unchanged"]) == (4, 4, 0)
        assert hashes[key]["bytes_hashed"] == size[key]
        assert hashes[key]["hashed_size"] == human_size(size[key])
        assert hashes[key]["run_bytes_hashed"] == size[ka] + size[kb]

    previews = md["photo_previews"]
    assert (previews[ka]["files_processed"], previews[kb]["files_processed"]) == (3, 4)
    assert (previews[ka]["failed"], previews[kb]["failed"]) == (1, 0)
    assert failed_paths(previews[ka]) == [broken] and failed_paths(previews[kb]) == []
    assert previews[ka]["failed_by_code"] == {"ERR_TRUNCATED_IMAGE": 1}
    assert previews[kb]["failed_by_code"] == {}
    assert (previews[ka]["decoded"], previews[kb]["decoded"]) == (3, 4)
    assert (previews[ka]["unique_images"], previews[kb]["unique_images"]) == (4, 4)
    assert previews[ka]["from_cache"] == previews[kb]["from_cache"] == 0
    assert previews[ka]["run_failed"] == 1 and previews[ka]["run_decoded"] == 7
    assert previews[ka]["run_files_processed"] == 7

    embeddings = md["clip_embeddings"]
    assert (embeddings[ka]["embedded"], embeddings[kb]["embedded"]) == (3, 4)
    assert embeddings[ka]["from_cache"] == embeddings[kb]["from_cache"] == 0
    assert embeddings[ka]["run_embedded"] == 7 and embeddings[ka]["model_loaded"] is True

    captions = md["blip_captions"]
    assert (captions[ka]["captioned"], captions[kb]["captioned"]) == (3, 4)
    assert (len(captions[ka]["samples"].records), len(captions[kb]["samples"].records)) == (3, 4)
    assert captions[ka]["run_captioned"] == 7

    points = md[QDRANT]
    assert (points[ka]["upserted"], points[kb]["upserted"]) == (3, 4)
    assert points[ka]["deleted"] == points[kb]["deleted"] == 0
    assert points[ka]["points_in_collection"] == 7 and points[ka]["run_upserted"] == 7
    assert points[ka]["optimize_seconds"] == 0.0  # 7 points: far from a segment's worth

    by_folder = {
        r.data["partition"]: r.data
        for r in check_metadata(result, "every_image_has_a_point")["by_folder"].records
    }
    assert by_folder[ka] == {"partition": ka, "expected": 3, "missing": 0, "bad_vectors": 0}
    assert by_folder[kb] == {"partition": kb, "expected": 4, "missing": 0, "bad_vectors": 0}

    # Second range run: a file gone from a, nothing new in b.
    (a / Path(A_PHOTOS[0]).name).unlink()
    again = env.materialize(ka, kb)
    previews = by_partition(again, "photo_previews")
    assert (previews[ka]["from_cache"], previews[kb]["from_cache"]) == (3, 4)  # incl. the failure
    assert previews[ka]["decoded"] == previews[kb]["decoded"] == 0
    assert failed_paths(previews[ka]) == [broken] and failed_paths(previews[kb]) == []
    embeddings = by_partition(again, "clip_embeddings")
    assert (embeddings[ka]["from_cache"], embeddings[kb]["from_cache"]) == (2, 4)
    points = by_partition(again, QDRANT)
    assert (points[ka]["deleted"], points[kb]["deleted"]) == (1, 0)
    assert (points[ka]["unchanged"], points[kb]["unchanged"]) == (2, 4)
    assert points[kb]["run_deleted"] == 1 and points[kb]["points_in_collection"] == 6


@needs_samples
def test_an_image_in_two_folders_counts_in_each(env: Env, tmp_path: Path) -> None:
    a = copy_samples(tmp_path / "a", "photos/sklearn_china.jpg", "photos/mpl_grace_hopper.jpg")
    b = copy_samples(tmp_path / "b", "photos/sklearn_china.jpg")
    ka, kb = env.add_folder(a), env.add_folder(b)
    result = env.materialize(ka, kb)
    previews = by_partition(result, "photo_previews")
    assert (previews[ka]["decoded"], previews[kb]["decoded"]) == (2, 1)
    assert previews[ka]["run_decoded"] == 2 and previews[ka]["run_unique_images"] == 2
    embeddings = by_partition(result, "clip_embeddings")
    assert (embeddings[ka]["embedded"], embeddings[kb]["embedded"]) == (2, 1)
    assert embeddings[ka]["run_embedded"] == 2
    points = by_partition(result, QDRANT)
    assert (points[ka]["upserted"], points[kb]["upserted"]) == (2, 0)
    assert points[kb]["payload_updated"] == 1  # b's path added to a's point


@needs_samples
def test_single_partition_run_has_no_run_totals(env: Env, tmp_path: Path) -> None:
    key = env.add_folder(copy_samples(tmp_path / "a", "photos/sklearn_china.jpg", A_BROKEN))
    result = env.materialize(key)
    previews = by_partition(result, "photo_previews")[key]
    assert previews["files_processed"] == 1 and previews["failed"] == 1
    assert "run_decode_ms_per_image" in previews  # timings of the shared step are the run's
    for asset in ASSETS:
        [md] = by_partition(result, asset).values()
        totals = [k for k in md if k.startswith(RUN_PREFIX) and not k.endswith(SHARED_TIMINGS)]
        assert totals == [], asset


# -- Task B: a vanished folder is removed --------------------------------------------------------


@needs_samples
def test_vanished_folder_is_removed_not_failed_and_registry_marks_it(
    env: Env, tmp_path: Path
) -> None:
    keep = copy_samples(tmp_path / "keep", *B_PHOTOS[:2])
    gone = copy_samples(tmp_path / "gone", *A_PHOTOS)
    kk, kg = env.add_folder(keep), env.add_folder(gone)
    assert env.materialize(kk, kg).success and len(env.points()) == 5
    assert env.store.registry.get(kg).vanished_at is None

    shutil.rmtree(gone)
    result = env.materialize(kk, kg)
    assert result.success
    files = by_partition(result, "photo_files")
    assert files[kg]["folder_removed"] is True and files[kg]["files"] == 0
    assert files[kk]["folder_removed"] is False and files[kk]["files"] == 2
    assert files[kg]["run_folders_removed"] == 1
    for asset in ASSETS:  # nothing failed anywhere in the run
        for key, md in by_partition(result, asset).items():
            assert md.get("failed", 0) == 0 and md.get("failures_json", []) == [], (asset, key)
            assert md.get("run_failed", 0) == 0, asset
    points = by_partition(result, QDRANT)
    assert points[kg]["deleted"] == 3 and points[kg]["folder_removed"] is True
    assert points[kk]["deleted"] == 0 and points[kk]["unchanged"] == 2
    assert sorted(p["paths"][0] for p in env.points().values()) == sorted(
        str(keep / Path(n).name) for n in B_PHOTOS[:2]
    )
    vanished_at = env.store.registry.get(kg).vanished_at
    assert vanished_at is not None and env.store.registry.get(kg).vanished
    assert env.store.registry.get(kk).vanished_at is None

    assert env.materialize(kg).success  # still gone: the first time it was seen gone is kept
    assert env.store.registry.get(kg).vanished_at == vanished_at

    copy_samples(gone, A_PHOTOS[0])  # it comes back
    back = env.materialize(kg)
    assert by_partition(back, "photo_files")[kg]["folder_removed"] is False
    assert by_partition(back, QDRANT)[kg]["upserted"] == 1
    assert env.store.registry.get(kg).vanished_at is None and len(env.points()) == 3


def test_scan_of_a_missing_root_is_removed_an_unreadable_one_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed = scan_folder(tmp_path / "never-there")
    assert removed.removed and removed.files == [] and removed.failures == []
    assert removed.to_json()["removed"] is True

    real_scandir = os.scandir

    def denied(path: Any) -> Any:
        if str(path) == str(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    scan = scan_folder(tmp_path)
    assert not scan.removed
    assert [(f["path"], f["code"]) for f in scan.failures] == [
        (str(tmp_path), "ERR_PERMISSION_DENIED")
    ]


def test_registry_migrates_and_marks_vanished_folders(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db_path = home / "registry.sqlite3"  # the registry file before the state database
    folder = tmp_path / "photos"
    folder.mkdir()
    key = folder_key(folder)
    with sqlite3.connect(db_path) as db:  # the schema before vanished_at existed
        db.execute(
            "CREATE TABLE folders (key TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE,"
            " added_at REAL NOT NULL, recursive INTEGER NOT NULL DEFAULT 1)"
        )
        db.execute("INSERT INTO folders VALUES (?, ?, 1.0, 0)", (key, str(folder.resolve())))
    db.close()
    registry = StoreResource(home=str(home)).registry  # imported into state.sqlite3
    assert not db_path.exists() and (home / "registry.sqlite3.imported").is_file()
    [old] = registry.list()
    assert (old.key, old.recursive, old.vanished_at, old.vanished) == (key, False, None, False)

    assert registry.mark_vanished(key, when=100.0)
    assert not registry.mark_vanished(key, when=200.0)  # the first time is kept
    assert registry.get(key).vanished_at == 100.0 and registry.get(key).vanished
    assert registry.find(str(folder)).vanished_at == 100.0
    assert not registry.mark_vanished("unknown-key")
    assert registry.clear_vanished(key) and not registry.clear_vanished(key)
    assert registry.get(key).vanished_at is None
    added = registry.add(tmp_path)
    assert added.vanished_at is None and registry.add_many([tmp_path])[0] == [added]


# -- Task D: sizes in human units ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024**2 - 1, "1.0 MiB"),  # 1023.999 KiB rounds up into the next unit
        (5 * 1024**2 + 1, "5.0 MiB"),
        (int(15.6 * 1024**3), "15.6 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (3 * 1024**6, "3.0 EiB"),
        (5000 * 1024**6, "5000.0 EiB"),  # the largest unit grows past 1024
        (2048.0, "2.0 KiB"),
    ],
)
def test_human_size(n_bytes: int, text: str) -> None:
    assert human_size(n_bytes) == text


def test_human_size_refuses_negative_sizes() -> None:
    with pytest.raises(ValueError, match="negative"):
        human_size(-1)
