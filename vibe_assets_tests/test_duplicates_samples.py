"""Duplicate tiers on real sample photos and copies made from them, through the real pipeline:
each copy lands in its tier with the right keeper, unrelated photos are never grouped, hashes
are stored at decode time (and in the Qdrant payload) or computed lazily for images decoded
before, the ``duplicate_groups`` asset and the ``duplicates report`` command."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from vibe_assets.assets.duplicates import build_duplicates_asset
from vibe_assets.cli_duplicates import duplicates
from vibe_assets.duplicates import DuplicateGroup, find_groups, read_report, report_path
from vibe_assets.imaging.phash import stored_phashes
from vibe_assets_tests.conftest import SAMPLES, TINY_CLIP, Env, metadata, needs_samples

pytestmark = needs_samples

OLD = 1_577_836_800  # 2020-01-01: originals
NEW = 1_704_067_200  # 2024-01-01: copies

ORIGINALS = [
    "pp_elephants.jpg",
    "mei_Nikon_D90.jpg",
    "pp_dog_orange.jpg",
    "sklearn_flower.jpg",
    "immich_prairie_falcon.jpg",
    # unrelated to everything else
    "sklearn_china.jpg",
    "imageio_kodim03.png",
    "mpl_grace_hopper.jpg",
    "lomiri_sunset_Aitzol_Berasategi.jpg",
]
UNRELATED = {
    "sklearn_china.jpg",
    "imageio_kodim03.png",
    "mpl_grace_hopper.jpg",
    "lomiri_sunset_Aitzol_Berasategi.jpg",
}


def _strip_app1(data: bytes) -> bytes:
    """A JPEG without its APP1 segments (EXIF, XMP): the compressed pixels untouched."""
    out = bytearray(data[:2])
    i = 2
    while data[i] == 0xFF and data[i + 1] != 0xDA:
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] != 0xE1:
            out += data[i : i + 2 + length]
        i += 2 + length
    return bytes(out + data[i:])


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sample originals (mtime 2020) and copies made from them (mtime 2024)."""
    lib = tmp_path_factory.mktemp("dups") / "lib"
    lib.mkdir()
    for name in ORIGINALS:
        shutil.copyfile(SAMPLES / "photos" / name, lib / name)
    # exact: a renamed copy
    shutil.copyfile(lib / "pp_elephants.jpg", lib / "elephants_renamed.jpg")
    with Image.open(lib / "pp_elephants.jpg") as im:
        im.save(lib / "elephants.png")  # PNG conversion (EXIF dropped)
    with Image.open(lib / "mei_Nikon_D90.jpg") as im:
        half = im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)
        half.save(lib / "nikon_half.jpg", quality=80)  # resized + recompressed
    (lib / "nikon_noexif.jpg").write_bytes(_strip_app1((lib / "mei_Nikon_D90.jpg").read_bytes()))
    with Image.open(lib / "pp_dog_orange.jpg") as im:
        dx, dy = im.width * 3 // 100, im.height * 3 // 100
        im.crop((dx, dy, im.width - dx, im.height - dy)).save(lib / "dog_crop.jpg", quality=90)
    with Image.open(lib / "sklearn_flower.jpg") as im:
        ImageEnhance.Brightness(im).enhance(1.10).save(lib / "flower_bright.jpg", quality=95)
    with Image.open(lib / "immich_prairie_falcon.jpg") as im:
        exif = im.getexif()
        ifd = exif.get_ifd(0x8769)
        ifd[0x9003] = ifd[0x9004] = "2022:04:01 11:31:56"  # the same picture, "taken" a day later
        im.save(lib / "falcon_retimed.jpg", quality=95, exif=exif)
        dx = im.width * 15 // 100  # a burst: the camera moved by 15 % between shots
        im.crop((0, 0, im.width - dx, im.height)).save(lib / "falcon_burst_1.jpg", quality=90)
        im.crop((dx, 0, im.width, im.height)).save(lib / "falcon_burst_2.jpg", quality=90)
    for path in lib.iterdir():
        stamp = OLD if path.name in ORIGINALS else NEW
        os.utime(path, (stamp, stamp))
    return lib


def _ingest(env: Env, library: Path) -> str:
    key = env.add_folder(library)
    assert env.materialize(key).success
    return key


def _names(group: DuplicateGroup) -> list[list[str]]:
    return [[Path(p).name for p in m.paths] for m in group.members]


def _model_id(env: Env) -> str:
    spec = env.collections[0]
    return env.resources["clip"].for_model(spec.model, spec.weights).model_id


def _shas(env: Env, key: str) -> dict[str, str]:
    """``{file name: sha256}`` of the folder's listing."""
    hashes = env.store.folder_hashes(key)
    assert hashes is not None
    return {Path(p).name: e["sha256"] for p, e in hashes["files"].items()}


EXPECTED_NEAR = {  # keeper's file name: (members' file names in keeper order, rule that decided)
    "pp_elephants.jpg": (
        [["pp_elephants.jpg", "elephants_renamed.jpg"], ["elephants.png"]],
        "most EXIF fields: 10 vs 0",
    ),
    "mei_Nikon_D90.jpg": (
        [["mei_Nikon_D90.jpg"], ["nikon_noexif.jpg"], ["nikon_half.jpg"]],
        "same pixel count (4288x2848); most EXIF fields: 7 vs 0",
    ),
    "pp_dog_orange.jpg": ([["pp_dog_orange.jpg"], ["dog_crop.jpg"]], "largest pixel count"),
    "sklearn_flower.jpg": (
        [["sklearn_flower.jpg"], ["flower_bright.jpg"]],
        "oldest file: mtime 2020-01-01T00:00:00+00:00 vs 2024-01-01T00:00:00+00:00",
    ),
    "immich_prairie_falcon.jpg": (
        [["immich_prairie_falcon.jpg"], ["falcon_retimed.jpg"]],
        "oldest: taken 2022-03-31T11:31:56 vs 2022-04-01T11:31:56",
    ),
}


def test_each_copy_lands_in_its_tier_with_the_right_keeper(env: Env, library: Path) -> None:
    key = _ingest(env, library)
    shas = _shas(env, key)
    groups = find_groups(env.store, _model_id(env), tiers=["exact", "near"])

    (exact,) = [g for g in groups if g.tier == "exact"]
    assert [Path(p).name for p in exact.paths] == ["pp_elephants.jpg", "elephants_renamed.jpg"]
    assert Path(exact.keep.path).name == "pp_elephants.jpg"  # the older file
    assert "oldest file" in exact.reason and exact.distance == 0

    near = {Path(g.keep.path).name: g for g in groups if g.tier == "near"}
    assert set(near) == set(EXPECTED_NEAR)
    for keeper, (members, rule) in EXPECTED_NEAR.items():
        group = near[keeper]
        assert _names(group) == members, keeper
        assert rule in group.reason, group.reason
        assert group.distance is not None and group.distance <= 8
    # the bursts (different shots) and unrelated photos are in no exact or near group
    grouped = {Path(p).name for g in groups for p in g.paths}
    assert not grouped & (UNRELATED | {"falcon_burst_1.jpg", "falcon_burst_2.jpg"})

    # the hash was stored at decode time and is in the Qdrant payload of every point
    stored = stored_phashes(env.store.state, shas.values())
    assert set(stored) == set(shas.values()) and all(stored.values())
    points = env.points()
    assert {sha: p["phash"] for sha, p in points.items()} == stored


def _plant_vectors(env: Env, shas: dict[str, str]) -> None:
    """Embeddings with a known answer: every image its own axis (cosine 0 with the others),
    except a burst around the falcon, China close to the dog, and the near duplicates that are
    not keepers on their keeper's axis (they would join a similar group if they were not left
    out of the tier)."""
    dim = 32
    axes = {sha: k for k, sha in enumerate(dict.fromkeys(shas.values()))}

    def axis(name: str, extra: float = 0.0, extra_axis: int = 31) -> np.ndarray:
        v = np.zeros(dim, dtype=np.float32)
        v[axes[shas[name]]] = 1.0
        v[extra_axis] += extra
        return v / np.linalg.norm(v)

    vectors = {sha: axis(name) for name, sha in shas.items()}
    vectors[shas["falcon_burst_1.jpg"]] = axis("immich_prairie_falcon.jpg", 0.2, 30)
    vectors[shas["falcon_burst_2.jpg"]] = axis("immich_prairie_falcon.jpg", 0.25, 29)
    vectors[shas["falcon_retimed.jpg"]] = axis("immich_prairie_falcon.jpg")
    vectors[shas["sklearn_china.jpg"]] = axis("pp_dog_orange.jpg", 0.3, 28)
    vectors[shas["dog_crop.jpg"]] = axis("pp_dog_orange.jpg")
    vectors[shas["nikon_half.jpg"]] = axis("mei_Nikon_D90.jpg")
    env.store.put_embeddings(_model_id(env), vectors.items())


def test_similar_shots_group_apart_from_near_duplicates(env: Env, library: Path) -> None:
    key = _ingest(env, library)
    shas = _shas(env, key)
    _plant_vectors(env, shas)
    groups = find_groups(env.store, _model_id(env))
    near_ids = {Path(g.keep.path).name: g.id for g in groups if g.tier == "near"}
    similar = sorted((g for g in groups if g.tier == "similar"), key=lambda g: g.keep.path)
    assert [_names(g) for g in similar] == [
        [["immich_prairie_falcon.jpg"], ["falcon_burst_1.jpg"], ["falcon_burst_2.jpg"]],
        [["sklearn_china.jpg"], ["pp_dog_orange.jpg"]],
    ]
    falcon, china = similar
    assert "largest pixel count: 800x533" in falcon.reason
    # a near group takes part through its keeper only, and says so
    assert falcon.keep.near_group == near_ids["immich_prairie_falcon.jpg"]
    assert china.members[1].near_group == near_ids["pp_dog_orange.jpg"]
    assert china.keep.near_group is None
    assert falcon.score == pytest.approx(1 / (np.sqrt(1.04) * np.sqrt(1.0625)), abs=1e-5)
    in_similar = {Path(p).name for g in similar for p in g.paths}
    assert not in_similar & {"falcon_retimed.jpg", "dog_crop.jpg", "nikon_half.jpg"}


def test_images_decoded_before_hashes_existed_are_hashed_lazily(
    env: Env, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _ingest(env, library)
    shas = _shas(env, key)
    before = stored_phashes(env.store.state, shas.values())
    expected = [g.as_dict() for g in find_groups(env.store, None, tiers=["near"])]
    with env.store.state.write() as conn:  # as a database migrated from version 2 has them
        conn.execute("UPDATE decode_outcomes SET phash = NULL")
    gone = shas["nikon_half.jpg"]
    env.store.preview_path(gone).unlink()  # evicted from the cache: decoded again, only it

    import vibe_assets.imaging.decode as decode_module

    decoded: list[str] = []
    real = decode_module.decode_photo

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode_module, "decode_photo", counting)
    lines: list[str] = []
    again = [g.as_dict() for g in find_groups(env.store, None, tiers=["near"], log=lines.append)]
    assert again == expected
    assert decoded == ["nikon_half.jpg"]
    assert stored_phashes(env.store.state, shas.values()) == before  # stored, and identical
    assert any(f"perceptual hash of {len(before)} images" in line for line in lines)
    decoded.clear()
    find_groups(env.store, None, tiers=["near"])
    assert decoded == []  # remembered


def test_asset_materializes_with_counts_table_and_report_the_cli_reads(
    env: Env, library: Path, monkeypatch: pytest.MonkeyPatch, tiny_clip_checkpoint: Path
) -> None:
    key = _ingest(env, library)
    _plant_vectors(env, _shas(env, key))
    asset = build_duplicates_asset(env.collections[0])
    assert asset.key == dg.AssetKey("duplicate_groups")
    result = dg.materialize(
        [asset],
        instance=env.instance,
        resources={"store": env.store, "clip": env.resources["clip"]},
    )
    assert result.success
    md = metadata(result, "duplicate_groups")
    assert (md["exact_groups"], md["near_groups"], md["similar_groups"]) == (1, 5, 2)
    assert md["near_images"] == 11 and md["counts"]["exact"]["files"] == 2
    rows = md["largest_groups"].records
    assert len(rows) == 8
    assert [r.data["tier"] for r in rows] == ["exact"] + ["near"] * 5 + ["similar"] * 2
    near_rows = [r.data for r in rows if r.data["tier"] == "near"]
    assert near_rows[0]["images"] == 3 and near_rows[0]["keep"].endswith("mei_Nikon_D90.jpg")
    assert all(r["distance"] <= 8 and r["score"] is None and r["reason"] for r in near_rows)
    assert all(r.data["score"] >= 0.92 for r in rows if r.data["tier"] == "similar")
    path = report_path(env.home, "photos")
    assert md["report_path"] == str(path)
    saved = read_report(path)
    assert saved["collection"] == "photos" and len(saved["groups"]) == 8

    # the CLI: computed (JSON and text) and saved reports
    monkeypatch.setenv("VIBE_HOME", str(env.home))
    monkeypatch.setenv("VIBE_CLIP_MODEL", TINY_CLIP)
    monkeypatch.setenv("VIBE_CLIP_WEIGHTS", str(tiny_clip_checkpoint))
    monkeypatch.delenv("VIBE_COLLECTION", raising=False)
    monkeypatch.delenv("VIBE_COLLECTIONS_FILE", raising=False)
    runner = CliRunner()
    out = runner.invoke(duplicates, ["report", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert [g["id"] for g in doc] == [g.id for g in saved["groups"]]
    for g in doc:
        assert {"id", "tier", "paths", "keep", "reason", "distance", "score", "members"} <= set(g)
        assert g["keep"] in g["paths"] and len(g["paths"]) >= 2
        assert (g["distance"] is not None) == (g["tier"] != "similar")
        assert (g["score"] is not None) == (g["tier"] == "similar")
    args = ["report", "--json", "--tier", "near", "--near-threshold", "0"]
    near = runner.invoke(duplicates, args)
    assert near.exit_code == 0, near.output
    assert {g["tier"] for g in json.loads(near.stdout)} == {"near"}
    assert all(g["distance"] == 0 for g in json.loads(near.stdout))  # only identical hashes
    text = runner.invoke(duplicates, ["report", "--tier", "similar", "--window-seconds", "5"])
    assert text.exit_code == 0 and "no duplicate groups" in text.stdout  # crops lost taken_at
    text = runner.invoke(duplicates, ["report"])
    assert text.exit_code == 0, text.output
    assert text.stdout.count("[near] ") == 5 and text.stdout.count("\n  why: ") == 8
    assert "  keep  " in text.stdout and "exact: 1 groups, 2 files" in text.stdout
    saved_cli = runner.invoke(duplicates, ["report", "--saved", "--json", "--tier", "exact"])
    assert saved_cli.exit_code == 0, saved_cli.output
    assert [g["id"] for g in json.loads(saved_cli.stdout)] == [saved["groups"][0].id]
    path.unlink()
    missing = runner.invoke(duplicates, ["report", "--saved"])
    assert missing.exit_code == 1 and "no saved report" in missing.output
    bad = runner.invoke(duplicates, ["report", "--collection", "nope"])
    assert bad.exit_code == 2 and "no configured collection" in bad.output
