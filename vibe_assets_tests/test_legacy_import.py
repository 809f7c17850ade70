"""Import of the layout before the state database (issue 13, item 3): a ``VIBE_HOME`` written by
the previous version (``registry.sqlite3``, ``sensor_folders.sqlite3``, ``probe-cache/*.json``
and JSON state documents in the diskcache, previews not counted in the cache) is imported once,
the old files renamed aside and the old documents deleted, and nothing is hashed, decoded or
embedded again."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import diskcache
import pytest

import vibe_assets.legacy as legacy
from vibe_assets.automation import FolderFingerprints
from vibe_assets.cache import SafeDisk
from vibe_assets.resources import InferenceDeviceResource, StoreResource
from vibe_assets.resources.device import DeviceIdentity
from vibe_assets.state import STATE_DB_NAME, StateDB
from vibe_assets_tests.conftest import Env, metadata
from vibe_assets_tests.test_cache import broken_copy, state_snapshot
from vibe_assets_tests.test_faults import Boom, counts, library

__all__ = ["counts"]  # a fixture

OOM_RESULT = {"kind": "oom_search", "largest_ok": 50, "smallest_oom": 51, "cap": 512, "calls": 9}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def write_old_layout(env: Env, probe_key: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``env.home`` as the previous version left it, from what the state holds now:
    the formats of ``FolderRegistry``, ``FolderFingerprints``, the JSON probe cache and the
    diskcache documents (``scan/``, ``hashes/``, ``preview/``, ``failure/``) of that version.
    Returns the state the import must give (what the state held, plus the probe)."""
    store = env.store
    keys = [f.key for f in store.registry.list()]
    before = state_snapshot(store, keys)
    for info in before["previews"].values():  # the old layout had no perceptual hashes (they
        if info is not None:  # are computed when duplicates are first grouped)
            info.pop("phash", None)
    fingerprints = FolderFingerprints(store.state).rows()
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{env.home / STATE_DB_NAME}{suffix}").unlink(missing_ok=True)

    with contextlib.closing(sqlite3.connect(env.home / "registry.sqlite3")) as db, db:
        # the registry schema before ``vanished_at`` existed (two versions back)
        db.execute(
            "CREATE TABLE folders (key TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE,"
            " added_at REAL NOT NULL, recursive INTEGER NOT NULL DEFAULT 1)"
        )
        db.executemany(
            "INSERT INTO folders VALUES (?, ?, ?, ?)",
            [(f.key, str(f.path), f.added_at, int(f.recursive)) for f in before["registry"]],
        )
    with contextlib.closing(sqlite3.connect(env.home / "sensor_folders.sqlite3")) as db, db:
        db.execute(
            "CREATE TABLE folders (path BLOB PRIMARY KEY, root BLOB NOT NULL,"
            " key TEXT NOT NULL, fingerprint BLOB, seen_pass INTEGER NOT NULL,"
            " tick INTEGER NOT NULL)"
        )
        db.executemany(
            "INSERT INTO folders VALUES (?, ?, ?, ?, ?, ?)",
            [
                (p, r.root, r.key, r.fingerprint, r.seen_pass, r.tick)
                for p, r in fingerprints.items()
            ],
        )
    probes = env.home / "probe-cache"
    probes.mkdir()
    entry = {"key": probe_key, "result": OOM_RESULT, "created": "2026-11-01T00:00:00+0000"}
    (probes / "0123456789abcdef01234567.json").write_text(json.dumps(entry, indent=1))
    (probes / "corrupt.json").write_text("{not json")

    with diskcache.Cache(str(env.home / "cache"), disk=SafeDisk) as cache:
        for key in list(cache.iterkeys()):  # the old version had no preview entries
            if key.startswith(("previewfile/", "thumbfile/")):
                cache.delete(key)  # (no owner: the files stay)
        for key in keys:
            cache.set(f"scan/{key}", _json(before["scans"][key]))
            cache.set(f"hashes/{key}", _json(before["hashes"][key]))
        for sha, info in before["previews"].items():
            if info is not None:
                cache.set(f"preview/{sha}", _json(info))
        for sha, failure in before["failures"].items():
            if failure is not None:
                cache.set(f"failure/{sha}", _json(failure))
        cache.set("scan/never-registered-0123", _json({"root": "/x", "files": [], "failures": []}))
    with diskcache.Cache(str(env.home / "cache")) as raw:  # planted by someone else: pickled
        raw.set("preview/" + "f" * 64, Boom(env.home / "pwned"))
    assert before["probes"] == []
    return {
        **before,
        "probes": [(probe_key, json.dumps(OOM_RESULT, sort_keys=True, separators=(",", ":")))],
    }


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        InferenceDeviceResource, "_identity", lambda self: DeviceIdentity("Fake GPU", 80 << 30)
    )


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_old_layout_is_imported_once_and_nothing_is_recomputed(
    env: Env, tmp_path: Path, counts: Counter[str], fake_gpu: None
) -> None:
    folder = library(tmp_path / "lib", 4)
    broken_copy(folder / "p0.jpg", folder / "broken.jpg")
    other = library(tmp_path / "other", 1, first_seed=40)
    keys = [env.add_folder(folder), env.add_folder(other)]
    FolderFingerprints(env.store.state).write(
        [(os.fsencode(str(other)), os.fsencode(str(tmp_path)), keys[1], b"\x01" * 16, 3, 5)],
        [],
        3,
        0,
        5,
    )
    env.materialize(*keys)
    probe_key = InferenceDeviceResource(device="cuda")._cache_key("m", "fp16")
    before = write_old_layout(env, probe_key)
    preview_file = env.store.preview_path(shas_of_names(before, "p1.jpg"))
    assert preview_file.is_file() and not (env.home / STATE_DB_NAME).exists()

    handler = Lines()
    logging.getLogger("vibe_assets.legacy").addHandler(handler)
    logging.getLogger("vibe_assets.legacy").setLevel(logging.INFO)
    try:
        after = state_snapshot(env.store, keys)  # the first open imports
    finally:
        logging.getLogger("vibe_assets.legacy").removeHandler(handler)
    assert after == before
    (line,) = handler.lines  # one line says what was imported
    assert "imported the old VIBE_HOME layout" in line and "listings 2" in line
    assert "listings_not_imported 1" in line and "previews 5" in line and "failures 1" in line
    assert not (env.home / "pwned").exists()  # the planted pickle was never loaded
    for name in ("registry.sqlite3", "sensor_folders.sqlite3", "probe-cache"):
        assert not (env.home / name).exists() and (env.home / f"{name}.imported").exists()
    cache = env.store.cache
    assert not [k for k in cache.iterkeys() if k.split("/")[0] in {"scan", "hashes", "preview"}]
    assert not [k for k in cache.iterkeys() if k.startswith("failure/")]
    assert sum(k.startswith("previewfile/") for k in cache.iterkeys()) == 5  # counted now
    assert cache.check() == []

    device = InferenceDeviceResource(device="cuda", home=str(env.home))
    calls: list[int] = []
    assert device.safe_batch_size("m", calls.append, "fp16") == 40  # the imported probe
    assert calls == []

    counts.clear()
    result = env.materialize(*keys)
    assert counts == Counter()  # nothing decoded (not even the broken file) nor embedded
    assert metadata(result, "photo_hashes")["run_hashed"] == 0
    assert metadata(result, "photo_previews")["run_failed"] == 1
    assert state_snapshot(env.store, keys) == before

    env.store.close()  # opening again imports nothing more
    assert legacy.import_legacy_layout(env.home, StateDB(env.home / STATE_DB_NAME)) is None


def shas_of_names(snapshot: dict[str, Any], name: str) -> str:
    for hashes in snapshot["hashes"].values():
        for path, entry in hashes["files"].items():
            if Path(path).name == name:
                return entry["sha256"]
    raise KeyError(name)


def test_a_crash_after_the_import_is_finished_by_the_next_open(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = env.add_folder(library(tmp_path / "lib", 2))
    env.materialize(key)
    before = write_old_layout(env, {"model_id": "m"})

    def crash(home: Path) -> dict[str, Any]:
        raise KeyboardInterrupt("killed after the import's commit")

    monkeypatch.setattr(legacy, "_clean_up", crash)
    with pytest.raises(KeyboardInterrupt):
        _ = StoreResource(home=str(env.home)).state
    marker = StateDB(env.home / STATE_DB_NAME).get_meta(legacy.MARKER)
    assert marker["cleaned"] is False and marker["imported"]["listings"] == 1
    assert (env.home / "registry.sqlite3").exists()  # not renamed yet
    monkeypatch.undo()

    store = StoreResource(home=str(env.home))
    assert state_snapshot(store, [key]) == before  # imported once, not twice
    assert store.state.counts()["folders"] == 1
    assert (env.home / "registry.sqlite3.imported").exists()
    assert not [k for k in store.cache.iterkeys() if k.startswith("hashes/")]
    assert store.state.get_meta(legacy.MARKER)["cleaned"] is True


def test_two_importers_at_once_import_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with contextlib.closing(sqlite3.connect(home / "registry.sqlite3")) as db, db:
        db.execute("CREATE TABLE folders (key TEXT PRIMARY KEY, path TEXT, added_at REAL)")
        db.execute("INSERT INTO folders VALUES ('a-0123456789', '/a', 1.0)")
    read_old = legacy._read_old
    raced: list[bool] = []

    def racing(where: Path) -> dict[str, Any]:
        found = read_old(where)
        if not raced:  # another process imports while this one reads
            raced.append(True)
            assert legacy.import_legacy_layout(where, StateDB(where / STATE_DB_NAME))
        return found

    monkeypatch.setattr(legacy, "_read_old", racing)
    state = StateDB(home / STATE_DB_NAME)
    legacy.import_legacy_layout(home, state)  # sees the other's marker: writes nothing more
    assert raced and state.counts()["folders"] == 1
    assert state.get_meta(legacy.MARKER)["imported"]["folders"] == 1


def test_a_new_home_imports_nothing(tmp_path: Path) -> None:
    store = StoreResource(home=str(tmp_path / "home"))
    assert store.registry.list() == []
    marker = store.state.get_meta(legacy.MARKER)
    assert marker["found"] is False and marker["cleaned"] is True
    assert sorted(p.name for p in (tmp_path / "home").iterdir())[0] == "state.sqlite3"


def test_old_probe_cache_folder_setting_uses_the_homes_state_database(tmp_path: Path) -> None:
    """``cache_dir=$VIBE_HOME/probe-cache`` (configurations written for the JSON probe cache)
    keeps the probes in that home's state database."""
    home = tmp_path / "home"
    device = InferenceDeviceResource(device="cpu", cache_dir=str(home / "probe-cache"))
    assert device.state_home() == home.resolve()
    assert device.state().path == home.resolve() / STATE_DB_NAME
    assert pickle.dumps(OOM_RESULT)  # (the probe is JSON; pickle only builds the planted value)
