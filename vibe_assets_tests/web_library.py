"""A small ingested library for the web app's tests: real sample photos (plus an exact copy of
one) in two folders, ingested by ``vibe-assets ingest`` with the tiny random CLIP into a
temporary ``VIBE_HOME`` / ``DAGSTER_HOME``; and a uvicorn server in a thread for browser tests."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vibe_assets_tests.conftest import SAMPLES, use_home

PHOTOS = {
    "trips": ["sklearn_china.jpg", "sklearn_flower.jpg", "pp_elephants.jpg"],
    "pets": ["pp_dog_orange.jpg", "mpl_grace_hopper.jpg"],
}
COPY = ("pets", "pp_elephants.jpg", "elephants copy.jpg")
"""An exact copy of a photo of ``trips`` in ``pets``: one exact duplicate group."""


@dataclass
class WebLibrary:
    """The ingested library: ``root`` (photo folders), ``home`` (VIBE_HOME), the folders'
    partition keys and the photos' SHA-256s by file name."""

    root: Path
    home: Path
    keys: dict[str, str]
    shas: dict[str, str]


def web_env(patch: pytest.MonkeyPatch, home: Path, checkpoint: Path) -> None:
    """Point vibe_assets at ``home`` with the tiny CLIP (:func:`conftest.use_home`), captions
    off and previews kept."""
    use_home(patch, home, checkpoint)
    patch.setenv("VIBE_CAPTIONS", "off")
    patch.setenv("VIBE_PREVIEW_GC_GRACE_SECONDS", "86400")


@contextlib.contextmanager
def module_library(
    factory: pytest.TempPathFactory, checkpoint: Path, name: str
) -> Iterator[WebLibrary]:
    """A module's :func:`build_library` under a new temporary folder ``name``, with
    :func:`web_env` set for as long as it is used."""
    tmp = factory.mktemp(name)
    patch = pytest.MonkeyPatch()
    web_env(patch, tmp / "home", checkpoint)
    try:
        yield build_library(tmp)
    finally:
        patch.undo()


def build_library(tmp: Path) -> WebLibrary:
    """Copy the sample photos (and the exact copy) under ``tmp/lib`` and ingest both folders
    with the CLI (the environment must be set by :func:`web_env`)."""
    from vibe_assets.cli import main
    from vibe_assets.hashing import sha256_file

    root = tmp / "lib"
    shas = {}
    for folder, names in PHOTOS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(SAMPLES / "photos" / name, root / folder / name)
            (root / folder / name).chmod(0o644)
            shas[name] = sha256_file(str(root / folder / name))
    src_folder = next(f for f, names in PHOTOS.items() if COPY[1] in names)
    shutil.copy(root / src_folder / COPY[1], root / COPY[0] / COPY[2])
    result = CliRunner().invoke(
        main, ["ingest", *(str(root / f) for f in PHOTOS), "--quiet", "--json"]
    )
    assert result.exit_code == 0, result.output
    keys = {Path(s["folder"]).name: s["partition"] for s in json.loads(result.stdout)}
    return WebLibrary(root, tmp / "home", keys, shas)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app: Any, port: int) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread of this process; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web app did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
