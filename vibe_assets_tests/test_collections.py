"""Several collections (shared embeddings per model), asset checks, pools, collections CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from vibe_assets.assets import blip_captions, build_decode_and_embed, build_qdrant_asset
from vibe_assets.cli import main
from vibe_assets.collections import CollectionConfigError, CollectionSpec, load_collections
from vibe_assets.instance import INSTANCE_YAML
from vibe_assets.resources import ClipResource
from vibe_assets.resources.qdrant import point_id
from vibe_assets_tests.conftest import TINY_CLIP, Env


def _library(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


@pytest.fixture
def other_checkpoint(tiny_clip_checkpoint: Path, tmp_path: Path) -> Path:
    """Same tiny architecture, other weights: another model id."""
    state = torch.load(tiny_clip_checkpoint, weights_only=True)
    state["state_dict"] = {k: v * 0.5 for k, v in state["state_dict"].items()}
    path = tmp_path / "other.pt"
    torch.save(state, path)
    return path


def test_collections_share_embeddings_per_model(
    env: Env,
    tmp_path: Path,
    tiny_clip_checkpoint: Path,
    other_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env.collections = [
        CollectionSpec("photos", TINY_CLIP, str(tiny_clip_checkpoint)),
        CollectionSpec("photos_dot", TINY_CLIP, str(tiny_clip_checkpoint), distance="dot"),
        CollectionSpec("photos_other", TINY_CLIP, str(other_checkpoint)),
    ]
    embedded: Counter[str] = Counter()
    real = ClipResource.encode_images

    def encode(self, batch):
        embedded[self.model_id] += len(batch)
        return real(self, batch)

    monkeypatch.setattr(ClipResource, "encode_images", encode)
    key = env.add_folder(_library(tmp_path / "lib"))
    result = env.materialize(key)
    assert result.success
    assert sorted(embedded.values()) == [3, 3]  # two distinct models, each image once
    main_points = env.points(with_vectors=True)
    dot_points = env.points(with_vectors=True, collection="photos_dot")
    other_points = env.points(with_vectors=True, collection="photos_other")
    assert main_points.keys() == dot_points.keys() == other_points.keys() and len(main_points) == 3
    sha = next(iter(main_points))
    np.testing.assert_allclose(main_points[sha]["_vector"], dot_points[sha]["_vector"], atol=1e-6)
    assert not np.allclose(main_points[sha]["_vector"], other_points[sha]["_vector"])
    assert main_points[sha]["embed_model"] != other_points[sha]["embed_model"]

    checks = result.get_asset_check_evaluations()
    assert len(checks) == 9 and all(c.passed for c in checks)


def test_asset_check_catches_a_bad_vector(env: Env, tmp_path: Path) -> None:
    from vibe_assets.vectors import VectorPoint

    # Dot distance: Qdrant stores vectors as given (Cosine would re-normalise them).
    spec = env.collections[0]
    env.collections = [CollectionSpec(spec.name, spec.model, spec.weights, distance="dot")]
    key = env.add_folder(_library(tmp_path / "lib", 2))
    assert env.materialize(key).success
    sha, payload = next(iter(env.points().items()))
    bad = np.array([2.0] + [0.0] * 31, dtype=np.float32)
    with env.resources["qdrant"].open() as vectors:  # corrupt one stored vector (norm 2)
        vectors.upsert("photos", [VectorPoint(point_id(sha), bad, payload)])
    result = env.materialize(key)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["vectors_finite_unit_norm"].passed
    assert evaluations["every_image_has_a_point"].passed
    assert evaluations["vector_size_matches_model"].passed


def test_model_steps_are_in_the_gpu_pool_and_the_pool_limit_is_one() -> None:
    specs = [CollectionSpec("photos")]
    assert build_decode_and_embed([("ViT-B-32", "x")]).op.pool == "gpu"
    assert blip_captions.op.pool == "gpu"
    assert build_qdrant_asset(specs[0]).op.pool == "qdrant"
    config = yaml.safe_load(INSTANCE_YAML)
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    with dg.instance_for_test(overrides=config) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_collections_file_parsing(tmp_path: Path) -> None:
    good = tmp_path / "c.toml"
    good.write_text(
        '[[collection]]\nname = "photos"\n\n'
        '[[collection]]\nname = "big"\nmodel = "ViT-L-14"\nweights = "openai"\ndistance = "dot"\n'
    )
    specs = load_collections(good)
    assert [s.name for s in specs] == ["photos", "big"]
    assert specs[1].model == "ViT-L-14" and specs[1].distance == "dot"
    for bad in (
        '[[collection]]\nname = "Bad Name"\n',
        '[[collection]]\nname = "a"\n[[collection]]\nname = "a"\n',
        '[[collection]]\nname = "a"\ndistance = "manhattan"\n',
        '[[collection]]\nname = "a"\ncolour = "red"\n',
        "not toml [",
    ):
        good.write_text(bad)
        with pytest.raises(CollectionConfigError):
            load_collections(good)


def test_collections_cli_list_and_delete(
    tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("VIBE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    config = tmp_path / "collections.toml"
    entry = f'model = "{TINY_CLIP}"\nweights = "{tiny_clip_checkpoint}"\n'
    config.write_text(
        f'[[collection]]\nname = "photos"\n{entry}\n[[collection]]\nname = "later"\n{entry}'
    )
    monkeypatch.setenv("VIBE_COLLECTIONS_FILE", str(config))
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(_library(tmp_path / "lib")), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert {k: v["points"] for k, v in json.loads(result.stdout)["collections"].items()} == {
        "photos": 3,
        "later": 3,
    }
    listed = json.loads(runner.invoke(main, ["collections", "list", "--json"]).stdout)
    assert [(r["name"], r["points"], r["vector_size"]) for r in listed] == [
        ("later", 3, 32),
        ("photos", 3, 32),
    ]
    hits = runner.invoke(main, ["search", "x", "--collection", "later", "--json"])
    assert hits.exit_code == 0 and len(json.loads(hits.stdout)) == 3
    deleted = runner.invoke(main, ["collections", "delete", "later", "--yes"])
    assert deleted.exit_code == 0 and "3 points" in deleted.stdout
    listed = json.loads(runner.invoke(main, ["collections", "list", "--json"]).stdout)
    assert [(r["name"], r["exists"]) for r in listed] == [("later", False), ("photos", True)]
    assert runner.invoke(main, ["search", "x", "--collection", "nope"]).exit_code == 2
