"""The ``new_photo_folders`` sensor: registration and partitions in one tick, range runs for new,
changed and vanished folders, symlinks and outside folders never registered, bounded ticks that
resume, re-evaluation without duplicate runs, and the ``VIBE_PHOTO_ROOTS`` setting."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from vibe_assets.automation import (
    NEW_FOLDERS_SENSOR,
    RANGE_END_TAG,
    RANGE_START_TAG,
    _walk,
    build_new_photo_folders_sensor,
)
from vibe_assets.collections import CollectionSpec
from vibe_assets.definitions import build_assets, default_resources
from vibe_assets.partitions import PARTITIONS_NAME, folder_key, is_within
from vibe_assets.resources import StoreResource
from vibe_assets.settings import PHOTO_ROOTS_ENV, check_photo_roots, photo_roots
from vibe_assets_tests.conftest import COLLECTION, Env, repo_instance


def _photos(folder: Path, n: int = 2, seed: int = 0) -> Path:
    """``n`` small random PNGs in ``folder`` (created, parents included)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{seed}_{i}.png")
    return folder


@dataclass
class Ticker:
    """Evaluates the sensor like the daemon: passes the last cursor, then applies the dynamic
    partition requests (the daemon does that before launching the runs)."""

    instance: dg.DagsterInstance
    store: StoreResource
    sensor: dg.SensorDefinition
    cursor: str | None = None

    def evaluate(self, cursor: str | None) -> object:
        with dg.build_sensor_context(
            instance=self.instance, cursor=cursor, resources={"store": self.store}
        ) as context:
            return self.sensor.evaluate_tick(context)

    def tick(self) -> list[dg.RunRequest]:
        data = self.evaluate(self.cursor)
        for request in data.dynamic_partitions_requests or []:
            assert request.partitions_def_name == PARTITIONS_NAME
            existing = set(self.instance.get_dynamic_partitions(PARTITIONS_NAME))
            new = [k for k in request.partition_keys if k not in existing]
            self.instance.add_dynamic_partitions(PARTITIONS_NAME, new)
        self.cursor = data.cursor
        if not data.run_requests:
            assert data.skip_message, "a tick without runs must say why"
        return list(data.run_requests or [])

    @property
    def partitions(self) -> list[str]:
        return list(self.instance.get_dynamic_partitions(PARTITIONS_NAME))

    def registered(self) -> set[Path]:
        return {f.path for f in self.store.registry.list()}


COLLECTIONS = [CollectionSpec(COLLECTION)]


def _job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job("ingest_job", selection=build_assets(COLLECTIONS))


def _sensor(roots: list[Path], **kwargs: int) -> dg.SensorDefinition:
    kwargs.setdefault("max_per_run", 32)
    return build_new_photo_folders_sensor(_job(), roots=roots, **kwargs)


def _ranges(requests: list[dg.RunRequest]) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in requests]


@pytest.fixture
def light(tmp_path: Path) -> Iterator[Env]:
    """A temp VIBE_HOME with only the store, and an ephemeral instance (no models)."""
    home = tmp_path / "vibe_home"
    with repo_instance() as instance:
        yield Env(home, {"store": StoreResource(home=str(home))}, instance, COLLECTIONS)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "Photos"
    path.mkdir()
    return path.resolve()


def ticker(env: Env, roots: list[Path], **kwargs: int) -> Ticker:
    return Ticker(env.instance, env.store, _sensor(roots, **kwargs))


def test_sensor_loads_in_definitions_and_defaults_to_running_with_roots(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIBE_HOME", str(root / ".home"))
    job = _job()
    sensor = build_new_photo_folders_sensor(job, max_per_run=32, roots=[root])
    defs = dg.Definitions(
        assets=build_assets(COLLECTIONS),
        jobs=[job],
        sensors=[sensor],
        resources=default_resources(),
    )
    dg.Definitions.validate_loadable(defs)
    assert sensor.name == NEW_FOLDERS_SENSOR and sensor.minimum_interval_seconds == 60
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.delenv(PHOTO_ROOTS_ENV, raising=False)
    unset = build_new_photo_folders_sensor(_job(), max_per_run=8)
    assert unset.default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.setenv(PHOTO_ROOTS_ENV, str(root))
    assert (
        build_new_photo_folders_sensor(_job(), max_per_run=8).default_status
        == dg.DefaultSensorStatus.RUNNING
    )


def test_new_folder_gets_partition_and_run_in_one_tick_then_nothing(light: Env, root: Path) -> None:
    folder = _photos(root / "Holidays 2024")
    _photos(root / ".thumbnails")  # hidden: skipped
    (root / "notes").mkdir()
    (root / "notes" / "README.txt").write_text("no photos here")  # not a photo folder
    t = ticker(light, [root])

    data = t.evaluate(None)
    [add] = data.dynamic_partitions_requests
    key = folder_key(folder)
    assert list(add.partition_keys) == [key] and add.partitions_def_name == PARTITIONS_NAME
    [request] = data.run_requests
    assert request.tags[RANGE_START_TAG] == request.tags[RANGE_END_TAG] == key
    assert request.run_key and request.tags["vibe/trigger"] == NEW_FOLDERS_SENSOR
    assert t.registered() == {folder}

    assert _ranges(t.tick()) == [(key, key)]
    assert t.partitions == [key]
    assert t.tick() == [] and t.tick() == []  # unchanged library: nothing, twice


def test_changed_folder_gets_one_run(light: Env, root: Path) -> None:
    folders = [_photos(root / name, seed=i) for i, name in enumerate(["a", "b", "c"])]
    t = ticker(light, [root])
    assert len(t.tick()) == 1 and t.tick() == []
    keys = [folder_key(f) for f in folders]

    _photos(folders[1], n=1, seed=7)  # a file added
    assert _ranges(t.tick()) == [(keys[1], keys[1])]
    assert t.tick() == []

    victim = next(folders[2].iterdir())  # a file modified in place: same name, new mtime
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert _ranges(t.tick()) == [(keys[2], keys[2])]

    (folders[0] / "notes.txt").write_text("x")  # non-image files count too (cheap, rare)
    (folders[2] / "sub").mkdir()  # a new subfolder does not change its parent
    assert _ranges(t.tick()) == [(keys[0], keys[0])]
    assert t.tick() == []
    assert t.partitions == keys  # no partition added twice


def test_several_new_folders_one_range_run_split_by_max_per_run(
    light: Env, root: Path, tmp_path: Path
) -> None:
    folders = [_photos(root / name, n=1, seed=i) for i, name in enumerate(["c", "a", "b"])]
    keys = [folder_key(f) for f in sorted(folders)]  # walk order: sorted names
    assert _ranges(ticker(light, [root]).tick()) == [(keys[0], keys[2])]

    with repo_instance() as instance:  # the same library, another home, 2 per run
        store = StoreResource(home=str(tmp_path / "home2"))
        t = Ticker(instance, store, _sensor([root], max_per_run=2))
        assert _ranges(t.tick()) == [(keys[0], keys[1]), (keys[2], keys[2])]
        assert t.partitions == keys


def test_ranges_follow_insertion_order_and_skip_unchanged_ends(light: Env, root: Path) -> None:
    folders = [_photos(root / name, n=1, seed=i) for i, name in enumerate("abcde")]
    keys = [folder_key(f) for f in folders]
    t = ticker(light, [root], max_per_run=32)
    t.tick()
    _photos(root / "b", n=1, seed=20)
    _photos(root / "d", n=1, seed=21)
    _photos(root / "0new", n=1, seed=22)  # sorts first, but its partition is appended last
    assert _ranges(t.tick()) == [(keys[1], folder_key(root / "0new"))]
    assert t.partitions == [*keys, folder_key(root / "0new")]


def test_symlinks_and_outside_folders_are_never_registered(
    light: Env, root: Path, tmp_path: Path
) -> None:
    outside = _photos(tmp_path / "outside" / "private", seed=3)
    (root / "link_to_outside").symlink_to(outside, target_is_directory=True)
    (root / "link_to_root").symlink_to(root, target_is_directory=True)  # a loop: not followed
    only_links = root / "only_links"
    only_links.mkdir()
    (only_links / "x.png").symlink_to(next(outside.iterdir()))  # a symlinked file: not a photo
    inside = _photos(root / "inside", seed=4)
    t = ticker(light, [root])

    stats: Counter[str] = Counter()
    listed = [x.path for x in _walk(str(root), None, stats)]
    assert not any("link_to" in p for p in listed) and stats["symlinks_skipped"] == 3
    assert not is_within(root / "link_to_outside", root)
    assert not is_within(inside / ".." / ".." / "outside", root) and is_within(inside, root)

    [request] = t.tick()
    assert _ranges([request]) == [(folder_key(inside), folder_key(inside))]
    assert t.registered() == {inside}
    assert all(is_within(p, root) for p in t.registered())
    assert t.partitions == [folder_key(inside)]
    assert t.tick() == []


def test_walk_resumes_exactly_after_any_folder(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rel in ["2023/a", "2023/a b", "2023/b/deep", "2024/c", "e", "é"]:
        (root / rel).mkdir(parents=True)
    counts: Counter[str] = Counter()
    full = [x.rel for x in _walk(str(root), None, counts)]
    assert full == sorted(full) and len(full) == len(set(full)) == 10
    for i, after in enumerate(full):
        rest = [x.rel for x in _walk(str(root), after, counts)]
        assert rest == full[i + 1 :], after

    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path: str):
        listed.append(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    first = next(iter(_walk(str(root), ("2023", "b", "deep"), counts)))
    assert first.rel == ("2024",)
    # Resuming lists the resume point and its ancestors again (for the folders after them),
    # never the subtrees before it.
    again = [(), ("2023",), ("2023", "b"), ("2023", "b", "deep")]
    assert listed[:4] == [os.path.join(str(root), *p) for p in again]
    listed.clear()
    assert [x.rel for x in _walk(str(root), ("2023", "b", "deep"), counts)] == full[6:]
    assert len(listed) == 4 + 4  # then 2024, 2024/c, e, é


def test_bounded_ticks_continue_where_they_stopped(light: Env, root: Path) -> None:
    names = ["2023/a", "2023/b", "2024/c", "2024/d", "e"]
    for i, name in enumerate(names):
        _photos(root / name, n=1, seed=i)
    keys = {name: folder_key(root / name) for name in names}
    # listing order: root, 2023, 2023/a, 2023/b, 2024, 2024/c, 2024/d, e; 3 folders per tick
    t = ticker(light, [root], max_folders_per_tick=3)
    assert _ranges(t.tick()) == [(keys["2023/a"], keys["2023/a"])]
    assert json.loads(t.cursor)["after"] == ["2023", "a"]
    assert _ranges(t.tick()) == [(keys["2023/b"], keys["2024/c"])]
    assert _ranges(t.tick()) == [(keys["2024/d"], keys["e"])]
    assert json.loads(t.cursor)["after"] is None  # the pass is complete
    assert t.partitions == list(keys.values())
    assert t.tick() == [] and t.tick() == [] and t.tick() == []  # a whole unchanged pass

    _photos(root / "2024" / "c", n=1, seed=30)
    runs = [t.tick() for _ in range(3)]
    assert [_ranges(r) for r in runs] == [[], [(keys["2024/c"], keys["2024/c"])], []]


def test_reevaluating_a_tick_requests_the_same_runs(light: Env, root: Path) -> None:
    t = ticker(light, [root])
    assert t.tick() == []  # empty library: a saved cursor
    _photos(root / "a")
    _photos(root / "b", seed=1)
    first = t.evaluate(t.cursor)
    again = t.evaluate(t.cursor)  # the first cursor was never saved (e.g. the tick timed out)
    assert len(first.run_requests) == 1
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert [r.tags for r in again.run_requests] == [r.tags for r in first.run_requests]
    assert [list(r.partition_keys) for r in again.dynamic_partitions_requests] == [
        list(r.partition_keys) for r in first.dynamic_partitions_requests
    ]
    assert _ranges(t.tick()) == _ranges(first.run_requests)  # same again, saved this time
    assert t.tick() == []  # nothing more


def test_no_cursor_over_an_old_home_requests_every_folder_again(light: Env, root: Path) -> None:
    keys = [folder_key(_photos(root / name, n=1, seed=i)) for i, name in enumerate("abc")]
    old = ticker(light, [root])
    first = old.tick()
    assert old.tick() == []
    with repo_instance() as instance:  # a new Dagster instance, the same VIBE_HOME
        t = Ticker(instance, light.store, old.sensor)
        again = t.tick()
        assert _ranges(again) == [(keys[0], keys[2])] and t.partitions == keys
        assert {r.run_key for r in again}.isdisjoint(r.run_key for r in first)
        assert t.tick() == []


def test_vanished_folder_is_reported_and_its_run_removes_its_points(env: Env, root: Path) -> None:
    keep = _photos(root / "keep", seed=1)
    gone = _photos(root / "gone", n=3, seed=2)
    t = ticker(env, [root])
    [request] = t.tick()
    assert env.materialize(tags=dict(request.tags)).success
    before = env.points()
    assert len(before) == 5

    shutil.rmtree(gone)
    data = t.evaluate(t.cursor)
    [request] = data.run_requests
    key = folder_key(gone)
    assert _ranges([request]) == [(key, key)]
    t.cursor = data.cursor
    assert env.materialize(tags=dict(request.tags)).success
    after = env.points()
    assert len(after) == 2 and all(p["paths"][0].startswith(str(keep)) for p in after.values())
    assert t.tick() == []  # forgotten: not requested again

    _photos(gone, n=1, seed=9)  # it comes back: ingested again
    assert _ranges(t.tick()) == [(key, key)]


def test_folder_emptied_of_images_gets_a_run_but_an_empty_root_looks_unmounted(
    light: Env, root: Path
) -> None:
    a, b = _photos(root / "a"), _photos(root / "b", seed=1)
    t = ticker(light, [root])
    t.tick()
    for f in b.iterdir():
        f.unlink()
    assert _ranges(t.tick()) == [(folder_key(b), folder_key(b))]  # no image left
    assert t.tick() == []
    shutil.rmtree(a)  # the root is empty now, like an unmounted drive's mount point
    assert t.tick() == []
    _photos(root / "a", seed=5)  # mounted again (new files): ingested
    assert _ranges(t.tick()) == [(folder_key(a), folder_key(a))]


def test_photo_roots_setting(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "Pictures").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (root / "nested").mkdir()
    raw = os.pathsep.join(
        [str(root), "~/Pictures", "relative/dir", str(tmp_path / "missing"), str(root / "nested")]
    )
    monkeypatch.setenv(PHOTO_ROOTS_ENV, raw)
    assert photo_roots() == [root, (home / "Pictures").resolve()]
    _, problems = check_photo_roots(raw.split(os.pathsep))
    assert len(problems) == 3
    assert any("not an absolute path" in p for p in problems)
    assert any("does not exist" in p for p in problems)
    assert any("inside" in p for p in problems)
    # The outer root given after the inner one replaces it.
    assert check_photo_roots([root / "nested", root])[0] == [root]
    monkeypatch.delenv(PHOTO_ROOTS_ENV)
    assert photo_roots() == []


def test_sensor_reads_roots_from_the_environment_and_survives_a_missing_root(
    light: Env, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _photos(root / "a")
    monkeypatch.setenv(PHOTO_ROOTS_ENV, os.pathsep.join([str(tmp_path / "not_mounted"), str(root)]))
    t = Ticker(light.instance, light.store, build_new_photo_folders_sensor(_job(), max_per_run=4))
    assert _ranges(t.tick()) == [(folder_key(folder), folder_key(folder))]
    monkeypatch.delenv(PHOTO_ROOTS_ENV)
    assert t.tick() == []  # no roots: nothing walked, nothing treated as vanished
