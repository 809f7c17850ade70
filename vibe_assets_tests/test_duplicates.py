"""Duplicate grouping without samples: the algorithms against brute force, the keeper rule and
each of its tie-breaks, the tier rules on a synthetic store, reports, and the phash migration."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vibe_assets import duplicates as dup
from vibe_assets.duplicates import (
    DuplicateGroup,
    Member,
    find_groups,
    leader_groups,
    make_group,
    near_components,
    near_pairs,
    similar_pairs,
)
from vibe_assets.imaging.phash import hamming, store_phash, stored_phashes
from vibe_assets.resources.store import StoreResource
from vibe_assets.state import MIGRATIONS, SCHEMA_VERSION, StateDB, put_preview_outcome, write_hashes

MODEL = "tiny/test"


def _balanced_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.random((n, 64)).argsort(axis=1) < 32
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").reshape(-1).copy()


def _flip(value: int, rng: np.random.Generator, bits: int) -> int:
    for b in rng.choice(64, bits, replace=False):
        value ^= 1 << int(b)
    return value


def _brute_pairs(h: np.ndarray, r: int) -> set[tuple[int, int]]:
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    i, j = np.nonzero(np.triu(d <= r, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("threshold", [0, 3, 4, 8, 11, 16])
def test_near_pairs_find_exactly_the_pairs_within_the_threshold(threshold: int) -> None:
    rng = np.random.default_rng(threshold)
    h = _balanced_hashes(rng, 1500)
    for k in range(0, 600, 2):  # planted pairs at 0..threshold+2 bits
        h[k + 1] = _flip(int(h[k]), rng, int(rng.integers(0, threshold + 3)))
    i, j, d = near_pairs(h, threshold)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute_pairs(h, threshold)
    assert (d <= threshold).all() and (i < j).all()
    assert (d == np.bitwise_count(h[i] ^ h[j])).all()


def test_near_pairs_bound_their_candidates_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dup, "_PAIR_CHUNK", 7)  # forces many slices per probe
    rng = np.random.default_rng(5)
    h = _balanced_hashes(rng, 400)
    h[200:260] = h[0]  # a big bucket
    for k in range(300, 340):
        h[k] = _flip(int(h[1]), rng, 4)
    i, j, _ = near_pairs(h, 8)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute_pairs(h, 8)


def test_near_components_are_transitive_and_collapse_identical_hashes() -> None:
    a = 0x0F0F_0F0F_0F0F_0F0F
    b = a ^ 0b1111_1111  # 8 bits from a
    c = b ^ (0b1111_1111 << 16)  # 8 bits from b, 16 from a: joined through b
    far = 0xF0F0_F0F0_F0F0_F0F0  # 64 bits from a
    h = np.array([c, far, a, a, b, far ^ 1, 0x1234_5678_9ABC_DEF0], dtype=np.uint64)
    groups = sorted(g.tolist() for g in near_components(h, 8))
    assert groups == [[0, 2, 3, 4], [1, 5]]
    assert dup.max_pairwise_hamming(h[[0, 2, 3, 4]]) == 16  # a chain: above the threshold


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("block", [7, 64, 4096])
def test_similar_pairs_match_brute_force_with_and_without_a_window(block: int) -> None:
    rng = np.random.default_rng(block)
    v = _unit(rng, 300, 8)
    times = rng.uniform(0, 1000, 300)
    sims = v @ v.T
    i, j, s = similar_pairs(v, 0.8, block_rows=block)
    expected = set(zip(*np.nonzero(np.triu(sims >= 0.8, 1)), strict=True))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(int(a), int(b)) for a, b in expected}
    assert np.allclose(s, sims[i, j], atol=1e-6)
    i, j, _ = similar_pairs(v, 0.8, times, 50.0, block_rows=block)
    close = np.abs(times[:, None] - times[None, :]) <= 50.0
    expected = set(zip(*np.nonzero(np.triu((sims >= 0.8) & close, 1)), strict=True))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(int(a), int(b)) for a, b in expected}
    assert (i < j).all()


def test_leader_groups_never_chain_and_never_repeat_an_item() -> None:
    # ranks: 0 best. 0-1, 1-2, 2-3 linked (a chain), 4-5 linked; 3 reaches only 2.
    i = np.array([0, 1, 2, 4])
    j = np.array([1, 2, 3, 5])
    rank = np.array([0, 1, 2, 3, 5, 4])
    groups = [g.tolist() for g in leader_groups(6, i, j, rank)]
    # 0 leads {0, 1}; 2 (its neighbour 1 taken) leads {2, 3}; 5 (better rank) leads {5, 4}
    assert groups == [[0, 1], [2, 3], [5, 4]]
    # 1 is linked to 2 but already in 0's group: 2 does not pull it in; nothing repeats
    flat = [x for g in groups for x in g]
    assert len(flat) == len(set(flat))


# -- the keeper rule ----------------------------------------------------------------------------


def _member(sha: str, **kw: Any) -> Member:
    base: dict[str, Any] = {
        "paths": [f"/lib/{sha}.jpg"],
        "width": 100,
        "height": 100,
        "exif_fields": 3,
        "taken_at": "2020-01-01T10:00:00",
        "bytes": 1000,
        "mtime_ns": 5 * 10**18,
    }
    base.update(kw)
    return Member(sha256=sha * 64, **base)


@pytest.mark.parametrize(
    ("winner", "loser", "rule"),
    [
        ({"width": 200}, {"exif_fields": 9, "taken_at": "1999-01-01T00:00:00"}, "largest pixel"),
        ({"exif_fields": 5}, {"taken_at": "1999-01-01T00:00:00", "mtime_ns": 1}, "most EXIF"),
        ({"taken_at": "2019-12-31T23:00:00"}, {"mtime_ns": 1}, "oldest: taken 2019-12-31"),
        ({"taken_at": "2020-01-01T10:00:00"}, {"taken_at": None, "mtime_ns": 1}, "oldest: taken"),
        # an offset is honoured: 10:00+02:00 is 08:00 UTC, before 09:00 (naive, read as UTC)
        ({"taken_at": "2020-01-01T10:00:00+02:00"}, {"taken_at": "2020-01-01T09:00:00"}, "oldest"),
        ({"mtime_ns": 10**18}, {}, "oldest file: mtime"),
        ({"paths": ["/a/x.jpg"]}, {"paths": ["/b/x.jpg"]}, "first path in sort order"),
    ],
)
def test_keeper_rule_and_each_tie_break(
    winner: dict[str, Any], loser: dict[str, Any], rule: str
) -> None:
    best = _member("a", **winner)
    other = _member("b", **loser)
    third = _member("c", width=50, height=50)  # never the keeper
    for order in ([best, other, third], [third, other, best]):
        group = make_group("near", order, distance=3.0)
        assert group.keep is best and group.members[0] is best
        assert rule in group.reason, group.reason
    assert group.members[-1] is third


def test_exact_groups_keep_the_oldest_file() -> None:
    old = _member("a", paths=["/z/old.jpg"], mtime_ns=1_000_000_000_000_000_000)
    new = _member("a", paths=["/a/new.jpg"], mtime_ns=2_000_000_000_000_000_000)
    group = make_group("exact", [new, old], distance=0.0)
    assert group.keep is old
    assert group.reason.startswith("identical bytes; oldest file: mtime 2001-09-09T01:46:40")
    same = make_group("exact", [old, _member("a", paths=["/a/b.jpg"], mtime_ns=old.mtime_ns)])
    assert same.keep.path == "/a/b.jpg" and "first path" in same.reason


def test_group_id_is_stable_and_json_round_trips() -> None:
    a, b = _member("a"), _member("b", width=10)
    g1 = make_group("near", [a, b], distance=4.0)
    g2 = make_group("near", [b, a], distance=4.0)
    assert g1.id == g2.id and len(g1.id) == 16
    assert make_group("similar", [a, b], score=0.95).id != g1.id  # the tier is part of it
    doc = json.loads(json.dumps(g1.as_dict()))
    assert doc["paths"] == ["/lib/a.jpg", "/lib/b.jpg"]
    assert doc["keep"] == a.path and doc["tier"] == "near" and doc["distance"] == 4.0
    assert doc["score"] is None and doc["members"][0]["sha256"] == a.sha256
    back = DuplicateGroup.from_dict(doc)
    assert back.as_dict() == g1.as_dict() and back.keep == a


# -- find_groups on a synthetic store ------------------------------------------------------------


def _store(tmp_path: Path, images: list[dict[str, Any]]) -> StoreResource:
    """A store holding ``images``: each ``{"sha", "files": [(folder, path, size, mtime_ns)],
    "width", "height", "exif", "phash" (hex or None), "vector" (or None), "failed"}``."""
    store = StoreResource(home=str(tmp_path / "home"))
    folders: dict[str, dict[str, Any]] = {}
    for img in images:
        for folder, path, size, mtime in img["files"]:
            entry = {"size": size, "mtime_ns": mtime, "inode": 1, "format": "jpeg"}
            folders.setdefault(folder, {})[path] = {**entry, "sha256": img["sha"]}
    for folder, files in folders.items():
        write_hashes(store.state, folder, {"root": "/lib", "files": files})
    for img in images:
        if img.get("failed"):
            continue
        info = {"width": img.get("width", 100), "height": img.get("height", 100)}
        info |= {"format": "jpeg", "decoder": "pillow", "exif": img.get("exif", {})}
        put_preview_outcome(store.state, img["sha"], info)
        if img.get("phash"):
            store_phash(store.state, img["sha"], img["phash"])
        if img.get("vector") is not None:
            store.put_embeddings(MODEL, [(img["sha"], np.asarray(img["vector"], np.float32))])
    return store


def _vec(*values: float, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def _sha(c: str) -> str:
    return c * 64


def test_tiers_are_reported_apart_and_never_mixed(tmp_path: Path) -> None:
    h0 = 0x0123_4567_89AB_CDEF
    images = [
        # A: exact copies at two paths of two folders; near to B (3 bits); keeper of {A, B}
        {
            "sha": _sha("a"),
            "files": [("f1", "/lib/a.jpg", 900, 3), ("f2", "/lib2/a_copy.jpg", 900, 9)],
            "width": 400,
            "height": 300,
            "phash": f"{h0:016x}",
            "vector": _vec(1, 0.0),
        },
        {
            "sha": _sha("b"),
            "files": [("f1", "/lib/b.jpg", 500, 1)],
            "width": 200,
            "height": 150,
            "phash": f"{h0 ^ 0b111:016x}",
            "vector": _vec(1, 0.01),
        },
        # C: a burst frame of A's scene (cosine ~0.99 with A and B), pHash far from A
        {
            "sha": _sha("c"),
            "files": [("f1", "/lib/c.jpg", 800, 2)],
            "width": 400,
            "height": 300,
            "exif": {"taken_at": "2020-01-01T10:00:00"},
            "phash": f"{h0 ^ 0xF_FFFF:016x}",  # 20 bits from A
            "vector": _vec(1, 0.15),
        },
        # D: unrelated in every way
        {
            "sha": _sha("d"),
            "files": [("f1", "/lib/d.jpg", 700, 2)],
            "phash": f"{~h0 & (2**64 - 1):016x}",
            "vector": _vec(0, 1),
        },
        # E: undecodable, two identical copies: exact only
        {
            "sha": _sha("e"),
            "files": [("f1", "/lib/e1.raw", 5, 1), ("f1", "/lib/e2.raw", 5, 2)],
            "failed": True,
        },
    ]
    store = _store(tmp_path, images)
    groups = find_groups(store, MODEL)
    by_tier = {t: [g for g in groups if g.tier == t] for t in dup.TIERS}
    assert [g.tier for g in groups] == ["exact", "exact", "near", "similar"]

    exact = {g.keep.sha256: g for g in by_tier["exact"]}
    assert exact[_sha("a")].paths == ["/lib/a.jpg", "/lib2/a_copy.jpg"]
    assert exact[_sha("a")].keep.path == "/lib/a.jpg"  # mtime 3 < 9
    assert exact[_sha("e")].keep.path == "/lib/e1.raw" and exact[_sha("e")].keep.width is None

    (near,) = by_tier["near"]
    assert [m.sha256 for m in near.members] == [_sha("a"), _sha("b")]
    assert near.members[0].paths == ["/lib/a.jpg", "/lib2/a_copy.jpg"]  # A once, both paths
    assert near.distance == 3.0 and "largest pixel count" in near.reason

    (similar,) = by_tier["similar"]
    # B (near, not keeper) is left out; A stands for its near group
    assert {m.sha256 for m in similar.members} == {_sha("a"), _sha("c")}
    assert similar.keep.sha256 == _sha("c")  # same pixels, EXIF 1 vs 0
    assert similar.members[1].near_group == near.id and similar.members[0].near_group is None
    assert similar.score == pytest.approx(float(_vec(1, 0.0) @ _vec(1, 0.15)), abs=1e-5)
    assert not any(_sha("d") in {m.sha256 for m in g.members} for g in groups)

    # one tier at a time gives the same groups; folder_keys restricts the listings
    assert [g.id for g in find_groups(store, MODEL, tiers=["similar"])] == [similar.id]
    only_f1 = find_groups(store, MODEL, tiers=["exact"], folder_keys=["f1"])
    assert [g.keep.sha256 for g in only_f1] == [_sha("e")]
    # a window keeps only images with a capture time: C alone, no pair
    assert find_groups(store, MODEL, tiers=["similar"], time_window_s=60) == []
    # a looser near threshold merges C into the near group: it then leaves the similar tier
    loose = find_groups(store, MODEL, tiers=["near", "similar"], near_threshold=24)
    assert [g.tier for g in loose] == ["near"] and len(loose[0].members) == 3


def test_time_window_groups_only_shots_close_in_time(tmp_path: Path) -> None:
    def shot(c: str, taken: str, vector: np.ndarray) -> dict[str, Any]:
        return {
            "sha": _sha(c),
            "files": [("f", f"/lib/{c}.jpg", 100, 1)],
            "exif": {"taken_at": taken},
            "phash": None,
            "vector": vector,
        }

    images = [
        shot("a", "2020-05-01T10:00:00", _vec(1, 0.0)),
        shot("b", "2020-05-01T10:00:02", _vec(1, 0.1)),
        shot("c", "2021-05-01T10:00:00", _vec(1, 0.05)),  # same scene a year later
    ]
    store = _store(tmp_path, images)
    assert [len(g.members) for g in find_groups(store, MODEL, tiers=["similar"])] == [3]
    (group,) = find_groups(store, MODEL, tiers=["similar"], time_window_s=10)
    assert {m.sha256 for m in group.members} == {_sha("a"), _sha("b")}
    assert "oldest: taken 2020-05-01T10:00:00" in group.reason


def test_find_groups_rejects_bad_arguments(tmp_path: Path) -> None:
    store = _store(tmp_path, [])
    with pytest.raises(ValueError, match="unknown tiers"):
        find_groups(store, MODEL, tiers=["fuzzy"])
    with pytest.raises(ValueError, match="near threshold"):
        find_groups(store, MODEL, near_threshold=40)
    with pytest.raises(ValueError, match="similar threshold"):
        find_groups(store, MODEL, similar_threshold=0)
    with pytest.raises(ValueError, match="model id"):
        find_groups(store, None, tiers=["similar"])
    with pytest.raises(ValueError, match="time window"):
        find_groups(store, MODEL, time_window_s=0)
    assert find_groups(store, None, tiers=["exact", "near"]) == []


def test_reports_round_trip_with_counts(tmp_path: Path) -> None:
    a = _member("a", bytes=1000, paths=["/x/a.jpg", "/y/a.jpg"])
    b = _member("b", width=50, bytes=400, paths=["/x/b.jpg"])
    c = _member("c", width=10, bytes=300, paths=["/x/c.jpg", "/y/c.jpg"])
    groups = [make_group("near", [a, b, c], distance=5.0)]
    report = dup.build_report(groups, collection="photos", model_id=MODEL)
    assert report["counts"]["near"] == {
        "groups": 1,
        "images": 3,
        "files": 5,
        "reclaimable_bytes": 400 + 2 * 300,
    }
    assert report["counts"]["exact"]["groups"] == 0
    path = dup.report_path(tmp_path, "photos")
    dup.write_report(path, report)
    assert path == tmp_path / "reports" / "duplicates-photos.json"
    back = dup.read_report(path)
    assert [g.as_dict() for g in back["groups"]] == [g.as_dict() for g in groups]
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a duplicates report"):
        dup.read_report(path)


# -- the phash column ---------------------------------------------------------------------------


def test_a_previous_version_state_db_upgrades_in_place_keeping_decode_outcomes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    old = StateDB(path, migrations=MIGRATIONS[:2])  # the schema before perceptual hashes
    info = {"width": 4, "height": 3, "format": "jpeg", "decoder": "pillow", "exif": {"iso": 100}}
    put_preview_outcome(old, "ab" * 32, info)
    with old.read() as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(decode_outcomes)")]
    assert "phash" not in columns and old.version == 2
    old.close()

    new = StateDB(path)
    assert new.version == SCHEMA_VERSION >= 3
    with new.read() as conn:
        row = conn.execute("SELECT width, exif, phash FROM decode_outcomes").fetchone()
        names = [r[0] for r in conn.execute("SELECT name FROM schema_version ORDER BY version")]
    assert row == (4, '{"iso":100}', None) and names[2] == "phash"
    assert stored_phashes(new, ["ab" * 32, "cd" * 32]) == {"ab" * 32: None}
    assert store_phash(new, "ab" * 32, "00FF00FF00FF00FF")
    assert stored_phashes(new, ["ab" * 32]) == {"ab" * 32: "00ff00ff00ff00ff"}
    with pytest.raises(ValueError):
        store_phash(new, "ab" * 32, "xyz")


def test_a_phash_is_only_stored_on_a_preview_outcome(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.sqlite3")
    from vibe_assets.state import put_failure_outcome

    put_failure_outcome(state, "ff" * 32, {"code": "ERR_X", "message": "no"}, "fp")
    assert not store_phash(state, "ff" * 32, "0" * 16)
    assert not store_phash(state, "ee" * 32, "0" * 16)
    with state.read() as conn:
        assert conn.execute("SELECT phash FROM decode_outcomes").fetchall() == [(None,)]
    # a preview recorded again (e.g. re-decoded after eviction) starts without a hash
    info = {"width": 4, "height": 3, "format": "jpeg", "decoder": "pillow", "exif": {}}
    put_preview_outcome(state, "ee" * 32, info)
    store_phash(state, "ee" * 32, "1" * 16)
    put_preview_outcome(state, "ee" * 32, info)
    assert stored_phashes(state, ["ee" * 32]) == {"ee" * 32: None}
    assert hamming("0" * 16, "f" * 16) == 64 and hamming("1" * 16, "0" * 15 + "3") == 16


def test_state_rows_read_by_the_grouping_survive_sqlite_types(tmp_path: Path) -> None:
    """Paths are stored as bytes (any file name round-trips): the grouping decodes them."""
    name = "/lib/caf\udce9.jpg"  # not UTF-8 on disk
    images = [
        {"sha": _sha("a"), "files": [("f", name, 1, 1), ("f", "/lib/b.jpg", 1, 2)], "phash": None}
    ]
    store = _store(tmp_path, images)
    (group,) = find_groups(store, None, tiers=["exact"])
    assert name in group.paths
    with sqlite3.connect(store.state.path) as conn:
        (kind,) = conn.execute("SELECT typeof(path) FROM listing_files LIMIT 1").fetchone()
    assert kind == "blob"
