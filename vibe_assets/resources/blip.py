"""BLIP image captioning through transformers, loaded on first use and unloaded when idle.

The model is never loaded at import, never when captions are disabled (the caption step does not
run), and never when there is nothing to caption. In a long-lived process (``dagster dev``'s code
server, a notebook) it is dropped again after ``idle_unload_seconds`` without use.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from vibe_assets.resources.clip import RANDOM_SEED, pick_device

log = logging.getLogger(__name__)

DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-base"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class BlipWeightsError(RuntimeError):
    """The configured BLIP model cannot be loaded (message names the setting to change)."""


@dataclass
class LoadedBlip:
    """A loaded captioner: ``model`` (eval mode, on ``device``), ``processor`` (BlipProcessor),
    ``device`` (torch device string), ``dtype`` (torch dtype), ``load_seconds``."""

    model: Any
    processor: Any
    device: str
    dtype: Any
    load_seconds: float


def _folder_digest(folder: Path) -> str:
    """First 16 hex chars of SHA-256 over config.json and every weight file of a model folder."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.suffix in WEIGHT_SUFFIXES:
            h.update(path.name.encode())
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()[:16]


class BlipResource(dg.ConfigurableResource):
    """BLIP captioner.

    Attributes:
        model_name: Hugging Face model id (default ``Salesforce/blip-image-captioning-base``,
            fetched and cached by transformers) or a local folder saved with ``save_pretrained``.
        random_weights: build the architecture from the model's config with random weights
            (explicit opt-in for benchmarks, warns loudly; the config and processor still come
            from ``model_name``).
        batch_size: images per ``generate`` call.
        max_new_tokens: caption length limit in tokens.
        num_beams: beam search width (1 = greedy; 3 is ~2x slower on CPU, DESIGN.md).
        prompt: optional text prefix the caption continues (e.g. ``"a photograph of"``).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``; fp16 on CUDA.
        idle_unload_seconds: drop the model after this many seconds without use (0 = never).
        captions: ``VIBE_CAPTIONS``: ``auto`` | ``on`` | ``off``; whether ``blip_captions``
            captions in runs that also ingest (see :func:`vibe_assets.settings.decide_captions`;
            ``auto`` is resolved in the run, on the machine it executes on).
    """

    model_name: str = DEFAULT_BLIP_MODEL
    random_weights: bool = False
    batch_size: int = 8
    max_new_tokens: int = 20
    num_beams: int = 1
    prompt: str = ""
    device: str = "auto"
    idle_unload_seconds: float = 300.0
    captions: str = "auto"

    _loaded: LoadedBlip | None = PrivateAttr(default=None)
    _model_id: str | None = PrivateAttr(default=None)
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _last_used: float = PrivateAttr(default=0.0)
    _timer: threading.Timer | None = PrivateAttr(default=None)

    @property
    def model_id(self) -> str:
        """Stable id of the caption model; captions are stored and compared under it.

        A local folder is identified by a digest of its config and weights (computed once per
        process), a hub model by its name; random weights get their own id. Generation settings
        that change the text (beams, max tokens, prompt) are part of the id too.
        """
        if self._model_id is None:
            folder = Path(self.model_name).expanduser()
            is_dir = folder.is_dir()
            base = f"{folder.name}@{_folder_digest(folder)}" if is_dir else self.model_name
            if self.random_weights:
                base += f"/random-seed{RANDOM_SEED}"
            gen = f"t{self.max_new_tokens}-b{self.num_beams}"
            if self.prompt:
                gen += "-p" + hashlib.sha256(self.prompt.encode()).hexdigest()[:8]
            self._model_id = f"{base}/{gen}"
        return self._model_id

    @property
    def loaded(self) -> bool:
        """True while the model is in memory."""
        return self._loaded is not None

    def load(self) -> LoadedBlip:
        """Load the model if needed (thread-safe) and mark it used.

        Raises:
            BlipWeightsError: the model cannot be fetched or read; names ``VIBE_BLIP_MODEL``.
        """
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            self._touch()
            return self._loaded

    def _load(self) -> LoadedBlip:
        import torch
        from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

        start = time.perf_counter()
        device = pick_device(self.device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        try:
            processor = BlipProcessor.from_pretrained(self.model_name)
            if self.random_weights:
                msg = (
                    f"BLIP {self.model_name} is using RANDOM WEIGHTS (explicitly requested): "
                    "captions are gibberish; use only for benchmarks"
                )
                warnings.warn(msg, stacklevel=3)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_SEED)
                    model = BlipForConditionalGeneration(
                        BlipConfig.from_pretrained(self.model_name)
                    )
                model = model.to(dtype=dtype)
            else:
                model = BlipForConditionalGeneration.from_pretrained(self.model_name, dtype=dtype)
        except Exception as exc:
            raise BlipWeightsError(
                f"cannot load BLIP model {self.model_name!r}: {exc}. Without internet access, "
                "set VIBE_BLIP_MODEL to a local folder saved with save_pretrained()."
            ) from exc
        model.to(device).eval()
        seconds = time.perf_counter() - start
        log.info("loaded BLIP %s on %s (%s) in %.1f s", self.model_id, device, dtype, seconds)
        return LoadedBlip(model, processor, device, dtype, seconds)

    def _touch(self) -> None:
        self._last_used = time.monotonic()
        if self.idle_unload_seconds > 0 and self._timer is None:
            self._schedule_idle_check(self.idle_unload_seconds)

    def _schedule_idle_check(self, delay: float) -> None:
        timer = threading.Timer(delay, self._idle_check)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _idle_check(self) -> None:
        with self._lock:
            self._timer = None
            if self._loaded is None:
                return
            idle = time.monotonic() - self._last_used
            if idle >= self.idle_unload_seconds:
                log.info("unloading BLIP %s after %.0f s idle", self.model_id, idle)
                self.unload()
            else:
                self._schedule_idle_check(self.idle_unload_seconds - idle)

    def unload(self) -> None:
        """Drop the model and free its memory (reloaded on next use)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._loaded is None:
                return
            on_cuda = self._loaded.device.startswith("cuda")
            self._loaded = None
            gc.collect()
            if on_cuda:
                import torch

                torch.cuda.empty_cache()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.unload()

    def caption(self, images: list[Any]) -> list[str]:
        """Caption a batch of RGB PIL images (any size; the processor resizes them).

        Returns:
            one caption string per image, same order (the prompt, if any, is kept as BLIP
            returns it).
        """
        import torch

        blip = self.load()
        with self._lock, torch.inference_mode():
            kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
            if self.prompt:
                kwargs["text"] = [self.prompt] * len(images)
            inputs = blip.processor(**kwargs).to(blip.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(blip.dtype)
            out = blip.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams
            )
            texts = blip.processor.batch_decode(out, skip_special_tokens=True)
            self._touch()
        return [t.strip() for t in texts]
