"""Settings of ``vibe-assets serve``, read in one typed place (never at import time).

Environment variables (all optional):

=============================  ==========================================================
``VIBE_API_KEY``               secret; required when the app binds to a non-loopback address
                               (header ``x-api-key`` or the login cookie); optional on
                               loopback, where it is enforced when set
``VIBE_WEB_URL``               the app's address as browsers see it, for links put into
                               Dagster metadata (default ``http://<host>:<port>``)
``VIBE_DAGSTER_URL``           the Dagster UI, for links to runs (``http://127.0.0.1:3000``)
``VIBE_WEB_PAGE_SIZE``         thumbnails per page (48)
``VIBE_WEB_MAX_UPLOAD_BYTES``  largest file accepted by an upload (200 MiB)
``VIBE_WEB_HOLD_SECONDS``      how long the embedded vector store stays open after a request
                               (2 s: a run waits ``step_wait_seconds``, 5 s, for it)
``VIBE_WEB_WAIT_SECONDS``      how long a request waits for a collection a run holds (10 s)
=============================  ==========================================================
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from vibe_assets.settings import env_float, env_int

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
DEFAULT_PAGE_SIZE = 48
DEFAULT_MAX_UPLOAD_BYTES = 200 * 2**20
DEFAULT_HOLD_SECONDS = 2.0
DEFAULT_WAIT_SECONDS = 10.0
API_KEY_ENV = "VIBE_API_KEY"
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


class WebConfigError(ValueError):
    """The web app's settings are unsafe or invalid (the message says which and why)."""


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or ``localhost``) only accepts connections from this
    machine: ``127.0.0.0/8``, ``::1`` or ``localhost``. ``0.0.0.0`` and ``::`` are not."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebSettings:
    """Everything the web app is configured with.

    Attributes:
        host: address to bind (default ``127.0.0.1``).
        port: TCP port (default 8765).
        api_key: the shared secret (``VIBE_API_KEY``); None: no key (loopback only).
        public_url: base URL of the app for links from elsewhere (the Dagster UI), no
            trailing slash.
        dagster_url: base URL of the Dagster UI, no trailing slash.
        page_size: thumbnails per result page.
        max_upload_bytes: largest uploaded file accepted (bytes).
        hold_seconds: seconds the embedded store stays open after the last request.
        wait_seconds: seconds a request waits for a collection held by a run.
        collection: the collection searched (None: the first configured).
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)
    public_url: str = ""
    dagster_url: str = DEFAULT_DAGSTER_URL
    page_size: int = DEFAULT_PAGE_SIZE
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    hold_seconds: float = DEFAULT_HOLD_SECONDS
    wait_seconds: float = DEFAULT_WAIT_SECONDS
    collection: str | None = None

    def __post_init__(self) -> None:
        if not self.public_url:
            shown = f"[{self.host}]" if ":" in self.host else self.host
            if shown in ("0.0.0.0", "[::]"):
                shown = "127.0.0.1"
            object.__setattr__(self, "public_url", f"http://{shown}:{self.port}")
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        object.__setattr__(self, "dagster_url", self.dagster_url.rstrip("/"))

    @property
    def loopback(self) -> bool:
        """True when the app binds to a loopback address."""
        return is_loopback(self.host)

    def check(self) -> None:
        """Refuse unsafe or impossible settings.

        Raises:
            WebConfigError: a non-loopback ``host`` without an API key, an API key shorter than
                16 characters, a port outside 1..65535, a page size outside 1..500, an upload
                limit below 1 KiB.
        """
        if not self.loopback and not self.api_key:
            raise WebConfigError(
                f"binding to {self.host} (not a loopback address) needs an API key: set "
                f"{API_KEY_ENV} (16+ characters), or bind to 127.0.0.1"
            )
        if self.api_key is not None and len(self.api_key) < 16:
            raise WebConfigError(f"{API_KEY_ENV} must be at least 16 characters long")
        if not 0 < self.port < 65536:
            raise WebConfigError(f"port must be 1..65535, got {self.port}")
        if not 0 < self.page_size <= 500:
            raise WebConfigError(f"VIBE_WEB_PAGE_SIZE must be 1..500, got {self.page_size}")
        if self.max_upload_bytes < 1024:
            raise WebConfigError("VIBE_WEB_MAX_UPLOAD_BYTES must be at least 1024")

    @classmethod
    def from_env(
        cls, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **overrides: object
    ) -> WebSettings:
        """Settings from the environment (see the module docstring) for ``host``:``port``;
        ``overrides`` replace fields (e.g. ``collection="photos"``).

        Raises:
            ValueError: a numeric variable is not a number (the message names it).
        """
        values: dict[str, object] = {
            "host": host,
            "port": port,
            "api_key": os.environ.get(API_KEY_ENV) or None,
            "public_url": os.environ.get("VIBE_WEB_URL", ""),
            "dagster_url": os.environ.get("VIBE_DAGSTER_URL") or DEFAULT_DAGSTER_URL,
            "page_size": env_int("VIBE_WEB_PAGE_SIZE", DEFAULT_PAGE_SIZE),
            "max_upload_bytes": env_int("VIBE_WEB_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES),
            "hold_seconds": env_float("VIBE_WEB_HOLD_SECONDS", DEFAULT_HOLD_SECONDS),
            "wait_seconds": env_float("VIBE_WEB_WAIT_SECONDS", DEFAULT_WAIT_SECONDS),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def web_base_url() -> str:
    """The web app's base URL for links from elsewhere (Dagster metadata): ``VIBE_WEB_URL``,
    else ``http://127.0.0.1:8765``; no trailing slash."""
    return (os.environ.get("VIBE_WEB_URL") or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}").rstrip("/")
