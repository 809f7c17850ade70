"""End-to-end ingest on real sample files: scan -> hash -> preview -> embed -> Qdrant."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vibe_assets.assets.hashes as hashes_module
import vibe_assets.assets.previews as previews_module
from vibe_assets.imaging.errors import ErrorCode
from vibe_assets.resources import ClipResource
from vibe_assets.resources.qdrant import point_id
from vibe_assets_tests.conftest import SAMPLES, Env, copy_samples, metadata, needs_samples

PHOTOS = sorted(p.name for p in (SAMPLES / "photos").glob("*")) if SAMPLES.is_dir() else []
RAWS = sorted(p.name for p in (SAMPLES / "raw").glob("*")) if SAMPLES.is_dir() else []

# Outcome of every file in samples/edge, from samples/README.md.
EDGE_EXPECTED: dict[str, ErrorCode | None] = {
    "wrong-ext_jpeg_pp_this-is-a-jpeg.png": None,
    "gif_photo_sharp_Crash_test.gif": None,
    "heic_pp_iphone_7.heic": None,
    "png_rgba_vips.png": None,
    "png_16bit_rgb_vips_sample.png": None,
    "cmyk_sharp_Channel_digital_image_CMYK_color.jpg": None,
    "exif6_sharp_Landscape_6.jpg": None,
    "exif8_sharp_Landscape_8.jpg": None,
    "truncated_sharp.jpg": ErrorCode.ERR_TRUNCATED_IMAGE,
    "corrupt-header_sharp.jpg": ErrorCode.ERR_DECODE_IMAGE,
    "empty_pp.jpg": ErrorCode.ERR_EMPTY_FILE,
    "not-image_text.jpg": ErrorCode.ERR_NOT_AN_IMAGE,
    "raw_truncated_filetype_Leica-M10.dng": ErrorCode.ERR_DECODE_RAW,
    "raw_stripped_exiftool_DNG.dng": ErrorCode.ERR_DECODE_RAW,
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts of files hashed, images decoded, images embedded and model loads."""
    counts: Counter[str] = Counter()
    real_hash_many = hashes_module.hash_many
    real_decode = previews_module.decode_photo
    real_encode = ClipResource.encode_images
    real_load = ClipResource._load

    def hash_many(paths, *args, **kwargs):
        paths = list(paths)
        counts["hashed"] += len(paths)
        return real_hash_many(paths, *args, **kwargs)

    def decode_photo(path, *args, **kwargs):
        counts["decoded"] += 1
        return real_decode(path, *args, **kwargs)

    def encode_images(self, batch):
        counts["embedded"] += len(batch)
        return real_encode(self, batch)

    def load(self):
        counts["model_loads"] += 1
        return real_load(self)

    monkeypatch.setattr(hashes_module, "hash_many", hash_many)
    monkeypatch.setattr(previews_module, "decode_photo", decode_photo)
    monkeypatch.setattr(ClipResource, "encode_images", encode_images)
    monkeypatch.setattr(ClipResource, "_load", load)
    return counts


def make_photo(path: Path, seed: int, size: tuple[int, int] = (320, 240)) -> Path:
    """A small random-noise JPEG (distinct bytes per seed)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@needs_samples
def test_photos_and_raws_become_points_then_rerun_recomputes_nothing(
    env: Env, calls: Counter[str]
) -> None:
    photos = env.add_folder(SAMPLES / "photos")
    raws = env.add_folder(SAMPLES / "raw")
    result = env.materialize(photos, raws)  # one range run over both folders
    assert result.success

    points = env.points()
    assert len(points) == len(PHOTOS) + len(RAWS) == 13
    assert calls["model_loads"] == 1  # once for the whole range run
    assert calls["decoded"] == 13 and calls["embedded"] == 13 and calls["hashed"] == 13

    nikon = next(p for p in points.values() if p["paths"][0].endswith("mei_Nikon_D90.jpg"))
    assert nikon["width"] == 4288 and nikon["height"] == 2848 and nikon["format"] == "jpeg"
    assert nikon["folder_keys"] == [photos]
    assert nikon["embed_model"] == env.resources["clip"].model_id
    assert (nikon["camera_make"], nikon["camera_model"]) == ("NIKON CORPORATION", "NIKON D90")
    assert nikon["taken_at"].startswith("20")  # EXIF capture time, ISO 8601
    china = next(p for p in points.values() if p["paths"][0].endswith("sklearn_china.jpg"))
    assert "camera_model" not in china and "taken_at" not in china  # no EXIF: nothing guessed
    dng = next(p for p in points.values() if p["paths"][0].endswith("Canon550D_MagicLantern.dng"))
    assert (dng["width"], dng["height"], dng["format"]) == (1734, 1156, "raw")
    for sha, payload in points.items():
        assert payload["sha256"] == sha
        assert len(payload["paths"]) == 1 and Path(payload["paths"][0]).is_file()
        assert env.store.preview_path(sha).is_file() and env.store.thumbnail_path(sha).is_file()
        with Image.open(env.store.preview_path(sha)) as im:
            assert max(im.size) <= 512

    with env.resources["qdrant"].open() as vectors:
        (record,) = vectors.retrieve("photos", [point_id(nikon["sha256"])], with_vectors=True)
    vector = record.vector
    assert vector is not None and vector.dtype == np.float32
    assert vector.shape == (32,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4

    calls.clear()
    again = env.materialize(photos, raws)
    assert again.success
    assert calls == Counter()  # nothing hashed, decoded, embedded; the model never loaded
    assert metadata(again, "clip_embeddings")["model_loaded"] is False
    assert metadata(again, "qdrant_photos")["run_unchanged"] == 13  # a range run's total
    assert env.points().keys() == points.keys()


@needs_samples
def test_modified_deleted_and_copied_files(env: Env, calls: Counter[str], tmp_path: Path) -> None:
    folder = copy_samples(
        tmp_path / "lib",
        "photos/pp_dog_orange.jpg",
        "photos/pp_elephants.jpg",
        "photos/sklearn_flower.jpg",
    )
    key = env.add_folder(folder)
    assert env.materialize(key).success
    before = env.points()
    assert len(before) == 3

    # Modify one file: only it is re-hashed, re-decoded and re-embedded; its old point goes.
    dog = folder / "pp_dog_orange.jpg"
    with Image.open(dog) as im:
        im.rotate(90, expand=True).save(dog, quality=85)
    # Delete another file: its point disappears.
    (folder / "pp_elephants.jpg").unlink()
    # Copy the third: one point, two paths.
    shutil.copy(folder / "sklearn_flower.jpg", folder / "flower_copy.jpg")

    calls.clear()
    assert env.materialize(key).success
    assert calls["hashed"] == 2  # the modified file and the new copy
    assert calls["decoded"] == 1 and calls["embedded"] == 1

    after = env.points()
    assert len(after) == 2
    flower = next(p for p in after.values() if len(p["paths"]) == 2)
    assert flower["paths"] == sorted(
        [str(folder / "flower_copy.jpg"), str(folder / "sklearn_flower.jpg")]
    )
    new_dog = next(p for p in after.values() if p["paths"] == [str(dog)])
    assert new_dog["sha256"] not in before
    assert (new_dog["width"], new_dog["height"]) == (488, 331)


def test_copy_across_two_folders_and_range_run(
    env: Env, calls: Counter[str], tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(5):
        make_photo(a / f"a{i}.jpg", seed=i)
    make_photo(b / "b0.png", seed=100)
    shutil.copy(a / "a0.jpg", b / "same_as_a0.jpg")
    (a / ".hidden.jpg").write_bytes((a / "a1.jpg").read_bytes())
    (a / "notes.txt").write_text("not a photo, not an image extension")
    ka, kb = env.add_folder(a), env.add_folder(b)

    result = env.materialize(ka, kb)
    assert result.success
    assert calls["model_loads"] == 1 and calls["decoded"] == 6
    points = env.points()
    assert len(points) == 6
    shared = next(p for p in points.values() if len(p["paths"]) == 2)
    assert shared["paths"] == sorted([str(a / "a0.jpg"), str(b / "same_as_a0.jpg")])
    assert shared["folder_keys"] == sorted([ka, kb])
    assert metadata(result, "photo_files")["run_files"] == 7  # hidden file and .txt skipped

    # Removing the copy from folder b keeps the point (still in a) with one path and one key.
    (b / "same_as_a0.jpg").unlink()
    assert env.materialize(kb).success
    shared_after = env.points()[shared["sha256"]]
    assert shared_after["paths"] == [str(a / "a0.jpg")] and shared_after["folder_keys"] == [ka]


@needs_samples
def test_every_edge_file_is_processed_or_failed_with_its_code(env: Env) -> None:
    key = env.add_folder(SAMPLES / "edge")
    result = env.materialize(key)
    assert result.success  # bad files never fail the run
    md = metadata(result, "photo_previews")
    failed = {Path(f["path"]).name: f["code"] for f in md["failures_json"]}
    expected_failed = {n: c.value for n, c in EDGE_EXPECTED.items() if c is not None}
    assert failed == expected_failed
    assert md["files_processed"] == sum(c is None for c in EDGE_EXPECTED.values())
    assert md["files_processed"] + md["failed"] == len(list((SAMPLES / "edge").iterdir()))
    assert md["failed_by_code"] == dict(sorted(Counter(expected_failed.values()).items()))

    points = env.points()
    names = {Path(p["paths"][0]).name: p for p in points.values()}
    assert set(names) == {n for n, c in EDGE_EXPECTED.items() if c is None}
    # Stored width/height are the upright ones (EXIF orientation 6 and 8 on a 450x600 file).
    for name in ("exif6_sharp_Landscape_6.jpg", "exif8_sharp_Landscape_8.jpg"):
        assert (names[name]["width"], names[name]["height"]) == (600, 450)
    assert names["wrong-ext_jpeg_pp_this-is-a-jpeg.png"]["format"] == "jpeg"

    # Failures are cached by content: the next run does not retry them.
    again = metadata(env.materialize(key), "photo_previews")
    assert again["decoded"] == 0 and again["failed"] == md["failed"]


def test_collection_with_another_vector_size_fails_clearly(env: Env, tmp_path: Path) -> None:
    from vibe_assets.vectors import Distance

    folder = tmp_path / "lib"
    folder.mkdir()
    make_photo(folder / "x.jpg", seed=7)
    with env.resources["qdrant"].open() as vectors:
        vectors.ensure_collection("photos", 64, Distance.COSINE)
    result = env.materialize(env.add_folder(folder), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = str(failure.step_failure_data.error)
    assert "64-d" in text and "32-d" in text


def test_vanished_file_is_reported_not_fatal(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    make_photo(folder / "ok.jpg", seed=1)
    key = env.add_folder(folder)
    # A file vanishing after the scan is reported with its code; the others go on.
    from vibe_assets.assets import files as files_module

    real_scan = files_module.scan_folder

    def scan_then_delete(root, recursive=True):
        result = real_scan(root, recursive)
        make_photo(folder / "gone.jpg", seed=2)
        result.files.append(type(result.files[0])(str(folder / "gone.jpg"), 10, 1, 1, "jpeg"))
        os.unlink(folder / "gone.jpg")
        return result

    monkeypatch.setattr(files_module, "scan_folder", scan_then_delete)
    result = env.materialize(key)
    md = metadata(result, "photo_previews")
    assert md["files_processed"] == 1
    assert [(Path(f["path"]).name, f["code"]) for f in md["failures_json"]] == [
        ("gone.jpg", "ERR_FILE_VANISHED")
    ]
    assert len(env.points()) == 1
