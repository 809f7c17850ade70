"""Qdrant connection: embedded local mode by default, a real server when ``url`` is set.

Embedded mode (``QdrantClient(path=VIBE_HOME/qdrant)``) is single-process: only one client may
open the folder at a time, so steps open the client, do their work and close it
(:meth:`QdrantResource.client` is a context manager). A server is reached through ``url`` (e.g.
``QDRANT_URL=http://localhost:6333`` from docker-compose) and ``api_key`` given as
``dg.EnvVar("QDRANT_API_KEY")``, which is never logged.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from vibe_assets.settings import vibe_home

# Fixed namespace for point ids: id = UUID5(namespace, sha256 hex). Changing it would orphan
# every existing point, so it is a constant, not configuration.
POINT_NAMESPACE = uuid.UUID("6f6b1c1e-3c1a-5b0e-9d55-76a1b0e5a7c1")

# Payload fields filtered on; indexed when the collection is created on a server (local mode
# ignores payload indexes).
INDEXED_FIELDS: dict[str, models.PayloadSchemaType] = {
    "sha256": models.PayloadSchemaType.KEYWORD,
    "folder_keys": models.PayloadSchemaType.KEYWORD,
    "format": models.PayloadSchemaType.KEYWORD,
    "embed_model": models.PayloadSchemaType.KEYWORD,
    "caption_model": models.PayloadSchemaType.KEYWORD,
    "camera_model": models.PayloadSchemaType.KEYWORD,
    "taken_at": models.PayloadSchemaType.DATETIME,
    "location": models.PayloadSchemaType.GEO,
}


class QdrantBusyError(RuntimeError):
    """The embedded Qdrant folder is held by another process (retryable)."""


class QdrantUnavailableError(RuntimeError):
    """The Qdrant server cannot be reached, timed out, or answered 5xx/408/429 (retryable)."""


class QdrantRequestError(RuntimeError):
    """The Qdrant server refused a request for a reason retrying does not fix (401, 403, other
    4xx): the message names the server and the status, never the API key."""


class CollectionMismatchError(RuntimeError):
    """An existing collection has another vector size or distance than the configured model."""


RETRYABLE_STATUS = {408, 429}  # plus every 5xx


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment (where credentials could hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def point_id(sha256: str) -> str:
    """Qdrant point id of an image: UUID5 of its SHA-256 hex digest (idempotent upserts)."""
    return str(uuid.uuid5(POINT_NAMESPACE, sha256))


class QdrantResource(dg.ConfigurableResource):
    """Where the vectors live.

    Attributes:
        path: embedded storage folder (default ``VIBE_HOME/qdrant``); used when ``url`` is unset.
        url: Qdrant server URL (``http://`` or ``https://``, TLS for the latter); None = embedded.
        api_key: server API key; pass ``dg.EnvVar("QDRANT_API_KEY")``, never a literal.
        timeout: server request timeout in seconds.
    """

    path: str | None = None
    url: str | None = None
    api_key: str | None = None
    timeout: int = 30

    @property
    def is_embedded(self) -> bool:
        """True for the embedded (local mode) store."""
        return not self.url

    @property
    def location(self) -> str:
        """Human description of where the vectors are (no secrets: user info and query are
        stripped from the URL, the API key is never part of it)."""
        return redact_url(self.url) if self.url else f"embedded:{self._path()}"

    def _path(self) -> Path:
        return Path(self.path).expanduser() if self.path else vibe_home() / "qdrant"

    def open_client(self) -> QdrantClient:
        """A new client; the caller closes it (prefer :meth:`client`).

        Raises:
            QdrantBusyError: the embedded folder is open in another process (e.g. ``dagster dev``
                holding it during a run, or a ``vibe-assets search``); retry later or use a
                server. The store itself is untouched (qdrant-client takes an exclusive lock).
        """
        if self.url:
            return QdrantClient(url=self.url, api_key=self.api_key, timeout=self.timeout)
        path = self._path()
        path.mkdir(parents=True, exist_ok=True)
        try:
            return QdrantClient(path=str(path))
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
            raise QdrantBusyError(
                f"the embedded Qdrant store {path} is in use by another process; retry when it "
                "is done, or run a Qdrant server (docker compose up -d qdrant) and set QDRANT_URL"
            ) from exc

    @contextlib.contextmanager
    def server_errors(self) -> Iterator[None]:
        """Re-raise qdrant-client's transport and HTTP errors raised in the block as errors that
        name the server (:attr:`location`) and say whether retrying can help.

        Raises:
            QdrantUnavailableError: connection refused, timeout, 5xx, 408 or 429 (retryable).
            QdrantRequestError: any other HTTP error status (401/403: check QDRANT_API_KEY).
        """
        try:
            yield
        except ResponseHandlingException as exc:
            source = getattr(exc, "source", exc)
            raise QdrantUnavailableError(
                f"Qdrant server {self.location} is unreachable ({type(source).__name__}: "
                f"{source}); check QDRANT_URL and that the server runs "
                "(docker compose up -d qdrant)"
            ) from exc
        except UnexpectedResponse as exc:
            status = exc.status_code
            what = f"HTTP {status} {exc.reason_phrase}".strip()
            if status is None or status >= 500 or status in RETRYABLE_STATUS:
                raise QdrantUnavailableError(
                    f"Qdrant server {self.location} answered {what}; it may be starting, "
                    "overloaded or out of disk"
                ) from exc
            hint = " (check QDRANT_API_KEY)" if status in (401, 403) else ""
            raise QdrantRequestError(
                f"Qdrant server {self.location} refused a request: {what}{hint}"
            ) from exc

    @contextlib.contextmanager
    def client(self) -> Iterator[QdrantClient]:
        """A client for the duration of a ``with`` block, closed after it.

        Raises:
            QdrantBusyError: see :meth:`open_client`.
        """
        client = self.open_client()
        try:
            yield client
        finally:
            client.close()

    def ensure_collection(
        self,
        client: QdrantClient,
        name: str,
        size: int,
        distance: models.Distance = models.Distance.COSINE,
    ) -> bool:
        """Create collection ``name`` for ``size``-dim vectors if missing; True when created.

        Raises:
            CollectionMismatchError: it exists with another vector size or distance.
        """
        if client.collection_exists(name):
            params = client.get_collection(name).config.params.vectors
            if not isinstance(params, models.VectorParams):
                raise CollectionMismatchError(
                    f"collection {name!r} uses named vectors; vibe_assets expects one vector"
                )
            if params.size != size or params.distance != distance:
                raise CollectionMismatchError(
                    f"collection {name!r} holds {params.size}-d {params.distance.value} vectors, "
                    f"but the configured model makes {size}-d {distance.value} vectors; use "
                    "another collection name or delete this one (`vibe-assets collections delete`)"
                )
            return False
        client.create_collection(
            name, vectors_config=models.VectorParams(size=size, distance=distance)
        )
        if not self.is_embedded:
            for field, schema in INDEXED_FIELDS.items():
                client.create_payload_index(name, field_name=field, field_schema=schema)
        return True
