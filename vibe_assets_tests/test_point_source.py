"""Points built from the store for a sync (:mod:`vibe_assets.point_source`): embeddings are read
ahead in bulk, in the order the sync asks for them, and the points are what the store holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vibe_assets import state as state_db
from vibe_assets.point_source import READ_AHEAD, PointSource
from vibe_assets.points import sync_folder
from vibe_assets.resources.store import StoreResource
from vibe_assets.vectors.base import Distance, point_id
from vibe_assets.vectors.edge import EdgeVectorStore

DIM = 16


def _library(home: Path, images: int, without_embedding: set[int]) -> tuple[StoreResource, str]:
    """One registered folder of ``images`` decoded images (stub embeddings, a few captions)."""
    store = StoreResource(home=str(home))
    folder = home / "photos"
    folder.mkdir()
    [registered], failures = store.registry.add_many([folder], recursive=False)
    assert not failures
    files = {}
    rng = np.random.default_rng(0)
    with store.state.write():
        for i in range(images):
            sha = f"{i:064x}"
            path = str(folder / f"IMG_{i:05d}.JPG")
            files[path] = {"path": path, "size": 10 + i, "mtime_ns": i, "inode": i, "sha256": sha}
            info = {"width": 60, "height": 40, "format": "jpeg", "exif": {"iso": 100 + i}}
            state_db.put_preview_outcome(store.state, sha, info)
        scan = {"root": str(folder), "files": [], "failures": []}
        for entry in files.values():
            listed = {k: v for k, v in entry.items() if k != "sha256"}
            scan["files"].append({**listed, "format": "jpeg"})
        state_db.write_scan(store.state, registered.key, scan)
        state_db.write_hashes(
            store.state, registered.key, {"root": str(folder), "files": files, "failures": []}
        )
    vectors = rng.normal(size=(images, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.put_embeddings(
        "clip", ((f"{i:064x}", vectors[i]) for i in range(images) if i not in without_embedding)
    )
    store.put_captions("blip", [(f"{3:064x}", "a heron")])
    return store, registered.key


def test_a_large_folder_reads_embeddings_ahead_in_bulk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, most = READ_AHEAD
    images, missing = 2 * most + 500, {5, most + 1, 2 * most + 499}
    store, key = _library(tmp_path, images, missing)
    calls: Counter[str] = Counter()
    for name in ("get_embedding", "get_embeddings", "get_caption", "get_captions"):
        original = getattr(StoreResource, name)

        def counted(self: Any, *args: Any, _f: Any = original, _n: str = name) -> Any:
            calls[_n] += 1
            return _f(self, *args)

        monkeypatch.setattr(StoreResource, name, counted)
    source = PointSource(store, "clip", DIM, "blip")
    vectors = EdgeVectorStore(tmp_path / "vectors")
    vectors.ensure_collection("photos", DIM, Distance.COSINE)
    current = source.current(store.folder_hashes(key))
    result = sync_folder(
        vectors, store.state, "photos", key, current, source.point_builder(key), source.caption_for
    )
    assert result.counts["upserted"] == images - len(missing)
    assert result.counts["skipped"] == len(missing)
    # reads of 64, 128, 256, 512, 1000, 1000 images; one caption query; nothing one at a time
    assert first == 64 and most == 1000
    assert calls == Counter(get_embeddings=6, get_captions=1)
    assert vectors.count("photos") == images - len(missing)
    for i in (0, 3, most, images - 2):
        sha = f"{i:064x}"
        [point] = vectors.retrieve("photos", [point_id(sha)], with_payload=True, with_vectors=True)
        np.testing.assert_allclose(point.vector, store.get_embedding("clip", sha), atol=1e-6)
        assert point.payload["iso"] == 100 + i and point.payload["folder_keys"] == [key]
    [heron] = vectors.retrieve("photos", [point_id(f"{3:064x}")], with_payload=True)
    assert heron.payload["caption"] == "a heron" and heron.payload["caption_model"] == "blip"
    # a few new images in a large folder: a short read each
    calls.clear()
    build = source.point_builder(key)
    for i in (100, 900, 1700):
        assert build(f"{i:064x}", ["/x"], [key]) is not None
    assert calls == Counter(get_embeddings=3)
    assert len(source._vectors) == first
    # a second build of the same image (a sync retried after reconciling) gets it again
    build = source.point_builder(key)
    assert build(f"{7:064x}", ["/x"], [key]) is not None
    assert build(f"{1500:064x}", ["/x"], [key]) is not None  # out of order: read again
    assert build(f"{5:064x}", ["/x"], [key]) is None  # read ahead: it has no embedding
    vectors.close()
    store.close()
