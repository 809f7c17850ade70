"""The code location as ``dagster dev`` loads it in test_ui_runs.py, with the tiny test CLIP.

The code server and each run worker import this module instead of ``vibe_assets.definitions``
only to register the tiny architecture with open_clip first (``VIBE_TEST_CLIP_DIR``); the
definitions themselves are the project's, unchanged.
"""

import os

import open_clip

open_clip.add_model_config(os.environ["VIBE_TEST_CLIP_DIR"])

from vibe_assets.definitions import defs  # noqa: E402

__all__ = ["defs"]
