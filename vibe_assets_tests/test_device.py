"""InferenceDeviceResource: OOM batch search (faked CUDA), probes kept as JSON in the state
database, OOM splitting, CPU probe with a tiny real open_clip model."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import torch

import vibe_assets.resources.device as device_mod
from vibe_assets.resources.device import (
    BatchProbeError,
    DeviceIdentity,
    InferenceDeviceResource,
    image_batch_runner,
    is_oom_error,
    precision_for,
    run_with_oom_split,
    search_max_batch,
)
from vibe_assets.settings import cpu_budget
from vibe_assets.state import StateDB, list_probes
from vibe_assets_tests.conftest import TINY_CLIP

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class FakeGpu:
    """A ``run_batch`` that runs out of memory above ``threshold`` images, counting calls."""

    def __init__(self, threshold: int, error: Callable[[str], Exception] | None = None) -> None:
        self.threshold = threshold
        self.error = error or torch.cuda.OutOfMemoryError
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        self.calls.append(n)
        if n > self.threshold:
            raise self.error(f"CUDA out of memory. Tried to allocate {n} MiB")


class Warnings:
    """Collects ``warning`` calls (pytest runs with ``-p no:logging``: no caplog)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, msg: str, *args: Any) -> None:
        self.messages.append(msg % args if args else msg)


@pytest.fixture(autouse=True)
def cleanups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record ``free_device_memory`` calls instead of running them (its ``gc.collect()`` takes
    ~0.3 s with torch and dagster loaded); :func:`test_free_device_memory` runs the real one."""
    calls: list[str] = []
    monkeypatch.setattr(device_mod, "free_device_memory", calls.append)
    return calls


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``device="cuda"`` resources identify as an 80 GiB GPU without touching CUDA."""
    monkeypatch.setattr(
        InferenceDeviceResource, "_identity", lambda self: DeviceIdentity("Fake GPU", 80 << 30)
    )


def cuda_resource(tmp_path: Path, **kwargs: Any) -> InferenceDeviceResource:
    return InferenceDeviceResource(device="cuda", home=str(tmp_path / "home"), **kwargs)


def stored_probes(home: Path) -> list[dict[str, Any]]:
    """``{"key", "result"}`` of every probe in ``home``'s state database, oldest first."""
    state = StateDB(home / "state.sqlite3")
    try:
        return [{"key": key, "result": json.loads(result)} for key, result in list_probes(state)]
    finally:
        state.close()


def overwrite_probes(home: Path, result_text: str) -> None:
    """Replace every stored probe result with ``result_text`` (corrupt it)."""
    state = StateDB(home / "state.sqlite3")
    try:
        with state.write() as db:
            db.execute("UPDATE device_probes SET result = ?", (result_text,))
    finally:
        state.close()


def test_torch_oom_error_is_constructible_and_recognised() -> None:
    assert is_oom_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom_error(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_oom_error(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling"))
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(ValueError("out of memory"))


@pytest.mark.parametrize("threshold", [1, 2, 3, 5, 7, 64, 100, 257, 511])
def test_search_finds_exact_largest_batch_in_log_calls(threshold: int) -> None:
    gpu = FakeGpu(threshold)
    cleanups: list[int] = []
    found = search_max_batch(gpu, 512, cleanup=lambda: cleanups.append(1))
    assert found.largest_ok == threshold
    assert found.smallest_oom == threshold + 1
    assert found.calls == len(gpu.calls) == len(cleanups)
    assert found.calls <= 2 * math.ceil(math.log2(threshold + 1)) + 2
    assert gpu.calls[:3] == [1, 2, 4][: len(gpu.calls[:3])]


def test_search_stops_at_cap_without_oom() -> None:
    gpu = FakeGpu(10_000)
    found = search_max_batch(gpu, 100)
    assert (found.largest_ok, found.smallest_oom) == (100, None)
    assert gpu.calls == [1, 2, 4, 8, 16, 32, 64, 100]


def test_search_batch_of_one_oom_and_other_errors() -> None:
    with pytest.raises(BatchProbeError, match="batch of 1"):
        search_max_batch(FakeGpu(0), 512)

    def broken(n: int) -> None:
        raise RuntimeError("expected 4D input")

    with pytest.raises(RuntimeError, match="4D input"):
        search_max_batch(broken, 512)


def test_cuda_probe_applies_margin_and_caches_json(
    tmp_path: Path, fake_cuda: None, cleanups: list[str]
) -> None:
    dev = cuda_resource(tmp_path)
    gpu = FakeGpu(100, error=RuntimeError)  # plain RuntimeError("CUDA out of memory ...")
    assert dev.safe_batch_size("ViT-B-32/x", gpu, "fp16") == 80  # floor(100 * 0.8)
    assert 0 < len(gpu.calls) <= 2 * 7 + 2
    assert cleanups == ["cuda"] * len(gpu.calls)  # gc + empty_cache between tries
    (entry,) = stored_probes(tmp_path / "home")
    assert entry["key"]["device_name"] == "Fake GPU"
    assert entry["key"]["model_id"] == "ViT-B-32/x"
    assert entry["key"]["torch_version"] == torch.__version__
    assert (entry["result"]["largest_ok"], entry["result"]["smallest_oom"]) == (100, 101)

    # second call (new resource, same machine): cache hit, run_batch not called
    again = FakeGpu(100)
    assert cuda_resource(tmp_path).safe_batch_size("ViT-B-32/x", again, "fp16") == 80
    assert again.calls == []
    # margin and cap are applied at read time: no new probe
    assert cuda_resource(tmp_path, safety_margin=0.5).safe_batch_size("ViT-B-32/x", again, "fp16")
    assert cuda_resource(tmp_path).safe_batch_size("ViT-B-32/x", again, "fp16", max_batch=16) == 16
    assert again.calls == []

    # another model or precision: miss
    other = FakeGpu(40)
    assert cuda_resource(tmp_path).safe_batch_size("ViT-L-14/x", other, "fp16") == 32
    assert other.calls
    fp32 = FakeGpu(20)
    assert cuda_resource(tmp_path).safe_batch_size("ViT-B-32/x", fp32, "fp32") == 16
    assert fp32.calls
    assert len(stored_probes(tmp_path / "home")) == 3
    assert not (tmp_path / "home" / "probe-cache").exists()  # no JSON files any more


def test_margin_floor_and_cap(tmp_path: Path, fake_cuda: None) -> None:
    assert cuda_resource(tmp_path).safe_batch_size("m1", FakeGpu(1), "fp16") == 1
    dev = cuda_resource(tmp_path, max_batch_size=64)
    gpu = FakeGpu(10_000)
    assert dev.safe_batch_size("m2", gpu, "fp16") == 64  # nothing ran out of memory up to cap
    assert max(gpu.calls) == 64
    # a bigger cap than the cached search reached: probe again
    bigger = FakeGpu(100)
    assert cuda_resource(tmp_path).safe_batch_size("m2", bigger, "fp16") == 80
    assert max(bigger.calls) > 64


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"key": 1}', ""])
def test_corrupt_cache_is_recomputed(tmp_path: Path, fake_cuda: None, garbage: str) -> None:
    dev = cuda_resource(tmp_path)
    assert dev.safe_batch_size("m", FakeGpu(50), "fp16") == 40
    overwrite_probes(tmp_path / "home", garbage)
    gpu = FakeGpu(50)
    assert cuda_resource(tmp_path).safe_batch_size("m", gpu, "fp16") == 40
    assert gpu.calls
    (entry,) = stored_probes(tmp_path / "home")
    assert entry["result"]["largest_ok"] == 50


def test_cache_entry_with_broken_result_is_recomputed(tmp_path: Path, fake_cuda: None) -> None:
    assert cuda_resource(tmp_path).safe_batch_size("m", FakeGpu(50), "fp16") == 40
    (entry,) = stored_probes(tmp_path / "home")
    for broken in ({"kind": "oom_search"}, {**entry["result"], "largest_ok": "many"}, None):
        overwrite_probes(tmp_path / "home", json.dumps(broken))
        gpu = FakeGpu(50)
        assert cuda_resource(tmp_path).safe_batch_size("m", gpu, "fp16") == 40
        assert gpu.calls


def test_free_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    device_mod.free_device_memory("cpu")
    device_mod.free_device_memory("cuda")  # no-op without a GPU


def test_oom_split_preserves_order_and_warns(cleanups: list[str]) -> None:
    calls: list[int] = []

    def fn(batch: list[int]) -> np.ndarray:
        calls.append(len(batch))
        if len(batch) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return np.array([[x, x * x] for x in batch])

    warnings = Warnings()
    out = run_with_oom_split(list(range(10)), fn, logger=warnings)
    np.testing.assert_array_equal(out, [[x, x * x] for x in range(10)])
    assert calls == [10, 5, 2, 3, 5, 2, 3]
    assert len(warnings.messages) == 3
    assert "batch of 10" in warnings.messages[0]
    assert out.shape == (10, 2)
    assert len(cleanups) == 3


def test_oom_split_on_tensors_and_no_split_when_it_fits(tmp_path: Path) -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)

    def fn(batch: torch.Tensor) -> np.ndarray:
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        return (batch * 2).numpy()

    np.testing.assert_array_equal(run_with_oom_split(x, fn, logger=Warnings()), (x * 2).numpy())
    dev = InferenceDeviceResource(device="cpu", home=str(tmp_path))
    warnings = Warnings()
    out = dev.run_with_oom_split(x, lambda b: b.numpy(), logger=warnings)
    np.testing.assert_array_equal(out, x.numpy())
    assert warnings.messages == []


def test_oom_split_reraises_at_one_item_and_never_splits_other_errors() -> None:
    def always_oom(batch: list[int]) -> np.ndarray:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_oom_split([1, 2, 3], always_oom, logger=Warnings())

    calls: list[int] = []

    def broken(batch: list[int]) -> np.ndarray:
        calls.append(len(batch))
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_with_oom_split([1, 2, 3, 4], broken)
    assert calls == [4]
    with pytest.raises(ValueError, match="at least one"):
        run_with_oom_split([], broken)


def test_cpu_probe_picks_throughput_plateau_within_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake CPU model taking 0.1 + 0.05 n seconds: 1 -> 6.7 img/s, 4 -> 13.3, 16 -> 17.8,
    64 -> 19.4, 256 -> 19.8 (+2 %: stop); the smallest within 5 % of the best is 64."""
    clock = [0.0]
    monkeypatch.setattr(device_mod, "_clock", lambda: clock[0])
    calls: list[int] = []

    def run_batch(n: int) -> None:
        calls.append(n)
        clock[0] += 0.1 + 0.05 * n

    dev = InferenceDeviceResource(device="cpu", home=str(tmp_path), cpu_probe_max_seconds=100.0)
    assert dev.safe_batch_size("fake", run_batch, "fp32") == 64
    assert calls == [1, 1, 1, 4, 16, 64, 256]  # warm-up; batch 1 twice to fill 0.25 s

    # the time budget keeps the probe short: 256 (predicted ~13 s) is not tried
    calls.clear()
    dev = InferenceDeviceResource(device="cpu", home=str(tmp_path), cpu_probe_max_seconds=6)
    assert dev.safe_batch_size("fake2", run_batch, "fp32") == 64
    assert calls == [1, 1, 1, 4, 16, 64]

    # the memory budget bounds the batch (peak RSS grows 10 MiB per image in this fake)
    rss = [0]
    monkeypatch.setattr(device_mod, "_peak_rss_bytes", lambda: rss[0])

    def hungry(n: int) -> None:
        rss[0] = max(rss[0], n * (10 << 20))
        run_batch(n)

    dev = InferenceDeviceResource(
        device="cpu",
        home=str(tmp_path),
        cpu_memory_budget_bytes=100 << 20,
        cpu_probe_max_seconds=100.0,
    )
    assert dev.safe_batch_size("fake3", hungry, "fp32") == 8  # floor(0.8 * 100 MiB / 10 MiB)


def test_cpu_probe_can_be_skipped(tmp_path: Path) -> None:
    def never(n: int) -> None:
        raise AssertionError("must not run")

    dev = InferenceDeviceResource(device="cpu", home=str(tmp_path), cpu_probe=False)
    assert dev.safe_batch_size("m", never, "fp32") == 32
    assert dev.safe_batch_size("m", never, "fp32", max_batch=8) == 8


def test_cpu_end_to_end_with_tiny_open_clip(tiny_clip_checkpoint: Path, tmp_path: Path) -> None:
    import open_clip

    model = open_clip.create_model(TINY_CLIP, pretrained=None).eval()
    dev = InferenceDeviceResource(device="cpu", home=str(tmp_path), max_batch_size=64)
    assert dev.resolve() == "cpu" and dev.precision() == "fp32"
    calls: list[int] = []
    runner = image_batch_runner(model.encode_image, model.visual.image_size, "cpu", "fp32")

    def run_batch(n: int) -> None:
        calls.append(n)
        runner(n)

    batch = dev.safe_batch_size(f"{TINY_CLIP}/random", run_batch, "fp32")
    assert 1 <= batch <= 64 and calls and max(calls) <= 64
    (entry,) = stored_probes(tmp_path)
    assert entry["key"]["device_name"] == "cpu" and entry["key"]["threads"] >= 1
    assert entry["result"]["kind"] == "throughput"

    calls.clear()
    again = InferenceDeviceResource(device="cpu", home=str(tmp_path), max_batch_size=64)
    assert again.safe_batch_size(f"{TINY_CLIP}/random", run_batch, "fp32") == batch
    assert calls == []

    images = torch.randn(5, 3, 64, 64)

    def encode(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), dev.autocast():
            return model.encode_image(x).float().numpy()

    out = dev.run_with_oom_split(images, encode)
    assert out.shape == (5, 32) and out.dtype == np.float32


def test_describe_and_precision(tmp_path: Path) -> None:
    assert precision_for("cuda") == precision_for("cuda:1") == "fp16"
    assert precision_for("cpu") == precision_for("mps") == "fp32"
    info = InferenceDeviceResource(device="cpu", home=str(tmp_path)).describe()
    assert info["device"] == "cpu" and info["device_name"] == "cpu"
    assert info["precision"] == "fp32" and info["torch_version"] == torch.__version__
    assert info["threads"] == torch.get_num_threads()
    assert re.fullmatch(r"\d+\.\d [KMGTPE]iB", info["total_memory"]), info["total_memory"]
    auto = InferenceDeviceResource(home=str(tmp_path)).resolve()
    assert auto == ("cuda" if torch.cuda.is_available() else auto)
    assert auto in {"cuda", "mps", "cpu"}


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, vibe_assets.resources.device as d; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "d.InferenceDeviceResource(cache_dir='/nonexistent')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@needs_cuda
def test_real_cuda_probe_and_split(tmp_path: Path, tiny_clip_checkpoint: Path) -> None:
    import open_clip

    model = open_clip.create_model(TINY_CLIP, pretrained=None, device="cuda").eval()
    dev = InferenceDeviceResource(device="cuda", home=str(tmp_path), max_batch_size=64)
    assert dev.describe()["device_name"] == torch.cuda.get_device_name()
    run = image_batch_runner(model.encode_image, model.visual.image_size, "cuda", "fp16")
    assert dev.safe_batch_size(f"{TINY_CLIP}/random", run, "fp16") == 64  # tiny: fits

    def encode(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), dev.autocast():
            return model.encode_image(x.cuda()).float().cpu().numpy()

    assert dev.run_with_oom_split(torch.randn(3, 3, 64, 64), encode).shape == (3, 32)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", None),  # no quota: the affinity mask
        ("100000 100000\n", 1),  # docker --cpus=1
        ("50000 100000\n", 1),  # half a CPU still gets one thread
        ("garbage\n", None),
    ],
)
def test_cpu_budget_follows_affinity_and_container_quota(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert cpu_budget(path) == (affinity if expected is None else min(affinity, expected))
    assert cpu_budget(tmp_path / "missing") == affinity


def test_run_sets_torch_cpu_threads(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        device = InferenceDeviceResource(device="cpu", cpu_threads=1, home=str(tmp_path))
        device.setup_for_execution(dg.build_init_resource_context())
        assert torch.get_num_threads() == 1
        assert InferenceDeviceResource(device="cpu").apply_cpu_threads() >= 1
    finally:
        torch.set_num_threads(before)
