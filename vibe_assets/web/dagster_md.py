"""Small thumbnails in the Dagster UI: Markdown metadata that links into the web app.

What Dagster 1.13's UI renders (read from its bundled ``ui-core`` sources: ``MetadataEntry.tsx``,
``Markdown.tsx``, ``MarkdownWithPlugins.tsx``):

- ``MetadataValue.md`` goes through ``react-markdown`` with ``remark-gfm`` (GFM tables work) and
  ``rehype-sanitize`` (GitHub's schema, plus ``data:`` image sources). Markdown images
  ``![alt](http://...)`` render as ``<img>``; raw HTML (``<img width=...>``) is not rendered
  (no ``rehype-raw``), so the size of a picture is its own size: the app serves
  :data:`~vibe_assets.web.service.MINI_SIZE` px ones at ``/mini/<sha256>``.
- In the asset's event and "latest materialization" tables a Markdown value shorter than 1,000
  characters is shown inline; a longer one behind a "[Show Markdown]" button (a dialog that
  renders it the same way). The UI's Content-Security-Policy has no ``img-src``, so images from
  another origin (the web app) load.
- ``MetadataValue.table`` cells are plain text (``String(value)``): no pictures there, which is
  why this module writes Markdown tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

from vibe_assets.web.service import SHA_RE

INLINE_LIMIT = 1000
"""Dagster shows a Markdown value inline below this many characters (else behind a button)."""


def _cell(text: Any, width: int = 80) -> str:
    """Text safe inside a GFM table cell: one line, ``|`` escaped, Markdown specials escaped,
    cut to ``width`` characters."""
    value = " ".join(str(text).split())
    if len(value) > width:
        value = value[: width - 1] + "…"
    for ch in "\\`*_[]<>|":
        value = value.replace(ch, "\\" + ch)
    return value


def markdown_thumbnails(
    rows: Iterable[Mapping[str, Any]],
    base_url: str,
    limit: int = 8,
    columns: Iterable[str] = ("caption",),
) -> str:
    """A GFM table with one small thumbnail per image, the original file name and the given
    ``columns``, each picture linking to the image's page in the web app. For
    ``dg.MetadataValue.md(...)``.

    Args:
        rows: mappings with ``sha256`` (64 hex; None or missing: no picture, e.g. a file that
            failed to decode) and ``path`` (the original file, shown by its name), plus any
            ``columns``.
        base_url: the web app's base URL as browsers reach it
            (:func:`vibe_assets.web.config.web_base_url`), e.g. ``http://127.0.0.1:8765``.
        limit: at most this many rows; a last line says how many more there were.
        columns: further keys of ``rows`` shown as text columns (e.g. ``caption``, ``code``).

    Returns:
        Markdown text ("" when ``rows`` is empty). Eight rows with one short column stay under
        Dagster's inline limit (:data:`INLINE_LIMIT`) for typical names; longer ones show
        behind "[Show Markdown]".
    """
    base = base_url.rstrip("/")
    cols = list(columns)
    items = list(rows)
    if not items:
        return ""
    head = "| | file |" + "".join(f" {c} |" for c in cols)
    lines = [head, "|---|---|" + "---|" * len(cols)]
    for row in items[:limit]:
        sha = str(row.get("sha256") or "")
        name = PurePath(str(row.get("path") or sha[:12] or "?")).name
        if SHA_RE.match(sha):
            picture = f"[![{_cell(name, 40)}]({base}/mini/{sha})]({base}/photo/{sha})"
        else:
            picture = ""
        cells = "".join(f" {_cell(row.get(c, ''))} |" for c in cols)
        lines.append(f"| {picture} | {_cell(name, 60)} |{cells}")
    if len(items) > limit:
        lines.append(f"\n(+{len(items) - limit} more)")
    return "\n".join(lines) + "\n"


def groups_markdown(groups: Iterable[Any], base_url: str, limit: int = 4) -> str:
    """Duplicate groups (:class:`vibe_assets.duplicates.DuplicateGroup`) as Markdown: one line
    per group with its tier, the keeper's thumbnail first and its other members' beside it (at
    most 4 per group), and a link to the Duplicates page.

    Returns:
        Markdown text ("" without groups).
    """
    base = base_url.rstrip("/")
    out = []
    picked = list(groups)
    for group in picked[:limit]:
        pics = []
        for k, member in enumerate(group.members[:4]):
            name = _cell(PurePath(member.paths[0]).name if member.paths else member.sha256[:12], 40)
            tag = "keep " if k == 0 else ""
            pics.append(
                f"[![{tag}{name}]({base}/mini/{member.sha256})]({base}/photo/{member.sha256})"
            )
        more = f" +{len(group.members) - 4}" if len(group.members) > 4 else ""
        out.append(f"**{group.tier}** {' '.join(pics)}{more}")
    if not out:
        return ""
    tail = f"\n\n[review all in the web app]({base}/duplicates?tier={picked[0].tier})"
    if len(picked) > limit:
        tail = f"\n\n(+{len(picked) - limit} more groups) " + tail.strip()
    return "\n\n".join(out) + tail + "\n"
