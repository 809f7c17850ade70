"""``vibe-assets collections migrate-to-server``: move a library's vectors from the embedded store
(qdrant-edge under ``$VIBE_HOME/vectors``) to a Qdrant server, in one command.

Registered on the ``collections`` group of :mod:`vibe_assets.cli`
(``collections.add_command(collections_migrate_to_server)``). The copy and its verification are
:func:`vibe_assets.vectors.transfer.copy_collection`: points are re-upserted from the embedded
store (no model runs, nothing decoded), then counts and a sample of vectors and payloads are
compared. Progress goes to stderr, the summary (or ``--json``) to stdout. Exit status 0 when
every collection was copied and verified, 1 when one was not (or the server failed), 2 on a
usage error.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from vibe_assets.vectors.base import VectorStore


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _say(message: str) -> None:
    click.echo(message, err=True)


def open_server(url: str, api_key: str | None, timeout: int) -> VectorStore:
    """The target store: the Qdrant server at ``url`` (the tests replace this function with
    qdrant-client's in-memory mode)."""
    from vibe_assets.vectors.server import ServerVectorStore

    return ServerVectorStore.connect(url, api_key, timeout)


def _open_embedded(resources: dict[str, Any]) -> VectorStore:
    """The embedded store of this VIBE_HOME, whatever ``QDRANT_URL`` says (an old local-mode
    folder is migrated to it first, as every command does)."""
    from vibe_assets.collections import load_collections
    from vibe_assets.point_source import store_rebuilder
    from vibe_assets.resources.vectors import VectorStoreResource

    qdrant = resources["qdrant"]
    embedded = VectorStoreResource(
        path=qdrant.path,
        legacy_path=qdrant.legacy_path,
        command_wait_seconds=qdrant.command_wait_seconds,
    )
    rebuild = store_rebuilder(
        resources["store"], resources["clip"], load_collections(), resources["blip"]
    )
    return embedded.open(
        wait_seconds=embedded.command_wait_seconds, on_wait=_say, rebuild=rebuild, log=_say
    )


@click.command("migrate-to-server")
@click.option(
    "--url",
    default=None,
    help="The Qdrant server (http:// or https://); default: QDRANT_URL. The API key is read "
    "from QDRANT_API_KEY (never an option: it would show in the process list).",
)
@click.option(
    "--collection",
    "names",
    multiple=True,
    help="Collection to move (repeatable); default: every collection of the embedded store.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Drop each collection on the server first (when it holds points the embedded one "
    "does not).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Points per collection whose vector and payload are compared after the copy.",
)
@click.option("--timeout", type=int, default=60, show_default=True, help="Request timeout, s.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def collections_migrate_to_server(
    url: str | None,
    names: tuple[str, ...],
    replace: bool,
    sample: int,
    timeout: int,
    as_json: bool,
) -> None:
    """Copy collections from the embedded store (VIBE_HOME/vectors) to a Qdrant server and
    verify them.

    Points (ids, vectors, payloads) are read from the embedded store and upserted to the server
    page by page: nothing is decoded or embedded again. Each collection is then verified: the
    same number of points on both sides, and a random sample of points with the same vector and
    payload. Running it again is harmless (upserts by id); the embedded store is left as it is.
    Afterwards set QDRANT_URL (and QDRANT_API_KEY) wherever vibe_assets runs (vibe-assets,
    dagster, the docker-compose stack) to use the server.
    """
    from vibe_assets.definitions import default_resources
    from vibe_assets.vectors.base import (
        CollectionMismatchError,
        CollectionNotFoundError,
        QdrantBusyError,
        QdrantRequestError,
        QdrantUnavailableError,
        redact_url,
    )
    from vibe_assets.vectors.transfer import copy_collection

    url = url or os.environ.get("QDRANT_URL") or None
    if not url:
        _fail("no server: pass --url or set QDRANT_URL")
    assert url is not None
    if not url.startswith(("http://", "https://")):
        _fail(f"--url must start with http:// or https://, got {redact_url(url)!r}")
    reports = []
    try:
        with (
            _open_embedded(default_resources()) as source,
            open_server(url, os.environ.get("QDRANT_API_KEY") or None, timeout) as target,
        ):
            existing = [info.name for info in source.list_collections()]
            missing = sorted(set(names) - set(existing))
            if missing:
                _fail(f"not in the embedded store {source.location}: {', '.join(missing)}")
            todo = list(names) or existing
            if not todo:
                _say(f"the embedded store {source.location} holds no collection: nothing to do")
            for name in todo:
                report = copy_collection(
                    source, target, name, replace=replace, sample=sample, progress=_say
                )
                reports.append(report)
                _say(report.message())
    except (
        QdrantBusyError,
        QdrantUnavailableError,
        QdrantRequestError,
        CollectionMismatchError,
        CollectionNotFoundError,
    ) as exc:
        _fail(str(exc), code=1)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        for r in reports:
            click.echo(r.message())
        if reports and all(r.ok for r in reports):
            click.echo(
                f"set QDRANT_URL={redact_url(url)} (and QDRANT_API_KEY) wherever vibe_assets "
                "runs to use the server; the embedded store is unchanged (delete "
                "VIBE_HOME/vectors once you no longer need it)"
            )
    if not all(r.ok for r in reports):
        sys.exit(1)
