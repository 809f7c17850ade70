"""CLIP image/text embeddings through open_clip, loaded lazily once per run.

Weights come from open_clip's normal loading: a pretrained tag (``laion2b_s34b_b79k``, fetched from
the hub and cached by open_clip), or a local checkpoint file. Random weights are used only when
explicitly asked (``weights="random"``, e.g. ``VIBE_CLIP_WEIGHTS=random`` for benchmarks or an
offline demo), with a loud warning; never as a silent fallback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
from pydantic import PrivateAttr

from vibe_assets.resources.device import autocast, precision_for, resolve_device
from vibe_assets.settings import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0  # random weights are seeded so that ingest and search agree within one machine.


# open_clip loads these (SigLIP big_vision numpy weights) with its own converter, not a strict
# state-dict load: their models keep the random initialisation.
BIG_VISION_SUFFIXES = frozenset({".npz", ".npy"})
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".safetensors"})
"""A ``weights`` value ending in one of these (or holding a ``/``) names a checkpoint file."""


def skip_weight_init(enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """While building a model whose every weight a checkpoint then overwrites, make the
    ``torch.nn.init`` functions no-ops (transformers' ``no_init_weights``, the context its own
    ``from_pretrained`` uses).

    Safe only before a strict load: open_clip's ``create_model`` loads a full checkpoint with
    ``load_state_dict(strict=True)``, so a missing or unexpected key fails the load instead of
    leaving an uninitialised weight. Buffers (e.g. the text tower's causal mask) are computed, not
    initialised, and are unaffected. Random initialisation is about 60 % of building ViT-B-32 on
    CPU (1.4 s of 2.5 s on this 2-vCPU machine: ``uniform_``/``normal_`` over 151 M parameters).

    Returns ``contextlib.nullcontext()`` when ``enabled`` is false or this transformers version
    has no such context (the model is then initialised and overwritten, slower but the same).
    """
    if not enabled:
        return contextlib.nullcontext()
    try:  # transformers >= 5
        from transformers.initialization import no_init_weights
    except ImportError:
        try:  # transformers 4.x
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


class ClipWeightsError(RuntimeError):
    """The configured CLIP weights cannot be loaded (message names the setting to change)."""


_TO_TENSOR = {"ToTensor", "MaybeToTensor"}


@dataclass
class LoadedClip:
    """A loaded open_clip model: ``model`` (eval mode), ``preprocess`` (PIL -> (3, S, S) float32
    tensor), ``tokenizer``, ``device`` (torch device string), ``load_seconds``."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    load_seconds: float

    def split_preprocess(self) -> tuple[Any, Any]:
        """``preprocess`` cut in two: ``(prepare, to_batch)``.

        ``prepare(image)`` runs the PIL steps (resize, crop, mode) and returns an ``(S, S, 3)``
        uint8 numpy array; it uses no torch op, so it is safe and cheap in loader threads.
        ``to_batch(arrays)`` turns a list of them into the ``(N, 3, S, S)`` float32 normalised
        batch, bit for bit what ``torch.stack([preprocess(im), ...])`` gives, in one batched op
        on the calling thread.

        Why: torch ops in loader threads (``ToTensor``/``Normalize`` per image) start an OpenMP
        team per thread that competes with the model's own; on this 2-vCPU machine (Nov 2026)
        that cost the model 5-15 % of its images/s. When ``preprocess`` is not the usual
        "PIL steps, to-tensor, normalize" pipeline, ``prepare`` is ``preprocess`` itself and
        ``to_batch`` is ``torch.stack``.
        """
        import torch
        from torchvision import transforms as T

        steps = list(getattr(self.preprocess, "transforms", []))
        names = [type(t).__name__ for t in steps]
        cut = next((i for i, name in enumerate(names) if name in _TO_TENSOR), None)
        tail = steps[cut + 1 :] if cut is not None else []
        if cut is None or len(tail) > 1 or (tail and not isinstance(tail[0], T.Normalize)):
            return self.preprocess, torch.stack
        prepare_pil = T.Compose(steps[:cut])
        mean = torch.tensor(tail[0].mean if tail else (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
        std = torch.tensor(tail[0].std if tail else (1.0, 1.0, 1.0)).view(1, 3, 1, 1)

        def prepare(image: Any) -> np.ndarray:
            return np.asarray(prepare_pil(image).convert("RGB"), dtype=np.uint8)

        def to_batch(arrays: list[np.ndarray]) -> Any:
            batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
            return batch.sub_(mean).div_(std).contiguous()

        return prepare, to_batch


def pick_device(requested: str = "auto") -> str:
    """``"cuda"`` if available, else ``"mps"`` if available, else ``"cpu"``; or ``requested``
    (:func:`vibe_assets.resources.device.resolve_device`)."""
    return resolve_device(requested)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def checkpoint_digest(path: Path, cache_file: Path | None = None) -> str:
    """SHA-256 hex digest of a checkpoint file.

    With ``cache_file`` (JSON: ``{absolute path: {"stat": [size, mtime_ns, inode], "sha256"}}``)
    a digest is reused while the file's size, mtime and inode are unchanged (the rule the scan
    uses for photos), and a new one is written there (atomically; a cache that cannot be read
    or written is ignored: the digest is then computed). A file that changes while it is
    hashed is not remembered.

    Raises:
        OSError: the checkpoint cannot be read.
    """
    key = str(path.resolve())
    before = _stat_key(path)
    entries: dict[str, Any] = {}
    if cache_file is not None:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(cache_file.read_text())
            entries = loaded if isinstance(loaded, dict) else {}
        entry = entries.get(key)
        if isinstance(entry, dict) and entry.get("stat") == before:
            digest = entry.get("sha256")
            if isinstance(digest, str) and len(digest) == 64:
                return digest
    digest = _file_sha256(path)
    if cache_file is not None and _stat_key(path) == before:
        entries[key] = {"stat": before, "sha256": digest}
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entries, indent=1))
            os.replace(tmp, cache_file)
    return digest


def _bundled_embed_dim(model_name: str) -> int | None:
    """``embed_dim`` of ``model_name`` from open_clip's bundled ``model_configs/<name>.json``,
    read without importing open_clip; None when there is no such file (or it is unreadable)."""
    import importlib.util
    import json as _json

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "model_configs" / f"{model_name}.json"
        if path.name != f"{model_name}.json" or not path.is_file():
            continue  # a name with a path separator is not a bundled config
        try:
            return int(_json.loads(path.read_text())["embed_dim"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


class ClipResource(dg.ConfigurableResource):
    """open_clip model for image and text embeddings.

    Attributes:
        model_name: open_clip architecture name (``open_clip.list_models()``), default ViT-B-32.
        weights: a pretrained tag for that architecture (default ``laion2b_s34b_b79k``), a path to
            a local checkpoint file, or ``"random"`` (explicit opt-in, warns loudly).
        batch_size: images per forward pass; None (default) asks the
            :class:`~vibe_assets.resources.device.InferenceDeviceResource` for the largest safe
            batch (probed once per machine and model, cached).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``.
        digest_cache: JSON file remembering checkpoint SHA-256s by (path, size, mtime_ns,
            inode), so a process does not re-read a 600 MB checkpoint just to name the model
            (~0.6 s); None (default): hashed once per process.

    The model is loaded on the first call of :meth:`load` (never at import, never when there is
    nothing to embed) and kept for the rest of the run.
    """

    model_name: str = DEFAULT_CLIP_MODEL
    weights: str = DEFAULT_CLIP_WEIGHTS
    batch_size: int | None = None
    device: str = "auto"
    digest_cache: str | None = None

    _loaded: LoadedClip | None = PrivateAttr(default=None)
    _model_id: str | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def for_model(self, model_name: str, weights: str) -> ClipResource:
        """This resource's runtime settings (batch size, device) with another model; returns
        self when the model is the same (keeping a loaded model)."""
        if (model_name, weights) == (self.model_name, self.weights):
            return self
        return ClipResource(
            model_name=model_name,
            weights=weights,
            batch_size=self.batch_size,
            device=self.device,
            digest_cache=self.digest_cache,
        )

    @property
    def is_random(self) -> bool:
        """True when random weights were explicitly requested."""
        return self.weights.strip().lower() == RANDOM_WEIGHTS

    def _checkpoint_path(self) -> Path | None:
        """The local checkpoint file ``weights`` names, or None for a pretrained tag or random.

        Decided without importing open_clip (~3 s with torch) in the usual cases, so the fast
        text search can name the model: ``weights`` with a ``/`` or a checkpoint suffix is a
        path; a name that is no existing file is a tag (open_clip rejects an unknown one when
        loading). Only a bare name that is also a file here asks open_clip's tag list.

        Raises:
            ClipWeightsError: a path-like ``weights`` that is not a file.
        """
        if self.is_random:
            return None
        p = Path(self.weights).expanduser()
        looks_like_path = p.suffix in CHECKPOINT_SUFFIXES or "/" in self.weights
        if looks_like_path:
            if not p.is_file():
                raise ClipWeightsError(
                    f"CLIP checkpoint {str(p)!r} does not exist; set VIBE_CLIP_WEIGHTS to a "
                    f"pretrained tag (e.g. {DEFAULT_CLIP_WEIGHTS}), a checkpoint file, or 'random'"
                )
            return p.resolve()
        if not p.is_file():
            return None
        import open_clip

        if self.weights in open_clip.list_pretrained_tags_by_model(self.model_name):
            return None
        return p.resolve()

    @property
    def model_id(self) -> str:
        """Stable id of (architecture, weights), e.g. ``ViT-B-32/laion2b_s34b_b79k``.

        Embeddings are stored under it. A local checkpoint is identified by the first 16 hex
        chars of its SHA-256 (computed once per process), so a changed file is a new model.
        """
        if self._model_id is None:
            ckpt = self._checkpoint_path()
            if ckpt is not None:
                tag = f"ckpt-{_file_sha256(ckpt)[:16]}"
            elif self.is_random:
                tag = f"random-seed{RANDOM_SEED}"
            else:
                tag = self.weights
            self._model_id = f"{self.model_name}/{tag}"
        return self._model_id

    def embedding_dim(self) -> int:
        """Embedding size D of the architecture, from its open_clip config (no weights loaded).

        open_clip's bundled configs are read as JSON files without importing open_clip (which
        imports torch: ~3 s and ~400 MB that a Qdrant step or a search would otherwise pay just
        for this number); architectures registered at run time
        (``open_clip.add_model_config``) are looked up through open_clip.

        Raises:
            ClipWeightsError: unknown architecture name.
        """
        bundled = _bundled_embed_dim(self.model_name)
        if bundled is not None:
            return bundled
        import open_clip

        cfg = open_clip.get_model_config(self.model_name)
        if cfg is None:
            raise ClipWeightsError(
                f"unknown open_clip model {self.model_name!r} (set VIBE_CLIP_MODEL to one of "
                "open_clip.list_models())"
            )
        return int(cfg["embed_dim"])

    @property
    def loaded(self) -> bool:
        """True once the model is in memory."""
        return self._loaded is not None

    def load(self) -> LoadedClip:
        """Load the model once (thread-safe) and return it.

        Raises:
            ClipWeightsError: weights cannot be fetched or read; the message names
                ``VIBE_CLIP_WEIGHTS``.
        """
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _load(self) -> LoadedClip:
        import open_clip
        import torch

        start = time.perf_counter()
        device = pick_device(self.device)
        ckpt = self._checkpoint_path()
        pretrained: str | None = str(ckpt) if ckpt else (None if self.is_random else self.weights)
        if self.is_random:
            msg = (
                f"CLIP model {self.model_name} is using RANDOM WEIGHTS (VIBE_CLIP_WEIGHTS=random): "
                "embeddings are meaningless for search; use only for benchmarks and offline demos"
            )
            warnings.warn(msg, stacklevel=3)
        # Weights that a strict checkpoint load overwrites need no random initialisation first:
        # a local checkpoint file, or a built-in model's known tag (open_clip raises when it
        # cannot fetch one). Not for "hf-hub:" model names, whose weights open_clip may skip.
        known_tag = ckpt is None and self.weights in open_clip.list_pretrained_tags_by_model(
            self.model_name
        )
        skip_init = (ckpt is not None and ckpt.suffix not in BIG_VISION_SUFFIXES) or known_tag
        try:
            with torch.random.fork_rng(devices=[]), skip_weight_init(skip_init):
                torch.manual_seed(RANDOM_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name,
                    pretrained=pretrained,
                    device=device,
                    load_weights=not self.is_random,
                    pretrained_text=False,
                    weights_only=True,
                )
        except Exception as exc:
            raise ClipWeightsError(
                f"cannot load CLIP weights {self.weights!r} for {self.model_name}: {exc}. "
                "Without internet access, set VIBE_CLIP_WEIGHTS to a local checkpoint file "
                "(or to 'random' for a benchmark/demo only)."
            ) from exc
        model.eval()
        tokenizer = open_clip.get_tokenizer(self.model_name)
        seconds = time.perf_counter() - start
        log.info("loaded CLIP %s on %s in %.1f s", self.model_id, device, seconds)
        return LoadedClip(model, preprocess, tokenizer, device, seconds)

    def encode_images(self, batch: Any) -> np.ndarray:
        """Embed a preprocessed batch.

        Args:
            batch: ``(N, 3, S, S) float32`` torch tensor from ``load().preprocess``.

        Returns:
            ``(N, D) float32`` numpy array, L2-normalised rows.
        """
        import torch

        clip = self.load()
        on_cuda = clip.device.startswith("cuda")
        if on_cuda:
            batch = batch.pin_memory()  # lets the copy below overlap with host work
        with torch.inference_mode(), autocast(clip.device, precision_for(clip.device)):
            feats = clip.model.encode_image(batch.to(clip.device, non_blocking=on_cuda))
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Embed text queries: ``(len(texts), D) float32``, L2-normalised rows."""
        import torch

        clip = self.load()
        with torch.inference_mode():
            tokens = clip.tokenizer(texts).to(clip.device)
            feats = torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode_photo(self, path: str | Path) -> np.ndarray:
        """Embed one photo file as ingest does: decoded once
        (:func:`~vibe_assets.imaging.decode.decode_photo` to the 512 px preview), encoded as the
        stored JPEG preview, read back, preprocessed and embedded; an image that was ingested
        gets its stored embedding again (up to float noise).

        Returns:
            ``(D,) float32``, L2-normalised.

        Raises:
            PhotoError: the file cannot be decoded (its error code says why).
            ClipWeightsError: the model cannot be loaded.
        """
        import io

        from PIL import Image

        from vibe_assets.assets.previews import PREVIEW_SIZE
        from vibe_assets.imaging.decode import decode_photo, encode_preview

        decoded = decode_photo(path, preview_size=PREVIEW_SIZE)
        with Image.open(io.BytesIO(encode_preview(decoded.image))) as im:
            preview = im.convert("RGB")
        prepare, to_batch = self.load().split_preprocess()
        return self.encode_images(to_batch([prepare(preview)]))[0]
