"""``vibe-assets serve``: a local web app to see the photos (FastAPI, server-rendered pages).

Search (composed text queries, by image, by an uploaded image, filters), duplicate review by
tier with keeper choice and archive, curation (select, archive with a snapshot, undo),
collections and folders (with links into the Dagster UI), uploads. The logic is the CLI's
(:mod:`vibe_assets.query`, :mod:`vibe_assets.duplicates`, :mod:`vibe_assets.moves`): see
:mod:`vibe_assets.web.service`; security in :mod:`vibe_assets.web.security`; settings in
:mod:`vibe_assets.web.config`; Markdown thumbnails for Dagster metadata in
:mod:`vibe_assets.web.dagster_md`.
"""

from vibe_assets.web.config import WebConfigError, WebSettings

__all__ = ["WebConfigError", "WebSettings", "create_app"]


def create_app(*args, **kwargs):
    """:func:`vibe_assets.web.app.create_app` (imported on first use: FastAPI is not needed to
    read the settings)."""
    from vibe_assets.web.app import create_app as _create_app

    return _create_app(*args, **kwargs)
