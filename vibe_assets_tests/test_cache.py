"""The cache (issue 13, item 3): one size limit over embeddings, captions, previews and
thumbnails; eviction never touches the state; an evicted preview is decoded again; previews of
images no folder holds any more are collected; ``cache info`` / ``cache clear``."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest

from vibe_assets.automation import FolderFingerprints
from vibe_assets.cache import cache_info, clear_cache, describe_cache_info, describe_cleared
from vibe_assets.definitions import build_assets
from vibe_assets.resources import StoreResource
from vibe_assets.state import list_probes, put_probe
from vibe_assets_tests.conftest import Env, metadata
from vibe_assets_tests.test_faults import counts, library
from vibe_assets_tests.test_pipeline import make_photo

__all__ = ["counts"]  # a fixture


def shas_of(env: Env, key: str) -> dict[str, str]:
    """``{file name: sha256}`` of a folder's hash listing."""
    files = env.store.folder_hashes(key)["files"]
    return {Path(p).name: e["sha256"] for p, e in files.items()}


def with_store(env: Env, **kwargs: Any) -> StoreResource:
    """Replace the env's store by one with these settings (same home)."""
    env.store.close()
    env.resources["store"] = StoreResource(home=str(env.home), **kwargs)
    return env.store


def broken_copy(src: Path, dest: Path) -> Path:
    """A truncated copy of a JPEG (fails to decode with ERR_TRUNCATED_IMAGE)."""
    data = src.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def state_snapshot(store: StoreResource, keys: list[str]) -> dict[str, Any]:
    """Everything the state holds for these folders (to compare before/after)."""
    shas = {e["sha256"] for k in keys for e in store.folder_hashes(k)["files"].values()}
    return {
        "registry": store.registry.list(),
        "scans": {k: store.folder_scan(k) for k in keys},
        "hashes": {k: store.folder_hashes(k) for k in keys},
        "previews": {s: store.preview_info(s) for s in sorted(shas)},
        "failures": {s: store.decode_failure(s) for s in sorted(shas)},
        "fingerprints": FolderFingerprints(store.state).rows(),
        "probes": list_probes(store.state),
    }


def test_filling_the_cache_past_its_limit_evicts_cache_never_state(
    env: Env, tmp_path: Path, counts: Counter[str]
) -> None:
    store = with_store(env, size_limit_bytes=256 * 1024)
    folder = library(tmp_path / "lib", 6)
    broken_copy(folder / "p0.jpg", folder / "broken.jpg")
    key = env.add_folder(folder)
    FolderFingerprints(store.state).write(
        [(os.fsencode(str(folder)), b"/", key, b"f" * 16, 1, 1)], [], 1, 0, 1
    )
    put_probe(store.state, {"model_id": "m"}, {"kind": "throughput", "cap": 8})
    env.materialize(key)
    shas = shas_of(env, key)
    model = env.resources["clip"].model_id
    good = {n: s for n, s in shas.items() if n != "broken.jpg"}
    assert all(store.has_preview_files(s) and store.has_embedding(model, s) for s in good.values())
    before = state_snapshot(store, [key])

    for i in range(12):  # 12 x 40 KB of other cached data: well past the 256 KiB limit
        store.cache.set(f"junk/{i}", os.urandom(40_000))
    assert store.cache.volume() <= 256 * 1024 + 64 * 1024  # evicted down to about the limit
    evicted_previews = {s for s in good.values() if not store.has_preview_files(s)}
    evicted_embeddings = {s for s in good.values() if not store.has_embedding(model, s)}
    assert evicted_previews and evicted_embeddings  # the cache was evicted ...
    assert state_snapshot(store, [key]) == before  # ... the state was not
    assert store.cache.check() == []  # no preview entry left without its file, nor the reverse

    store = with_store(env)  # room again: the re-run refills the cache
    counts.clear()
    result = env.materialize(key)
    assert metadata(result, "photo_hashes")["hashed"] == 0  # nothing hashed again
    assert counts["decoded"] == len(evicted_previews)  # only evicted previews; the failure kept
    assert counts["embedded"] == len(evicted_embeddings)
    assert metadata(result, "photo_previews")["failed_by_code"] == {"ERR_TRUNCATED_IMAGE": 1}
    assert state_snapshot(store, [key]) == before
    assert all(store.has_preview_files(s) for s in good.values())


def test_an_evicted_preview_is_decoded_again_when_captioning(
    env: Env, tmp_path: Path, counts: Counter[str]
) -> None:
    key = env.add_folder(library(tmp_path / "lib", 3))
    env.materialize(key)  # captions off
    clear_cache(env.home, ["previews"])  # as if evicted
    shas = shas_of(env, key)
    assert not any(env.store.preview_path(s).is_file() for s in shas.values())
    counts.clear()
    env.materialize(key, only_captions=True)  # a caption run: no photo_previews step
    caption_model = env.resources["blip"].model_id
    assert all(env.store.has_caption(caption_model, s) for s in shas.values())
    assert counts["decoded"] == 3 and counts["embedded"] == 0
    assert all(env.store.preview_path(s).is_file() for s in shas.values())


def test_an_evicted_preview_is_decoded_again_when_embedding_alone(
    env: Env, tmp_path: Path, counts: Counter[str]
) -> None:
    key = env.add_folder(library(tmp_path / "lib", 3))
    env.materialize(key)
    clear_cache(env.home, ["previews", "embeddings"])  # as if evicted
    counts.clear()
    result = dg.materialize(  # clip_embeddings alone: the decode_and_embed step plans no decoding
        build_assets(env.collections),
        selection=[dg.AssetKey("clip_embeddings")],
        resources=env.resources,
        partition_key=key,
        instance=env.instance,
    )
    assert counts == Counter(decoded=3, embedded=3)
    assert metadata(result, "clip_embeddings")["previews_missing"] == 0
    assert all(env.store.has_preview_files(s) for s in shas_of(env, key).values())


def test_previews_of_images_no_folder_holds_are_collected_shared_ones_kept(
    env: Env, tmp_path: Path
) -> None:
    store = with_store(env, preview_gc_grace_seconds=0)
    a = library(tmp_path / "a", 3)  # p0, p1, p2
    b = library(tmp_path / "b", 0)
    shutil.copy(a / "p2.jpg", b / "copy_of_p2.jpg")  # the same bytes in both folders
    make_photo(b / "q.jpg", seed=77, size=(96, 64))
    ka, kb = env.add_folder(a), env.add_folder(b)
    env.materialize(ka, kb)
    sa, sb = shas_of(env, ka), shas_of(env, kb)
    assert sa["p2.jpg"] == sb["copy_of_p2.jpg"]

    (a / "p1.jpg").unlink()
    (a / "p2.jpg").unlink()
    result = env.materialize(ka)
    assert metadata(result, "photo_hashes")["run_previews_collected"] == 1
    gone = sa["p1.jpg"]
    assert not store.preview_path(gone).exists() and not store.thumbnail_path(gone).exists()
    assert store.preview_info(gone) is None and f"previewfile/{gone}" not in store.cache
    shared = sa["p2.jpg"]  # b still holds it
    assert store.has_preview_files(shared) and store.preview_info(shared) is not None
    assert store.has_preview_files(sa["p0.jpg"])

    (b / "copy_of_p2.jpg").unlink()
    env.materialize(kb)
    assert not store.preview_path(shared).exists() and store.preview_info(shared) is None
    with store.state.read() as db:
        assert db.execute("SELECT COUNT(*) FROM preview_gc").fetchone()[0] == 0

    # an unchanged re-run has nothing to collect
    result = env.materialize(ka, kb)
    assert "run_previews_collected" not in metadata(result, "photo_hashes")

    # unregistering a folder drops its listing: its images go too
    store.registry.remove(kb)
    assert store.collect_unreferenced_previews().images == 1
    assert not store.preview_path(sb["q.jpg"]).exists()
    assert store.has_preview_files(sa["p0.jpg"])


def test_collection_waits_for_the_grace_period(env: Env, tmp_path: Path) -> None:
    store = with_store(env, preview_gc_grace_seconds=3600)
    folder = library(tmp_path / "lib", 2)
    key = env.add_folder(folder)
    env.materialize(key)
    sha = shas_of(env, key)["p0.jpg"]
    (folder / "p0.jpg").unlink()
    env.materialize(key)
    assert store.has_preview_files(sha)  # not yet: it may have moved to a folder not yet seen
    assert cache_info(env.home, 2**30)["unreferenced_pending"] == 1
    store = with_store(env, preview_gc_grace_seconds=0)
    assert store.collect_unreferenced_previews().images == 1
    assert not store.preview_path(sha).exists()


def test_cache_info_and_clear_never_touch_state(
    env: Env, tmp_path: Path, counts: Counter[str]
) -> None:
    key = env.add_folder(library(tmp_path / "lib", 4))
    env.materialize(key)
    env.store.put_captions("blip-x", [(s, "a photo") for s in shas_of(env, key).values()])
    env.store.close()
    info = cache_info(env.home, 2**30)
    kinds = info["cache"]["kinds"]
    assert (kinds["embeddings"]["entries"], kinds["captions"]["entries"]) == (4, 4)
    assert kinds["previews"]["entries"] == 8  # a preview and a thumbnail each
    assert info["previews_on_disk"]["files"] == 8
    assert kinds["previews"]["bytes"] == info["previews_on_disk"]["bytes"] > 0
    assert kinds["embeddings"]["bytes"] == 4 * 32 * 4  # 4 x 32 float32
    assert info["state"]["rows"]["listing_files"] == 4 and info["state"]["bytes"] > 0
    assert info["limit_bytes"] == 2**30 and info["cache"]["bytes"] > 0
    text = describe_cache_info(info)
    assert "state" in text and "never evicted" in text and "previews" in text
    state_before = state_snapshot(env.store, [key])

    cleared = clear_cache(env.home, ["embeddings"])
    assert cleared == {"embeddings": {"entries": 4, "bytes": 512}}
    assert "embeddings 4 entries" in describe_cleared(cleared)
    after = cache_info(env.home, 2**30)["cache"]["kinds"]
    assert after["embeddings"]["entries"] == 0 and after["previews"]["entries"] == 8
    counts.clear()
    result = env.materialize(key)
    assert counts == Counter(embedded=4) and metadata(result, "photo_hashes")["hashed"] == 0

    cleared = clear_cache(env.home, ["previews", "captions"])
    assert cleared["previews"]["entries"] == 8 and cleared["captions"]["entries"] == 4
    assert cache_info(env.home, 2**30)["previews_on_disk"]["files"] == 0
    counts.clear()
    env.materialize(key)
    assert counts == Counter(decoded=4)  # previews decoded again, embeddings kept

    stray = env.home / "previews" / "ab" / f"{'ab' * 32}.jpg"  # a file no entry knows
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"x" * 10)
    cleared = clear_cache(env.home, ["all"])
    assert set(cleared) == {"embeddings", "captions", "previews"}
    assert not stray.exists()
    info = cache_info(env.home, 2**30)
    assert all(k["entries"] == 0 for k in info["cache"]["kinds"].values())
    assert info["state"]["rows"]["listing_files"] == 4
    assert state_snapshot(env.store, [key]) == state_before  # state untouched throughout
    with pytest.raises(ValueError, match="unknown cache kinds"):
        clear_cache(env.home, ["state"])


def test_one_size_limit_counts_previews_too(tmp_path: Path) -> None:
    store = StoreResource(home=str(tmp_path), size_limit_bytes=400 * 1024)
    info = {"width": 8, "height": 8, "format": "JPEG", "decoder": "x", "exif": {}}
    for i in range(40):  # 40 x 24 KB of preview files: 960 KB, more than twice the limit
        store.put_preview(f"{i:064x}", os.urandom(16_000), os.urandom(8_000), info)
    kept = [i for i in range(40) if store.preview_path(f"{i:064x}").is_file()]
    assert 0 < len(kept) < 40 and kept == list(range(40 - len(kept), 40))  # oldest evicted
    assert store.cache.volume() <= 400 * 1024 + 64 * 1024
    assert all(store.preview_info(f"{i:064x}") is not None for i in range(40))  # state kept
    again = f"{39:064x}"  # decoded again (e.g. after a decoder upgrade): same file names
    store.put_preview(again, b"new preview", b"new thumb", info)
    assert store.preview_path(again).read_bytes() == b"new preview"  # not deleted as "old"
    assert store.thumbnail_path(again).read_bytes() == b"new thumb"
    vec = np.ones(4, "f4") / 2
    store.put_embeddings("m", [("e", vec)])
    assert store.cache.check() == []  # entries and files agree, sizes included
