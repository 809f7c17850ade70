"""Shared fixtures: a tiny random CLIP registered through open_clip's config API and saved as a
checkpoint (loaded through the real weights path), a temporary VIBE_HOME / DAGSTER_HOME, and
helpers to materialize the ingest chain in-process."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vibe_assets.definitions import build_assets
from vibe_assets.partitions import PARTITIONS_NAME
from vibe_assets.resources import ClipResource, QdrantResource, StoreResource

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason="../shared/samples is not beside the repository"
)

TINY_CLIP = "vibe-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 2,
    },
}
COLLECTION = "photos"


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Register the tiny architecture with open_clip and save random weights as a checkpoint."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip_config")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    torch.manual_seed(1234)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    ckpt = folder / "tiny_clip.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return ckpt


@dataclass
class Env:
    """A test environment: temp home, resources, ephemeral Dagster instance."""

    home: Path
    resources: dict[str, Any]
    instance: dg.DagsterInstance

    @property
    def store(self) -> StoreResource:
        return self.resources["store"]

    def add_folder(self, path: Path) -> str:
        folder = self.store.registry.add(path)
        self.instance.add_dynamic_partitions(PARTITIONS_NAME, [folder.key])
        return folder.key

    def materialize(self, *keys: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        """Materialize the whole chain for one key, or a range run from keys[0] to keys[-1]."""
        kwargs: dict[str, Any] = {}
        if len(keys) == 1:
            kwargs["partition_key"] = keys[0]
        else:
            kwargs["tags"] = {
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            }
        return dg.materialize(
            build_assets(COLLECTION),
            instance=self.instance,
            resources=self.resources,
            raise_on_error=raise_on_error,
            **kwargs,
        )

    def points(self) -> dict[str, dict[str, Any]]:
        """``{sha256: payload}`` of every point in the collection."""
        with self.resources["qdrant"].client() as client:
            if not client.collection_exists(COLLECTION):
                return {}
            records, _ = client.scroll(COLLECTION, limit=10_000, with_payload=True)
        return {r.payload["sha256"]: r.payload for r in records}


@pytest.fixture
def env(tmp_path: Path, tiny_clip_checkpoint: Path) -> Iterator[Env]:
    home = tmp_path / "vibe_home"
    resources = {
        "store": StoreResource(home=str(home)),
        "clip": ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint), batch_size=4),
        "qdrant": QdrantResource(path=str(home / "qdrant")),
    }
    with dg.instance_for_test() as instance:
        yield Env(home, resources, instance)


def copy_samples(dest: Path, *names: str) -> Path:
    """Copy sample files (``photos/x.jpg`` style names) into ``dest`` (writable)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SAMPLES / name, dest / Path(name).name)
        (dest / Path(name).name).chmod(0o644)
    return dest


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """Plain metadata values of ``asset``'s materialization in ``result``."""
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat is not None and mat.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in mat.metadata.items()}
    raise AssertionError(f"no materialization of {asset}")
