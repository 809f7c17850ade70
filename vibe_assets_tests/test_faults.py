"""Nothing lost, nothing let in (issue 7), in-process part: Qdrant server faults, corrupt cache
entries, a full disk, files changing between hash and decode, odd names, containment, secrets
and state files. Crashes (SIGKILL) and concurrent runs are in ``test_crash.py``."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.server
import json
import os
import pickle
import socket
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
from click.testing import CliRunner
from qdrant_client import models
from qdrant_client.http.api.points_api import jsonable_encoder

import vibe_assets.assets.previews as previews_module
import vibe_assets.resources.store as store_module
from vibe_assets.assets.qdrant import RETRY_DELAY_ENV
from vibe_assets.automation import FolderFingerprints, _Cursor
from vibe_assets.cli import main
from vibe_assets.partitions import PARTITIONS_NAME, FolderRegistry, is_valid_key
from vibe_assets.resources import ClipResource, VectorStoreResource
from vibe_assets.resources.device import _read_probe, _write_probe
from vibe_assets.resources.qdrant import QdrantUnavailableError
from vibe_assets.state import StateDB
from vibe_assets_tests.conftest import Env, metadata, use_home
from vibe_assets_tests.test_pipeline import make_photo

# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Images embedded (``ClipResource.encode_images``) and decoded (``decode_photo``)."""
    counter: Counter[str] = Counter()
    real_encode = ClipResource.encode_images
    real_decode = previews_module.decode_photo

    def encode_images(self: ClipResource, batch: Any) -> np.ndarray:
        counter["embedded"] += len(batch)
        return real_encode(self, batch)

    def decode_photo(path: Any, *args: Any, **kwargs: Any) -> Any:
        counter["decoded"] += 1
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(ClipResource, "encode_images", encode_images)
    monkeypatch.setattr(previews_module, "decode_photo", decode_photo)
    return counter


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Qdrant retry delays of 10 ms (read when the assets are built, i.e. per materialize)."""
    monkeypatch.setenv(RETRY_DELAY_ENV, "0.01")


def library(folder: Path, n: int, first_seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_photo(folder / f"p{i}.jpg", seed=first_seed + i, size=(96, 64))
    return folder


def free_port() -> int:
    """A local TCP port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Answers every request with 503 and records its API key header."""

    def _answer(self) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("api-key")))  # type: ignore[attr-defined]
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"status": {"error": "service unavailable"}}'
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def server_503() -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    """A local HTTP server answering 503 to everything: ``(url, recorded requests)``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def qdrant_fault(kind: str) -> Iterator[tuple[str, list[Any]]]:
    """``(url, requests seen)`` of a Qdrant server that is down (``refused``) or answers 503."""
    if kind == "refused":
        yield f"http://127.0.0.1:{free_port()}", []
    else:
        with server_503() as (url, requests):
            yield url, requests


def step_events(result: dg.ExecuteInProcessResult, step: str, kind: str) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.step_key == step and e.event_type_value == kind]


def failure_text(result: dg.ExecuteInProcessResult, step: str) -> str:
    """Message and causes of ``step``'s failure."""
    (event,) = step_events(result, step, "STEP_FAILURE")
    err = event.step_failure_data.error
    parts = []
    while err is not None:
        parts.append(err.to_string())
        err = err.cause
    return "\n".join(parts)


def hashes_by_name(env: Env, key: str) -> dict[str, str]:
    files = env.store.folder_hashes(key)["files"]
    return {Path(p).name: e["sha256"] for p, e in files.items()}


# -- 2. store faults -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["refused", "503"])
def test_failing_qdrant_server_is_retried_then_fails_naming_the_url_and_keeps_embeddings(
    env: Env, tmp_path: Path, counts: Counter[str], fast_retries: None, fault: str
) -> None:
    key = env.add_folder(library(tmp_path / "lib", 5))
    secret = f"key-{uuid.uuid4().hex}"
    with qdrant_fault(fault) as (url, requests):
        env.resources["qdrant"] = VectorStoreResource(url=url, api_key=secret, timeout=5)
        result = env.materialize(key, raise_on_error=False)
    assert not result.success
    assert len(step_events(result, "qdrant_photos", "STEP_UP_FOR_RETRY")) == 3  # 4 attempts
    text = failure_text(result, "qdrant_photos")
    assert "QdrantUnavailableError" in text and url in text and secret not in text
    assert ("unreachable" if fault == "refused" else "answered HTTP 503") in text
    if fault == "503":  # the key was sent to the server (so it was bound), never echoed back
        assert len({r[1] for r in requests}) >= 1 and {r[2] for r in requests} == {secret}
    assert counts["embedded"] == 5
    model_id = env.resources["clip"].model_id
    assert all(env.store.has_embedding(model_id, sha) for sha in hashes_by_name(env, key).values())

    # The server is back (here: the embedded store): the vectors are uploaded, nothing recomputed.
    env.resources["qdrant"] = VectorStoreResource(path=str(env.home / "vectors"))
    counts.clear()
    again = env.materialize(key)
    assert counts == Counter() and len(env.points()) == 5
    assert metadata(again, "qdrant_photos")["upserted"] == 5


def test_corrupt_cache_entries_are_recomputed_not_fatal(
    env: Env, tmp_path: Path, counts: Counter[str]
) -> None:
    key = env.add_folder(library(tmp_path / "lib", 6))
    env.materialize(key)
    shas = hashes_by_name(env, key)
    assert len(env.points()) == 6
    store, model_id = env.store, env.resources["clip"].model_id
    good = {name: store.get_embedding(model_id, sha).copy() for name, sha in shas.items()}

    store.cache.set(f"embedding/{model_id}/{shas['p0.jpg']}", np.full(32, 7.0, "f4").tobytes())
    store.cache.set(f"embedding/{model_id}/{shas['p1.jpg']}", b"\x00\x01\x02")  # torn write
    with store.state.write() as db:  # decode outcomes: unreadable JSON, not a preview record
        db.execute(
            "UPDATE decode_outcomes SET exif = '{not json' WHERE sha256 = ?", [shas["p2.jpg"]]
        )
        db.execute("UPDATE decode_outcomes SET width = NULL WHERE sha256 = ?", [shas["p3.jpg"]])
    store.preview_path(shas["p4.jpg"]).unlink()
    store.close()
    counts.clear()
    result = env.materialize(key)

    assert counts == Counter(embedded=2, decoded=3)  # p0, p1 embedded; p2, p3, p4 decoded
    for name, sha in shas.items():
        np.testing.assert_allclose(store.get_embedding(model_id, sha), good[name], atol=1e-6)
        assert store.preview_info(sha) is not None and store.preview_path(sha).is_file()
    assert metadata(result, "photo_previews")["files_processed"] == 6
    assert len(env.points()) == 6
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_disk_full_while_writing_previews_fails_the_run_and_blames_no_photo(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = env.add_folder(library(tmp_path / "lib", 3))

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(store_module, "atomic_write", disk_full)
    result = env.materialize(key, raise_on_error=False)
    assert not result.success
    text = failure_text(result, "decode_and_embed")
    assert "cannot write preview under" in text and "No space left on device" in text
    qdrant_step = env.collections[0].asset_name
    assert step_events(result, "decode_and_embed", "STEP_START")  # the step ran and failed
    assert not step_events(result, qdrant_step, "STEP_START")  # nothing downstream ran
    for sha in hashes_by_name(env, key).values():  # the photos are not to blame
        assert env.store.decode_failure(sha) is None and env.store.preview_info(sha) is None

    monkeypatch.undo()  # space freed: the next run decodes everything
    again = env.materialize(key)
    assert metadata(again, "photo_previews")["decoded"] == 3 and len(env.points()) == 3


# -- 4. files changing under us ------------------------------------------------------------------


def _before_first_decode_of(monkeypatch: pytest.MonkeyPatch, name: str, action: Any) -> None:
    """Run ``action()`` just before ``decode_photo`` first opens a file called ``name`` (i.e.
    after the file was scanned and hashed)."""
    real = previews_module.decode_photo
    done: list[bool] = []

    def decode_photo(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == name and not done:
            done.append(True)
            action()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(previews_module, "decode_photo", decode_photo)


def test_file_truncated_between_hash_and_decode_is_reported_and_not_cached(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = library(tmp_path / "lib", 2)
    target = folder / "p1.jpg"
    original = target.read_bytes()
    key = env.add_folder(folder)
    _before_first_decode_of(
        monkeypatch, "p1.jpg", lambda: target.write_bytes(original[: len(original) // 2])
    )
    md = metadata(env.materialize(key), "photo_previews")
    (failure,) = md["failures_json"]
    assert (Path(failure["path"]).name, failure["code"]) == ("p1.jpg", "ERR_TRUNCATED_IMAGE")
    assert "changed after it was hashed" in failure["message"]
    full_sha = hashlib.sha256(original).hexdigest()
    assert hashes_by_name(env, key)["p1.jpg"] == full_sha
    assert env.store.decode_failure(full_sha) is None  # not blamed on the full file's bytes
    assert len(env.points()) == 1

    # Next run: the truncated bytes are hashed and failed under their own hash.
    md = metadata(env.materialize(key), "photo_previews")
    assert [f["code"] for f in md["failures_json"]] == ["ERR_TRUNCATED_IMAGE"]
    assert hashes_by_name(env, key)["p1.jpg"] != full_sha
    # The copy finishes (the full bytes come back): a point, not a stale cached failure.
    target.write_bytes(original)
    md = metadata(env.materialize(key), "photo_previews")
    assert md["failed"] == 0 and full_sha in env.points()


def test_file_replaced_between_hash_and_decode_never_poisons_the_old_hash(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = library(tmp_path / "lib", 2)
    target = folder / "p1.jpg"
    old_sha = hashlib.sha256(target.read_bytes()).hexdigest()
    other = make_photo(tmp_path / "other.jpg", seed=99, size=(50, 30))
    new_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    key = env.add_folder(folder)
    _before_first_decode_of(monkeypatch, "p1.jpg", lambda: os.replace(other, target))
    md = metadata(env.materialize(key), "photo_previews")
    (failure,) = md["failures_json"]
    assert (Path(failure["path"]).name, failure["code"]) == ("p1.jpg", "ERR_READ_FAILED")
    assert "changed after it was hashed" in failure["message"]
    # The new pixels were not stored under the old bytes' hash.
    assert env.store.preview_info(old_sha) is None and env.store.decode_failure(old_sha) is None
    assert len(env.points()) == 1

    md = metadata(env.materialize(key), "photo_previews")
    assert md["failed"] == 0
    points = env.points()
    assert set(points) == {hashes_by_name(env, key)["p0.jpg"], new_sha}
    assert (points[new_sha]["width"], points[new_sha]["height"]) == (50, 30)
    assert points[new_sha]["paths"] == [str(target)]


NAMES = [
    "Été 2024/photo\nwith newline.jpg",
    "日本/写真 1.jpg",
    "emoji 📷/a  b'c\"d.png",
    "tab\there/x;y,z|[w].jpg",
    os.fsdecode(b"not utf-8 \xff\xfe.jpg"),  # any bytes but / and NUL make a Linux file name
]


def test_unicode_spaces_and_newlines_in_names_end_to_end(env: Env, tmp_path: Path) -> None:
    lib = tmp_path / "Bibliothèque photos"
    for i, name in enumerate(NAMES):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        make_photo(lib / name, seed=i, size=(64, 48))
    whole = env.add_folder(lib)
    japan = env.add_folder(lib / "日本")
    assert is_valid_key(whole) and is_valid_key(japan)
    result = env.materialize(whole, japan)
    md = metadata(result, "photo_previews")
    assert md["run_files_processed"] == len(NAMES) + 1 and md["run_failed"] == 0
    points = env.points()
    expected = [str(lib / n) for n in NAMES[:-1]] + [str(lib / "not utf-8 \\xff\\xfe.jpg")]
    assert sorted(p for pt in points.values() for p in pt["paths"]) == sorted(expected)
    for payload in points.values():  # what the server client sends: UTF-8 JSON, or it refuses
        jsonable_encoder(models.PointStruct(id=1, vector=[1.0], payload=payload)).encode()
    shared = next(p for p in points.values() if "日本" in p["paths"][0])
    assert shared["folder_keys"] == sorted([whole, japan])
    assert env.store.registry.find(str(lib / "Été 2024" / ".." / "日本")).key == japan


# -- 5. containment ------------------------------------------------------------------------------


def test_symlinks_leaving_the_root_are_not_followed(env: Env, tmp_path: Path) -> None:
    outside = library(tmp_path / "outside", 2, first_seed=50)
    lib = library(tmp_path / "lib", 1)
    (lib / "to_file.jpg").symlink_to(outside / "p0.jpg")
    (lib / "to_dir").symlink_to(outside, target_is_directory=True)
    (lib / "relative").symlink_to(Path("..") / "outside", target_is_directory=True)
    (lib / "loop").symlink_to(lib, target_is_directory=True)
    key = env.add_folder(lib)
    env.materialize(key)
    points = env.points()
    assert [p["paths"] for p in points.values()] == [[str(lib / "p0.jpg")]]
    assert env.store.folder_scan(key)["skipped_symlinks"] == 4


def test_partition_key_with_dotdot_is_unknown_and_touches_nothing(env: Env, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    env.add_folder(library(tmp_path / "lib", 1))
    before = sorted(tmp_path.rglob("*"))
    for key in ("../x", "../../etc", "/etc"):
        assert not is_valid_key(key)
        env.instance.add_dynamic_partitions(PARTITIONS_NAME, [key])
        result = env.materialize(key, raise_on_error=False)
        assert not result.success
        assert f"no folder is registered for partition {key!r}" in failure_text(
            result, "photo_files"
        )
    after = sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(env.home))
    assert after == [p for p in before if not p.is_relative_to(env.home)]
    assert not [k for k in env.store.cache.iterkeys() if ".." in k]


@pytest.fixture
def cli_home(tmp_path: Path, tiny_clip_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIBE_CLIP_BATCH_SIZE", "4")
    return use_home(monkeypatch, tmp_path / "home", tiny_clip_checkpoint)


def test_cli_folders_add_registers_the_resolved_real_path_only(
    cli_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    (lib / "a" / "b").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(lib, target_is_directory=True)
    monkeypatch.chdir(lib / "a" / "b")
    runner = CliRunner()
    rows = set()
    for arg in ("../..", "../../../lib/a/..", str(tmp_path / "alias")):
        result = runner.invoke(main, ["folders", "add", arg])
        assert result.exit_code == 0, result.output
        rows.add(tuple(result.stdout.strip().split("\t")))
    ((key, path),) = rows
    assert path == str(lib.resolve()) and is_valid_key(key)
    listed = runner.invoke(main, ["folders", "list"]).stdout.strip().splitlines()
    assert listed == [f"{key}\t{lib.resolve()}"]


# -- 6. secrets and TLS --------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["refused", "503"])
def test_api_key_never_appears_in_output_event_log_or_storage(
    cli_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    secret = f"vibe-secret-{uuid.uuid4().hex}"
    lib = library(tmp_path / "lib", 2)
    with qdrant_fault(fault) as (url, requests):
        monkeypatch.setenv("QDRANT_URL", url)
        monkeypatch.setenv("QDRANT_API_KEY", secret)
        monkeypatch.setenv(RETRY_DELAY_ENV, "0.01")
        result = CliRunner().invoke(main, ["ingest", str(lib), "--json"])
    captured = capfd.readouterr()
    assert result.exit_code == 1, result.output
    if fault == "503":
        assert requests and all(r[2] == secret for r in requests)  # the key was really used
    output = result.output + captured.out + captured.err
    assert url in output and secret not in output

    run_id = json.loads(result.stdout)["run_id"]
    with dg.DagsterInstance.from_config(str(cli_home / "dagster")) as instance:
        records = instance.all_logs(run_id)
        assert any("QdrantUnavailableError" in dg.serialize_value(r) for r in records)
        assert all(secret not in dg.serialize_value(r) for r in records)
        assert secret not in dg.serialize_value(instance.get_run_by_id(run_id))
    leaks = [p for p in cli_home.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []


@contextlib.contextmanager
def sniffer() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener that records the first bytes of each connection, then hangs up."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    seen.append(conn.recv(8))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        thread.join()
        sock.close()


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_https_url_speaks_tls_on_the_wire(scheme: str) -> None:
    with sniffer() as (port, seen):
        qdrant = VectorStoreResource(url=f"{scheme}://127.0.0.1:{port}", api_key="k", timeout=2)
        with pytest.raises(QdrantUnavailableError), qdrant.open() as vectors:
            vectors.collection_exists("photos")
    assert seen
    if scheme == "https":  # a TLS record: handshake (0x16), version 3.x; never plain HTTP
        assert all(b[:1] == b"\x16" and b[1:2] == b"\x03" for b in seen), seen
    else:
        assert any(b.startswith((b"GET ", b"POST ")) for b in seen), seen


def test_location_never_shows_credentials_in_the_url() -> None:
    qdrant = VectorStoreResource(url="https://user:pw@qdrant.example:6333/base?api-key=s#f")
    assert qdrant.location == "https://qdrant.example:6333/base"


# -- 7. state files ------------------------------------------------------------------------------


class Boom:
    """Unpickling this creates a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_probe_cache_is_json_and_a_planted_pickle_is_not_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    key = {"model_id": "m", "format": 1}
    state = StateDB(tmp_path / "state.sqlite3")
    with state.write() as db:  # a pickle planted where the probe result lives
        db.execute(
            "INSERT INTO device_probes (key, result, created_at) VALUES (?, ?, 0)",
            (json.dumps(key, sort_keys=True, separators=(",", ":")), pickle.dumps(Boom(marker))),
        )
    assert _read_probe(state, key) is None and not marker.exists()
    result = {"kind": "throughput", "bytes_per_image": 1, "cap": 8, "reached_cap": True}
    result["samples"] = [[1, 2.0], [8, 9.0]]
    _write_probe(state, key, result)
    with state.read() as db:
        (stored,) = db.execute("SELECT result FROM device_probes").fetchone()
    assert isinstance(stored, str) and json.loads(stored) == result
    assert _read_probe(state, key) == result


def test_sensor_state_is_sqlite_and_json_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    planted = pickle.dumps(Boom(marker))
    prints = FolderFingerprints(tmp_path / "state.sqlite3")
    prints.write([(b"/p", b"/", "k-1", planted, 1, 1)], [], 1, 0, 1)
    assert prints.rows()[b"/p"].fingerprint == planted  # bytes in, bytes out
    assert _Cursor.parse(planted.decode("latin-1")) is None
    assert not marker.exists()
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite3")) as db:
        types = {row[1]: row[2] for row in db.execute("PRAGMA table_info(sensor_folders)")}
    assert types == {
        "path": "BLOB",
        "root": "BLOB",
        "key": "TEXT",
        "fingerprint": "BLOB",
        "seen_pass": "INTEGER",
        "tick": "INTEGER",
    }


def _looks_pickled(data: bytes) -> bool:
    """Pickle protocol 2-5 data: PROTO opcode (0x80, version) first, STOP (``.``) last."""
    return len(data) >= 3 and data[0] == 0x80 and data[1] in (2, 3, 4, 5) and data[-1:] == b"."


def test_nothing_under_vibe_home_is_a_pickle(env: Env, tmp_path: Path) -> None:
    """After an ingest with captions: no file under VIBE_HOME, no diskcache value and no SQLite
    value of the state database is a pickle (the embedded vector store is qdrant-edge's own
    format)."""
    key = env.add_folder(library(tmp_path / "lib", 4))
    assert env.materialize(key, captions=True).success
    env.store.close()
    files = [p for p in env.home.rglob("*") if p.is_file()]
    assert any(p.parts[-3:-1] == ("vectors", "photos") or "vectors" in p.parts for p in files)
    for path in files:
        data = path.read_bytes()
        assert not _looks_pickled(data), path
        if data.startswith(b"SQLite format 3"):
            with contextlib.closing(sqlite3.connect(path)) as db:
                tables = [
                    r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ]
                for table in tables:
                    for row in db.execute(f'SELECT * FROM "{table}"'):
                        for value in row:
                            if isinstance(value, bytes):
                                assert not _looks_pickled(value), (path, table)
                if "Cache" in tables:  # diskcache: mode 4 is MODE_PICKLE
                    assert db.execute("SELECT COUNT(*) FROM Cache WHERE mode = 4").fetchone() == (
                        0,
                    )


def test_no_module_unpickles() -> None:
    package = Path(__file__).resolve().parents[1] / "vibe_assets"
    for source in package.rglob("*.py"):
        text = source.read_text()
        for banned in ("import pickle", "import marshal", "import shelve", "import dill"):
            assert banned not in text, f"{source}: {banned}"
        if "torch.load(" in text:
            assert "weights_only=True" in text, source


@pytest.mark.parametrize(
    "name", ["x'); DROP TABLE folders;--", 'a" OR 1=1 --', "b\\'; DELETE FROM folders; --"]
)
def test_registry_sql_is_parameterized(tmp_path: Path, name: str) -> None:
    registry = FolderRegistry(tmp_path / "state.sqlite3")
    plain = registry.add(library(tmp_path / "plain", 0))
    hostile = tmp_path / name
    hostile.mkdir()
    folder = registry.add(hostile)
    folders, failures = registry.add_many([hostile, tmp_path / "plain"])
    assert failures == {} and [f.key for f in folders] == [folder.key, plain.key]
    assert is_valid_key(folder.key) and folder.path == hostile.resolve()
    assert [f.path for f in registry.list()] == [plain.path, hostile.resolve()]
    assert registry.find(str(hostile)) == folder and registry.find(name) is None
    assert registry.remove(folder.key) and [f.key for f in registry.list()] == [plain.key]
