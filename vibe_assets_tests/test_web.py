"""The web app (``vibe-assets serve``) through FastAPI's TestClient, on a small ingested library:
security (API key off loopback, Host check, CSRF, no path traversal), thumbnails with caching
headers, search (text, uploaded image, filters), duplicate plans, uploads, collections, and the
Markdown thumbnails for Dagster metadata."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from vibe_assets.web.app import create_app
from vibe_assets.web.config import WebConfigError, WebSettings, is_loopback
from vibe_assets.web.dagster_md import INLINE_LIMIT, markdown_thumbnails
from vibe_assets.web.security import CSRF_COOKIE, require_csrf
from vibe_assets.web.service import WebService, check_upload, safe_name
from vibe_assets_tests.conftest import SAMPLES, needs_samples
from vibe_assets_tests.web_library import COPY, WebLibrary, module_library

pytestmark = needs_samples
LOCAL = "http://127.0.0.1:8765"
KEY = "k" * 24


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_checkpoint: Path
) -> Iterator[WebLibrary]:
    with module_library(tmp_path_factory, tiny_clip_checkpoint, "web") as library:
        yield library


@pytest.fixture(scope="module")
def service(library: WebLibrary) -> Iterator[WebService]:
    svc = WebService(WebSettings(hold_seconds=0.5, max_upload_bytes=2 * 2**20))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service: WebService) -> Iterator[TestClient]:
    with TestClient(create_app(service.settings, service), base_url=LOCAL) as c:
        yield c


def csrf(client: TestClient, page: str = "/upload") -> str:
    """The CSRF token of the client's browser session (the cookie a page sets)."""
    client.get(page, headers={"accept": "text/html"})
    token = client.cookies.get(CSRF_COOKIE)
    assert token
    return token


def thumbs(html: str) -> list[str]:
    return re.findall(r'src="/thumb/([0-9a-f]{64})"', html)


# -- settings and access --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_without_api_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from vibe_assets.cli_serve import serve

    monkeypatch.delenv("VIBE_API_KEY", raising=False)
    with pytest.raises(WebConfigError, match="VIBE_API_KEY"):
        create_app(WebSettings(host="0.0.0.0"))
    with pytest.raises(WebConfigError, match="16 characters"):
        WebSettings(host="0.0.0.0", api_key="short").check()
    result = CliRunner().invoke(serve, ["--host", "0.0.0.0", "--port", "8799"])
    assert result.exit_code == 2
    assert "needs an API key" in result.output
    WebSettings(host="0.0.0.0", api_key=KEY).check()  # with a key it is allowed


def test_api_key_is_required_off_loopback(library: WebLibrary, service: WebService) -> None:
    settings = WebSettings(host="0.0.0.0", api_key=KEY)
    app = create_app(settings, service)
    sha = library.shas["pp_dog_orange.jpg"]
    with TestClient(app, base_url="http://192.0.2.10:8765") as c:
        assert c.get("/search").status_code == 401
        assert c.get(f"/thumb/{sha}").status_code == 401
        assert c.get("/search", headers={"x-api-key": "x" * 24}).status_code == 401
        page = c.get("/search", headers={"accept": "text/html"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert c.get("/search", headers={"x-api-key": KEY}).status_code == 200
        assert c.get(f"/thumb/{sha}", headers={"x-api-key": KEY}).status_code == 200
        # a browser logs in with the key once; the cookie is an HMAC, not the key
        token = csrf(c, "/login")
        bad = c.post("/login", data={"api_key": "wrong" * 5, "csrf_token": token})
        assert bad.status_code == 401
        ok = c.post(
            "/login", data={"api_key": KEY, "csrf_token": token, "next": "/collections"},
            follow_redirects=False,
        )  # fmt: skip
        assert ok.status_code == 303 and ok.headers["location"] == "/collections"
        assert KEY not in ok.headers["set-cookie"]
        assert c.get("/collections").status_code == 200


def test_unknown_host_header_is_refused_on_loopback(client: TestClient) -> None:
    assert client.get("/search", headers={"host": "evil.example:8765"}).status_code == 421
    assert client.get("/search", headers={"host": "localhost:8765"}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/thumb/..%2F..%2Fstate.sqlite3",
        "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/preview/..%2f..%2fstate.sqlite3",
        "/mini/....%2F%2Fstate.sqlite3",
        "/thumb/" + "A" * 64,
        "/thumb/" + "0" * 64,
        "/static/..%2F..%2Fservice.py",
        "/static/../app.py",
        "/journals/..%2F..%2Fstate.sqlite3",
        "/journals/%2Fetc%2Fpasswd",
        "/photo/..%2Fstate.sqlite3",
    ],
)
def test_path_traversal_is_refused(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert b"SQLite format" not in response.content
    assert b"root:" not in response.content
    assert b"def " not in response.content


def test_thumbnails_are_stored_files_with_caching_headers(
    client: TestClient, library: WebLibrary, service: WebService
) -> None:
    sha = library.shas["sklearn_china.jpg"]
    first = client.get(f"/thumb/{sha}")
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/jpeg"
    assert first.content == service.store.thumbnail_path(sha).read_bytes()
    assert "max-age=" in first.headers["cache-control"]
    again = client.get(f"/thumb/{sha}", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and not again.content
    preview = client.get(f"/preview/{sha}")
    assert preview.content == service.store.preview_path(sha).read_bytes()
    mini = client.get(f"/mini/{sha}")
    with Image.open(io.BytesIO(mini.content)) as im:
        assert max(im.size) <= 96
    assert "no-store" in client.get("/search").headers["cache-control"]
    assert "default-src 'none'" in client.get("/search").headers["content-security-policy"]


def test_every_post_route_checks_csrf(client: TestClient) -> None:
    posts = [r for r in client.app.routes if "POST" in getattr(r, "methods", set())]
    assert len(posts) >= 10
    for route in posts:
        calls = {d.call for d in route.dependant.dependencies}
        assert require_csrf in calls, route.path


def test_csrf_token_is_required(client: TestClient, library: WebLibrary) -> None:
    sha = library.shas["pp_dog_orange.jpg"]
    token = csrf(client)
    assert client.post("/curate/plan", data={"sha": sha}).status_code == 403
    forged = token.split(".")[0] + "." + "0" * 32
    assert client.post("/curate/plan", data={"sha": sha, "csrf_token": forged}).status_code == 403
    other = client.post(
        "/curate/plan", data={"sha": sha, "csrf_token": token},
        headers={"origin": "http://evil.example"},
    )  # fmt: skip
    assert other.status_code == 403
    ok = client.post("/curate/plan", data={"sha": sha, "csrf_token": token})
    assert ok.status_code == 200
    assert "_VibeArchive" in ok.text and "Move 1 files" in ok.text
    # the plan page moved nothing; applying without the confirmation step is refused
    assert (library.root / "pets" / "pp_dog_orange.jpg").is_file()
    refused = client.post("/curate/apply", data={"sha": sha, "csrf_token": token})
    assert refused.status_code == 400
    assert (library.root / "pets" / "pp_dog_orange.jpg").is_file()


# -- pages ----------------------------------------------------------------------------------------


def test_search_by_text_shows_thumbnails_and_composed_query(
    client: TestClient, library: WebLibrary
) -> None:
    page = client.get("/search", params={"q": "2:dog + grass - people"})
    assert page.status_code == 200
    found = thumbs(page.text)
    assert set(found) == set(library.shas.values())
    assert "+2 dog" in page.text and "-1 people" in page.text
    assert "empty term" in client.get("/search", params={"q": "dog +"}).text
    assert "cancel out" in client.get("/search", params={"q": "dog - dog"}).text
    browse = client.get("/")
    assert set(thumbs(browse.text)) == set(library.shas.values())


def test_search_filters(client: TestClient, library: WebLibrary) -> None:
    trips = client.get("/search", params={"q": "a photo", "folder": library.keys["trips"]})
    want = {library.shas[n] for n in ("sklearn_china.jpg", "sklearn_flower.jpg")}
    assert want <= set(thumbs(trips.text))
    assert library.shas["pp_dog_orange.jpg"] not in thumbs(trips.text)
    by_path = client.get("/search", params={"q": "a photo", "folder": str(library.root / "pets")})
    assert library.shas["pp_dog_orange.jpg"] in thumbs(by_path.text)
    assert library.shas["sklearn_china.jpg"] not in thumbs(by_path.text)
    dated = client.get("/search", params={"q": "x", "after": "2999-01-01"})
    assert thumbs(dated.text) == []
    bad = client.get("/search", params={"q": "x", "after": "2024-05-01", "before": "2020-01-01"})
    assert "not earlier" in bad.text
    assert "no registered folder" in client.get("/search", params={"folder": "/nowhere"}).text


def test_search_by_uploaded_image_puts_it_first(client: TestClient, library: WebLibrary) -> None:
    data = (SAMPLES / "photos" / "sklearn_flower.jpg").read_bytes()
    token = csrf(client)
    sent = client.post(
        "/search/image",
        data={"csrf_token": token},
        files={"image": ("flower.jpg", data, "image/jpeg")},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    page = client.get(sent.headers["location"])
    assert thumbs(page.text)[0] == library.shas["sklearn_flower.jpg"]
    assert re.search(r'class="score">(1\.000|0\.99\d)<', page.text)
    not_image = client.post(
        "/search/image",
        data={"csrf_token": token},
        files={"image": ("x.jpg", b"hello, not an image", "image/jpeg")},
    )
    assert not_image.status_code == 400 and "not an image" in not_image.text


def test_photo_page_shows_preview_and_exif(client: TestClient, library: WebLibrary) -> None:
    sha = library.shas["sklearn_china.jpg"]
    page = client.get(f"/photo/{sha}")
    assert page.status_code == 200
    assert f"/preview/{sha}" in page.text and "sklearn_china.jpg" in page.text
    assert "640×427" in page.text
    assert client.get("/photo/" + "1" * 64).status_code == 404


def test_duplicate_plan_is_recomputed_and_checked(client: TestClient, library: WebLibrary) -> None:
    page = client.get("/duplicates", params={"tier": "exact"})
    assert page.status_code == 200
    copy = str(library.root / COPY[0] / COPY[2])
    assert COPY[2] in page.text
    gid = re.search(r'name="group" value="([0-9a-f]{16})"', page.text).group(1)
    token = csrf(client)
    plan = client.post(
        "/duplicates/plan",
        data={"tier": "exact", "group": gid, f"keep_{gid}": copy, "csrf_token": token},
    )
    assert plan.status_code == 200 and "_VibeDuplicates" in plan.text
    # keeping the copy archives the original; a tampered digest moves nothing
    original = library.root / "trips" / COPY[1]
    stale = client.post(
        "/duplicates/apply",
        data={"tier": "exact", "group": gid, f"keep_{gid}": copy, "csrf_token": token,
              "digest": "0" * 24, "confirm": "yes"},
    )  # fmt: skip
    assert stale.status_code == 409 and original.is_file()
    foreign = client.post(
        "/duplicates/plan",
        data={"tier": "exact", "group": gid, f"keep_{gid}": "/etc/passwd", "csrf_token": token},
    )
    assert foreign.status_code == 400


def test_upload_checks_size_and_type_before_writing(
    client: TestClient, library: WebLibrary, service: WebService
) -> None:
    token = csrf(client)
    target = f"folder:{library.keys['pets']}"
    jpeg = (SAMPLES / "photos" / "pp_dog_orange.jpg").read_bytes()
    big = b"\xff\xd8\xff" + b"0" * (service.settings.max_upload_bytes + 10)
    files = [
        ("files", ("../../new dog.jpg", jpeg, "image/jpeg")),
        ("files", ("text.jpg", b"just text", "image/jpeg")),
        ("files", ("huge.jpg", big, "image/jpeg")),
        ("files", ("script.sh", jpeg, "text/plain")),
    ]
    page = client.post("/upload", data={"target": target, "csrf_token": token}, files=files)
    assert page.status_code == 200, page.text
    pets = library.root / "pets"
    assert (pets / "new dog.jpg").read_bytes() == jpeg
    for name in ("text.jpg", "huge.jpg", "script.sh"):
        assert not (pets / name).exists()
    assert not (library.root / "new dog.jpg").exists()
    assert "not an image" in page.text and "over the" in page.text
    assert not [p for p in pets.iterdir() if p.name.startswith(".")]
    again = client.post(
        "/upload", data={"target": target, "csrf_token": token},
        files=[("files", ("new dog.jpg", jpeg, "image/jpeg"))],
    )  # fmt: skip
    assert again.status_code == 200 and (pets / "new dog (1).jpg").is_file()
    for name in ("new dog.jpg", "new dog (1).jpg"):
        (pets / name).unlink()
    nowhere = client.post(
        "/upload", data={"target": "folder:nope", "csrf_token": token},
        files=[("files", ("a.jpg", jpeg, "image/jpeg"))],
    )  # fmt: skip
    assert nowhere.status_code == 400


def test_upload_name_and_content_checks() -> None:
    assert safe_name("../../etc/passwd.jpg") == "passwd.jpg"
    assert safe_name("C:\\Users\\x\\.hidden.png") == "hidden.png"
    with pytest.raises(Exception, match="not a usable"):
        safe_name("../..")
    png = (SAMPLES / "photos" / "imageio_kodim03.png").read_bytes()
    assert check_upload("k.png", png, 10 * 2**20) == "k.png"
    with pytest.raises(Exception, match="over the"):
        check_upload("k.png", png, 1024)


def test_collections_page_snapshot_and_guarded_delete(
    client: TestClient, library: WebLibrary
) -> None:
    page = client.get("/collections")
    assert page.status_code == 200
    assert re.search(r"<td>photos \(searched\)</td>\s*<td>5</td>", page.text)
    assert f"tag%3Adagster%2Fpartition%3D{library.keys['trips']}" in page.text
    token = csrf(client)
    snap = client.post("/collections/photos/snapshot", data={"csrf_token": token})
    assert snap.status_code == 200 and "snapshot" in snap.text
    assert "Delete collection photos?" in client.get("/collections/photos/delete").text
    wrong = client.post(
        "/collections/photos/delete", data={"csrf_token": token, "confirm_name": "other"}
    )
    assert wrong.status_code == 400
    assert re.search(r"<td>photos \(searched\)</td>\s*<td>5</td>", client.get("/collections").text)


def test_markdown_thumbnails_for_dagster(library: WebLibrary) -> None:
    sha = library.shas["sklearn_china.jpg"]
    rows = [
        {"sha256": sha, "path": "/photos/2024/IMG_1.jpg", "caption": "a | b *c*"},
        {"sha256": None, "path": "/photos/broken.jpg", "caption": ""},
    ]
    md = markdown_thumbnails(rows, "http://127.0.0.1:8765/")
    assert (
        f"[![IMG\\_1.jpg](http://127.0.0.1:8765/mini/{sha})](http://127.0.0.1:8765/photo/{sha})"
        in md
    )
    assert "a \\| b \\*c\\*" in md and "broken.jpg" in md and "/photos/2024" not in md
    assert len(md) < INLINE_LIMIT
    many = markdown_thumbnails([rows[0]] * 20, "http://x", limit=8)
    assert many.count("/mini/") == 8 and "(+12 more)" in many
    assert markdown_thumbnails([], "http://x") == ""
