"""CLIP text embeddings without torch: the text tower exported once to ONNX, run by ONNX Runtime.

A text search needs one CLIP text embedding, but loading open_clip costs ~3 s of imports (torch)
and both towers (~2.2 GB RSS, ~10 s cold for ViT-B-32 on this 2-vCPU machine). Here the text
tower (``encode_text`` followed by the L2 normalisation) is exported once per model with
``torch.onnx.export``; later searches run it with ONNX Runtime on the CPU, and tokenise with
:class:`ClipTokenizer` (open_clip's BPE rebuilt on HF ``tokenizers``), so they import neither
torch nor open_clip.

Where (a recomputable cache, never state: delete it and the next search exports again)::

    $VIBE_HOME/models/text/<key>/
        manifest.json       what the export is (model id, dim, context length, versions, checks)
        text.onnx           the graph (ONNX protobuf; nothing here is a pickle)
        text.onnx.data      its weights (raw tensors, memory-mapped by ONNX Runtime)
        bpe_simple_vocab_16e6.txt.gz   the BPE vocabulary the export was checked with

``<key>`` hashes the model id (architecture + weights; a checkpoint by its SHA-256, see
:attr:`ClipResource.model_id <vibe_assets.resources.clip.ClipResource.model_id>`), the
open_clip and torch versions and :data:`FORMAT_VERSION`, so another checkpoint, model or
library version never reuses a stale export. An export is written to a temporary folder,
checked (its embeddings against ``encode_text``: cosine >= :data:`MIN_COSINE` and max abs
difference <= :data:`MAX_ABS_DIFF`; the tokenizer's ids against open_clip's), then renamed
into place. A model the fast path cannot reproduce (another tokenizer) is recorded as
``unsupported`` and served by the full model.

``VIBE_TEXT_ENCODER``: ``auto`` (default: ONNX, exporting on first use, else the full model
with a warning) or ``torch`` (always the full open_clip model: the old path).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import html
import importlib.metadata
import importlib.util
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vibe_assets.settings import cpu_budget, env_choice

if TYPE_CHECKING:
    from vibe_assets.resources.clip import ClipResource

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped when the export's layout or graph changes: older exports are then ignored."""
MODELS_DIR = "models"
TEXT_DIR = "text"
MANIFEST = "manifest.json"
GRAPH = "text.onnx"
WEIGHTS = "text.onnx.data"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
ENCODER_ENV = "VIBE_TEXT_ENCODER"
ENCODER_MODES = ("auto", "torch")
MIN_COSINE = 0.9999
MAX_ABS_DIFF = 1e-4
OPSET = 17

PROBE_TEXTS = (
    "a photo of a dog",
    "beach",
    "sunset over the sea, with people walking on the sand",
    "",
    "   lots   of\twhitespace\n ",
    "UPPER case and MiXeD",
    "punctuation!? (brackets) [square] {curly} #hash @at 50% $5.99 ... -- ;;",
    "it's a dog's life; they're we've I'm you'll he'd",
    "café naïve résumé 東京タワー москва 😀🐶 ñandú",
    "&amp; html &lt;escaped&gt; &quot;quotes&quot;",
    "numbers 1234567890 and 3.14159",
    "<start_of_text> literal special <end_of_text> tokens",
    "mojibake fixed by ftfy: cafÃ©",
    "word " * 100,
    "a-very-long-hyphenated-compound-word-that-goes-on-and-on " * 12,
)
"""Texts an export is checked on (tokens and embeddings): short, empty, unicode, punctuation,
HTML entities, special-token literals and ones past the 77-token context (truncated)."""


class TextEncoderUnavailable(RuntimeError):
    """No usable ONNX export for this model (missing, unsupported, damaged or failed checks)."""


class TextEncoder(Protocol):
    """Something that embeds texts for one CLIP model."""

    is_random: bool

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), D) float32``, L2-normalised rows."""
        ...

    def close(self) -> None:
        """Free the model (idempotent)."""
        ...


# -- tokenizer ----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (no whitespace characters)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def bundled_bpe_path() -> Path:
    """open_clip's bundled BPE vocabulary file, found without importing open_clip.

    Raises:
        FileNotFoundError: open_clip is not installed or ships no such file.
    """
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / BPE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"open_clip's {BPE_FILE} not found")


class ClipTokenizer:
    """open_clip's ``SimpleTokenizer`` (CLIP's BPE, ``clean="lower"``, truncation) without torch.

    Text is cleaned as open_clip does (``ftfy.fix_text``, HTML unescaped twice, whitespace
    collapsed, lower-cased) and split with the same ``regex`` pattern; each piece's UTF-8
    bytes are mapped to CLIP's byte alphabet and merged by HF ``tokenizers``' BPE model (the
    same merges, ranks and ``</w>`` end-of-word suffix). The literal texts ``<start_of_text>``
    and ``<end_of_text>`` become their special ids, as in open_clip.

    Args:
        bpe_path: the gzipped merges file (default: open_clip's bundled one).
        context_length: token ids per text (77 for CLIP).

    Loading takes ~0.1 s (parsing 48,894 merges).
    """

    SPECIAL = ("<start_of_text>", "<end_of_text>")

    def __init__(self, bpe_path: Path | None = None, context_length: int = 77) -> None:
        import regex
        from tokenizers.models import BPE

        path = bpe_path or bundled_bpe_path()
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        alphabet = list(_bytes_to_unicode().values())
        vocab = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges)]
        vocab.extend(self.SPECIAL)
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.merges: list[tuple[str, ...]] = merges
        self._bpe = BPE(self.encoder, merges, end_of_word_suffix="</w>")
        self._byte = _bytes_to_unicode()
        self._special = {t: self.encoder[t] for t in self.SPECIAL}
        self._pattern = regex.compile(
            "|".join(self.SPECIAL)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.context_length = context_length
        self.sot_id, self.eot_id = (self.encoder[t] for t in self.SPECIAL)

    @staticmethod
    def clean(text: str) -> str:
        """open_clip's ``clean="lower"``: ftfy, HTML unescape (twice), whitespace collapsed,
        stripped, lower-cased."""
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` (no start/end tokens, no truncation)."""
        ids: list[int] = []
        for piece in self._pattern.findall(self.clean(text)):
            special = self._special.get(piece)
            if special is not None:
                ids.append(special)
                continue
            word = "".join(self._byte[b] for b in piece.encode("utf-8"))
            ids.extend(token.id for token in self._bpe.tokenize(word))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), context_length) int64`` ids: start, BPE ids, end, zero padding; a
        text too long is cut to ``context_length`` with the end token last (as open_clip)."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = ids
        return out


# -- where exports live -------------------------------------------------------------------------


def text_encoders_dir(home: Path) -> Path:
    """``home/models/text``: one folder per export key."""
    return Path(home) / MODELS_DIR / TEXT_DIR


def digest_cache_file(home: Path) -> Path:
    """``home/models/checkpoint-digests.json``: checkpoint SHA-256s by file identity (see
    :func:`vibe_assets.resources.clip.checkpoint_digest`)."""
    return Path(home) / MODELS_DIR / "checkpoint-digests.json"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def library_versions() -> dict[str, str]:
    """Versions that shape an export (read from package metadata: nothing is imported)."""
    return {"open_clip": _version("open_clip_torch"), "torch": _version("torch")}


def export_key(model_id: str, versions: dict[str, str] | None = None) -> str:
    """Folder name of a model's export: a readable prefix and 24 hex chars of SHA-256 over
    (:data:`FORMAT_VERSION`, ``model_id``, ``versions``)."""
    ident = json.dumps(
        {
            "format": FORMAT_VERSION,
            "model_id": model_id,
            "versions": versions or library_versions(),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:24]
    readable = "".join(c if c.isalnum() or c in "-_" else "-" for c in model_id.split("/")[0])
    return f"{readable[:40]}-{digest}"


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of an export.

    Attributes:
        status: ``ok`` (usable), or ``unsupported`` (the fast path cannot reproduce this model;
            ``reason`` says why: searches use the full model without trying again).
        model_id: the model's id (:attr:`ClipResource.model_id`).
        dim: embedding size D.
        context_length: token ids per text.
        random: the weights are random (``VIBE_CLIP_WEIGHTS=random``): searches warn.
        versions: library versions at export.
        check: how the export compared with ``encode_text`` (min cosine, max abs diff, texts).
        reason: why it is unsupported (empty when ok).
    """

    status: str
    model_id: str
    dim: int = 0
    context_length: int = 77
    random: bool = False
    versions: dict[str, str] | None = None
    check: dict[str, Any] | None = None
    reason: str = ""

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The manifest in ``folder``; None when missing or unreadable."""
        try:
            data = json.loads((folder / MANIFEST).read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (OSError, ValueError, TypeError):
            return None

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` into ``folder``."""
        (folder / MANIFEST).write_text(json.dumps(self.__dict__, indent=2))


# -- the ONNX encoder ---------------------------------------------------------------------------


class OnnxTextEncoder:
    """An exported text tower run by ONNX Runtime (CPU) with :class:`ClipTokenizer`.

    Open one with :meth:`open`; :meth:`encode` gives the same embeddings as open_clip's
    ``encode_text`` + L2 normalisation (within :data:`MAX_ABS_DIFF`).
    """

    def __init__(self, folder: Path, manifest: Manifest, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.folder = folder
        self.manifest = manifest
        self.is_random = manifest.random
        self.dim = manifest.dim
        self.timings: dict[str, float] = {}
        start = time.perf_counter()
        self.tokenizer = ClipTokenizer(folder / BPE_FILE, manifest.context_length)
        self.timings["tokenizer_s"] = time.perf_counter() - start
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or cpu_budget()
        start = time.perf_counter()
        self._session: Any = ort.InferenceSession(
            str(folder / GRAPH), options, providers=["CPUExecutionProvider"]
        )
        self.timings["session_s"] = time.perf_counter() - start

    @classmethod
    def open(cls, folder: Path, model_id: str | None = None) -> OnnxTextEncoder:
        """The export in ``folder``.

        Raises:
            TextEncoderUnavailable: no export there, an ``unsupported`` one, another model's
                (``model_id`` given and different), or one ONNX Runtime cannot load.
        """
        manifest = Manifest.read(folder)
        if manifest is None:
            raise TextEncoderUnavailable(f"no text encoder export in {folder}")
        if manifest.status != "ok":
            raise TextEncoderUnavailable(
                f"no fast text path for {manifest.model_id}: {manifest.reason}"
            )
        if model_id is not None and manifest.model_id != model_id:
            raise TextEncoderUnavailable(f"{folder} holds {manifest.model_id}, not {model_id}")
        try:
            encoder = cls(folder, manifest)
        except Exception as exc:  # a damaged file: onnxruntime raises its own exception types
            raise TextEncoderUnavailable(
                f"cannot load the text encoder in {folder}: {exc}"
            ) from exc
        if encoder.is_random:
            warnings.warn(
                f"CLIP model {manifest.model_id} uses RANDOM WEIGHTS (VIBE_CLIP_WEIGHTS=random): "
                "embeddings are meaningless for search; use only for benchmarks and offline demos",
                stacklevel=2,
            )
        return encoder

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: ``(len(texts), D) float32``, L2-normalised rows.

        Raises:
            RuntimeError: the session was closed.
        """
        if self._session is None:
            raise RuntimeError("the text encoder is closed")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts))
        (out,) = self._session.run(None, {"tokens": tokens})
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        """Drop the session (its memory-mapped weights are unmapped). Idempotent."""
        self._session = None


class TorchTextEncoder:
    """The old path: open_clip's full model (both towers) through :class:`ClipResource`."""

    def __init__(self, clip: ClipResource) -> None:
        self.clip = clip
        self.is_random = clip.is_random

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), D) float32``, L2-normalised rows (:meth:`ClipResource.encode_texts`)."""
        return self.clip.encode_texts(list(texts))

    def close(self) -> None:
        """Nothing to free here (the resource keeps its model)."""


# -- export -------------------------------------------------------------------------------------


def _tokenizer_mismatch(reference: Any, ours: ClipTokenizer) -> str | None:
    """Why ``ours`` cannot stand in for open_clip's ``reference`` tokenizer; None when it can."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    if type(reference) is not SimpleTokenizer:
        return f"tokenizer {type(reference).__name__} (only open_clip's CLIP BPE is exported)"
    if getattr(reference, "reduction_fn", None) is not None:
        return "the tokenizer uses a reduction mask"
    if getattr(reference, "clean_fn", None) is not _clean_lower:
        return "the tokenizer does not use the 'lower' cleaning"
    if reference.encoder != ours.encoder or list(reference.bpe_ranks) != ours.merges:
        return "the tokenizer's vocabulary differs from the bundled CLIP BPE"
    for text in PROBE_TEXTS:
        expected = reference([text], context_length=ours.context_length).numpy()
        if not np.array_equal(expected, ours([text])):
            return f"token ids differ from open_clip's for {text[:40]!r}"
    return None


def _check_export(session_path: Path, reference: np.ndarray, tokens: np.ndarray) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(session_path), options, providers=["CPUExecutionProvider"])
    got = np.asarray(session.run(None, {"tokens": tokens})[0], dtype=np.float64)
    ref = reference.astype(np.float64)
    cosines = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return {
        "texts": len(tokens),
        "min_cosine": float(cosines.min()),
        "max_abs_diff": float(np.abs(got - ref).max()),
    }


def export_text_encoder(clip: ClipResource, folder: Path) -> Manifest:
    """Export ``clip``'s text tower into ``folder`` (created; must not exist) and check it.

    Loads the full model on the CPU (torch, open_clip, onnx: ~5-15 s for ViT-B-32), exports
    ``normalize(encode_text(tokens))`` for ``(batch, context_length) int64`` tokens (batch
    dynamic) with the TorchScript ONNX exporter (opset :data:`OPSET`), saves its weights as
    external data, and checks the tokenizer and the embeddings on :data:`PROBE_TEXTS` (batched).

    Returns:
        The manifest written: ``ok``, or ``unsupported`` (with a reason) when the model's
        tokenizer is not open_clip's CLIP BPE (nothing else is written then).

    Raises:
        Exception: whatever the export or the check raised (a check that fails raises
            :class:`TextEncoderUnavailable`); ``folder`` is then left incomplete (no manifest).
    """
    import onnx
    import torch
    import torch.nn.functional as F

    from vibe_assets.resources.clip import ClipResource, pick_device

    cpu = clip
    if pick_device(clip.device) != "cpu":  # exported and checked on the CPU, where it runs
        cpu = ClipResource(
            model_name=clip.model_name,
            weights=clip.weights,
            device="cpu",
            digest_cache=clip.digest_cache,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is the caller's to give
        loaded = cpu.load()
    model_id = clip.model_id
    folder.mkdir(parents=True)
    ours = ClipTokenizer(bundled_bpe_path(), int(getattr(loaded.tokenizer, "context_length", 77)))
    versions = library_versions()
    mismatch = _tokenizer_mismatch(loaded.tokenizer, ours)
    if mismatch is not None:
        manifest = Manifest("unsupported", model_id, versions=versions, reason=mismatch)
        manifest.write(folder)
        return manifest
    shutil.copyfile(bundled_bpe_path(), folder / BPE_FILE)

    class TextTower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: Any) -> Any:
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    tower = TextTower(loaded.model).eval()
    tokens = ours(PROBE_TEXTS)
    with torch.inference_mode():
        reference = tower(torch.from_numpy(tokens)).numpy()
    raw = folder / "raw.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            tower,
            (torch.from_numpy(tokens[:2]),),
            str(raw),
            dynamo=False,
            input_names=["tokens"],
            output_names=["embeddings"],
            dynamic_axes={"tokens": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    graph = onnx.load(str(raw))
    onnx.save_model(
        graph,
        str(folder / GRAPH),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS,
        size_threshold=1024,
    )
    del graph
    raw.unlink()
    check = _check_export(folder / GRAPH, reference, tokens)
    if check["min_cosine"] < MIN_COSINE or check["max_abs_diff"] > MAX_ABS_DIFF:
        raise TextEncoderUnavailable(f"the exported text tower differs from encode_text: {check}")
    manifest = Manifest(
        "ok",
        model_id,
        dim=int(reference.shape[1]),
        context_length=ours.context_length,
        random=clip.is_random,
        versions=versions,
        check=check,
    )
    manifest.write(folder)
    return manifest


def ensure_export(clip: ClipResource, home: Path, say: Callable[[str], None]) -> Path:
    """The export folder of ``clip``'s model under ``home``, exporting it first if needed.

    Concurrent exports of one model are safe: each writes a temporary folder beside the final
    one and renames it into place; the loser's is deleted.

    Raises:
        Exception: the export failed (see :func:`export_text_encoder`).
    """
    root = text_encoders_dir(home)
    final = root / export_key(clip.model_id)
    if (final / MANIFEST).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    say(
        f"exporting the CLIP text tower of {clip.model_id} for fast searches (once per model) "
        f"to {final}"
    )
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        tmp.rmdir()
        manifest = export_text_encoder(clip, tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if manifest.status == "ok":
        say(f"exported in {time.perf_counter() - start:.1f} s (check: {manifest.check})")
    return final


def encoder_mode(raw: str | None = None) -> str:
    """``VIBE_TEXT_ENCODER`` (or ``raw``): ``auto`` (default) or ``torch``.

    Raises:
        ValueError: another value (the message names the variable).
    """
    return env_choice(ENCODER_ENV, ENCODER_MODES, raw)


def open_text_encoder(
    clip: ClipResource,
    home: Path,
    say: Callable[[str], None] = log.warning,
    mode: str | None = None,
) -> TextEncoder:
    """The cheapest encoder that gives ``clip``'s text embeddings.

    ``auto``: the ONNX export of ``clip.model_id`` under ``home`` (exported now when missing,
    which loads the full model once); when the model is ``unsupported``, the export fails or
    cannot be loaded, the full model (:class:`TorchTextEncoder`), with a line to ``say``.
    ``torch``: always the full model. Nothing here imports torch when an export exists.

    Raises:
        ValueError: bad ``VIBE_TEXT_ENCODER``.
        ClipWeightsError: the weights cannot be found (path-like ``weights`` missing).
    """
    if encoder_mode(mode) == "torch":
        return TorchTextEncoder(clip)
    model_id = clip.model_id
    folder = text_encoders_dir(home) / export_key(model_id)
    with contextlib.suppress(TextEncoderUnavailable):
        return OnnxTextEncoder.open(folder, model_id)
    manifest = Manifest.read(folder)
    if manifest is not None and manifest.status != "ok":
        log.info("no fast text path for %s: %s", model_id, manifest.reason)
        return TorchTextEncoder(clip)
    try:
        folder = ensure_export(clip, home, say)
        return OnnxTextEncoder.open(folder, model_id)
    except TextEncoderUnavailable as exc:
        say(f"warning: {exc}; using the full CLIP model")
    except Exception as exc:  # never a wrong answer: the full model is always right
        say(
            f"warning: exporting the CLIP text tower failed ({type(exc).__name__}: {exc}); "
            "using the full CLIP model"
        )
        log.debug("text tower export failed", exc_info=True)
    return TorchTextEncoder(clip)
