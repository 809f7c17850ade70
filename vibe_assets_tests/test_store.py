"""The store never unpickles, survives corrupt entries and writes files atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vibe_assets.resources.store import StoreResource, atomic_write


class Boom:
    """Unpickling this would create a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_planted_pickle_is_never_loaded(tmp_path: Path) -> None:
    store = StoreResource(home=str(tmp_path))
    marker = tmp_path / "pwned"
    # Plant a pickled value with the stock diskcache Disk, as an attacker could.
    import diskcache

    with diskcache.Cache(str(tmp_path / "cache")) as raw:
        raw.set("preview/abc", Boom(str(marker)))
        raw.set("embedding/m/abc", Boom(str(marker)))
    assert store.preview_info("abc") is None
    assert store.get_embedding("m", "abc") is None
    assert not marker.exists()
    with pytest.raises(TypeError):
        store.cache.set("x", {"a": 1})  # would be pickled by the stock Disk


def test_json_and_embeddings_round_trip(tmp_path: Path) -> None:
    store = StoreResource(home=str(tmp_path))
    store.set_json("scan/k", {"files": [1, 2]})
    assert store.get_json("scan/k") == {"files": [1, 2]}
    store.cache.set("scan/bad", "{not json")
    assert store.get_json("scan/bad") is None
    vec = np.arange(8, dtype=np.float32)
    vec /= np.linalg.norm(vec)  # embeddings are unit vectors; anything else reads as corrupt
    store.put_embeddings("m", [("sha", vec)])
    assert store.has_embedding("m", "sha") and not store.has_embedding("other", "sha")
    np.testing.assert_array_equal(store.get_embedding("m", "sha"), vec)
    store.cache.set("embedding/m/odd", b"abc")  # not a float32 buffer
    assert store.get_embedding("m", "odd") is None


def test_atomic_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a" / "b.jpg"
    atomic_write(target, b"old")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["b.jpg"]


def test_bulk_reads_equal_single_reads(tmp_path: Path) -> None:
    """get_embeddings/get_captions (one query per 500 keys) give what get_embedding/get_caption
    give one at a time: corrupt, pickled, expired and missing entries are absent; a value kept
    in its own file (a large entry) is read back too; nothing pickled is loaded."""
    import diskcache

    marker = tmp_path / "pwned"
    with diskcache.Cache(str(tmp_path / "cache")) as raw:
        raw.set("embedding/m/pickled", Boom(str(marker)))
    store = StoreResource(home=str(tmp_path))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1200, 16)).astype(np.float32)  # > 2 queries of 500
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    shas = [f"{i:064x}" for i in range(len(vectors))]
    store.put_embeddings("m", zip(shas, vectors, strict=True))
    store.cache.set("embedding/m/odd", b"abc")
    store.cache.set("embedding/m/expired", vectors[0].tobytes(), expire=-1)
    big = rng.normal(size=20_000).astype(np.float32)  # 80 kB: diskcache keeps it in a file
    store.put_embeddings("m", [("big", big / np.linalg.norm(big))])
    store.put_captions("blip", [(shas[1], "a bird"), (shas[7], "a boat")])
    store.cache.set("caption/blip/broken", "{not json")

    asked = [*shas, "odd", "expired", "big", "pickled", "absent", shas[3]]
    got = store.get_embeddings("m", asked)
    assert sorted(got) == sorted([*shas, "big"])
    for sha in got:
        np.testing.assert_array_equal(got[sha], store.get_embedding("m", sha))
    assert not marker.exists()
    assert "embedding/m/pickled" not in store.cache  # dropped, as get_embedding does
    captions = store.get_captions("blip", [*shas, "broken"])
    assert captions == {s: store.get_caption("blip", s) for s in (shas[1], shas[7])}
    assert captions[shas[1]]["text"] == "a bird"
    assert store.get_embeddings("m", []) == {} and store.get_captions("other", shas) == {}
