"""Who may use the web app, and how a form proves it came from the app.

- **API key.** With ``VIBE_API_KEY`` set (required off loopback, see
  :class:`~vibe_assets.web.config.WebSettings`), every request but ``/login`` and ``/static``
  carries the key in the ``x-api-key`` header, or the login cookie (``vibe_auth``: an HMAC of the
  key, never the key itself; ``HttpOnly``, ``SameSite=Strict``) that ``POST /login`` sets. A page
  request without either is sent to ``/login``; anything else gets 401. Keys are compared in
  constant time.
- **Host header.** Bound to loopback, only ``localhost``/``127.0.0.1``/``[::1]`` Host headers
  are answered (421 otherwise): a DNS-rebinding page cannot talk to the app.
- **CSRF.** Every POST form carries ``csrf_token``, which must equal the ``vibe_csrf`` cookie
  (double submit) and be signed by this process (an HMAC with a per-process secret), and an
  ``Origin`` header, when the browser sends one, must be the app's own. A request
  authenticated by the ``x-api-key`` header is exempt (a browser cannot send a custom header
  cross-site without the app's consent, and it gives none: no CORS).
- **Headers.** A strict Content-Security-Policy (scripts and styles from ``/static`` only,
  images from the app and ``data:``), ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy: same-origin``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from vibe_assets.web.config import WebSettings, is_loopback

API_KEY_HEADER = "x-api-key"
AUTH_COOKIE = "vibe_auth"
CSRF_COOKIE = "vibe_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
OPEN_PATHS = ("/login", "/static/", "/healthz")
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'; connect-src 'self'"
)


class Guard:
    """The secrets of one app instance: the API key (may be None) and a random per-process
    secret that signs CSRF tokens."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self._secret = secrets.token_bytes(32)

    @property
    def max_request_bytes(self) -> int:
        """Largest request body accepted (bytes): a batch of 16 uploads at the size limit plus
        1 MiB of form fields; larger requests get 413 before anything is read."""
        return 16 * self.settings.max_upload_bytes + 2**20

    # -- API key ----------------------------------------------------------------------------
    @property
    def needs_key(self) -> bool:
        """True when requests must prove they know the API key."""
        return bool(self.settings.api_key)

    def session_value(self) -> str:
        """The login cookie's value: HMAC-SHA256 of a fixed label under the API key (changing
        the key logs everyone out)."""
        key = (self.settings.api_key or "").encode()
        return hmac.new(key, b"vibe-assets web session v1", hashlib.sha256).hexdigest()

    def key_matches(self, given: str | None) -> bool:
        """Constant-time comparison of ``given`` with the API key (False without a key)."""
        key = self.settings.api_key
        return bool(key and given) and hmac.compare_digest(str(given).encode(), key.encode())

    def header_authenticated(self, request: Request) -> bool:
        """True when the request carries the right key in ``x-api-key``."""
        return self.key_matches(request.headers.get(API_KEY_HEADER))

    def authenticated(self, request: Request) -> bool:
        """True when no key is needed, or the header or the login cookie proves it."""
        if not self.needs_key:
            return True
        if self.header_authenticated(request):
            return True
        cookie = request.cookies.get(AUTH_COOKIE)
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session_value().encode())

    # -- CSRF -------------------------------------------------------------------------------
    def new_csrf_token(self) -> str:
        """A fresh token: ``<random>.<hmac>`` (the cookie and the form carry the same)."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()[:32]

    def csrf_valid(self, cookie: str | None, given: str | None) -> bool:
        """True when the form's token equals the cookie's and was signed by this process."""
        if not cookie or not given or not hmac.compare_digest(cookie.encode(), given.encode()):
            return False
        nonce, _, signature = given.partition(".")
        return bool(nonce) and hmac.compare_digest(signature.encode(), self._sign(nonce).encode())

    def csrf_token_for(self, request: Request) -> str:
        """The token of this browser (its cookie when valid, else a new one, which the
        response sets: see :class:`SecurityMiddleware`)."""
        cookie = request.cookies.get(CSRF_COOKIE)
        if cookie and self.csrf_valid(cookie, cookie):
            return cookie
        token = getattr(request.state, "new_csrf", None)
        if token is None:
            token = self.new_csrf_token()
            request.state.new_csrf = token
        return token

    def allowed_host(self, host_header: str | None) -> bool:
        """Bound to loopback: the Host header names a loopback host. Otherwise any host (the
        API key protects the app)."""
        if not self.settings.loopback:
            return True
        if not host_header:
            return False
        host = urlsplit(f"//{host_header}").hostname or ""
        return is_loopback(host)

    def same_origin(self, request: Request) -> bool:
        """True when the request has no ``Origin`` header, or one naming this app's host."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc == request.headers.get("host", "")


async def require_csrf(request: Request) -> None:
    """FastAPI dependency of every POST route: the CSRF rules of the module docstring.

    Raises:
        HTTPException: 403 when the token is missing, wrong or unsigned, or the ``Origin`` is
            another site's.
    """
    guard: Guard = request.app.state.guard
    if guard.header_authenticated(request):
        return
    if not guard.same_origin(request):
        raise HTTPException(403, "cross-origin form refused (CSRF)")
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        form = await request.form()  # parsed once: the route's Form() fields reuse it
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not guard.csrf_valid(request.cookies.get(CSRF_COOKIE), given):
        raise HTTPException(
            403, "missing or invalid CSRF token: reload the page and submit the form again"
        )


class SecurityMiddleware(BaseHTTPMiddleware):
    """Host check, API key, CSRF cookie issue and security headers (see the module docstring)."""

    def __init__(self, app: object, guard: Guard) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.guard = guard

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        guard = self.guard
        if not guard.allowed_host(request.headers.get("host")):
            return PlainTextResponse("unknown Host header (DNS rebinding?)", status_code=421)
        path = request.url.path
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > guard.max_request_bytes:
            return PlainTextResponse("request too large", status_code=413)
        if not path.startswith(OPEN_PATHS) and not guard.authenticated(request):
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                target = quote(path + (f"?{request.url.query}" if request.url.query else ""))
                response: Response = RedirectResponse(f"/login?next={target}", status_code=303)
            else:
                response = PlainTextResponse(
                    f"API key required: send it in the {API_KEY_HEADER} header, or log in",
                    status_code=401,
                )
        else:
            response = await call_next(request)
        token = getattr(request.state, "new_csrf", None)
        if token is not None:
            response.set_cookie(
                CSRF_COOKIE,
                token,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        if "cache-control" not in headers:
            headers["Cache-Control"] = "no-store"
        return response
