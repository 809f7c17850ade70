"""The ``decode_and_embed`` step: decoding hidden behind inference, and each asset alone."""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

import vibe_assets.assets.previews as previews_module
from vibe_assets.definitions import build_assets
from vibe_assets.resources import ClipResource
from vibe_assets_tests.conftest import Env, metadata


def photos(folder: Path, n: int) -> Path:
    """``n`` distinct 640x480 JPEGs (a gradient shifted per image)."""
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 255, 640, dtype=np.uint8)
    for i in range(n):
        pixels = np.stack([np.roll(ramp, 37 * i)[None].repeat(480, 0)] * 3, axis=-1)
        pixels[..., i % 3] //= 2
        Image.fromarray(pixels).save(folder / f"p{i:02d}.jpg", quality=90)
    return folder


def materialize(env: Env, key: str, *names: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        build_assets(env.collections),
        selection=[dg.AssetKey(n) for n in names],
        resources=env.resources,
        instance=env.instance,
        partition_key=key,
    )


def test_model_runs_before_decoding_is_done(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With batches of 2 and two batches prefetched, the first forward pass must come before the
    last images are even opened: decode and inference are one pipeline, not two stages."""
    key = env.add_folder(photos(tmp_path / "lib", 10))
    events: list[str] = []
    lock = threading.Lock()
    real_decode = previews_module.decode_photo
    real_encode = ClipResource.encode_images

    def decode_photo(path, *args, **kwargs):
        with lock:
            events.append(f"decode {Path(path).name}")
        return real_decode(path, *args, **kwargs)

    def encode_images(self, batch):
        with lock:
            events.append(f"encode {len(batch)}")
        return real_encode(self, batch)

    monkeypatch.setattr(previews_module, "decode_photo", decode_photo)
    monkeypatch.setattr(ClipResource, "encode_images", encode_images)
    clip: ClipResource = env.resources["clip"]
    env.resources["clip"] = ClipResource(
        model_name=clip.model_name, weights=clip.weights, batch_size=2
    )
    result = env.materialize(key)

    decodes = [i for i, e in enumerate(events) if e.startswith("decode")]
    encodes = [i for i, e in enumerate(events) if e.startswith("encode")]
    assert len(decodes) == 10 and len(encodes) == 5
    assert encodes[0] < decodes[-1], events  # the model ran while images were still decoding
    previews = metadata(result, "photo_previews")
    assert previews["decoded"] == 10 and previews["run_decode_ms_per_image"] > 0
    assert "run_decode_seconds" not in previews  # no wall time of its own beside the model
    assert metadata(result, "clip_embeddings")["embedded"] == 10
    assert len(env.points()) == 10


def test_embedding_is_that_of_the_stored_preview(env: Env, tmp_path: Path) -> None:
    """Images embedded while decoding get the embedding their stored preview gives, so a
    re-embedding run (previews read from the store) would produce the same vectors."""
    key = env.add_folder(photos(tmp_path / "lib", 5))
    env.materialize(key)
    clip: ClipResource = env.resources["clip"]
    loaded = clip.load()
    store = env.store
    shas = [e["sha256"] for e in store.folder_hashes(key)["files"].values()]
    assert len(set(shas)) == 5
    import torch

    for sha in shas:
        with Image.open(store.preview_path(sha)) as im:
            tensor = loaded.preprocess(im.convert("RGB"))
        expected = clip.encode_images(torch.stack([tensor]))[0]
        np.testing.assert_allclose(store.get_embedding(clip.model_id, sha), expected, atol=1e-5)


def test_each_asset_alone(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Previews alone decode without loading CLIP; embeddings alone embed stored previews
    without decoding anything."""
    key = env.add_folder(photos(tmp_path / "lib", 4))
    loads: list[str] = []
    real_load = ClipResource._load

    def counting_load(self):
        loads.append(self.model_name)
        return real_load(self)

    monkeypatch.setattr(ClipResource, "_load", counting_load)
    first = materialize(env, key, "photo_files", "photo_hashes", "photo_previews")
    alone = metadata(first, "photo_previews")
    assert alone["decoded"] == 4 and alone["run_decode_seconds"] > 0
    assert loads == []
    with pytest.raises(AssertionError):
        metadata(first, "clip_embeddings")

    decoded: list[str] = []
    real_decode = previews_module.decode_photo
    monkeypatch.setattr(
        previews_module,
        "decode_photo",
        lambda path, *a, **kw: decoded.append(path) or real_decode(path, *a, **kw),
    )
    second = materialize(env, key, "clip_embeddings")
    assert metadata(second, "clip_embeddings")["embedded"] == 4
    assert decoded == [] and len(loads) == 1
    with pytest.raises(AssertionError):
        metadata(second, "photo_previews")
