"""Shared fixtures: a tiny random CLIP registered through open_clip's config API and saved as a
checkpoint (loaded through the real weights path), a temporary VIBE_HOME / DAGSTER_HOME, and
helpers to materialize the ingest chain in-process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from vibe_assets.assets import blip_captions
from vibe_assets.collections import CollectionSpec
from vibe_assets.definitions import build_assets
from vibe_assets.instance import INSTANCE_YAML
from vibe_assets.partitions import PARTITIONS_NAME
from vibe_assets.resources import (
    BlipResource,
    ClipResource,
    InferenceDeviceResource,
    StoreResource,
    VectorStoreResource,
)
from vibe_assets.settings import CAPTIONS_TAG

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


@pytest.fixture(autouse=True)
def _restore_dagster_event_batch_size() -> Iterator[None]:
    """A test whose instance is on PostgreSQL sets Dagster's ``DAGSTER_EVENT_BATCH_SIZE`` for
    the process (:func:`vibe_assets.instance.optimize_storage`); later tests get the value
    they would have had on their own."""
    name = "DAGSTER_EVENT_BATCH_SIZE"
    before = os.environ.get(name)
    yield
    if before is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = before


MACHINE_SETTINGS = (
    "QDRANT_URL",
    "QDRANT_API_KEY",
    "VIBE_COLLECTION",
    "VIBE_COLLECTIONS_FILE",
    "VIBE_TEXT_ENCODER",
    "VIBE_API_KEY",
    "VIBE_PHOTO_ROOTS",
    "VIBE_WEB_URL",
)
"""Settings a developer's shell may hold that no test should inherit."""


def use_home(patch: pytest.MonkeyPatch, home: Path, checkpoint: Path) -> Path:
    """Point vibe_assets (CLI, resources, Dagster) at a temporary ``home`` (``VIBE_HOME``,
    ``DAGSTER_HOME`` below it) with the tiny CLIP saved at ``checkpoint``, and nothing from
    the real machine (:data:`MACHINE_SETTINGS` unset); returns ``home``."""
    patch.setenv("VIBE_HOME", str(home))
    patch.setenv("DAGSTER_HOME", str(home / "dagster"))
    patch.setenv("VIBE_CLIP_MODEL", TINY_CLIP)
    patch.setenv("VIBE_CLIP_WEIGHTS", str(checkpoint))
    for name in MACHINE_SETTINGS:
        patch.delenv(name, raising=False)
    return home


@pytest.fixture
def cli_env(tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`use_home` for one test: its ``VIBE_HOME``."""
    return use_home(monkeypatch, tmp_path / "home", tiny_clip_checkpoint)


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


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BLIP (BlipConfig) with a BERT-layout vocabulary written here, saved with
    ``save_pretrained`` so it loads through transformers' real ``from_pretrained`` path.

    transformers 5 ignores ``BertTokenizer(vocab_file=...)``: the vocabulary is passed as
    ``vocab=``.
    """
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "dog", "bird"]
    words += [f"w{i}" for i in range(54)]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = BlipConfig(
        text_config={
            "vocab_size": len(words),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "bos_token_id": 2,
            "sep_token_id": 3,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    torch.manual_seed(4321)
    folder = tmp_path_factory.mktemp("tiny_blip")
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    return folder


@dataclass
class Env:
    """A test environment: temp home, resources, ephemeral Dagster instance."""

    home: Path
    resources: dict[str, Any]
    instance: dg.DagsterInstance
    collections: list[CollectionSpec]

    @property
    def store(self) -> StoreResource:
        return self.resources["store"]

    def add_folder(self, path: Path) -> str:
        folder = self.store.registry.add(path)
        self.instance.add_dynamic_partitions(PARTITIONS_NAME, [folder.key])
        return folder.key

    def materialize(
        self,
        *keys: str,
        captions: bool = False,
        only_captions: bool = False,
        raise_on_error: bool = True,
        tags: dict[str, str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Materialize the chain for one key, or a range run from keys[0] to keys[-1] (or the
        range in ``tags``). Captions off by default (like ``vibe-assets ingest`` on CPU);
        ``captions`` includes blip_captions with the run tag ``vibe/captions=on`` (like
        ``--captions``); ``only_captions`` runs what the caption job runs (blip_captions +
        Qdrant: a caption run)."""
        assets = build_assets(self.collections)
        if only_captions:
            selection = [blip_captions.key, *(dg.AssetKey(c.asset_name) for c in self.collections)]
        elif captions:
            selection = [k for a in assets for k in a.keys]
        else:
            selection = [k for a in assets for k in a.keys if k != blip_captions.key]
        kwargs: dict[str, Any] = {"selection": selection}
        # captions=True is `vibe-assets ingest --captions`: the run tag overrides VIBE_CAPTIONS.
        on = {CAPTIONS_TAG: "on"} if captions else {}
        if tags is not None:
            kwargs["tags"] = {**on, **tags}
        elif len(keys) == 1:
            kwargs["partition_key"] = keys[0]
            if on:
                kwargs["tags"] = on
        else:
            kwargs["tags"] = {
                **on,
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            }
        return dg.materialize(
            assets,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=raise_on_error,
            **kwargs,
        )

    def points(
        self, with_vectors: bool = False, collection: str = COLLECTION
    ) -> dict[str, dict[str, Any]]:
        """``{sha256: payload}`` of every point (payload plus ``_vector``, a (D,) float32 array,
        when asked)."""
        with self.resources["qdrant"].open() as vectors:
            if not vectors.collection_exists(collection):
                return {}
            records = list(vectors.scroll(collection, with_vectors=with_vectors))
        return {
            r.payload["sha256"]: {**r.payload, **({"_vector": r.vector} if with_vectors else {})}
            for r in records
        }


@pytest.fixture
def env(tmp_path: Path, tiny_clip_checkpoint: Path, tiny_blip_dir: Path) -> Iterator[Env]:
    home = tmp_path / "vibe_home"
    resources = {
        "store": StoreResource(home=str(home)),
        "clip": ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint), batch_size=4),
        "device": InferenceDeviceResource(cache_dir=str(home / "probe-cache")),
        "blip": BlipResource(model_name=str(tiny_blip_dir), batch_size=4, max_new_tokens=8),
        "qdrant": VectorStoreResource(path=str(home / "vectors")),
    }
    collections = [CollectionSpec(COLLECTION, TINY_CLIP, str(tiny_clip_checkpoint))]
    with repo_instance() as instance:
        yield Env(home, resources, instance, collections)


def repo_instance() -> contextlib.AbstractContextManager[dg.DagsterInstance]:
    """An ephemeral Dagster instance configured like the repository's ``dagster.yaml`` (pool
    limits of 1 and run monitoring included; the text the CLI writes, kept equal to the file by
    ``test_definitions``)."""
    return dg.instance_for_test(overrides=yaml.safe_load(INSTANCE_YAML))


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
