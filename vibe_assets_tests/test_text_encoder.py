"""The fast text path: open_clip's tokenizer rebuilt without torch, the text tower exported to
ONNX (same embeddings as ``encode_text``), keyed by model id, never a pickle, and the fallbacks."""

from __future__ import annotations

import json
import pickle
import random
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vibe_assets import text_encoder as te
from vibe_assets.resources.clip import ClipResource, checkpoint_digest
from vibe_assets.text_encoder import (
    ClipTokenizer,
    Manifest,
    OnnxTextEncoder,
    TextEncoderUnavailable,
    TorchTextEncoder,
    ensure_export,
    export_key,
    open_text_encoder,
    text_encoders_dir,
)
from vibe_assets_tests.conftest import TINY_CLIP

TEXTS = [
    "a photo of a dog",
    "beach",
    "Sunset over the SEA!!",
    "",
    "東京 タワー at night 🌃",
    "people; walking -- on the 'sand'",
    "dog " * 90,  # past the 77-token context: truncated, end token last
]


@pytest.fixture(scope="module")
def reference_tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def ours() -> ClipTokenizer:
    return ClipTokenizer()


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.printable + "éèàüöñçß東京タワーмосква😀🐶—–…«»“”‘’øæ\u00a0\u200b\u0301ﬁ①&;#"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 150))) for _ in range(n)]


@pytest.mark.parametrize(
    "text",
    [
        "a photo of a dog",
        "",
        "   leading and trailing   ",
        "UPPER lower MiXeD",
        "it's they're we've I'm you'll he'd DON'T",
        "punctuation!?.,;:()[]{}<>/\\|@#$%^&*_=+~`\"'",
        "café naïve résumé ñandú straße",
        "東京タワー москва 北京 😀🐶🏖️",
        "&amp; &lt;b&gt; &quot;html&quot; &#39;",
        "cafÃ© mojibake",
        "<start_of_text> literal <end_of_text>",
        "tab\tnew\nline\r\nzero\u200bwidth nbsp\u00a0",
        "numbers 0123456789 3.14 1,000,000",
        "t-shirt black-and-white 1950s sci-fi",
        "word " * 100,
        "supercalifragilisticexpialidocious" * 20,
        "é" * 200,
    ],
)
def test_tokenizer_equals_open_clip(reference_tokenizer, ours: ClipTokenizer, text: str) -> None:
    expected = reference_tokenizer([text]).numpy()
    got = ours([text])
    assert got.dtype == np.int64 and got.shape == (1, 77)
    np.testing.assert_array_equal(got, expected)


def test_tokenizer_equals_open_clip_on_random_strings(reference_tokenizer, ours) -> None:
    texts = _random_texts(400, seed=7)
    np.testing.assert_array_equal(ours(texts), reference_tokenizer(texts).numpy())


def test_long_text_is_truncated_with_the_end_token_last(ours: ClipTokenizer) -> None:
    row = ours(["dog " * 200])[0]
    assert row[0] == ours.sot_id and row[-1] == ours.eot_id and (row != 0).all()


def test_tokenizer_imports_no_torch() -> None:
    code = (
        "import sys; from vibe_assets.text_encoder import ClipTokenizer; "
        "ClipTokenizer()(['a dog']); print(sorted(m for m in ('torch', 'open_clip') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- export -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_clip_checkpoint: Path):
    home = tmp_path_factory.mktemp("te_home")
    clip = ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint), device="cpu")
    folder = ensure_export(clip, home, say=lambda _: None)
    return home, clip, folder


def test_onnx_text_tower_equals_encode_text(exported) -> None:
    _, clip, folder = exported
    encoder = OnnxTextEncoder.open(folder, clip.model_id)
    texts = [*TEXTS, *_random_texts(20, seed=3)]
    got = encoder.encode(texts)
    expected = clip.encode_texts(texts)
    assert got.shape == expected.shape == (len(texts), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert ((got * expected).sum(1) >= 0.9999).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # batch of one == row of a batch (the batch axis is dynamic)
    np.testing.assert_allclose(encoder.encode([texts[2]])[0], got[2], atol=1e-5)
    assert encoder.encode([]).shape == (0, 32)
    manifest = Manifest.read(folder)
    assert manifest is not None and manifest.status == "ok" and manifest.dim == 32
    assert manifest.check["min_cosine"] >= 0.9999 and manifest.check["max_abs_diff"] <= 1e-4


def test_export_holds_no_pickle_and_loads_none(exported, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    _, clip, folder = exported
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([te.MANIFEST, te.GRAPH, te.WEIGHTS, te.BPE_FILE])
    for path in folder.iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", path  # pickle protocol 2+ / torch.save zip
    json.loads((folder / te.MANIFEST).read_text())
    graph = onnx.load(str(folder / te.GRAPH), load_external_data=False)  # protobuf
    assert [i.name for i in graph.graph.input] == ["tokens"]

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    OnnxTextEncoder.open(folder, clip.model_id).encode(["a dog"])


def test_export_is_keyed_by_model_id(
    exported, tiny_clip_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    home, clip, folder = exported
    assert folder == text_encoders_dir(home) / export_key(clip.model_id)
    # another checkpoint (one weight changed) is another model: another folder, never reused
    state = torch.load(tiny_clip_checkpoint, weights_only=True)
    state["state_dict"]["text_projection"] += 0.5
    other_ckpt = tmp_path / "other.pt"
    torch.save(state, other_ckpt)
    other = ClipResource(model_name=TINY_CLIP, weights=str(other_ckpt), device="cpu")
    assert other.model_id != clip.model_id
    assert export_key(other.model_id) != export_key(clip.model_id)
    with pytest.raises(TextEncoderUnavailable, match="holds"):
        OnnxTextEncoder.open(folder, other.model_id)
    # another library version is another key too
    assert export_key(clip.model_id, {"open_clip": "0", "torch": "0"}) != folder.name
    # an existing export is reused: no second export
    monkeypatch.setattr(te, "export_text_encoder", lambda *a: pytest.fail("exported again"))
    assert isinstance(open_text_encoder(clip, home, say=lambda _: None), OnnxTextEncoder)


def test_random_weights_export_and_warn(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    clip = ClipResource(model_name=TINY_CLIP, weights="random", device="cpu")
    lines: list[str] = []
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        encoder = open_text_encoder(clip, tmp_path, say=lines.append)
    assert isinstance(encoder, OnnxTextEncoder) and encoder.is_random
    assert any("exporting" in line for line in lines)
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        expected = ClipResource(model_name=TINY_CLIP, weights="random").encode_texts(TEXTS)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-4)


def test_failed_export_falls_back_to_the_full_model(
    tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    clip = ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint), device="cpu")
    lines: list[str] = []
    encoder = open_text_encoder(clip, tmp_path, say=lines.append)
    assert isinstance(encoder, TorchTextEncoder)
    assert any("warning" in line and "exporter exploded" in line for line in lines)
    np.testing.assert_allclose(encoder.encode(TEXTS), clip.encode_texts(TEXTS))
    # nothing half-written is left behind (temporary folder removed, no export folder)
    assert list(text_encoders_dir(tmp_path).iterdir()) == []


def test_export_that_differs_from_encode_text_is_refused(
    tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = te._check_export

    def skewed(*args, **kwargs):
        return {**real(*args, **kwargs), "min_cosine": 0.99}

    monkeypatch.setattr(te, "_check_export", skewed)
    clip = ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint), device="cpu")
    lines: list[str] = []
    assert isinstance(open_text_encoder(clip, tmp_path, say=lines.append), TorchTextEncoder)
    assert any("differs from encode_text" in line for line in lines)
    assert not (text_encoders_dir(tmp_path) / export_key(clip.model_id)).exists()


def test_unsupported_tokenizer_is_remembered(
    tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(te, "_tokenizer_mismatch", lambda ref, ours: "tokenizer HFTokenizer")
    clip = ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint), device="cpu")
    lines: list[str] = []
    assert isinstance(open_text_encoder(clip, tmp_path, say=lines.append), TorchTextEncoder)
    manifest = Manifest.read(text_encoders_dir(tmp_path) / export_key(clip.model_id))
    assert manifest is not None and manifest.status == "unsupported"
    monkeypatch.setattr(te, "export_text_encoder", lambda *a: pytest.fail("tried again"))
    assert isinstance(open_text_encoder(clip, tmp_path, say=lines.append), TorchTextEncoder)


def test_torch_mode_is_the_old_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIBE_TEXT_ENCODER", "torch")
    clip = ClipResource(model_name=TINY_CLIP, weights="random")
    assert isinstance(open_text_encoder(clip, tmp_path), TorchTextEncoder)
    monkeypatch.setenv("VIBE_TEXT_ENCODER", "fast")
    with pytest.raises(ValueError, match="VIBE_TEXT_ENCODER"):
        open_text_encoder(clip, tmp_path)


# -- naming a model without torch ---------------------------------------------------------------


def test_checkpoint_digest_is_remembered_by_file_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vibe_assets.resources.clip as clip_mod

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights v1")
    cache = tmp_path / "models" / "digests.json"
    calls: list[Path] = []
    real = clip_mod._file_sha256
    monkeypatch.setattr(clip_mod, "_file_sha256", lambda p: calls.append(p) or real(p))
    first = checkpoint_digest(ckpt, cache)
    assert checkpoint_digest(ckpt, cache) == first and len(calls) == 1  # remembered
    ckpt.write_bytes(b"weights v2")  # another size and mtime: hashed again
    second = checkpoint_digest(ckpt, cache)
    assert second != first and len(calls) == 2
    assert checkpoint_digest(ckpt, None) == second and len(calls) == 3  # no cache: hashed


def test_model_id_of_a_checkpoint_imports_no_torch(tiny_clip_checkpoint: Path) -> None:
    code = (
        "import sys; from vibe_assets.resources.clip import ClipResource; "
        f"c = ClipResource(model_name={TINY_CLIP!r}, weights={str(tiny_clip_checkpoint)!r}); "
        "r = ClipResource(model_name='ViT-B-32', weights='random'); "
        "t = ClipResource(model_name='ViT-B-32', weights='laion2b_s34b_b79k'); "
        "print(c.model_id, r.model_id, t.model_id, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ckpt_id, random_id, tag_id, torch_loaded = out.stdout.split()
    assert ckpt_id == ClipResource(model_name=TINY_CLIP, weights=str(tiny_clip_checkpoint)).model_id
    assert (random_id, tag_id) == ("ViT-B-32/random-seed0", "ViT-B-32/laion2b_s34b_b79k")
    assert torch_loaded == "False"
