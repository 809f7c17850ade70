"""Where vibe_assets keeps its state, and the environment variables that configure it.

Only plain, non-secret settings live here (read when definitions load). Secrets such as
``QDRANT_API_KEY`` are read through ``dg.EnvVar`` in :mod:`vibe_assets.definitions`, never here.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_VIBE_HOME = "~/.vibe_assets"
DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_WEIGHTS = "laion2b_s34b_b79k"
DEFAULT_COLLECTION = "photos"


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
