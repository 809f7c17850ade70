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
