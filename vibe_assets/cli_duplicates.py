"""``vibe-assets duplicates``: duplicate groups in three tiers (exact, near, similar).

A click group registered on the main CLI with ``main.add_command(duplicates)``
(:mod:`vibe_assets.cli`). ``duplicates report`` computes the groups from the store
(:func:`vibe_assets.duplicates.find_groups`: no model runs, no Dagster run, the
``duplicate_groups`` asset need not have run), or prints the report that asset last wrote
(``--saved``). Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from vibe_assets.duplicates import (
    DEFAULT_NEAR_THRESHOLD,
    DEFAULT_SIMILAR_THRESHOLD,
    MAX_NEAR_THRESHOLD,
    TIERS,
    DuplicateGroup,
    Member,
    tier_counts,
)
from vibe_assets.report import human_size


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _say(message: str) -> None:
    click.echo(message, err=True)


def _collection(name: str | None) -> Any:
    """The configured collection ``name`` (default: the first configured): see
    :func:`vibe_assets.cli._collection`."""
    from vibe_assets.cli import _collection as collection

    return collection(name)


@click.group()
def duplicates() -> None:
    """Duplicate groups: exact copies, near duplicates (re-encoded, resized, converted, lightly
    edited) and similar shots (bursts), each with a suggested keeper."""


def _member_line(m: Member, keep: bool) -> list[str]:
    facts = [f"{m.width}x{m.height}" if m.width and m.height else "not decoded"]
    facts.append(f"{m.exif_fields} EXIF fields")
    if m.taken_at:
        facts.append(f"taken {m.taken_at}")
    facts.append(human_size(m.bytes))
    if m.near_group:
        facts.append(f"keeper of near group {m.near_group}")
    head = "  keep  " if keep else "        "
    lines = [f"{head}{m.paths[0]}  ({', '.join(facts)})"]
    lines += [f"        {p}  (same bytes)" for p in m.paths[1:]]
    return lines


def format_group(group: DuplicateGroup) -> str:
    """One block of text per group: tier, sizes, distance or score, id; each member (keeper
    first, every path); why the keeper."""
    measure = ""
    if group.tier == "near" and group.distance is not None:
        measure = f", max distance {group.distance:g} bits"
    elif group.tier == "similar" and group.score is not None:
        measure = f", min cosine {group.score:.4f}"
    size = (
        f"{len(group.paths)} copies of one image"
        if group.tier == "exact"
        else f"{len(group.members)} images, {len(group.paths)} files"
    )
    lines = [f"[{group.tier}] {size}{measure}  (id {group.id})"]
    for k, member in enumerate(group.members):
        lines += _member_line(member, keep=k == 0)
    lines.append(f"  why: {group.reason}")
    return "\n".join(lines)


def format_counts(groups: list[DuplicateGroup], tiers: list[str]) -> str:
    """The summary line: groups, files and reclaimable bytes per tier."""
    parts = []
    for tier, c in tier_counts(groups, tiers).items():
        parts.append(
            f"{tier}: {c['groups']} groups, {c['files']} files, "
            f"{human_size(c['reclaimable_bytes'])} in non-keepers"
        )
    return "; ".join(parts)


@duplicates.command("report")
@click.option(
    "--tier",
    type=click.Choice(TIERS),
    default=None,
    help="Only this tier (default: all three, reported apart).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the groups as a JSON list.")
@click.option("--collection", default=None, help="Collection (default: the first configured).")
@click.option(
    "--near-threshold",
    type=click.IntRange(0, MAX_NEAR_THRESHOLD),
    default=DEFAULT_NEAR_THRESHOLD,
    show_default=True,
    help="Largest pHash Hamming distance of near duplicates (bits of 64).",
)
@click.option(
    "--similar-threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=DEFAULT_SIMILAR_THRESHOLD,
    show_default=True,
    help="Smallest CLIP cosine between a similar group's keeper and its other members.",
)
@click.option(
    "--window-seconds",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    help="Similar shots only when taken at most this many seconds apart (EXIF taken_at).",
)
@click.option(
    "--saved",
    is_flag=True,
    help="Print the report the duplicate_groups asset last wrote (thresholds as it used them).",
)
def report(
    tier: str | None,
    as_json: bool,
    collection: str | None,
    near_threshold: int,
    similar_threshold: float,
    window_seconds: float | None,
    saved: bool,
) -> None:
    """Print the duplicate groups: exact (identical bytes at several paths), near (the same
    picture re-encoded, resized, converted or lightly edited: perceptual hash within
    --near-threshold bits) and similar (different shots of one scene: CLIP cosine at least
    --similar-threshold, optionally within --window-seconds). Each group names the suggested
    keeper (largest pixel count, then most EXIF fields, then oldest) and why.

    JSON (--json): a list of groups, each with id, tier, paths (every member's), keep (the
    keeper's path), keep_sha256, reason, distance (near: max Hamming bits; exact: 0), score
    (similar: min cosine) and members (sha256, paths, width, height, exif_fields, taken_at,
    bytes, mtime_ns, near_group). Images decoded before perceptual hashes were stored are
    hashed first (from their previews) and remembered.
    """
    from vibe_assets.duplicates import find_groups, read_report, report_path
    from vibe_assets.resources.store import StoreResource

    spec = _collection(collection)
    tiers = [tier] if tier else list(TIERS)
    store = StoreResource.from_env()
    if saved:
        path = report_path(store.root, spec.name)
        try:
            doc = read_report(path)
        except FileNotFoundError:
            _fail(
                f"no saved report for collection {spec.name!r} ({path}): materialize the "
                "duplicate_groups asset, or run without --saved",
                code=1,
            )
        except ValueError as exc:
            _fail(str(exc), code=1)
        groups = [g for g in doc["groups"] if g.tier in tiers]
        _say(
            f"saved report of {doc['created_at']} (near <= {doc['near_threshold']} bits, "
            f"similar >= {doc['similar_threshold']}, window {doc['time_window_s']} s)"
        )
    else:
        model_id = None
        if "similar" in tiers:
            from vibe_assets.resources.clip import ClipResource, ClipWeightsError

            try:
                model_id = ClipResource(model_name=spec.model, weights=spec.weights).model_id
            except ClipWeightsError as exc:
                _fail(str(exc))
        try:
            groups = find_groups(
                store,
                model_id,
                tiers=tiers,
                near_threshold=near_threshold,
                similar_threshold=similar_threshold,
                time_window_s=window_seconds,
                log=_say,
            )
        finally:
            store.close()
    if as_json:
        click.echo(json.dumps([g.as_dict() for g in groups], indent=2))
        return
    for group in groups:
        click.echo(format_group(group))
        click.echo("")
    click.echo(format_counts(groups, tiers) if groups else "no duplicate groups")
