"""The web app in a real browser: Playwright drives Debian's Chromium (``/usr/bin/chromium``,
installed by ``.ci/run`` with apt; never ``playwright install``) against ``vibe-assets serve``'s
app on a real port, over a small ingested library (tiny random CLIP).

Searching by text and by an uploaded image shows thumbnails; a duplicate group archived from
the page moves the file and undo brings it back byte-identical; a curation selection made with
click and shift-click is archived (after a snapshot) and undone. When a test fails, every open
page is saved as a screenshot under ``test-artifacts/browser/`` (ignored by git).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vibe_assets.hashing import sha256_file
from vibe_assets.web.app import create_app
from vibe_assets.web.config import WebSettings
from vibe_assets.web.service import WebService
from vibe_assets_tests.conftest import SAMPLES, needs_samples
from vibe_assets_tests.web_library import (
    COPY,
    WebLibrary,
    free_port,
    module_library,
    running_server,
)

CHROMIUM = Path(os.environ.get("VIBE_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"

REQUIRED = os.environ.get("VIBE_TEST_REQUIRE_BROWSER") == "1"  # .ci/run: fail, never skip
pytestmark = [
    pytest.mark.browser,
    needs_samples,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not REQUIRED, reason=f"no Chromium at {CHROMIUM} (apt chromium)"
    ),
]
if REQUIRED:
    import playwright.sync_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_checkpoint: Path
) -> Iterator[WebLibrary]:
    with module_library(tmp_path_factory, tiny_clip_checkpoint, "web_browser") as library:
        yield library


@pytest.fixture(scope="module")
def base_url(library: WebLibrary) -> Iterator[str]:
    port = free_port()
    settings = WebSettings(port=port, hold_seconds=0.5)
    service = WebService(settings)
    try:
        with running_server(create_app(settings, service), port) as url:
            yield url
    finally:
        service.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshots_on_failure(test: Callable[..., None]) -> Callable[..., None]:
    """Save a full-page screenshot of ``page`` (the test's page fixture) when ``test`` fails."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            test(*args, **kwargs)
        except BaseException:
            shown = kwargs.get("page")
            if shown is not None:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                path = ARTIFACTS / f"{test.__name__}.png"
                try:
                    shown.screenshot(path=str(path), full_page=True)
                    print(f"screenshot of the failing page: {path} ({shown.url})")
                except Exception as exc:  # the browser may be gone
                    print(f"no screenshot: {exc}")
            raise

    return wrapper


def loaded_thumbnails(page: Any) -> list[str]:
    """SHA-256s of the result cards whose thumbnail image really loaded (naturalWidth > 0)."""
    page.wait_for_function(
        "[...document.querySelectorAll('.card img')].every(i => i.complete)", timeout=20_000
    )
    return page.eval_on_selector_all(
        ".card",
        "cards => cards.filter(c => { const i = c.querySelector('img');"
        " return i && i.naturalWidth > 0; }).map(c => c.dataset.sha)",
    )


@screenshots_on_failure
def test_search_by_text_shows_thumbnails(page: Any, base_url: str, library: WebLibrary) -> None:
    page.goto(f"{base_url}/search")
    page.fill("input[name=q]", "a dog + grass - people")
    page.click("form.search button")
    page.wait_for_url(re.compile(r"q=a\+dog"))
    assert "query: +1 a dog" in page.inner_text("p.meta")
    shown = loaded_thumbnails(page)
    assert set(shown) == set(library.shas.values())
    assert page.locator(".card .score").count() == len(shown)


@screenshots_on_failure
def test_search_by_uploaded_image_shows_it_first(
    page: Any, base_url: str, library: WebLibrary, tmp_path: Path
) -> None:
    upload = tmp_path / "my flower.jpg"  # not in the library: uploaded, embedded, not written
    shutil.copy(SAMPLES / "photos" / "sklearn_flower.jpg", upload)
    page.goto(f"{base_url}/search")
    page.set_input_files("form.byimage input[type=file]", str(upload))
    page.click("form.byimage button")
    page.wait_for_url(re.compile(r"like=[0-9a-f]{64}"))
    shown = loaded_thumbnails(page)
    assert shown[0] == library.shas["sklearn_flower.jpg"]
    assert float(page.inner_text(".card .score >> nth=0")) > 0.99
    assert page.eval_on_selector("img.likeimg", "i => i.naturalWidth") > 0
    assert not list(library.root.rglob("my flower.jpg"))


@screenshots_on_failure
def test_duplicate_group_archived_from_the_page_and_undone(
    page: Any, base_url: str, library: WebLibrary
) -> None:
    copy = library.root / COPY[0] / COPY[2]
    original = library.root / "trips" / COPY[1]
    before = {p: sha256_file(str(p)) for p in (copy, original)}
    page.goto(f"{base_url}/duplicates?tier=exact")
    group = page.locator("section.group").filter(has_text=COPY[2])
    assert group.locator(".member img").count() == 2
    assert group.locator(".member.keeper").count() == 1
    keeper = group.locator(".member.keeper .path").inner_text()
    moved = copy if keeper == str(original) else original
    group.locator("input.gpick").check()
    page.click("#archive-others")
    page.wait_for_url(f"{base_url}/duplicates/plan")
    assert "_VibeDuplicates" in page.inner_text("table.moves")
    assert moved.is_file()  # the plan page moved nothing
    page.click("#apply")
    page.wait_for_selector("#done")
    archived = moved.parent / "_VibeDuplicates" / moved.name
    assert not moved.exists() and archived.is_file()
    assert page.inner_text("#status") == "applied"
    page.click("#undo")
    page.click("#confirm-undo")
    page.wait_for_selector("#undone")
    assert not archived.exists()
    assert {p: sha256_file(str(p)) for p in (copy, original)} == before
    assert page.inner_text("#status") == "undone"


@screenshots_on_failure
def test_curation_selection_with_shift_click_archived_and_undone(
    page: Any, base_url: str, library: WebLibrary
) -> None:
    page.goto(f"{base_url}/curate?folder={library.keys['trips']}")
    cards = page.locator(".grid.selectable .card")
    assert cards.count() == 3
    cards.nth(0).locator(".pic").click()
    cards.nth(2).locator(".pic").click(modifiers=["Shift"])
    assert page.inner_text("#count") == "3 selected"
    cards.nth(1).locator(".pic").click()
    assert page.inner_text("#count") == "2 selected"
    picked = [cards.nth(i).get_attribute("data-sha") for i in (0, 2)]
    by_sha = {sha: name for name, sha in library.shas.items()}
    files = [library.root / "trips" / by_sha[s] for s in picked]
    page.click("#archive-selection")
    page.wait_for_url(f"{base_url}/curate/plan")
    assert "_VibeArchive" in page.inner_text("table.moves")
    page.click("#apply")
    page.wait_for_selector("#done")
    assert "snapshots taken first: photos" in page.inner_text("main")
    assert not any(f.exists() for f in files)
    assert all((library.root / "trips" / "_VibeArchive" / f.name).is_file() for f in files)
    page.goto(f"{base_url}/curate?folder={library.keys['trips']}")
    assert page.locator(".grid.selectable .card").count() == 1  # they left the collection
    page.goto(f"{base_url}/journals")
    page.locator("table.journals tr", has_text="curate").locator("button").first.click()
    page.click("#confirm-undo")
    page.wait_for_selector("#undone")
    assert all(f.is_file() for f in files)
    page.goto(f"{base_url}/curate?folder={library.keys['trips']}")
    assert page.locator(".grid.selectable .card").count() == 3
