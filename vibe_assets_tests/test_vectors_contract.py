"""One contract, two engines: every test here runs against the embedded engine (qdrant-edge-py on a
temporary folder) and the server engine (qdrant-client; its in-memory mode stands in for a
server, as no Qdrant server runs here). Where an engine cannot show a property (payload indexes
in qdrant-client's in-memory mode, persistence of an in-memory store), the test says so and skips
that engine."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from vibe_assets.vectors import (
    INDEXED_FIELDS,
    CollectionMismatchError,
    CollectionNotFoundError,
    Distance,
    PayloadUpdate,
    PointFilter,
    PointNotFoundError,
    SnapshotNotFoundError,
    SnapshotUnsupportedError,
    VectorPoint,
    VectorStore,
    point_id,
)
from vibe_assets.vectors.edge import EdgeVectorStore
from vibe_assets.vectors.server import ServerVectorStore

DIM = 8
ENGINES = ["edge", "server"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_store(engine: str, tmp_path: Path) -> Iterator[Callable[[], VectorStore]]:
    """Opens the engine's store; edge stores reopen the same folder, the in-memory server is one
    client shared by every call (closed at the end)."""
    opened: list[VectorStore] = []
    memory = ServerVectorStore.in_memory() if engine == "server" else None

    def make() -> VectorStore:
        store: VectorStore
        store = memory if memory is not None else EdgeVectorStore(tmp_path / "vectors")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], VectorStore]) -> VectorStore:
    return open_store()


def unit(values: list[float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def make_points(n: int, seed: int = 0, **payload_of: Callable[[int], object]) -> list[VectorPoint]:
    """``n`` points with random unit vectors and payload ``sha256``, ``i`` and ``payload_of``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        v = rng.normal(size=DIM).astype(np.float32)
        sha = f"{seed:02d}{i:062d}"
        payload = {"sha256": sha, "i": i, **{k: f(i) for k, f in payload_of.items()}}
        out.append(VectorPoint(point_id(sha), v / np.linalg.norm(v), payload))
    return out


def test_create_reports_created_once_and_refuses_another_size_or_distance(
    store: VectorStore,
) -> None:
    assert not store.collection_exists("photos")
    assert store.collection_info("photos") is None
    assert store.ensure_collection("photos", DIM, Distance.COSINE) is True
    assert store.ensure_collection("photos", DIM, Distance.COSINE) is False
    with pytest.raises(CollectionMismatchError, match=rf"holds {DIM}-d cosine.*makes 16-d cosine"):
        store.ensure_collection("photos", 16, Distance.COSINE)
    with pytest.raises(CollectionMismatchError, match=rf"holds {DIM}-d cosine.*makes {DIM}-d dot"):
        store.ensure_collection("photos", DIM, Distance.DOT)
    store.ensure_collection("dots", 4, Distance.DOT)
    infos = store.list_collections()
    assert [(i.name, i.points, i.vector_size, i.distance) for i in infos] == [
        ("dots", 0, 4, Distance.DOT),
        ("photos", 0, DIM, Distance.COSINE),
    ]
    assert {i.engine for i in infos} == {store.engine}
    assert store.collection_exists("photos")


def test_upsert_count_retrieve_and_replace(store: VectorStore) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    points = make_points(5, folder_keys=lambda i: ["a"])
    store.upsert("photos", points)
    assert store.count("photos") == 5
    ids = [p.id for p in points]
    missing = point_id("f" * 64)
    got = {p.id: p for p in store.retrieve("photos", [*ids, missing], with_vectors=True)}
    assert set(got) == set(ids)  # a missing id is left out, not an error
    for p in points:
        assert got[p.id].payload == p.payload
        vector = got[p.id].vector
        assert vector is not None and vector.dtype == np.float32 and vector.shape == (DIM,)
        np.testing.assert_allclose(vector, p.vector, atol=1e-6)

    fields = store.retrieve("photos", ids[:2], with_payload=["sha256"])
    assert all(set(r.payload) == {"sha256"} and r.vector is None for r in fields)
    assert all(r.payload == {} for r in store.retrieve("photos", ids[:2], with_payload=False))

    # Upserting an existing id replaces its vector and its whole payload.
    again = VectorPoint(ids[0], unit([1.0]), {"sha256": "new"})
    store.upsert("photos", [again])
    (record,) = store.retrieve("photos", [ids[0]], with_vectors=True)
    assert record.payload == {"sha256": "new"}
    np.testing.assert_allclose(record.vector, unit([1.0]), atol=1e-6)
    assert store.count("photos") == 5


def test_upsert_more_than_one_batch(store: VectorStore) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    store.upsert("photos", make_points(600))  # > UPSERT_BATCH (256): three requests
    assert store.count("photos") == 600


def test_set_payloads_applies_different_payloads_in_one_call(
    store: VectorStore, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    points = make_points(6, paths=lambda i: [f"/a/{i}.jpg"])
    store.upsert("photos", points)
    ids = [p.id for p in points]
    requests: list[int] = []
    if engine == "server":
        assert isinstance(store, ServerVectorStore)
        real = store.client.batch_update_points

        def batch_update_points(*args: object, **kwargs: object) -> object:
            requests.append(len(kwargs["update_operations"]))  # type: ignore[arg-type]
            return real(*args, **kwargs)

        monkeypatch.setattr(store.client, "batch_update_points", batch_update_points)
    store.set_payloads(
        "photos",
        [
            PayloadUpdate((ids[0], ids[1]), {"caption": "two birds", "caption_model": "m1"}),
            PayloadUpdate.one(ids[2], {"paths": ["/b/2.jpg"], "folder_keys": ["b"]}),
            PayloadUpdate.one(ids[3], {"caption": "a dog"}),
            PayloadUpdate((), {"ignored": True}),
        ],
    )
    if engine == "server":
        assert requests == [3]  # one request for every update
    got = {r.id: r for r in store.retrieve("photos", ids, with_vectors=True)}
    assert got[ids[0]].payload["caption"] == got[ids[1]].payload["caption"] == "two birds"
    assert got[ids[0]].payload["paths"] == ["/a/0.jpg"]  # keys not named are kept
    assert got[ids[2]].payload["paths"] == ["/b/2.jpg"]
    assert got[ids[2]].payload["folder_keys"] == ["b"] and got[ids[2]].payload["i"] == 2
    assert got[ids[3]].payload["caption"] == "a dog" and "caption_model" not in got[ids[3]].payload
    assert "caption" not in got[ids[4]].payload
    for p in points:  # vectors untouched
        np.testing.assert_allclose(got[p.id].vector, p.vector, atol=1e-6)


def test_set_payloads_on_a_missing_point_fails_clearly(store: VectorStore) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    (point,) = make_points(1)
    store.upsert("photos", [point])
    missing = point_id("f" * 64)
    with pytest.raises(PointNotFoundError):
        store.set_payloads("photos", [PayloadUpdate.one(missing, {"caption": "x"})])
    (record,) = store.retrieve("photos", [point.id])
    assert record.payload == point.payload


def test_delete_by_ids(store: VectorStore) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    points = make_points(10)
    store.upsert("photos", points)
    gone = [p.id for p in points[:4]]
    unknown = [point_id(f"e{i:063x}") for i in range(1500)]  # > READ_BATCH, none stored
    store.delete("photos", [*gone, *unknown])
    assert store.count("photos") == 6
    assert store.retrieve("photos", gone) == []
    store.delete("photos", [])
    store.upsert("photos", [])
    store.set_payloads("photos", [])
    assert store.count("photos") == 6


def test_scroll_by_folder_key_pages_through_every_match(store: VectorStore) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    points = make_points(
        40, folder_keys=lambda i: ["a", "b"] if i % 3 == 0 else (["a"] if i % 2 else ["b"])
    )
    store.upsert("photos", points)
    expected_a = {p.id for p in points if "a" in p.payload["folder_keys"]}
    seen = list(
        store.scroll("photos", PointFilter.where(folder_keys="a"), ["folder_keys"], page_size=4)
    )
    assert len(seen) == len(expected_a) > 4 * 3  # several pages
    assert {r.id for r in seen} == expected_a
    assert all(set(r.payload) == {"folder_keys"} and r.vector is None for r in seen)
    assert store.count("photos", PointFilter.where(folder_keys="a")) == len(expected_a)
    either = store.scroll("photos", PointFilter.where(folder_keys=["a", "b"]), page_size=7)
    assert len(list(either)) == 40

    sha = points[5].payload["sha256"]
    (by_sha,) = store.scroll("photos", PointFilter.where(sha256=sha), with_vectors=True)
    assert by_sha.id == points[5].id and by_sha.vector is not None
    everything = list(store.scroll("photos", page_size=9))
    assert len(everything) == 40 and len({r.id for r in everything}) == 40
    assert list(store.scroll("photos", PointFilter.where(folder_keys="nope"))) == []


def test_query_ranks_by_similarity_and_filters(store: VectorStore) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    rows = [  # (vector, folder, taken_at, camera)
        ([1.0, 0.0], "a", "2024-01-01T10:00:00", "X100"),
        ([0.9, 0.1], "a", "2024-03-01T10:00:00", "D90"),
        ([0.7, 0.3], "b", "2024-06-01T10:00:00", "X100"),
        ([0.5, 0.5], "b", "2025-01-01T10:00:00", "D90"),
        ([0.0, 1.0], "a", None, None),
    ]
    points = []
    for i, (v, folder, taken, camera) in enumerate(rows):
        payload: dict[str, object] = {"sha256": f"{i:064d}", "folder_keys": [folder]}
        if taken:
            payload |= {"taken_at": taken, "camera_model": camera}
        points.append(VectorPoint(point_id(f"{i:064d}"), unit(v), payload))
    store.upsert("photos", points)
    ids = [p.id for p in points]
    q = unit([1.0, 0.0])

    hits = store.query("photos", q, limit=3)
    assert [h.id for h in hits] == ids[:3]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert hits[0].payload["folder_keys"] == ["a"]

    def ranked(flt: PointFilter, limit: int = 10) -> list[str]:
        return [h.id for h in store.query("photos", q, limit=limit, flt=flt)]

    assert ranked(PointFilter.where(folder_keys="b")) == [ids[2], ids[3]]
    assert ranked(PointFilter.where(camera_models="D90")) == [ids[1], ids[3]]
    assert ranked(PointFilter.where(camera_models=["D90", "X100"]), limit=2) == ids[:2]
    spring = PointFilter.where(taken_after="2024-02-01", taken_before="2024-12-31T23:59:59")
    assert ranked(spring) == [ids[1], ids[2]]
    assert ranked(PointFilter.where(taken_after="2024-06-01T10:00:00")) == [ids[2], ids[3]]
    assert ranked(PointFilter.where(taken_before="2024-01-01T10:00:00")) == []  # bound excluded
    both = PointFilter.where(folder_keys="a", taken_after="2024-02-01", camera_models="D90")
    assert ranked(both) == [ids[1]]
    assert ranked(PointFilter()) == [ids[0], ids[1], ids[2], ids[3], ids[4]]


def test_other_distances(store: VectorStore) -> None:
    store.ensure_collection("dots", DIM, Distance.DOT)
    big = np.zeros(DIM, dtype=np.float32)
    big[0] = 2.0  # dot product keeps vectors as given (cosine would normalise)
    store.upsert("dots", [VectorPoint(point_id("0" * 64), big, {})])
    (record,) = store.retrieve("dots", [point_id("0" * 64)], with_vectors=True)
    np.testing.assert_allclose(record.vector, big)
    (hit,) = store.query("dots", big, limit=1)
    assert hit.score == pytest.approx(4.0)
    store.ensure_collection("euclid", DIM, Distance.EUCLID)
    store.upsert("euclid", [VectorPoint(point_id("0" * 64), big, {})])
    (hit,) = store.query("euclid", np.zeros(DIM, dtype=np.float32), limit=1)
    assert hit.score == pytest.approx(2.0)  # the distance itself
    assert store.collection_info("euclid").distance == Distance.EUCLID  # type: ignore[union-attr]


def test_payload_round_trips_as_json(store: VectorStore) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    payload = {
        "sha256": "0" * 64,
        "paths": ["/été/日本/写真 1.jpg", "/a/not utf-8 \\xff.jpg", "/tab\there/x;y,z|[w].jpg"],
        "folder_keys": ["a-1", "b_2"],
        "width": 600,
        "aperture": 2.8,
        "flag": True,
        "none": None,
        "location": {"lat": 48.85, "lon": 2.35},
    }
    store.upsert("photos", [VectorPoint(point_id("0" * 64), unit([1.0]), payload)])
    (record,) = store.retrieve("photos", [point_id("0" * 64)])
    assert record.payload == payload


def test_payload_indexes_exist_on_the_fields_we_filter_by(store: VectorStore, engine: str) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    info = store.collection_info("photos")
    assert info is not None
    if engine == "server":
        assert info.indexed_fields == {}  # in-memory mode keeps none, and says so
        pytest.skip("qdrant-client's in-memory mode ignores payload indexes")
    assert dict(info.indexed_fields) == {k: v.value for k, v in INDEXED_FIELDS.items()}


def test_missing_collection(store: VectorStore) -> None:
    assert store.delete_collection("nope") is False
    for call in (
        lambda: store.count("nope"),
        lambda: store.upsert("nope", make_points(1)),
        lambda: list(store.scroll("nope")),
        lambda: store.query("nope", unit([1.0])),
        lambda: store.retrieve("nope", [point_id("0" * 64)]),
    ):
        with pytest.raises(CollectionNotFoundError):
            call()


def test_delete_collection_then_recreate_with_another_size(store: VectorStore) -> None:
    store.ensure_collection("photos", DIM, Distance.COSINE)
    store.upsert("photos", make_points(3))
    assert store.delete_collection("photos") is True
    assert not store.collection_exists("photos") and store.list_collections() == []
    assert store.ensure_collection("photos", 4, Distance.DOT) is True
    assert store.count("photos") == 0


def test_close_then_reopen_keeps_everything(
    open_store: Callable[[], VectorStore], engine: str
) -> None:
    first = open_store()
    first.ensure_collection("photos", DIM, Distance.COSINE)
    points = make_points(20, folder_keys=lambda i: ["a"])
    first.upsert("photos", points)
    first.set_payloads("photos", [PayloadUpdate.one(points[0].id, {"caption": "kept"})])
    first.delete("photos", [points[1].id])
    first.close()
    first.close()  # idempotent
    if engine == "server":
        pytest.skip("an in-memory store does not outlive its client (a server does)")
    with open_store() as again:
        assert again.count("photos") == 19
        assert again.count("photos", PointFilter.where(folder_keys="a")) == 19
        (record,) = again.retrieve("photos", [points[0].id])
        assert record.payload["caption"] == "kept"
        assert again.ensure_collection("photos", DIM, Distance.COSINE) is False
        info = again.collection_info("photos")
        assert info is not None and info.points == 19 and len(info.indexed_fields) > 0


def _all_points(store: VectorStore, name: str) -> dict[str, tuple[dict[str, object], list[float]]]:
    return {
        r.id: (r.payload, np.asarray(r.vector).round(6).tolist())
        for r in store.scroll(name, with_vectors=True)
    }


def test_snapshot_then_restore_brings_back_every_point(
    open_store: Callable[[], VectorStore], engine: str
) -> None:
    store = open_store()
    store.ensure_collection("photos", DIM, Distance.COSINE)
    if engine == "server":
        with pytest.raises(SnapshotUnsupportedError, match="no snapshots"):
            store.snapshot("photos")
        with pytest.raises(SnapshotUnsupportedError):
            store.restore_snapshot("photos", "any")
        pytest.skip(
            "qdrant-client's in-memory mode has no snapshots (create_snapshot and "
            "recover_snapshot raise NotImplementedError); the server engine's requests are "
            "checked in test_server_snapshot_requests"
        )
    points = make_points(20, folder_keys=lambda i: ["a"], paths=lambda i: [f"/a/{i}.jpg"])
    store.upsert("photos", points)
    before = _all_points(store, "photos")
    first = store.snapshot("photos")
    assert (first.collection, first.points, first.engine) == ("photos", 20, store.engine)
    assert first.size_bytes > 0 and first.created_at

    # changes after the snapshot: deletes, payload updates, new points
    ids = [p.id for p in points]
    store.delete("photos", ids[:5])
    store.set_payloads("photos", [PayloadUpdate.one(ids[6], {"paths": ["/b/6.jpg"]})])
    store.upsert("photos", make_points(3, seed=7))
    after = _all_points(store, "photos")
    assert len(after) == 18
    second = store.snapshot("photos")
    assert [s.id for s in store.list_snapshots("photos")] == [first.id, second.id]

    assert store.restore_snapshot("photos", first.id) == first
    assert _all_points(store, "photos") == before  # payloads and vectors, exactly
    info = store.collection_info("photos")
    assert info is not None and dict(info.indexed_fields) == {
        k: v.value for k, v in INDEXED_FIELDS.items()
    }
    # what the restore replaced is kept as a snapshot, so a restore can be undone
    replaced = [s for s in store.list_snapshots("photos") if s.id.endswith("-before-restore")]
    assert len(replaced) == 1 and replaced[0].points == 18
    store.close()
    with open_store() as again:  # the restored shard is what a new process opens
        assert _all_points(again, "photos") == before
        again.restore_snapshot("photos", replaced[0].id)
        assert _all_points(again, "photos") == after
        again.upsert("photos", make_points(1, seed=9))  # writable as usual
        assert again.count("photos") == 19

        with pytest.raises(SnapshotNotFoundError, match="no snapshot"):
            again.restore_snapshot("photos", "20990101T000000.000000Z")
        with pytest.raises(SnapshotNotFoundError):
            again.restore_snapshot("photos", "../../etc")
        with pytest.raises(CollectionNotFoundError):
            again.snapshot("nope")
        with pytest.raises(CollectionNotFoundError):
            again.list_snapshots("nope")

        # snapshots outlive the collection and re-create it
        assert again.delete_collection("photos")
        assert len(again.list_snapshots("photos")) == 4
        again.restore_snapshot("photos", first.id)
        assert _all_points(again, "photos") == before


def test_edge_snapshot_is_consistent_while_points_are_written(tmp_path: Path) -> None:
    """The snapshot copies a flushed shard that nobody else can write (the store holds it):
    what was written before the call is in it, nothing written after is, and a partial copy is
    never listed."""
    store = EdgeVectorStore(tmp_path / "vectors")
    store.ensure_collection("photos", DIM, Distance.COSINE)
    store.upsert("photos", make_points(300))
    info = store.snapshot("photos")
    store.upsert("photos", make_points(50, seed=3))
    assert info.points == 300
    shard = Path(info.location) / "shard"
    assert shard.is_dir() and (Path(info.location) / "snapshot.json").is_file()
    (tmp_path / "snapshots" / "photos" / ".20990101T000000.000000Z.partial-1").mkdir()
    assert [s.id for s in store.list_snapshots("photos")] == [info.id]
    store.restore_snapshot("photos", info.id)
    assert store.count("photos") == 300
    store.close()


def test_edge_collections_keep_vectors_memory_mapped(tmp_path: Path) -> None:
    """A new embedded collection keeps its vectors in memory-mapped files (``Cold``), not read
    into RAM at every open, in its config and in every segment; its vectors read back exact."""
    store = EdgeVectorStore(tmp_path / "vectors")
    store.ensure_collection("photos", DIM, Distance.COSINE)
    points = make_points(300)
    store.upsert("photos", points)
    store.close()
    folder = tmp_path / "vectors" / "photos"
    config = json.loads((folder / "edge_config.json").read_text())
    assert config["vectors"][""]["memory"] == "cold"
    kinds = {
        json.loads(p.read_text())["config"]["vector_data"][""]["storage_type"]
        for p in folder.glob("segments/*/segment.json")
    }
    assert kinds == {"ChunkedMmap"}
    again = EdgeVectorStore(tmp_path / "vectors")
    got = {p.id: p.vector for p in again.retrieve("photos", [p.id for p in points], False, True)}
    for point in points:
        np.testing.assert_array_equal(np.asarray(got[point.id], np.float32), point.vector)
    again.close()


def _segment_indexes(folder: Path) -> list[str]:
    """The vector index type of every segment of the shard ``folder`` ("plain": appendable)."""
    return sorted(
        json.loads(p.read_text())["config"]["vector_data"][""]["index"]["type"]
        for p in folder.glob("segments/*/segment.json")
    )


def test_edge_optimize_makes_read_only_segments_and_keeps_every_result(tmp_path: Path) -> None:
    """Optimizing a new embedded collection turns its appendable segment into read-only ones
    (no HNSW graph: ``m=0``) and changes nothing anyone reads: counts, filters, payloads and
    exact top-k (compared with numpy) are the same before, after and after reopening; writes
    into optimized segments still land; a second call has nothing to do."""
    root = tmp_path / "vectors"
    store = EdgeVectorStore(root, segment_kb=1)  # 1 KiB: 32 vectors of 8 float32
    store.ensure_collection("photos", DIM, Distance.COSINE)
    points = make_points(
        600,
        folder_keys=lambda i: [f"k{i % 7}"],
        taken_at=lambda i: f"20{10 + i % 10}-03-01T12:00:00",
        camera_model=lambda i: ["X100V", "Z 8"][i % 2],
    )
    store.upsert("photos", points)
    store.set_payloads("photos", [PayloadUpdate.one(points[3].id, {"caption": "a heron"})])
    store.delete("photos", [points[5].id])
    folder = root / "photos"
    config = json.loads((folder / "edge_config.json").read_text())
    assert config["hnsw_config"]["m"] == 0
    assert _segment_indexes(folder) == ["plain"]
    vectors = np.stack([p.vector for p in points])
    alive = np.ones(len(points), bool)
    alive[5] = False
    queries = np.random.default_rng(3).normal(size=(5, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    flt = PointFilter.where(folder_keys="k3", taken_after="2013-01-01", camera_models="Z 8")

    def seen(s: VectorStore) -> dict[str, object]:
        return {
            "count": s.count("photos"),
            "k3": s.count("photos", PointFilter.where(folder_keys="k3")),
            "filtered": sorted(p.id for p in s.scroll("photos", flt)),
            "top": [[h.id for h in s.query("photos", q, limit=5)] for q in queries],
            "top_filtered": [[h.id for h in s.query("photos", q, 5, flt)] for q in queries],
            "payload": s.retrieve("photos", [points[3].id])[0].payload,
        }

    before = seen(store)
    scores = vectors @ queries.T
    scores[~alive] = -np.inf
    exact = [[points[i].id for i in np.argsort(-scores[:, j])[:5]] for j in range(len(queries))]
    assert before["top"] == exact
    assert before["count"] == 599 and before["payload"]["caption"] == "a heron"

    assert store.optimize("photos") is True
    assert "hnsw" in _segment_indexes(folder)  # read-only segments (m=0: no graph)
    assert seen(store) == before
    assert store.optimize("photos") is False  # nothing new since
    store.set_payloads("photos", [PayloadUpdate.one(points[7].id, {"caption": "a boat"})])
    store.upsert("photos", make_points(1, seed=9))
    store.close()

    again = EdgeVectorStore(root, segment_kb=1)
    after = seen(again)
    assert (
        after["count"] == 600
        and again.retrieve("photos", [points[7].id])[0].payload["caption"] == "a boat"
    )
    assert {k: v for k, v in after.items() if k not in ("count", "top")} == {
        k: v for k, v in before.items() if k not in ("count", "top")
    }
    again.close()


def test_edge_collection_created_before_is_never_optimized(tmp_path: Path) -> None:
    """A collection created before :data:`~vibe_assets.vectors.edge.EXACT_SEARCH` keeps
    qdrant-edge's default HNSW settings, whose optimization would build a graph (minutes per
    100k points): optimize() leaves it as it is, and a missing collection is an error."""
    import qdrant_edge as qe

    root = tmp_path / "vectors"
    (root / "photos").mkdir(parents=True)
    params = qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)
    qe.EdgeShard.create(str(root / "photos"), qe.EdgeConfig(vectors=params)).close()
    store = EdgeVectorStore(root, segment_kb=1)
    store.ensure_collection("photos", DIM, Distance.COSINE)
    store.upsert("photos", make_points(600))
    assert store.optimizes("photos") is False
    assert store.optimize("photos") is False
    assert _segment_indexes(root / "photos") == ["plain"]
    assert store.count("photos") == 600
    with pytest.raises(CollectionNotFoundError):
        store.optimize("nope")
    store.close()


def test_server_snapshot_requests(tmp_path: Path) -> None:
    """The server engine's snapshot calls (no Qdrant server runs here: a stand-in client records
    what would be sent): create waits, restore recovers from the server's own snapshot file with
    the snapshot taking priority, an unknown snapshot is refused before any request."""
    from qdrant_client import models

    calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = []

    class Client:
        def __getattr__(self, name: str) -> Callable[..., object]:
            def call(*args: object, **kwargs: object) -> object:
                calls.append((name, args, kwargs))
                if name == "collection_exists":
                    return True
                if name == "count":
                    return models.CountResult(count=7)
                desc = models.SnapshotDescription(
                    name="photos-1.snapshot", creation_time="2026-01-02T03:04:05", size=1234
                )
                if name == "create_snapshot":
                    return desc
                if name == "list_snapshots":
                    return [desc]
                return True

            return call

    store = ServerVectorStore(
        Client(),
        "http://qdrant:6333",
        snapshots_path="/srv/qdrant/snapshots/",  # type: ignore[arg-type]
    )
    info = store.snapshot("photos")
    assert (info.id, info.points, info.size_bytes, info.engine) == (
        "photos-1.snapshot",
        7,
        1234,
        "server",
    )
    assert info.location == "http://qdrant:6333/collections/photos/snapshots/photos-1.snapshot"
    assert ("create_snapshot", ("photos",), {"wait": True}) in calls
    assert [i.id for i in store.list_snapshots("photos")] == ["photos-1.snapshot"]
    calls.clear()
    assert (
        store.restore_snapshot("photos", "photos-1.snapshot") == store.list_snapshots("photos")[0]
    )
    recover = [c for c in calls if c[0] == "recover_snapshot"]
    assert recover == [
        (
            "recover_snapshot",
            ("photos", "file:///srv/qdrant/snapshots/photos/photos-1.snapshot"),
            {"priority": models.SnapshotPriority.SNAPSHOT, "wait": True},
        )
    ]
    calls.clear()
    with pytest.raises(SnapshotNotFoundError):
        store.restore_snapshot("photos", "other.snapshot")
    assert not [c for c in calls if c[0] == "recover_snapshot"]
