"""The web app (``vibe-assets serve``) at 100k points, and screenshots of its pages (issue 15).

Usage: ``python benchmarks/web.py [--images 100000] [--folders 500] [--home DIR]
[--screenshots docs/screenshots]``. Prints one JSON object.

A synthetic library (``benchmarks/library.py``'s ``setup``: listings, decode records with EXIF,
stub embeddings: random unit (512,) vectors of ViT-B-32 with ``VIBE_CLIP_WEIGHTS=random``) is
synced into the embedded engine (``rebuild_collection``: what the ``qdrant_photos`` asset
writes). 100 of the images get a real stored thumbnail. Then a fresh process starts the app
(uvicorn on a free loopback port, the ``serve`` command's code path) and measures, over HTTP:

- ``process_to_first_page_s``: from the process start (imports included) to the first ``/``
  (the browse grid) answered;
- ``first_page_ms``: that first request alone (opens the collection's shard);
- ``warm_page_ms``: ``/`` again (p50/p95 of 20), the store held open between requests;
- ``page_after_idle_ms``: ``/`` after the store was released (``hold_seconds`` idle: reopens);
- ``text_encoder_warm_up_s``: loading the CLIP text tower (ONNX; the first start exports it);
- ``warm_text_search_ms``: a text search with a new text each time (encoded, queried, 48 cards
  rendered; p50/p95 of 20);
- ``filtered_search_ms``: the same with a folder and a date-range filter;
- ``thumbnail_ms`` / ``thumbnail_304_ms``: a stored thumbnail, then revalidated by ETag;
- ``rss_mb``: the app process's resident memory at the end.

``--screenshots DIR`` also ingests the sample photos (``../shared/samples``; plus an exact copy
and a resized copy, for the duplicates page) with a tiny random CLIP and saves PNGs of the four
pages (search, duplicates, curation, collections) with Debian's Chromium.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"
MODEL, WEIGHTS = "ViT-B-32", "random"


def _library_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_library", REPO / "benchmarks" / "library.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(home: Path) -> None:
    os.environ.update(
        VIBE_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        VIBE_CLIP_MODEL=MODEL,
        VIBE_CLIP_WEIGHTS=WEIGHTS,
        VIBE_CAPTIONS="off",
    )
    for name in ("QDRANT_URL", "VIBE_COLLECTIONS_FILE", "VIBE_COLLECTION", "VIBE_API_KEY"):
        os.environ.pop(name, None)


def build(home: Path, images: int, folders: int) -> dict[str, Any]:
    """Synthesize the library and sync it into the embedded collection."""
    from vibe_assets.point_source import PointSource, rebuild_collection
    from vibe_assets.resources import BlipResource, ClipResource, StoreResource
    from vibe_assets.resources.vectors import VectorStoreResource
    from vibe_assets.vectors.base import Distance

    _env(home)
    t0 = time.perf_counter()
    keys = _library_module().setup(home, images, folders)
    setup_s = time.perf_counter() - t0
    store = StoreResource(home=str(home))
    clip = ClipResource(model_name=MODEL, weights=WEIGHTS)
    source = PointSource(store, clip.model_id, clip.embedding_dim(), BlipResource().model_id)
    t0 = time.perf_counter()
    with VectorStoreResource(path=str(home / "vectors")).open() as vectors:
        points = rebuild_collection(vectors, store.state, "photos", source, Distance.COSINE, keys)
    sync_s = time.perf_counter() - t0
    from vibe_assets.imaging.decode import decode_photo, encode_preview

    decoded = decode_photo(SAMPLES / "photos" / "sklearn_china.jpg", preview_size=256)
    thumb = encode_preview(decoded.image)
    for i in range(100):
        sha = f"{0:08x}{i:056x}"
        store.put_preview(sha, thumb, thumb, store.preview_info(sha) or {})
    store.close()
    return {"points": points, "folders": len(keys), "setup_s": setup_s, "sync_s": sync_s}


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered) * 1000, 1), "p95": round(p95 * 1000, 1)}


def phase_serve(home: Path) -> dict[str, Any]:
    """In a fresh process: start the app as ``serve`` does and time requests over HTTP."""
    import urllib.request

    import psutil

    from vibe_assets.web.app import create_app
    from vibe_assets.web.config import WebSettings
    from vibe_assets.web.service import WebService
    from vibe_assets_tests.web_library import free_port, running_server

    _env(home)

    def get(url: str, headers: dict[str, str] | None = None) -> tuple[float, int, bytes]:
        start = time.perf_counter()
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request) as r:
                body, status = r.read(), r.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        return time.perf_counter() - start, status, body

    port = free_port()
    settings = WebSettings.from_env(port=port)
    service = WebService(settings)
    out: dict[str, Any] = {}
    with running_server(create_app(settings, service), port) as base:
        first, status, body = get(f"{base}/")
        assert status == 200, body[:500]
        out["process_to_first_page_s"] = round(time.perf_counter() - T0, 2)
        out["first_page_ms"] = round(first * 1000, 1)
        out["first_page_cards"] = body.count(b'class="card"')
        out["warm_page_ms"] = _ms([get(f"{base}/")[0] for _ in range(20)])
        time.sleep(settings.hold_seconds + 0.6)
        out["page_after_idle_ms"] = round(get(f"{base}/")[0] * 1000, 1)
        t0 = time.perf_counter()
        service.warm_up()
        out["text_encoder_warm_up_s"] = round(time.perf_counter() - t0, 2)
        words = ["beach", "sunset", "dog", "mountain", "city", "forest", "snow", "car", "bird"]
        texts = [f"{a} and {b}" for a in words for b in words][:20]
        times = []
        for text in texts:
            seconds, status, body = get(f"{base}/search?q={text.replace(' ', '+')}")
            assert status == 200 and body.count(b'class="card"') == 48, body[:300]
            times.append(seconds)
        out["warm_text_search_ms"] = _ms(times)
        key = service.folders()[3].key
        filtered = [
            get(f"{base}/search?q={t.replace(' ', '+')}+-+people&folder={key}&after=2010-01-01")[0]
            for t in texts
        ]
        out["filtered_search_ms"] = _ms(filtered)
        sha = f"{0:08x}{0:056x}"
        t, status, _ = get(f"{base}/thumb/{sha}")
        assert status == 200
        out["thumbnail_ms"] = round(t * 1000, 2)
        etag = urllib.request.urlopen(f"{base}/thumb/{sha}").headers["etag"]
        t, status, _ = get(f"{base}/thumb/{sha}", {"If-None-Match": etag})
        assert status == 304
        out["thumbnail_304_ms"] = round(t * 1000, 2)
    service.close()
    out["rss_mb"] = round(psutil.Process().memory_info().rss / 2**20)
    return out


# -- screenshots ----------------------------------------------------------------------------------


def screenshots(folder: Path) -> list[str]:
    """Ingest the sample photos with a tiny random CLIP and save PNGs of the four pages."""
    import open_clip
    import torch
    from click.testing import CliRunner
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from vibe_assets.cli import main
    from vibe_assets.web.app import create_app
    from vibe_assets.web.config import WebSettings
    from vibe_assets.web.service import WebService
    from vibe_assets_tests.conftest import TINY_CLIP, TINY_CLIP_CONFIG
    from vibe_assets_tests.web_library import free_port, running_server

    tmp = Path(tempfile.mkdtemp(prefix="vibe-web-shots-"))
    (tmp / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(tmp)
    torch.manual_seed(1234)
    ckpt = tmp / "tiny.pt"
    torch.save({"state_dict": open_clip.create_model(TINY_CLIP).state_dict()}, ckpt)
    _env(tmp / "home")
    os.environ.update(VIBE_CLIP_MODEL=TINY_CLIP, VIBE_CLIP_WEIGHTS=str(ckpt))
    library = tmp / "Pictures"
    trips, home_folder = library / "2024 trips", library / "home"
    trips.mkdir(parents=True)
    home_folder.mkdir()
    for name in sorted((SAMPLES / "photos").iterdir()):
        dest = (
            trips if name.name.startswith(("lomiri", "mei", "immich", "sklearn")) else home_folder
        )
        shutil.copy(name, dest / name.name)
    shutil.copy(trips / "immich_prairie_falcon.jpg", home_folder / "falcon (copy).jpg")
    with Image.open(trips / "sklearn_flower.jpg") as im:
        im.resize((480, 320)).save(home_folder / "flower small.jpg", quality=80)
    result = CliRunner().invoke(main, ["ingest", str(trips), str(home_folder), "--quiet"])
    assert result.exit_code == 0, result.output
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = WebSettings(port=port, dagster_url="http://127.0.0.1:3000")
    service = WebService(settings)
    saved = []
    with (
        running_server(create_app(settings, service), port) as base,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1280, "height": 860})

        def shot(name: str) -> None:
            page.wait_for_load_state("networkidle")
            path = folder / f"{name}.png"
            page.screenshot(path=str(path))
            saved.append(str(path))

        page.goto(f"{base}/search?q=sunset+%2B+sky+-+people")
        shot("search")
        tier = "near" if service.groups("near").groups else "exact"
        page.goto(f"{base}/duplicates?tier={tier}")
        shot("duplicates")
        page.goto(f"{base}/curate")
        cards = page.locator(".grid.selectable .card")
        cards.nth(1).locator(".pic").click()
        cards.nth(4).locator(".pic").click(modifiers=["Shift"])
        shot("curation")
        page.goto(f"{base}/collections")
        shot("collections")
        browser.close()
    service.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--folders", type=int, default=500)
    parser.add_argument("--home", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--screenshots", type=Path, default=None, help="save page PNGs here")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if opts.phase == "serve":
        print(json.dumps(phase_serve(opts.home)))
        return
    home = opts.home or Path(tempfile.mkdtemp(prefix="vibe-web-bench-"))
    report: dict[str, Any] = {"images": opts.images, "engine": "edge", "model": f"{MODEL}/random"}
    report.update(build(home, opts.images, opts.folders))
    run = subprocess.run(
        [sys.executable, __file__, "--phase", "serve", "--home", str(home)],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"serve phase failed:\n{run.stderr[-4000:]}")
    report.update(json.loads(run.stdout.strip().splitlines()[-1]))
    if opts.screenshots:
        report["screenshots"] = screenshots(opts.screenshots.resolve())
    if opts.home is None:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
