"""Where the vectors live: the embedded engine (qdrant-edge) by default, a Qdrant server when
``url`` is set.

Steps and commands open a store for what they do and close it after
(``with vectors.open() as store: ...``): an embedded collection admits one process at a time, so
nothing holds it between steps. The first embedded open also migrates an old qdrant-client
local-mode folder (see :mod:`vibe_assets.vectors.migrate`) when given a way to rebuild it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from vibe_assets.settings import vibe_home
from vibe_assets.vectors.base import VectorStore, redact_url
from vibe_assets.vectors.migrate import Rebuild, migrate_local_mode

DEFAULT_STEP_WAIT_SECONDS = 5.0
DEFAULT_COMMAND_WAIT_SECONDS = 300.0
SERVER_SNAPSHOTS_ENV = "VIBE_QDRANT_SNAPSHOTS_PATH"
DEFAULT_SERVER_SNAPSHOTS_PATH = "/qdrant/snapshots"


class VectorStoreResource(dg.ConfigurableResource):
    """The vector store of the ``qdrant_<collection>`` assets and of ``vibe-assets`` commands.

    Attributes:
        path: embedded store folder, one qdrant-edge shard per collection (default
            ``VIBE_HOME/vectors``); used when ``url`` is unset.
        legacy_path: qdrant-client local-mode folder migrated on first embedded open (default:
            the ``qdrant`` folder beside ``path``).
        url: Qdrant server URL (``http://`` or ``https://``, TLS for the latter); None = embedded.
        api_key: server API key; pass ``dg.EnvVar("QDRANT_API_KEY")``, never a literal.
        timeout: server request timeout in seconds.
        step_wait_seconds: how long a step waits for an embedded collection held by another
            process before it raises :class:`~vibe_assets.vectors.base.QdrantBusyError` (which
            the asset turns into a Dagster retry).
        command_wait_seconds: the same for ``vibe-assets`` commands (search, export,
            collections), which print a progress line while they wait
            (``VIBE_VECTORS_WAIT_SECONDS``).
        snapshots_path: embedded snapshots folder (default: ``snapshots`` beside ``path``,
            i.e. ``VIBE_HOME/snapshots``), one ``<collection>/<id>/`` folder per snapshot.
        server_snapshots_path: the Qdrant server's own snapshots folder, as the server sees it
            (its ``storage.snapshots_path``), from which a snapshot is recovered; None:
            ``VIBE_QDRANT_SNAPSHOTS_PATH``, default ``/qdrant/snapshots`` (the official image).
    """

    path: str | None = None
    legacy_path: str | None = None
    url: str | None = None
    api_key: str | None = None
    timeout: int = 30
    step_wait_seconds: float = DEFAULT_STEP_WAIT_SECONDS
    command_wait_seconds: float = DEFAULT_COMMAND_WAIT_SECONDS
    snapshots_path: str | None = None
    server_snapshots_path: str | None = None

    @property
    def is_embedded(self) -> bool:
        """True for the embedded (qdrant-edge) store."""
        return not self.url

    @property
    def engine(self) -> str:
        """``edge`` or ``server``."""
        return "edge" if self.is_embedded else "server"

    @property
    def location(self) -> str:
        """Human description of where the vectors are (no secrets: user info and query are
        stripped from the URL, the API key is never part of it)."""
        return redact_url(self.url) if self.url else f"embedded:{self.vectors_path}"

    @property
    def vectors_path(self) -> Path:
        """The embedded store folder."""
        return Path(self.path).expanduser() if self.path else vibe_home() / "vectors"

    @property
    def snapshots_folder(self) -> Path:
        """The embedded snapshots folder (``snapshots`` beside :attr:`vectors_path` unless
        ``snapshots_path`` is set)."""
        if self.snapshots_path:
            return Path(self.snapshots_path).expanduser()
        return self.vectors_path.parent / "snapshots"

    @property
    def server_snapshots_folder(self) -> str:
        """The server's snapshots folder (``server_snapshots_path``, else
        ``VIBE_QDRANT_SNAPSHOTS_PATH``, else ``/qdrant/snapshots``)."""
        return (
            self.server_snapshots_path
            or os.environ.get(SERVER_SNAPSHOTS_ENV, "").strip()
            or DEFAULT_SERVER_SNAPSHOTS_PATH
        )

    @property
    def legacy_folder(self) -> Path:
        """The qdrant-client local-mode folder that is migrated on first use."""
        if self.legacy_path:
            return Path(self.legacy_path).expanduser()
        return self.vectors_path.parent / "qdrant"

    def open(
        self,
        wait_seconds: float | None = None,
        on_wait: Callable[[str], None] | None = None,
        rebuild: Rebuild | None = None,
        log: Callable[[str], None] | None = None,
    ) -> VectorStore:
        """A new store; the caller closes it (``with resource.open() as store:``).

        Args:
            wait_seconds: embedded only: how long to wait for a collection another process
                holds (default ``step_wait_seconds``); the collection is opened, and waited
                for, on first use, not here.
            on_wait: called with a progress line every few seconds while waiting.
            rebuild: rebuilds a collection from the store; given, an old local-mode folder is
                migrated now (embedded only). See :func:`vibe_assets.point_source.store_rebuilder`.
            log: where the migration's one line goes (default: the ``vibe_assets`` logger).

        Raises:
            QdrantBusyError: the migration needed a collection held by another process.
        """
        if self.url:
            from vibe_assets.vectors.server import ServerVectorStore

            return ServerVectorStore.connect(
                self.url, self.api_key, self.timeout, snapshots_path=self.server_snapshots_folder
            )
        from vibe_assets.vectors.edge import EdgeVectorStore

        store = EdgeVectorStore(
            self.vectors_path,
            wait_seconds=self.step_wait_seconds if wait_seconds is None else wait_seconds,
            on_wait=on_wait,
            snapshots_root=self.snapshots_folder,
        )
        if rebuild is not None:
            try:
                migrate_local_mode(
                    self.legacy_folder,
                    store,
                    rebuild,
                    lock_dir=self.vectors_path,
                    log=log or dg.get_dagster_logger().info,
                )
            except BaseException:
                store.close()
                raise
        return store
