"""Decode failures are cached with what decoded them (issue 12, item 5): a failure made by other
decoding libraries (or by an older version of our decode code) is retried once, then cached
again; an unchanged installation never retries it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import PIL
import pytest
import rawpy

import vibe_assets.assets.previews as previews_module
from vibe_assets_tests.conftest import Env, copy_samples, metadata, needs_samples

BROKEN = "edge/truncated_sharp.jpg"
GOOD = "photos/sklearn_china.jpg"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Calls of ``decode_photo`` by file name."""
    calls: Counter[str] = Counter()
    real = previews_module.decode_photo

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls[Path(path).name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(previews_module, "decode_photo", counting)
    return calls


def broken_report(env: Env, key: str) -> list[tuple[str, str]]:
    md = metadata(env.materialize(key), "photo_previews")
    return [(Path(r["path"]).name, r["code"]) for r in md["failures_json"]]


@needs_samples
def test_failure_is_retried_once_after_the_decoder_changes(
    env: Env, tmp_path: Path, decodes: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_samples(tmp_path / "lib", BROKEN, GOOD)
    key = env.add_folder(folder)
    name = Path(BROKEN).name
    expected = [(name, "ERR_TRUNCATED_IMAGE")]

    assert broken_report(env, key) == expected and decodes[name] == 1
    sha = env.store.folder_hashes(key)["files"][str(folder / name)]["sha256"]
    cached = env.store.decode_failure(sha)
    assert cached["code"] == "ERR_TRUNCATED_IMAGE"
    assert cached["decoder"] == previews_module.decoder_fingerprint()

    assert broken_report(env, key) == expected  # still reported from the cache ...
    assert decodes[name] == 1  # ... and not decoded again by the same installation

    monkeypatch.setattr(previews_module, "decoder_fingerprint", lambda: "upgraded-libraw")
    assert broken_report(env, key) == expected
    assert decodes[name] == 2  # retried once by the new decoder
    assert env.store.decode_failure(sha)["decoder"] == "upgraded-libraw"
    assert broken_report(env, key) == expected and decodes[name] == 2  # not again
    assert decodes[Path(GOOD).name] == 1  # the good photo was decoded once, ever


@needs_samples
def test_failure_cached_before_fingerprints_existed_is_retried_once(
    env: Env, tmp_path: Path, decodes: Counter[str]
) -> None:
    folder = copy_samples(tmp_path / "lib", BROKEN)
    key = env.add_folder(folder)
    name = Path(BROKEN).name
    broken_report(env, key)
    sha = env.store.folder_hashes(key)["files"][str(folder / name)]["sha256"]
    old = {"code": "ERR_DECODE_IMAGE", "message": "written by an older version"}
    env.store.put_decode_failure(sha, old, decoder=None)  # a record with no decoder
    assert env.store.decode_failure(sha)["decoder"] is None

    assert broken_report(env, key) == [(name, "ERR_TRUNCATED_IMAGE")] and decodes[name] == 2
    assert env.store.decode_failure(sha)["decoder"] == previews_module.decoder_fingerprint()
    assert broken_report(env, key) == [(name, "ERR_TRUNCATED_IMAGE")] and decodes[name] == 2


def test_fingerprint_names_the_decoding_libraries() -> None:
    fingerprint = previews_module.decoder_fingerprint()
    parts = dict(part.split("=", 1) for part in fingerprint.split(";"))
    assert parts["vibe_decode"] == str(previews_module.DECODE_LOGIC_VERSION)
    assert parts["pillow"] == PIL.__version__ and parts["rawpy"] == rawpy.__version__
    assert parts["libraw"] == ".".join(map(str, rawpy.libraw_version))
    assert parts["pillow_heif"] and parts["libheif"]
    assert previews_module.decoder_fingerprint() is fingerprint  # computed once per process


def test_fingerprint_is_not_computed_when_definitions_load(tmp_path: Path) -> None:
    code = (
        "import vibe_assets.definitions, vibe_assets.assets.previews as p;"
        "print(p.decoder_fingerprint.cache_info().currsize)"
    )
    env = {**os.environ, "VIBE_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0"
