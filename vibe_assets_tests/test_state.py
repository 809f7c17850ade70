"""The state database (issue 13, item 3): schema version and migrations, listings written as rows
touching only what changed, decode outcomes and probes as JSON text, and several processes
writing at once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from vibe_assets.state import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaTooNewError,
    StateDB,
    StateError,
    get_decode_outcome,
    put_failure_outcome,
    put_preview_outcome,
    read_hashes,
    read_scan,
    write_hashes,
    write_scan,
)

REPO = Path(__file__).resolve().parents[1]


# -- schema version and migrations ------------------------------------------------------------


def _m1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE things (name TEXT PRIMARY KEY)")


def _m2(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE things ADD COLUMN size INTEGER NOT NULL DEFAULT 7")


def _m3_broken(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE half_done (x INTEGER)")
    raise RuntimeError("migration 3 failed half way")


def test_a_new_database_is_at_the_latest_version_in_wal_mode(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.sqlite3")
    assert state.version == SCHEMA_VERSION == len(MIGRATIONS)
    with state.read() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT version, name FROM schema_version").fetchall()
    assert rows == [(n, name) for n, (name, _) in enumerate(MIGRATIONS, start=1)]
    state.close()
    assert StateDB(tmp_path / "state.sqlite3").version == SCHEMA_VERSION  # reopening: no-op


def test_an_old_version_is_upgraded_in_place_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    old = StateDB(path, migrations=[("things", _m1)])
    with old.write() as db:
        db.execute("INSERT INTO things (name) VALUES (?)", ("kept",))
    assert old.version == 1
    old.close()

    new = StateDB(path, migrations=[("things", _m1), ("things.size", _m2)])
    assert new.version == 2
    with new.read() as db:
        assert db.execute("SELECT name, size FROM things").fetchall() == [("kept", 7)]
        names = [r[0] for r in db.execute("SELECT name FROM schema_version ORDER BY version")]
    assert names == ["things", "things.size"]


def test_a_failing_migration_rolls_back_to_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateDB(path, migrations=[("things", _m1)]).close()
    with pytest.raises(RuntimeError, match="half way"):
        StateDB(path, migrations=[("things", _m1), ("things.size", _m2), ("x", _m3_broken)])
    again = StateDB(path, migrations=[("things", _m1)])
    assert again.version == 1
    with again.read() as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = [r[1] for r in db.execute("PRAGMA table_info(things)")]
    assert "half_done" not in tables and columns == ["name"]  # neither 2 nor 3 half applied


def test_a_newer_version_is_refused_with_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateDB(path, migrations=[("things", _m1), ("things.size", _m2)]).close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNewError, match=r"schema version 2.*knows versions up to 1"):
        StateDB(path, migrations=[("things", _m1)])
    assert path.read_bytes() == before
    newer = tmp_path / "newer.sqlite3"
    steps = [(f"step{i}", lambda db: None) for i in range(SCHEMA_VERSION + 1)]
    StateDB(newer, migrations=steps).close()
    with pytest.raises(SchemaTooNewError, match="newer vibe_assets"):
        StateDB(newer)  # the real schema is one version behind it


def test_a_database_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "other.sqlite3"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE folders (key TEXT)")
    db.close()
    with pytest.raises(StateError, match="not a vibe_assets state database"):
        StateDB(foreign)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StateError, match="not a usable state database"):
        StateDB(garbage)


# -- listings as rows, written incrementally ----------------------------------------------------


def _scan(root: Path, n: int, changed: dict[int, int] | None = None) -> dict[str, Any]:
    changed = changed or {}
    files = [
        {
            "path": str(root / f"img_{i:05d}.jpg"),
            "size": 1000 + i + changed.get(i, 0),
            "mtime_ns": 1_700_000_000_000_000_000 + i + changed.get(i, 0),
            "inode": 10_000 + i,
            "format": "JPEG",
        }
        for i in range(n)
    ]
    return {"root": str(root), "files": files, "failures": [], "removed": False}


def _hashes(scan: dict[str, Any], version: int = 0) -> dict[str, Any]:
    files = {
        f["path"]: {**f, "sha256": f"{i:032x}{version:032x}"} for i, f in enumerate(scan["files"])
    }
    return {"root": scan["root"], "files": files, "failures": scan["failures"], "removed": False}


def _rowids(state: StateDB) -> dict[bytes, int]:
    with state.read() as db:
        return {bytes(p): r for r, p in db.execute("SELECT id, path FROM listing_files")}


def test_an_unchanged_folder_writes_nothing_and_ten_changed_files_write_ten_rows(
    tmp_path: Path,
) -> None:
    state = StateDB(tmp_path / "state.sqlite3")
    root = tmp_path / "lib"
    scan = _scan(root, 5000)
    assert write_scan(state, "k", scan).inserted == 5000
    assert write_hashes(state, "k", _hashes(scan)).updated == 5000  # SHA-256s filled in
    rowids = _rowids(state)

    before = state.total_changes
    assert write_scan(state, "k", scan).changed == 0
    assert write_hashes(state, "k", _hashes(scan)).changed == 0
    assert state.total_changes == before  # not one row touched, header included
    assert _rowids(state) == rowids

    changed = {i: 1 for i in range(0, 5000, 500)}  # 10 files touched (size and mtime)
    scan2 = _scan(root, 5000, changed)
    done = write_scan(state, "k", scan2)
    assert (done.inserted, done.updated, done.deleted) == (0, 10, 0)
    assert done.unreferenced == 10  # their old SHA-256s are candidates for collection
    assert state.total_changes - before == 10 + 10  # 10 rows + 10 collection candidates
    hashes = read_hashes(state, "k")  # the 10 changed files wait to be hashed again
    assert hashes is not None and len(hashes["files"]) == 4990
    mid = state.total_changes
    hashes2 = _hashes(scan2)
    for i in range(5000):
        if i not in changed:  # only the changed files get new hashes
            hashes2["files"][scan2["files"][i]["path"]]["sha256"] = f"{i:032x}{0:032x}"
        else:
            hashes2["files"][scan2["files"][i]["path"]]["sha256"] = f"{i:032x}{1:032x}"
    assert write_hashes(state, "k", hashes2).updated == 10
    assert state.total_changes - mid == 10
    assert _rowids(state) == rowids  # updated in place: same rows
    assert read_hashes(state, "k")["files"] == dict(sorted(hashes2["files"].items()))

    # three files deleted, two added
    scan3 = _scan(root, 5000, changed)
    del scan3["files"][4997:]
    scan3["files"] += _scan(tmp_path / "new", 2)["files"]
    done = write_scan(state, "k", scan3)
    assert (done.inserted, done.updated, done.deleted) == (2, 0, 3)
    assert read_scan(state, "k")["files"] == sorted(scan3["files"], key=lambda f: f["path"])


def test_listing_round_trips_odd_names_big_inodes_and_failures_by_stage(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.sqlite3")
    odd = os.fsdecode(b"/lib/not utf-8 \xff\xfe.jpg")  # lone surrogates: not valid UTF-8 text
    files = [
        {"path": odd, "size": 1, "mtime_ns": -5, "inode": 2**64 - 3, "format": "JPEG"},
        {"path": "/lib/日本/写真\n1.jpg", "size": 2, "mtime_ns": 7, "inode": 9, "format": None},
    ]
    scan_failures = [{"path": "/lib/locked", "code": "ERR_PERMISSION_DENIED", "message": "no"}]
    scan = {
        "root": "/lib",
        "files": files,
        "failures": scan_failures,
        "skipped_hidden": 3,
        "skipped_symlinks": 1,
        "skipped_other": 2,
        "removed": False,
    }
    write_scan(state, "k", scan)
    assert read_scan(state, "k") == {**scan, "files": sorted(files, key=lambda f: f["path"])}
    hash_failure = {"path": files[1]["path"], "code": "ERR_READ_FAILED", "message": odd}
    hashes = {
        "root": "/lib",
        "files": {odd: {**files[0], "sha256": "ab" * 32}},
        "failures": [*scan_failures, hash_failure],
        "removed": False,
    }
    write_hashes(state, "k", hashes)
    assert read_hashes(state, "k") == hashes  # scan failures stored once, hash failures apart
    with state.read() as db:
        stages = sorted(r[0] for r in db.execute("SELECT stage FROM listing_failures"))
    assert stages == ["hash", "scan"]
    assert read_scan(state, "k")["failures"] == scan_failures
    # the file whose hash failed is removed: its hash failure goes with it
    write_scan(state, "k", {**scan, "files": files[:1]})
    assert read_hashes(state, "k")["failures"] == scan_failures
    assert read_scan(state, "other") is None and read_hashes(state, "other") is None


def test_decode_outcomes_are_json_text_and_one_per_image(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.sqlite3")
    odd = os.fsdecode(b"cannot identify '/x/\xff.jpg'")
    info = {"width": 4, "height": 3, "format": "JPEG", "decoder": "jpeg", "exif": {"k": "日本"}}
    put_preview_outcome(state, "a" * 64, info)
    assert get_decode_outcome(state, "a" * 64) == {"status": "preview", **info}
    put_failure_outcome(state, "a" * 64, {"code": "ERR_DECODE_IMAGE", "message": odd}, "fp=1")
    assert get_decode_outcome(state, "a" * 64) == {
        "status": "failure",
        "code": "ERR_DECODE_IMAGE",
        "message": odd,
        "decoder": "fp=1",
    }
    with state.read() as db:
        rows = db.execute("SELECT typeof(message), typeof(exif) FROM decode_outcomes").fetchall()
    assert rows == [("text", "null")]  # the failure replaced the preview: one row per image


# -- several processes at once ----------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from vibe_assets.automation import FolderFingerprints
    from vibe_assets.resources.store import StoreResource
    from vibe_assets.state import put_preview_outcome, write_scan

    home, name, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.001)
    store = StoreResource(home=str(home))  # the first open races: migrations, old-layout import
    prints = FolderFingerprints(store.state)
    for i in range(150):
        folder = home.parent / "lib" / f"{name}-{i}"
        folder.mkdir(parents=True)
        store.registry.add_many([folder], recursive=False)
        files = [
            {"path": f"{folder}/f{j}.jpg", "size": j, "mtime_ns": i, "inode": j, "format": "JPEG"}
            for j in range(40)
        ]
        write_scan(store.state, f"{name}-{i}", {"root": str(folder), "files": files,
                                                "failures": []})
        put_preview_outcome(store.state, f"{name}{i:060d}",
                            {"width": 1, "height": 1, "format": "JPEG", "decoder": "x"})
        prints.write([(os.fsencode(str(folder)), b"/", name, b"f", 1, i)], [], 1, 0, i)
    store.close()
    print("ok")
    """
)


def test_two_processes_writing_at_once_never_fail(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / "registry.sqlite3") as db:  # an old layout to import, once
        db.execute(
            "CREATE TABLE folders (key TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE,"
            " added_at REAL NOT NULL)"
        )
        db.execute("INSERT INTO folders VALUES ('old-0123456789', '/old', 1.0)")
    db.close()
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(home), name, str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    go.touch()  # both start writing at once
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and out.strip() == "ok", err[-3000:]
    state = StateDB(home / "state.sqlite3")
    counts = state.counts()
    assert counts["folders"] == 2 * 150 + 1  # the old registry row imported once
    assert counts["listing_files"] == 2 * 150 * 40
    assert counts["decode_outcomes"] == counts["sensor_folders"] == 2 * 150
    assert (home / "registry.sqlite3.imported").is_file()
    assert json.loads(json.dumps(state.get_meta("legacy_import")))["cleaned"] is True


def test_switching_to_wal_is_retried_while_another_process_holds_the_lock() -> None:
    """SQLite answers "database is locked" at once (no busy wait) to one of two processes that
    switch a new database to WAL together; the switch is tried again until the timeout."""
    from vibe_assets.state import switch_to_wal

    class Flaky:
        def __init__(self, failures: int, message: str = "database is locked") -> None:
            self.failures, self.message, self.calls = failures, message, 0

        def execute(self, sql: str) -> Any:
            assert sql == "PRAGMA journal_mode = WAL"
            self.calls += 1
            if self.calls <= self.failures:
                raise sqlite3.OperationalError(self.message)
            return sqlite3.connect(":memory:").execute("SELECT 'wal'")

    conn = Flaky(failures=3)
    assert switch_to_wal(conn, timeout_seconds=5) == "wal"  # type: ignore[arg-type]
    assert conn.calls == 4
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        switch_to_wal(Flaky(failures=1000), timeout_seconds=0.2)  # type: ignore[arg-type]
    other = Flaky(failures=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        switch_to_wal(other, timeout_seconds=5)  # type: ignore[arg-type]
    assert other.calls == 1
