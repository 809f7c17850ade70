"""Inference device: cuda / mps / cpu choice, safe batch size probe, out-of-memory batch splitting.

``InferenceDeviceResource`` answers three questions for a model-running step:

* **Which device?** ``auto`` picks ``cuda``, then ``mps``, then ``cpu``.
* **Which batch size?** On CUDA, the largest batch that really runs is found with real forward
  passes (doubling 1, 2, 4, ... until out of memory or the cap, then a binary search between the
  last success and the first failure), and ``safety_margin`` of it is used. On CPU (and MPS, which
  shares system RAM) there is no recoverable out-of-memory error to search on, so the batch is the
  smallest one within ``CPU_THROUGHPUT_TOLERANCE`` of the best measured images/s, bounded by a
  memory budget. The probe result is kept as JSON per (device name, total memory, model id,
  precision, torch version) in the state database (table ``device_probes`` of
  ``$VIBE_HOME/state.sqlite3``, never evicted), so it runs once per machine.
* **What if a batch still runs out of memory?** :meth:`InferenceDeviceResource.run_with_oom_split`
  halves it and retries each half, down to single items.

Where the CPU numbers come from (DESIGN.md, 2 vCPU AVX2, ViT-B-32 fp32 ``encode_image``): 8.2 img/s
at batch 1, 11.3 at 8, 11.5 at 32, ~10 at 64-128; bf16 autocast ~4x slower, so CPU runs fp32.
Throughput is flat from batch 8 to 32, so a short probe (1, 4, 16, stopping as soon as a bigger
batch gains less than 5 %) finds the plateau. Measured with this module on that machine (ViT-B-32,
random weights, 2 threads): 1.7-2.2 s per probe when the machine is quiet (1: 8.5-9.9 img/s,
4: 11.2-13.9, 16: 11.5-13.8; picks 4 or 16, equal within noise); 3.1-5.5 s while other processes
load the CPUs (bounded by ``cpu_probe_max_seconds``). It runs once per machine and is cached: a
probe taken under load is kept until its row is deleted (or set ``cpu_probe=False``).

torch is imported lazily inside functions: Dagster's webserver and daemon import the definitions,
and must not pay for (or need) torch.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import resource as _resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import numpy as np
from pydantic import PrivateAttr

from vibe_assets.settings import cpu_budget, vibe_home
from vibe_assets.state import StateDB, get_probe, open_home_state, put_probe

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the probe cache entries; bump it to invalidate every cached probe."""

CPU_THROUGHPUT_TOLERANCE = 0.05
"""On CPU, the smallest batch whose images/s is within this fraction of the best is chosen, and
the probe stops growing the batch once a bigger one gains less than this (DESIGN.md: 11.3 img/s
at 8 vs 11.5 at 32 on 2 vCPU, i.e. within 2 %)."""

CPU_PROBE_SIZES = (1, 4, 16, 64, 256)
"""Batch sizes timed by the CPU probe (after one untimed warm-up at batch 1), in order, each
only if under the cap and the time budget. Batch 1 is timed as a baseline but never chosen when a
bigger size was timed: it is never on the plateau (DESIGN.md: 8.2 img/s vs 11.3 at 8), and a
burst of load from another process during the probe can make it look best (measured: 8.1 img/s
at 1, then 2.7 at 4 and 4.7 at 16 while another benchmark started)."""

CPU_PROBE_MIN_SIZES = 3
"""The CPU probe always times at least this many sizes of ``CPU_PROBE_SIZES`` (cap allowing)."""

CPU_SAMPLE_MIN_SECONDS = 0.25
CPU_SAMPLE_MAX_REPEATS = 3
"""A CPU probe size is repeated until its runs total ``CPU_SAMPLE_MIN_SECONDS`` (at most
``CPU_SAMPLE_MAX_REPEATS`` runs) and the fastest run counts."""

DEFAULT_CPU_BATCH_SIZE = 32
"""CPU batch when probing is disabled: best measured ViT-B-32 throughput on 2 vCPU (DESIGN.md,
11.5 img/s at 32), and ``ClipResource``'s default."""

CPU_BUDGET_FRACTION = 0.5
"""Default CPU memory budget: this fraction of ``psutil.virtual_memory().available``."""

OOM_MESSAGES = ("out of memory", "cublas_status_alloc_failed")
"""Lower-case substrings of a ``RuntimeError`` message that mean the device ran out of memory
(CUDA caching allocator, MPS backend, cuBLAS workspace allocation)."""


class BatchProbeError(RuntimeError):
    """Even a batch of 1 does not fit on the device (the cause is the out-of-memory error)."""


class _WarningLogger(Protocol):
    def warning(self, msg: str, *args: Any) -> Any: ...


# --------------------------------------------------------------------------- device helpers


def resolve_device(requested: str = "auto") -> str:
    """Torch device string: ``requested`` unless it is ``"auto"``, which gives ``"cuda"`` when
    available, else ``"mps"`` when available, else ``"cpu"``. Imports torch."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_kind(device: str) -> str:
    """``"cuda"``, ``"mps"`` or ``"cpu"`` for a torch device string such as ``"cuda:1"``."""
    return device.split(":", 1)[0]


def precision_for(device: str) -> str:
    """Inference precision for ``device``: ``"fp16"`` (autocast) on CUDA, ``"fp32"`` elsewhere.

    CPU: bf16 autocast measured ~4x slower than fp32 for ViT-B-32 on 2 vCPU AVX2 (DESIGN.md).
    MPS: fp32 (not measured here; fp16 autocast on MPS is op-coverage dependent).
    """
    return "fp16" if device_kind(device) == "cuda" else "fp32"


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Context manager running ops at ``precision`` (``fp16`` | ``bf16`` | ``fp32``) on ``device``:
    ``torch.autocast`` for fp16/bf16, a no-op for fp32.

    Raises:
        ValueError: unknown precision.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    return torch.autocast(device_type=device_kind(device), dtype=dtypes[precision])


def is_oom_error(exc: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` and for a ``RuntimeError`` whose message contains
    "out of memory" (any case; e.g. MPS) or ``CUBLAS_STATUS_ALLOC_FAILED``."""
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def free_device_memory(device: str = "cuda") -> None:
    """``gc.collect()`` then return cached blocks to the driver (``torch.cuda.empty_cache()`` /
    ``torch.mps.empty_cache()``) when that backend is in use. Safe on CPU-only machines."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    kind = device_kind(device)
    if kind == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif kind == "mps" and getattr(torch, "mps", None) and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def image_batch_runner(
    encode: Callable[[Any], Any], image_size: int | Sequence[int], device: str, precision: str
) -> Callable[[int], None]:
    """A ``run_batch(n)`` for :meth:`InferenceDeviceResource.safe_batch_size`: runs ``encode`` on
    ``(n, 3, H, W)`` random float32 images on ``device`` under ``torch.inference_mode`` and
    :func:`autocast` at ``precision``, and waits for the device to finish.

    Args:
        encode: e.g. ``loaded.model.encode_image`` (open_clip).
        image_size: ``S`` or ``(H, W)`` in pixels, e.g. ``model.visual.image_size``.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)

    def run_batch(n: int) -> None:
        import torch

        x = torch.randn(n, 3, h, w, device=device)
        with torch.inference_mode(), autocast(device, precision):
            out = encode(x)
        del x, out
        if device_kind(device) == "cuda":
            torch.cuda.synchronize(device)
        elif device_kind(device) == "mps":
            torch.mps.synchronize()

    return run_batch


# --------------------------------------------------------------------------- OOM search


@dataclass(frozen=True)
class OomSearch:
    """Result of :func:`search_max_batch`: ``largest_ok`` (largest batch that ran),
    ``smallest_oom`` (smallest batch that ran out of memory; None if none did up to ``cap``),
    ``cap`` (largest size tried for), ``calls`` (forward passes made)."""

    largest_ok: int
    smallest_oom: int | None
    cap: int
    calls: int


def search_max_batch(
    run_batch: Callable[[int], None],
    cap: int,
    *,
    is_oom: Callable[[BaseException], bool] = is_oom_error,
    cleanup: Callable[[], None] | None = None,
) -> OomSearch:
    """Largest ``n <= cap`` for which ``run_batch(n)`` does not run out of memory.

    Doubling (1, 2, 4, ..., capped at ``cap``) until the first out-of-memory error or ``cap``, then
    a binary search between the last success and the first failure: at most about
    ``2 * log2(answer) + 2`` calls. ``cleanup`` (default :func:`free_device_memory` on CUDA:
    ``gc.collect()``, ~0.3 s in a process with torch + dagster loaded, then
    ``torch.cuda.empty_cache()``) runs after every call, outside the ``except`` block so that the
    failed pass's tensors (held by the traceback) are already released.
    Assumes memory use grows with ``n`` (a batch that fits means every smaller one fits).

    Raises:
        BatchProbeError: ``run_batch(1)`` runs out of memory.
        ValueError: ``cap < 1``.
        Exception: any error of ``run_batch`` that is not out-of-memory, unchanged.
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    cleanup = cleanup or (lambda: free_device_memory("cuda"))
    calls = 0
    first_error: str | None = None

    def fits(n: int) -> bool:
        nonlocal calls, first_error
        calls += 1
        ok = True
        try:
            run_batch(n)
        except Exception as exc:
            if not is_oom(exc):
                raise
            ok = False
            first_error = first_error or f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        cleanup()
        log.debug("batch probe: n=%d %s", n, "fits" if ok else "out of memory")
        return ok

    lo, hi, n = 0, None, 1
    while True:
        if fits(n):
            lo = n
            if n >= cap:
                break
            n = min(2 * n, cap)
        else:
            hi = n
            break
    if lo == 0:
        raise BatchProbeError(f"a batch of 1 does not fit in device memory ({first_error})")
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return OomSearch(largest_ok=lo, smallest_oom=hi, cap=cap, calls=calls)


# --------------------------------------------------------------------------- OOM splitting


def run_with_oom_split(
    items: Any,
    fn: Callable[[Any], np.ndarray],
    *,
    is_oom: Callable[[BaseException], bool] = is_oom_error,
    cleanup: Callable[[], None] | None = None,
    logger: _WarningLogger | None = None,
) -> np.ndarray:
    """``fn(items)``; when it runs out of memory, ``fn`` on each half (recursively), concatenated.

    Args:
        items: anything with ``len()`` and slicing along the first axis: a list, a numpy array,
            a ``(N, ...)`` torch tensor.
        fn: takes a slice of ``items`` (same type) and returns a numpy array ``(len(slice), ...)``
            (e.g. ``ClipResource.encode_images``: ``(N, 3, S, S)`` tensor -> ``(N, D)`` float32).
        cleanup: runs before retrying the halves (default :func:`free_device_memory` of CUDA).
        logger: gets a ``warning`` per split (default: this module's logger); ``context.log``
            works.

    Returns:
        ``(len(items), ...)`` numpy array, rows in the order of ``items``: ``fn(items)`` as is
        when no split happened, else the halves' results joined with ``np.concatenate(axis=0)``.

    Raises:
        ValueError: ``items`` is empty.
        Exception: the out-of-memory error of a single item (cannot be split further), or any
            other error of ``fn``, unchanged.
    """
    n = len(items)
    if n == 0:
        raise ValueError("run_with_oom_split needs at least one item")
    try:
        return fn(items)
    except Exception as exc:
        if n == 1 or not is_oom(exc):
            raise
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    # outside the except block: the failed batch's tensors are released by now
    (cleanup or (lambda: free_device_memory("cuda")))()
    half = n // 2
    (logger or log).warning(
        f"out of memory on a batch of {n} ({reason}); retrying as {half} + {n - half}"
    )
    kwargs: dict[str, Any] = {"is_oom": is_oom, "cleanup": cleanup, "logger": logger}
    left = run_with_oom_split(items[:half], fn, **kwargs)
    right = run_with_oom_split(items[half:], fn, **kwargs)
    return np.concatenate([np.asarray(left), np.asarray(right)], axis=0)


# --------------------------------------------------------------------------- probe cache


@dataclass(frozen=True)
class DeviceIdentity:
    """What a probe result depends on: ``name`` (``torch.cuda.get_device_name`` or ``"cpu"`` /
    ``"mps"``), ``total_memory_bytes`` (GPU memory, or system RAM for cpu/mps), ``threads``
    (torch intra-op threads; part of the key on cpu/mps only, None on CUDA)."""

    name: str
    total_memory_bytes: int
    threads: int | None = None


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (bytes; Linux ``ru_maxrss`` is KiB, macOS
    bytes)."""
    peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


_clock: Callable[[], float] = time.perf_counter  # seam for tests


def _time_batch(run_batch: Callable[[int], None], n: int) -> float:
    """Seconds of the fastest ``run_batch(n)`` among repeats totalling ``CPU_SAMPLE_MIN_SECONDS``
    (at most ``CPU_SAMPLE_MAX_REPEATS``)."""
    best, total = math.inf, 0.0
    for _ in range(CPU_SAMPLE_MAX_REPEATS):
        start = _clock()
        run_batch(n)
        seconds = max(_clock() - start, 1e-9)
        best, total = min(best, seconds), total + seconds
        if total >= CPU_SAMPLE_MIN_SECONDS:
            break
    return best


def _read_probe(state: StateDB, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored probe result for ``key``, or None (missing, corrupt, or not what a probe
    writes). Never raises for a bad row: the probe runs again and replaces it."""
    try:
        result = get_probe(state, key)
        if result is None:
            return None
        _check_result(result)
        return result
    except Exception as exc:
        log.warning("ignoring an unreadable batch probe for %s (%s); probing again", key, exc)
        return None


def _check_result(result: Any) -> None:
    """Raise ValueError unless ``result`` has the fields and types a probe writes."""
    if not isinstance(result, dict):
        raise ValueError("result is not an object")
    ints = {"oom_search": ("largest_ok", "cap", "calls"), "throughput": ("bytes_per_image", "cap")}
    kind = result.get("kind")
    if kind not in ints:
        raise ValueError(f"unknown result kind {kind!r}")
    for name in ints[kind]:
        if not isinstance(result.get(name), int) or result[name] < 0:
            raise ValueError(f"bad {name!r}")
    if kind == "oom_search":
        if result["largest_ok"] < 1 or not isinstance(result.get("smallest_oom"), int | None):
            raise ValueError("bad search bounds")
        return
    samples = result.get("samples")
    if not isinstance(result.get("reached_cap"), bool) or not isinstance(samples, list):
        raise ValueError("bad throughput samples")
    if not samples or samples[0][0] != 1 or any(len(x) != 2 or x[1] <= 0 for x in samples):
        raise ValueError("bad throughput samples")


def _write_probe(state: StateDB, key: dict[str, Any], result: dict[str, Any]) -> None:
    """Store a probe result; a failure (e.g. a read-only home) only logs: the batch size is
    still returned, and the probe runs again next time."""
    try:
        put_probe(state, key, result)
    except Exception as exc:
        log.warning("cannot store the batch probe for %s (%s)", key, exc)


# --------------------------------------------------------------------------- the resource


class InferenceDeviceResource(dg.ConfigurableResource):
    """The device models run on, and the batch size that is safe there.

    Attributes:
        device: ``auto`` (cuda, then mps, then cpu) | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``.
        max_batch_size: upper bound of every batch size returned (images per forward pass).
        safety_margin: fraction (0, 1] of the largest batch that fit on CUDA (floored, >= 1), and
            of the memory-budget bound on CPU.
        cpu_memory_budget_bytes: memory the CPU batch may use for activations; default
            ``CPU_BUDGET_FRACTION`` of ``psutil.virtual_memory().available`` at call time.
        cpu_probe: time the model on CPU/MPS to pick the batch (~2 s once per machine for
            ViT-B-32 on 2 vCPU, cached); False uses ``cpu_batch_size`` without running anything.
        cpu_batch_size: CPU/MPS batch when ``cpu_probe`` is False (default 32, DESIGN.md).
        cpu_probe_max_seconds: time budget of one CPU probe; a size whose predicted time would
            exceed it is not tried.
        home: the ``VIBE_HOME`` whose state database keeps the probes (table
            ``device_probes`` of ``home/state.sqlite3``); default: the parent of ``cache_dir``
            when that is set, else ``$VIBE_HOME``.
        cache_dir: the JSON probe folder of earlier versions (``$VIBE_HOME/probe-cache``), kept
            so existing configurations load; its files are imported into the state database
            once (:mod:`vibe_assets.legacy`). Only its parent folder matters now (see ``home``).
        cpu_threads: torch intra-op threads, set when a run starts; 0 (default) = the CPUs this
            process may use (:func:`vibe_assets.settings.cpu_budget`: affinity mask capped by a
            container's CPU quota). On this 2-vCPU machine 2 threads run ViT-B-32 at 11.5-15
            img/s and 1 thread at about half that, so the default keeps every CPU busy without
            oversubscribing a container's quota.
    """

    device: str = "auto"
    max_batch_size: int = 512
    safety_margin: float = 0.8
    cpu_memory_budget_bytes: int | None = None
    cpu_probe: bool = True
    cpu_batch_size: int = DEFAULT_CPU_BATCH_SIZE
    cpu_probe_max_seconds: float = 5.0
    home: str | None = None
    cache_dir: str | None = None
    cpu_threads: int = 0

    _device: str | None = PrivateAttr(default=None)
    _state: StateDB | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Resolve the device and set torch's CPU threads once per run (imports torch; never at
        definitions import)."""
        self.resolve()
        self.apply_cpu_threads()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        """Close the state database (reopened on next use)."""
        if self._state is not None:
            self._state.close()
            self._state = None

    def apply_cpu_threads(self) -> int:
        """``torch.set_num_threads`` to ``cpu_threads`` (0: :func:`cpu_budget`); returns it."""
        import torch

        threads = self.cpu_threads or cpu_budget()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    # ---------------------------------------------------------------- identity

    def resolve(self) -> str:
        """Torch device string (``cuda``, ``cuda:1``, ``mps``, ``cpu``); resolved once."""
        if self._device is None:
            self._device = resolve_device(self.device)
        return self._device

    def device_name(self) -> str:
        """Alias of :meth:`resolve`."""
        return self.resolve()

    def precision(self) -> str:
        """:func:`precision_for` the resolved device."""
        return precision_for(self.resolve())

    def autocast(self, precision: str | None = None) -> contextlib.AbstractContextManager[Any]:
        """:func:`autocast` on the resolved device at ``precision`` (default :meth:`precision`)."""
        return autocast(self.resolve(), precision or self.precision())

    def _identity(self) -> DeviceIdentity:
        """Hardware identity of the resolved device (the cache key's hardware part)."""
        import psutil
        import torch

        device = self.resolve()
        if device_kind(device) == "cuda":
            props = torch.cuda.get_device_properties(torch.device(device))
            return DeviceIdentity(
                torch.cuda.get_device_name(torch.device(device)), props.total_memory
            )
        return DeviceIdentity(
            device_kind(device), psutil.virtual_memory().total, torch.get_num_threads()
        )

    def describe(self) -> dict[str, Any]:
        """Run metadata: ``device``, ``device_name`` (GPU model or cpu/mps), ``precision``,
        ``total_memory`` (GPU memory, or system RAM on cpu/mps, as text in binary units, e.g.
        ``"15.6 GiB"``: a fact of the machine, never plotted), ``torch_version``, ``threads``
        (torch intra-op threads)."""
        import torch

        from vibe_assets.report import human_size

        ident = self._identity()
        return {
            "device": self.resolve(),
            "device_name": ident.name,
            "precision": self.precision(),
            "total_memory": human_size(ident.total_memory_bytes),
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
        }

    # ---------------------------------------------------------------- batch size

    def state_home(self) -> Path:
        """The ``VIBE_HOME`` holding the probes (see ``home``)."""
        if self.home:
            return Path(self.home).expanduser().resolve()
        if self.cache_dir:
            return Path(self.cache_dir).expanduser().resolve().parent
        return vibe_home()

    def state(self) -> StateDB:
        """The state database keeping the probes (opened on first use)."""
        if self._state is None:
            self._state = open_home_state(self.state_home())
        return self._state

    def _cache_key(self, model_id: str, precision: str) -> dict[str, Any]:
        import torch

        ident = self._identity()
        return {
            "format": CACHE_FORMAT,
            "device_name": ident.name,
            "total_memory_bytes": ident.total_memory_bytes,
            "threads": ident.threads,
            "model_id": model_id,
            "precision": precision,
            "torch_version": torch.__version__,
        }

    def safe_batch_size(
        self,
        model_id: str,
        run_batch: Callable[[int], None],
        precision: str,
        max_batch: int | None = None,
    ) -> int:
        """Largest batch size (images per forward pass, >= 1) that is safe for this model here.

        Args:
            model_id: identifies the model and its input size, e.g. ``ClipResource.model_id``.
            run_batch: runs one real forward pass on ``n`` inputs of the real input size at
                ``precision`` and waits for it (see :func:`image_batch_runner`).
            precision: ``fp32`` | ``fp16`` | ``bf16``; part of the cache key (``run_batch`` is
                what applies it).
            max_batch: optional cap for this call, on top of ``max_batch_size``.

        Returns:
            CUDA: ``max(1, floor(largest_ok * safety_margin))`` where ``largest_ok`` is the
            largest batch that ran (:func:`search_max_batch`), or the cap if nothing ran out of
            memory up to it. CPU/MPS: the smallest probed batch within 5 % of the best images/s,
            bounded by ``safety_margin * budget / bytes_per_image``; ``cpu_batch_size`` when
            ``cpu_probe`` is False. Always ``<= min(max_batch_size, max_batch)``.

        The probe runs once per (device name, total memory, model_id, precision, torch version):
        later calls read it from the state database and do not call ``run_batch``. A corrupt
        stored probe is ignored and replaced.

        Raises:
            BatchProbeError: on CUDA, a batch of 1 does not fit.
            ValueError: ``max_batch_size``/``max_batch`` < 1 or ``safety_margin`` not in (0, 1].
            Exception: any non-out-of-memory error of ``run_batch``.
        """
        cap = min(self.max_batch_size, max_batch) if max_batch is not None else self.max_batch_size
        if cap < 1:
            raise ValueError(f"batch cap must be >= 1, got {cap}")
        if not 0 < self.safety_margin <= 1:
            raise ValueError(f"safety_margin must be in (0, 1], got {self.safety_margin}")
        device = self.resolve()
        cuda = device_kind(device) == "cuda"
        if not cuda and not self.cpu_probe:
            return max(1, min(self.cpu_batch_size, cap))

        key = self._cache_key(model_id, precision)
        state = self.state()
        result = _read_probe(state, key)
        if result is not None and not self._covers(result, cap):
            result = None
        if result is None:
            start = time.perf_counter()
            result = self._probe_cuda(run_batch, cap) if cuda else self._probe_cpu(run_batch, cap)
            result["probe_seconds"] = round(time.perf_counter() - start, 3)
            _write_probe(state, key, result)
            log.info(
                "batch probe for %s on %s (%s): %s", model_id, key["device_name"], precision, result
            )
        else:
            log.debug("batch probe found for %s", key)
        batch = self._pick(result, cap)
        log.info("safe batch size for %s on %s: %d", model_id, device, batch)
        return batch

    @staticmethod
    def _covers(result: dict[str, Any], cap: int) -> bool:
        """Whether a cached result answers for ``cap`` (a search that stopped at a smaller cap
        without running out of memory, or a CPU probe that reached a smaller cap, does not)."""
        if result["kind"] == "oom_search":
            return result["smallest_oom"] is not None or int(result["cap"]) >= cap
        return not (result["reached_cap"] and int(result["cap"]) < cap)

    def _probe_cuda(self, run_batch: Callable[[int], None], cap: int) -> dict[str, Any]:
        device = self.resolve()
        found = search_max_batch(run_batch, cap, cleanup=lambda: free_device_memory(device))
        return {
            "kind": "oom_search",
            "largest_ok": found.largest_ok,
            "smallest_oom": found.smallest_oom,
            "cap": found.cap,
            "calls": found.calls,
        }

    def _probe_cpu(self, run_batch: Callable[[int], None], cap: int) -> dict[str, Any]:
        """Time ``run_batch`` at ``CPU_PROBE_SIZES`` (after an untimed warm-up at 1) and record
        ``samples`` ``[[n, seconds], ...]`` and ``bytes_per_image`` (growth of the process's peak
        RSS over the probe divided by the largest size: an over-estimate, as it includes the
        fixed activation overhead; 0 when not measurable, e.g. the peak was already higher).

        Each size is timed as the fastest of repeats totalling ``CPU_SAMPLE_MIN_SECONDS`` (at most
        ``CPU_SAMPLE_MAX_REPEATS``), which damps noise from other processes. At least
        ``CPU_PROBE_MIN_SIZES`` sizes are timed (1, 4, 16: under contention a single 1-vs-4
        comparison can show no gain; batch 1 is ~30 % slower on the plateau, DESIGN.md); after
        that, growth stops at the first size that improves images/s by less than
        ``CPU_THROUGHPUT_TOLERANCE``, and after two sizes, at the first whose predicted time (at
        the best rate so far) would take the probe past ``cpu_probe_max_seconds``.
        """
        t0 = _clock()
        peak0 = _peak_rss_bytes()
        run_batch(1)  # warm-up: first-call allocations and kernel selection
        samples: list[list[float]] = []
        best_rate = 0.0
        sizes = [n for n in CPU_PROBE_SIZES if n < cap] + [cap]
        for n in sizes:
            predicted = (_clock() - t0) + n / best_rate if samples else 0.0
            if len(samples) >= 2 and predicted > self.cpu_probe_max_seconds:
                break
            seconds = _time_batch(run_batch, n)
            samples.append([n, seconds])
            rate = n / seconds
            gained = rate > best_rate * (1 + CPU_THROUGHPUT_TOLERANCE)
            best_rate = max(best_rate, rate)
            if len(samples) >= CPU_PROBE_MIN_SIZES and not gained:
                break
        largest = int(samples[-1][0])
        growth = max(0, _peak_rss_bytes() - peak0)
        return {
            "kind": "throughput",
            "samples": samples,
            "bytes_per_image": growth // largest,
            "cap": cap,
            "reached_cap": largest == cap,
        }

    def _cpu_budget(self) -> int:
        if self.cpu_memory_budget_bytes is not None:
            return self.cpu_memory_budget_bytes
        import psutil

        return int(psutil.virtual_memory().available * CPU_BUDGET_FRACTION)

    def _pick(self, result: dict[str, Any], cap: int) -> int:
        if result["kind"] == "oom_search":
            largest = int(result["largest_ok"])
            if result["smallest_oom"] is None:  # nothing ran out of memory up to the cap
                return max(1, min(largest, cap))
            return max(1, min(math.floor(largest * self.safety_margin), cap))
        rates = [(int(n), n / s) for n, s in result["samples"] if int(n) <= cap]
        if len(rates) > 1:  # batch 1 is the baseline only (see CPU_PROBE_SIZES)
            rates = rates[1:]
        best = max(rate for _, rate in rates)
        batch = min(n for n, rate in rates if rate >= best * (1 - CPU_THROUGHPUT_TOLERANCE))
        per_image = int(result["bytes_per_image"])
        if per_image > 0:
            batch = min(batch, math.floor(self._cpu_budget() * self.safety_margin / per_image))
        return max(1, min(batch, cap))

    # ---------------------------------------------------------------- running

    def run_with_oom_split(
        self,
        items: Any,
        fn: Callable[[Any], np.ndarray],
        logger: _WarningLogger | None = None,
    ) -> np.ndarray:
        """:func:`run_with_oom_split` freeing this device's cache between tries."""
        device = self.resolve()
        return run_with_oom_split(
            items, fn, cleanup=lambda: free_device_memory(device), logger=logger
        )
