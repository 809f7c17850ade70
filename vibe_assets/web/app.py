"""The FastAPI app of ``vibe-assets serve``: server-rendered pages over :mod:`.service`.

Pages: ``/`` search (text, image, upload, filters), ``/photo/<sha>`` one image, ``/curate``
selection and archive, ``/duplicates`` groups by tier, ``/journals`` moves with undo,
``/collections`` (and folders with links to Dagster runs), ``/upload``. Files come only from the
store, by SHA-256: ``/thumb/<sha>`` (256 px), ``/preview/<sha>`` (512 px), ``/mini/<sha>``
(96 px, for Dagster metadata), with ``ETag`` and ``Cache-Control``. Everything that moves or
writes files is a POST with a CSRF token, and shows what it will do first (see
:mod:`.security`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from vibe_assets.duplicates import TIERS
from vibe_assets.scan import ARCHIVE_DIR, DUPLICATES_DIR
from vibe_assets.vectors.base import QdrantBusyError, QdrantUnavailableError
from vibe_assets.web.config import WebSettings
from vibe_assets.web.security import (
    AUTH_COOKIE,
    CSRF_FIELD,
    Guard,
    SecurityMiddleware,
    require_csrf,
)
from vibe_assets.web.service import (
    SearchParams,
    WebError,
    WebService,
    human_bytes,
    plan_digest,
)

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
THUMB_MAX_AGE = 86_400
"""Seconds a browser may reuse a thumbnail without asking (then it revalidates by ETag)."""
GROUPS_PER_PAGE = 30

CsrfChecked = Annotated[None, Depends(require_csrf)]


def search_params(
    q: str = "",
    like: str = "",
    folder: str = "",
    after: str = "",
    before: str = "",
    camera: str = "",
    page: int = 1,
) -> SearchParams:
    """The search page's query parameters."""
    return SearchParams(q, like, folder, after, before, camera, page)


Params = Annotated[SearchParams, Depends(search_params)]


def create_app(settings: WebSettings, service: WebService | None = None) -> FastAPI:
    """The app for ``settings`` (checked first).

    Args:
        service: the :class:`WebService` to use; default one built from the environment when
            the app starts (``lifespan``), closed when it stops.

    Raises:
        vibe_assets.web.config.WebConfigError: unsafe settings (e.g. a non-loopback host
            without ``VIBE_API_KEY``).
    """
    settings.check()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = app.state.service is None
        if own:
            app.state.service = WebService(settings)
        try:
            yield
        finally:
            if own:
                app.state.service.close()

    app = FastAPI(
        title="vibe-assets",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    guard = Guard(settings)
    app.state.settings = settings
    app.state.guard = guard
    app.state.service = service
    app.add_middleware(SecurityMiddleware, guard=guard)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(human_bytes=human_bytes, tiers=TIERS)
    templates.env.filters["urlq"] = lambda v: quote(str(v), safe="")

    def svc(request: Request) -> WebService:
        return request.app.state.service

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        service = svc(request)
        context.update(
            request=request,
            csrf_field=CSRF_FIELD,
            csrf_token=guard.csrf_token_for(request),
            collection=service.spec.name if service else "",
            needs_key=guard.needs_key,
            dagster_url=settings.dagster_url,
        )
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.exception_handler(WebError)
    async def web_error(request: Request, exc: WebError) -> HTMLResponse:
        return render(request, "error.html", exc.status, message=str(exc), problems=exc.problems)

    @app.exception_handler(QdrantBusyError)
    async def busy(request: Request, exc: QdrantBusyError) -> HTMLResponse:
        return render(
            request,
            "error.html",
            503,
            message=f"the collection is busy: {exc}. Try again when the run is done.",
            problems=[],
        )

    @app.exception_handler(QdrantUnavailableError)
    async def unavailable(request: Request, exc: QdrantUnavailableError) -> HTMLResponse:
        return render(request, "error.html", 503, message=str(exc), problems=[])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return render(request, "error.html", exc.status_code, message=exc.detail, problems=[])
        return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")

    # -- login ----------------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", next=_local(next), failed=False)

    @app.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        _: CsrfChecked,
        api_key: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        if not guard.needs_key:
            return RedirectResponse(_local(next), status_code=303)
        if not guard.key_matches(api_key):
            return render(request, "login.html", 401, next=_local(next), failed=True)
        response = RedirectResponse(_local(next), status_code=303)
        response.set_cookie(
            AUTH_COOKIE,
            guard.session_value(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=30 * 86400,
        )
        return response

    @app.post("/logout")
    def logout(_: CsrfChecked) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(AUTH_COOKIE)
        return response

    # -- files from the store -------------------------------------------------------------------
    def stored_file(request: Request, path: Path, sha: str, kind: str) -> Response:
        st = path.stat()
        etag = f'"{kind}{sha[:16]}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        headers = {"ETag": etag, "Cache-Control": f"private, max-age={THUMB_MAX_AGE}"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(path.read_bytes(), media_type="image/jpeg", headers=headers)

    @app.get("/thumb/{sha}")
    def thumb(request: Request, sha: str) -> Response:
        return stored_file(request, svc(request).thumbnail_file(sha), sha, "t")

    @app.get("/preview/{sha}")
    def preview(request: Request, sha: str) -> Response:
        return stored_file(request, svc(request).thumbnail_file(sha, preview=True), sha, "p")

    @app.get("/mini/{sha}")
    def mini(request: Request, sha: str) -> Response:
        data, etag = svc(request).mini_thumbnail(sha)
        headers = {"ETag": etag, "Cache-Control": f"private, max-age={THUMB_MAX_AGE}"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    # -- search ---------------------------------------------------------------------------------

    def search_context(request: Request, params: SearchParams) -> dict[str, Any]:
        service = svc(request)
        result = service.search(params)
        return {
            "result": result,
            "params": params,
            "cameras": service.cameras(),
            "folders": service.folders()[:300],
        }

    @app.get("/", response_class=HTMLResponse)
    @app.get("/search", response_class=HTMLResponse)
    def search_page(request: Request, params: Params) -> HTMLResponse:
        return render(request, "search.html", page_name="search", **search_context(request, params))

    @app.post("/search/image")
    async def search_image(
        request: Request,
        _: CsrfChecked,
        image: UploadFile,
        q: Annotated[str, Form()] = "",
        target: Annotated[str, Form()] = "/search",
    ) -> Response:
        data = await _read_limited(image, svc(request).settings.max_upload_bytes)
        sha = svc(request).upload_for_search(image.filename or "upload", data)
        path = "/curate" if target == "/curate" else "/search"
        query = urlencode({k: v for k, v in {"q": q, "like": sha}.items() if v})
        return RedirectResponse(f"{path}?{query}", status_code=303)

    @app.get("/photo/{sha}", response_class=HTMLResponse)
    def photo_page(request: Request, sha: str) -> HTMLResponse:
        service = svc(request)
        photo = service.photo(sha)
        links = [service.dagster_links(k) for k in photo["payload"].get("folder_keys", [])]
        return render(request, "photo.html", page_name="search", photo=photo, links=links)

    # -- curation -------------------------------------------------------------------------------
    @app.get("/curate", response_class=HTMLResponse)
    def curate_page(request: Request, params: Params) -> HTMLResponse:
        journals = svc(request).journals("curate")[:20]
        context = search_context(request, params)
        return render(request, "curate.html", page_name="curate", journals=journals, **context)

    @app.post("/curate/plan", response_class=HTMLResponse)
    async def curate_plan(request: Request, _: CsrfChecked) -> HTMLResponse:
        form = await request.form()
        shas = [str(v) for v in form.getlist("sha")]
        plan, problems = svc(request).curate_plan(shas)
        hidden = [("sha", s) for s in shas]
        return render(
            request,
            "plan.html",
            page_name="curate",
            plan=plan,
            problems=problems,
            digest=plan_digest(plan),
            hidden=hidden,
            apply_url="/curate/apply",
            folder=ARCHIVE_DIR,
            snapshot=True,
            back="/curate",
        )

    @app.post("/curate/apply")
    async def curate_apply(request: Request, _: CsrfChecked) -> Response:
        form = await request.form()
        _confirmed(form)
        shas = [str(v) for v in form.getlist("sha")]
        service = svc(request)
        plan, _problems = service.curate_plan(shas)
        result = service.apply(plan, str(form.get("digest", "")), snapshot=True)
        return RedirectResponse(f"/journals/{result.journal.name}?done=1", status_code=303)

    # -- duplicates -----------------------------------------------------------------------------
    @app.get("/duplicates", response_class=HTMLResponse)
    def duplicates_page(request: Request, tier: str = "exact", page: int = 1) -> HTMLResponse:
        service = svc(request)
        view = service.groups(tier)
        page = max(1, page)
        start = (page - 1) * GROUPS_PER_PAGE
        shown = view.groups[start : start + GROUPS_PER_PAGE]
        return render(
            request,
            "duplicates.html",
            page_name="duplicates",
            view=view,
            groups=shown,
            page=page,
            has_more=len(view.groups) > start + GROUPS_PER_PAGE,
            journals=service.journals("duplicates")[:20],
            thumbs={
                m.sha256: service.store.thumbnail_path(m.sha256).is_file()
                for g in shown
                for m in g.members
            },
        )

    @app.post("/duplicates/refresh")
    def duplicates_refresh(
        request: Request, _: CsrfChecked, tier: Annotated[str, Form()] = "exact"
    ) -> Response:
        svc(request).groups(tier, refresh=True)
        return RedirectResponse(f"/duplicates?tier={quote(tier)}", status_code=303)

    def keepers(form: Any) -> dict[str, str]:
        chosen = [str(v) for v in form.getlist("group")]
        return {gid: str(form.get(f"keep_{gid}", "")) for gid in chosen}

    @app.post("/duplicates/plan", response_class=HTMLResponse)
    async def duplicates_plan(request: Request, _: CsrfChecked) -> HTMLResponse:
        form = await request.form()
        tier = str(form.get("tier", "exact"))
        keep = keepers(form)
        plan, problems = svc(request).duplicates_plan(tier, keep)
        hidden = [("tier", tier)]
        for gid, path in keep.items():
            hidden += [("group", gid), (f"keep_{gid}", path)]
        return render(
            request,
            "plan.html",
            page_name="duplicates",
            plan=plan,
            problems=problems,
            digest=plan_digest(plan),
            hidden=hidden,
            apply_url="/duplicates/apply",
            folder=DUPLICATES_DIR,
            snapshot=False,
            back=f"/duplicates?tier={quote(tier)}",
        )

    @app.post("/duplicates/apply")
    async def duplicates_apply(request: Request, _: CsrfChecked) -> Response:
        form = await request.form()
        _confirmed(form)
        service = svc(request)
        plan, _problems = service.duplicates_plan(str(form.get("tier", "exact")), keepers(form))
        result = service.apply(plan, str(form.get("digest", "")), snapshot=False)
        return RedirectResponse(f"/journals/{result.journal.name}?done=1", status_code=303)

    # -- journals -------------------------------------------------------------------------------
    @app.get("/journals", response_class=HTMLResponse)
    def journals_page(request: Request) -> HTMLResponse:
        return render(
            request, "journals.html", page_name="journals", journals=svc(request).journals()
        )

    @app.get("/journals/{name}", response_class=HTMLResponse)
    def journal_page(request: Request, name: str, done: int = 0, undone: int = 0) -> HTMLResponse:
        journal = svc(request).journal(name)
        return render(
            request,
            "journal.html",
            page_name="journals",
            journal=journal,
            done=done,
            undone=undone,
            confirm=False,
        )

    @app.post("/journals/{name}/undo", response_class=HTMLResponse)
    async def journal_undo(request: Request, name: str, _: CsrfChecked) -> Response:
        form = await request.form()
        service = svc(request)
        if form.get("confirm") != "yes":
            journal = service.journal(name)
            return render(
                request,
                "journal.html",
                page_name="journals",
                journal=journal,
                done=0,
                undone=0,
                confirm=True,
            )
        result = service.undo(name)
        return RedirectResponse(
            f"/journals/{quote(name)}?undone={len(result.moved_back)}", status_code=303
        )

    # -- collections ----------------------------------------------------------------------------
    @app.get("/collections", response_class=HTMLResponse)
    def collections_page(request: Request, said: str = "") -> HTMLResponse:
        service = svc(request)
        folders = [(f, service.dagster_links(f.key)) for f in service.folders()[:500]]
        return render(
            request,
            "collections.html",
            page_name="collections",
            rows=service.collection_rows(),
            folders=folders,
            said=said,
            spec=service.spec,
        )

    @app.post("/collections/create")
    def collections_create(
        request: Request,
        _: CsrfChecked,
        name: Annotated[str, Form()],
        model: Annotated[str, Form()],
        weights: Annotated[str, Form()],
        distance: Annotated[str, Form()] = "cosine",
    ) -> Response:
        said = svc(request).create_collection(name.strip(), model, weights, distance)
        return RedirectResponse(f"/collections?{urlencode({'said': said})}", status_code=303)

    @app.post("/collections/{name}/snapshot")
    def collections_snapshot(request: Request, name: str, _: CsrfChecked) -> Response:
        info = svc(request).snapshot(name)
        said = f"snapshot {info.id} of {name!r}: {info.points} points ({info.location})"
        return RedirectResponse(f"/collections?{urlencode({'said': said})}", status_code=303)

    @app.get("/collections/{name}/delete", response_class=HTMLResponse)
    def collections_delete_page(request: Request, name: str) -> HTMLResponse:
        rows = {r["name"]: r for r in svc(request).collection_rows()}
        if name not in rows or not rows[name]["exists"]:
            raise WebError(f"collection {name!r} does not exist", 404)
        return render(request, "delete.html", page_name="collections", row=rows[name])

    @app.post("/collections/{name}/delete")
    def collections_delete(
        request: Request,
        name: str,
        _: CsrfChecked,
        confirm_name: Annotated[str, Form()] = "",
    ) -> Response:
        if confirm_name != name:
            raise WebError("type the collection's name to confirm the deletion")
        points = svc(request).delete_collection(name)
        said = f"deleted collection {name!r} ({points} points)"
        return RedirectResponse(f"/collections?{urlencode({'said': said})}", status_code=303)

    # -- upload ---------------------------------------------------------------------------------
    @app.get("/upload", response_class=HTMLResponse)
    def upload_page(request: Request) -> HTMLResponse:
        service = svc(request)
        return render(
            request,
            "upload.html",
            page_name="upload",
            targets=service.upload_targets(),
            max_bytes=service.settings.max_upload_bytes,
            saved=None,
        )

    @app.post("/upload", response_class=HTMLResponse)
    async def upload(
        request: Request,
        _: CsrfChecked,
        files: list[UploadFile],
        target: Annotated[str, Form()],
    ) -> HTMLResponse:
        service = svc(request)
        limit = service.settings.max_upload_bytes
        contents = [(f.filename or "", await _read_limited(f, limit)) for f in files]
        saved, refused, sensor = service.save_uploads(target, contents)
        return render(
            request,
            "upload.html",
            page_name="upload",
            targets=service.upload_targets(),
            max_bytes=limit,
            saved=saved,
            refused=refused,
            sensor=sensor,
        )

    return app


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes, reading at most ``limit + 1`` (a larger file is refused by
    :func:`vibe_assets.web.service.check_upload` without reading the rest)."""
    return await upload.read(limit + 1)


def _confirmed(form: Any) -> None:
    """Raise unless the confirmation form said yes (the confirmation step).

    Raises:
        WebError: ``confirm`` is not ``yes``.
    """
    if form.get("confirm") != "yes":
        raise WebError("not confirmed: nothing was moved")


def _local(target: str) -> str:
    """``target`` when it is a path on this app (no scheme, no host), else ``/``."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
