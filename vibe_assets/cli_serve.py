"""``vibe-assets serve``: start the web app (:mod:`vibe_assets.web`) with uvicorn.

A standalone click command, registered by :mod:`vibe_assets.cli` with
``main.add_command(serve)``.
"""

from __future__ import annotations

import sys

import click

from vibe_assets.web.config import DEFAULT_HOST, DEFAULT_PORT


@click.command("serve")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535), help="Port."
)
@click.option("--collection", default=None, help="Collection to search (default: the first).")
@click.option(
    "--no-warm-up",
    is_flag=True,
    help="Do not load the CLIP text encoder at start (the first search loads it).",
)
def serve(host: str, port: int, collection: str | None, no_warm_up: bool) -> None:
    """Serve the web app: search (text, image, upload, filters), duplicates, curation with
    undo, collections, upload; by default on http://127.0.0.1:8765.

    Binding to anything but a loopback address needs VIBE_API_KEY (16+ characters; browsers
    log in with it, scripts send it as the x-api-key header): without it the command refuses
    to start (exit 2). Settings: see vibe_assets/web/config.py (VIBE_WEB_*). Stop with Ctrl-C.
    """
    import uvicorn

    from vibe_assets.collections import CollectionConfigError
    from vibe_assets.web.app import create_app
    from vibe_assets.web.config import WebConfigError, WebSettings
    from vibe_assets.web.service import WebService

    try:
        settings = WebSettings.from_env(host=host, port=port, collection=collection)
        settings.check()
        service = WebService(settings)
    except (WebConfigError, CollectionConfigError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not no_warm_up:
        click.echo("loading the CLIP text encoder (the first time exports it)...", err=True)
        try:
            service.warm_up()
        except Exception as exc:  # searches will report it; the other pages work
            click.echo(f"warning: text search is not ready: {exc}", err=True)
    app = create_app(settings, service)
    click.echo(f"vibe-assets web app on {settings.public_url} (Ctrl-C stops it)", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
    finally:
        service.close()
