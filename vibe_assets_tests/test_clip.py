"""CLIP weights: a checkpoint loads through open_clip's real path; no silent random fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vibe_assets.resources.clip import ClipResource, ClipWeightsError
from vibe_assets_tests.conftest import TINY_CLIP


def test_checkpoint_weights_are_loaded(tiny_clip_checkpoint: Path) -> None:
    clip = ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint))
    saved = torch.load(tiny_clip_checkpoint, weights_only=True)["state_dict"]
    loaded = clip.load().model.state_dict()
    # every tensor, bit for bit: none kept the (skipped) random initialisation
    assert loaded.keys() - {"attn_mask"} == saved.keys() - {"attn_mask"}
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    assert clip.model_id.startswith(f"{TINY_CLIP}/ckpt-")
    assert clip.embedding_dim() == 32

    image = clip.load().preprocess(Image.new("RGB", (100, 80), (200, 30, 30)))
    vectors = clip.encode_images(torch.stack([image, image]))
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    texts = clip.encode_texts(["a red square", "a dog"])
    assert texts.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)


def count_init_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap ``torch.nn.init``'s random initialisers; returns the list their calls append to."""
    calls: list[str] = []
    for name in ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_"):
        original = getattr(torch.nn.init, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, wrapper)
    return calls


def test_checkpoint_load_skips_random_init_and_random_weights_do_not(
    tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_init_calls(monkeypatch)
    ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint)).load()
    assert calls == []
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        ClipResource(model_name=TINY_CLIP, weights="random").load()
    assert "normal_" in calls  # random weights are still initialised (and seeded)
    assert getattr(torch.nn.init.normal_, "__name__", "") == "wrapper"  # patch undone after load


def test_checkpoint_missing_a_weight_fails_instead_of_leaving_it_uninitialised(
    tiny_clip_checkpoint: Path, tmp_path: Path
) -> None:
    state = torch.load(tiny_clip_checkpoint, weights_only=True)
    del state["state_dict"]["visual.proj"]
    partial = tmp_path / "partial.pt"
    torch.save(state, partial)
    with pytest.raises(ClipWeightsError, match=r"visual\.proj"):
        ClipResource(model_name=TINY_CLIP, weights=str(partial)).load()


def test_changed_checkpoint_is_another_model(tiny_clip_checkpoint: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    state = torch.load(tiny_clip_checkpoint, weights_only=True)
    state["state_dict"]["visual.proj"] += 1.0
    torch.save(state, other)
    a = ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint)).model_id
    b = ClipResource(model_name=TINY_CLIP, weights=str(other)).model_id
    assert a != b


def test_missing_checkpoint_names_the_setting(tiny_clip_checkpoint: Path) -> None:
    clip = ClipResource(model_name=TINY_CLIP, weights="/nonexistent/clip.pt")
    with pytest.raises(ClipWeightsError, match="VIBE_CLIP_WEIGHTS"):
        clip.load()


def test_unknown_pretrained_tag_fails_and_never_falls_back(tiny_clip_checkpoint: Path) -> None:
    clip = ClipResource(model_name="ViT-B-32", weights="no_such_weights")
    with pytest.raises(ClipWeightsError, match="VIBE_CLIP_WEIGHTS"):
        clip.load()
    assert not clip.loaded


def test_random_weights_only_when_asked_and_loud(tiny_clip_checkpoint: Path) -> None:
    clip = ClipResource(model_name=TINY_CLIP, weights="random")
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        clip.load()
    assert clip.model_id == f"{TINY_CLIP}/random-seed0"
    # Seeded: two loads agree, so ingest and search use the same random model.
    again = ClipResource(model_name=TINY_CLIP, weights="random")
    with pytest.warns(UserWarning):
        torch.testing.assert_close(
            again.load().model.state_dict()["visual.proj"],
            clip.load().model.state_dict()["visual.proj"],
        )


def test_split_preprocess_gives_the_same_batch(tiny_clip_checkpoint: Path) -> None:
    """PIL steps in loader threads + batched normalisation == open_clip's own preprocess."""
    loaded = ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint)).load()
    prepare, to_batch = loaded.split_preprocess()
    rng = np.random.default_rng(3)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for w, h in [(100, 80), (37, 240), (512, 341)]
    ]
    images.append(images[0].convert("L"))  # a grey preview still becomes 3 channels
    arrays = [prepare(im) for im in images]
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in arrays)
    expected = torch.stack([loaded.preprocess(im) for im in images])
    torch.testing.assert_close(to_batch(arrays), expected, rtol=0, atol=0)


def test_split_preprocess_falls_back_for_unknown_pipelines(tiny_clip_checkpoint: Path) -> None:
    loaded = ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint)).load()

    def custom(image: Image.Image) -> torch.Tensor:
        return torch.zeros(3, 4, 4)

    loaded.preprocess = custom
    prepare, to_batch = loaded.split_preprocess()
    assert prepare is custom and to_batch is torch.stack
