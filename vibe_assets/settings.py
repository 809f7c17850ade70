"""Where vibe_assets keeps its state, and the environment variables that configure it.

Only plain, non-secret settings live here (read when definitions load). Secrets such as
``QDRANT_API_KEY`` are read through ``dg.EnvVar`` in :mod:`vibe_assets.definitions`, never here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

DEFAULT_VIBE_HOME = "~/.vibe_assets"
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_WEIGHTS = "laion2b_s34b_b79k"
DEFAULT_COLLECTION = "photos"
PHOTO_ROOTS_ENV = "VIBE_PHOTO_ROOTS"
CAPTIONS_ENV = "VIBE_CAPTIONS"
CAPTIONS_TAG = "vibe/captions"
"""Run tag ``on`` | ``off``: caption in this run or not, whatever ``VIBE_CAPTIONS`` says (set by
``vibe-assets ingest --captions/--no-captions`` and by ``recaption_schedule``)."""
CAPTION_MODES = ("auto", "on", "off")
CACHE_SIZE_LIMIT_ENV = "VIBE_CACHE_SIZE_LIMIT_BYTES"
DEFAULT_CACHE_SIZE_LIMIT_BYTES = 8 * 2**30
"""8 GiB: ~4M embeddings of 512 float32, or ~100k images' previews, thumbnails, embeddings and
captions (~80 KB each)."""
PREVIEW_GC_GRACE_ENV = "VIBE_PREVIEW_GC_GRACE_SECONDS"
DEFAULT_PREVIEW_GC_GRACE_SECONDS = 86_400
"""One day: an image moved from one folder to another that is ingested by a later run keeps its
preview (it would be decoded again otherwise)."""
VECTORS_WAIT_ENV = "VIBE_VECTORS_WAIT_SECONDS"
"""Seconds a ``vibe-assets`` command waits for an embedded collection held by a run."""

log = logging.getLogger(__name__)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_budget(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process can really use: its affinity mask (``taskset``, ``docker --cpuset-cpus``),
    capped by a cgroup v2 CPU quota (``cpu.max``, e.g. ``docker --cpus=2`` gives
    ``200000 100000``: 2 CPUs), rounded up; at least 1.

    ``os.cpu_count()`` counts the host's CPUs, so in a container limited to 2 CPUs on a 64-core
    host it would start 64 torch and decode threads that fight over 2 CPUs.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = max(1, count or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota visible: the affinity mask decides
    return count


def vibe_home() -> Path:
    """Absolute state directory: ``$VIBE_HOME`` or ``~/.vibe_assets`` (not created here)."""
    return Path(os.environ.get("VIBE_HOME") or DEFAULT_VIBE_HOME).expanduser().resolve()


def dagster_home() -> Path:
    """Dagster instance directory: ``$DAGSTER_HOME`` or ``$VIBE_HOME/dagster``."""
    env = os.environ.get("DAGSTER_HOME")
    return Path(env).expanduser().resolve() if env else vibe_home() / "dagster"


def env_str(name: str, default: str) -> str:
    """``os.environ[name]`` when set and non-empty, else ``default``."""
    return os.environ.get(name) or default


def env_choice(name: str, choices: tuple[str, ...], raw: str | None = None) -> str:
    """``raw`` (default: the environment variable ``name``), trimmed and lower-cased, one of
    ``choices``; unset or empty gives ``choices[0]``.

    Raises:
        ValueError: another value (the message names the variable and the choices).
    """
    value = (raw if raw is not None else env_str(name, choices[0])).strip().lower() or choices[0]
    if value not in choices:
        allowed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def env_float(name: str, default: float) -> float:
    """Float environment variable (e.g. seconds).

    Raises:
        ValueError: the variable is set but is not a number (message names the variable).
    """
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def env_int(name: str, default: int) -> int:
    """Integer environment variable.

    Raises:
        ValueError: the variable is set but is not an integer (message names the variable).
    """
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def cache_size_limit_bytes() -> int:
    """``VIBE_CACHE_SIZE_LIMIT_BYTES``: the one size limit of the cache (embeddings, captions,
    previews and thumbnails together, in bytes); default 8 GiB. Past it the least recently
    stored entries are evicted; the state database is never counted nor evicted.

    Raises:
        ValueError: not an integer, or below 1 MiB (the message names the variable).
    """
    limit = env_int(CACHE_SIZE_LIMIT_ENV, DEFAULT_CACHE_SIZE_LIMIT_BYTES)
    if limit < 2**20:
        raise ValueError(f"{CACHE_SIZE_LIMIT_ENV} must be at least 1048576 (1 MiB), got {limit}")
    return limit


def preview_gc_grace_seconds() -> int:
    """``VIBE_PREVIEW_GC_GRACE_SECONDS``: how long an image no folder holds any more keeps its
    preview before the collection deletes it (seconds, default one day; 0 collects at once).

    Raises:
        ValueError: not an integer, or negative (the message names the variable).
    """
    grace = env_int(PREVIEW_GC_GRACE_ENV, DEFAULT_PREVIEW_GC_GRACE_SECONDS)
    if grace < 0:
        raise ValueError(f"{PREVIEW_GC_GRACE_ENV} must be >= 0, got {grace}")
    return grace


def captions_mode(raw: str | None = None) -> str:
    """``VIBE_CAPTIONS`` (or ``raw``), lower-cased: ``auto`` (default: caption on a CUDA GPU,
    not on a CPU where BLIP-base takes ~2 s per image, DESIGN.md), ``on`` or ``off``.

    Raises:
        ValueError: another value (the message names the variable).
    """
    return env_choice(CAPTIONS_ENV, CAPTION_MODES, raw)


def decide_captions(
    mode: str,
    device: Callable[[], str],
    tag: str | None = None,
    caption_run: bool = False,
) -> tuple[bool, str]:
    """Whether a run captions, and why (one phrase for logs and metadata).

    In order: a run tag ``vibe/captions`` = ``on``/``off`` (``tag``) decides; a *caption run*
    (one that captions previews made earlier: ``caption_job``, ``recaption_schedule``, or
    ``blip_captions`` selected on its own in the UI) captions, as that is an explicit choice;
    otherwise ``mode`` (``VIBE_CAPTIONS``): ``on``, ``off``, or ``auto``, which captions only
    when ``device()`` (called only then, on the machine the run executes on: it imports torch)
    names a CUDA device.
    """
    if tag in ("on", "off"):
        return tag == "on", f"run tag {CAPTIONS_TAG}={tag}"
    if caption_run:
        return True, "captions requested on their own (a caption run)"
    if mode != "auto":
        return mode == "on", f"{CAPTIONS_ENV}={mode}"
    found = device()
    if found.startswith("cuda"):
        return True, f"{CAPTIONS_ENV}=auto and this machine has {found}"
    return False, (
        f"{CAPTIONS_ENV}=auto and this machine has no CUDA GPU ({found}): captions are left to "
        "recaption_schedule or an explicit caption run"
    )


def check_photo_roots(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Validate configured photo roots: ``(usable roots, problems)``.

    Each path has ``~`` expanded and is resolved (a symlinked root is replaced by its target).
    Kept: absolute paths of existing directories, in the given order, without duplicates. A root
    inside another kept root is dropped (its folders are walked once, under the outer root).
    Everything dropped is described in ``problems`` (one human-readable line each); nothing here
    raises.
    """
    roots: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        text = str(raw).strip()
        if not text:
            continue
        path = Path(text).expanduser()
        if not path.is_absolute():
            problems.append(f"photo root {text!r} is not an absolute path: ignored")
            continue
        try:
            resolved = path.resolve()
            is_dir = resolved.is_dir()
        except OSError as exc:
            problems.append(f"photo root {text!r} cannot be read ({exc}): ignored")
            continue
        if not is_dir:
            what = "is not a directory" if resolved.exists() else "does not exist"
            problems.append(f"photo root {text!r} {what}: ignored until it appears")
            continue
        if resolved in roots:
            continue
        outer = next((r for r in roots if resolved.is_relative_to(r)), None)
        if outer is not None:
            problems.append(f"photo root {text!r} is inside {str(outer)!r}: walked once, there")
            continue
        inner = [r for r in roots if r.is_relative_to(resolved)]
        for r in inner:
            problems.append(f"photo root {str(r)!r} is inside {text!r}: walked once, there")
        roots = [r for r in roots if r not in inner] + [resolved]
    return roots, problems


def photo_roots(raw: str | None = None) -> list[Path]:
    """Photo roots from ``$VIBE_PHOTO_ROOTS`` (or ``raw``): ``os.pathsep``-separated absolute
    paths (``:`` on Linux/macOS, ``;`` on Windows), ``~`` expanded.

    Returns:
        Resolved, existing directories (see :func:`check_photo_roots`); empty when the variable
        is unset. A missing, relative or nested root is logged as a warning, never raised: a
        photo drive that is not mounted yet must not break the code location.
    """
    if raw is None:
        raw = os.environ.get(PHOTO_ROOTS_ENV, "")
    roots, problems = check_photo_roots(raw.split(os.pathsep))
    for problem in problems:
        log.warning("%s: %s", PHOTO_ROOTS_ENV, problem)
    return roots
