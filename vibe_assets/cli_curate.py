"""``vibe-assets`` commands that move photos out of the library and back, and snapshot
collections (the logic is :mod:`vibe_assets.moves` and the vector stores'; this is the CLI).

Standalone click commands, registered by :mod:`vibe_assets.cli`:

- under ``duplicates``: :data:`duplicates_archive` (``archive [--tier exact|near] [--apply]``)
  and :data:`undo_command` (``undo JOURNAL``);
- :data:`curate`, a group: ``curate archive`` (a selection: ``--path``, ``--point-id``,
  ``--query TEXT --min-score X``, ``--group ID``; a snapshot of every configured collection
  first), ``curate undo JOURNAL``, ``curate journals``;
- under ``collections``: :data:`collections_snapshot` (``snapshot NAME``),
  :data:`collections_snapshots` (``snapshots NAME``), :data:`collections_restore`
  (``restore NAME SNAPSHOT``).

Archiving prints the plan and moves nothing unless ``--apply`` is given. Duplicate groups come from
:func:`vibe_assets.duplicates.find_groups`, ``--query`` hits from the same search as
``vibe-assets search``.
Exit status: 0 done (or a dry run that would be accepted), 1 refused or failed (problems on
stderr; nothing moved unless it says so), 2 usage error.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import click

from vibe_assets.moves import (
    ARCHIVE_FOLDERS,
    KIND_CURATE,
    KIND_DUPLICATES,
    GroupLike,
    JournalError,
    MoveError,
    Plan,
    Skipped,
    apply_plan,
    check_plan,
    find_journal,
    group_archive_paths,
    keeper_path,
    list_journals,
    plan_duplicates,
    plan_paths,
    resync,
    undo,
)

TIERS = ("exact", "near", "similar")


def find_groups(store: Any, model_id: str, tiers: tuple[str, ...]) -> Sequence[GroupLike]:
    """:func:`vibe_assets.duplicates.find_groups` with its default thresholds."""
    from vibe_assets.duplicates import find_groups as find

    return find(store, model_id, tiers=tiers)


def text_search(resources: dict[str, Any], spec: Any, query: str, limit: int) -> list[Any]:
    """The ``limit`` points of collection ``spec`` nearest to ``query`` (composed as in
    ``vibe-assets search``: "beach + sunset - people"), best first; the text is embedded by the
    cheapest encoder (the ONNX text tower) before the store is opened.

    Raises:
        click.UsageError: the query cannot be parsed, or its terms cancel out.
    """
    from vibe_assets.cli import _embed_missing, _open_vectors, _search_resources, _vector_errors
    from vibe_assets.query import QueryError, combine_terms, parse_query

    try:
        terms = parse_query(query)
    except QueryError as exc:
        raise click.UsageError(f"--query: {exc}") from exc
    _, clip = _search_resources(spec)
    embedded = _embed_missing(terms, {}, [], resources, clip)
    try:
        vector = combine_terms(terms, embedded)
    except QueryError as exc:
        raise click.UsageError(f"--query: {exc}") from exc
    with _vector_errors(), _open_vectors(resources) as vectors:
        return vectors.query(spec.name, vector, limit=limit)


# -- shared ----------------------------------------------------------------------------------------


def _resources() -> dict[str, Any]:
    from vibe_assets.definitions import default_resources

    return default_resources()


def _spec(name: str | None) -> Any:
    from vibe_assets.cli import _collection

    return _collection(name)


def _sources(resources: dict[str, Any]) -> dict[str, Any]:
    from vibe_assets.point_source import collection_point_sources

    return collection_point_sources(resources)


def _progress(verb: str) -> Callable[[int, int], None]:
    """A progress callback for :func:`apply_plan` / :func:`undo`: a line on stderr every 5 s
    and at the end (large archives, or moves across file systems, take a while)."""
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 5.0:
            last[0] = now
            click.echo(f"{verb} {done}/{total} files", err=True)

    return report


def _refuse(message: str, problems: Sequence[str] = ()) -> None:
    click.echo(f"error: {message}", err=True)
    for problem in problems:
        click.echo(f"  - {problem}", err=True)
    sys.exit(1)


def _counts(synced: dict[str, dict[str, int]]) -> str:
    parts = []
    for name, counts in synced.items():
        parts.append(
            f"{name}: {counts.get('deleted', 0)} points deleted, "
            f"{counts.get('upserted', 0)} restored, {counts.get('payload_updated', 0)} "
            f"with paths rewritten"
            + (f", {counts['skipped']} without a stored embedding" if counts.get("skipped") else "")
        )
    return "; ".join(parts) or "no collection to update"


def _show_plan(plan: Plan, problems: list[str]) -> None:
    folder = ARCHIVE_FOLDERS[plan.kind]
    click.echo(f"plan ({plan.kind}): {len(plan.moves)} files into {folder}/ under their folders")
    for move in plan.moves:
        note = f"  [{move.note}]" if move.note else ""
        click.echo(f"  {move.source} -> {move.dest}{note}")
    if plan.skipped:
        click.echo(f"not moved ({len(plan.skipped)}):")
        for skip in plan.skipped:
            click.echo(f"  {skip.path}: {skip.reason}")
    if problems:
        click.echo(f"problems ({len(problems)}; the plan would be refused):")
        for problem in problems:
            click.echo(f"  - {problem}")


def _carry_out(
    plan: Plan,
    resources: dict[str, Any],
    apply: bool,
    as_json: bool,
    snapshot: bool,
    undo_hint: str,
) -> None:
    """Print ``plan`` (dry run) or apply it: snapshots first when ``snapshot``, then the moves,
    the listings and a re-sync of every configured collection."""
    from vibe_assets.cli import _open_vectors, _vector_errors
    from vibe_assets.vectors.base import SnapshotUnsupportedError

    store = resources["store"]
    problems = check_plan(plan)
    out: dict[str, Any] = {"plan": plan.as_dict(), "problems": problems, "applied": False}
    if not apply or not plan.moves or problems:
        if as_json:
            click.echo(json.dumps(out, indent=2))
        else:
            _show_plan(plan, problems)
            if not plan.moves:
                click.echo("nothing to move")
            elif not apply:
                click.echo("dry run: nothing was moved; add --apply to move these files")
        if problems:
            _refuse(f"{len(problems)} problems: nothing was moved", problems if apply else ())
        return
    sources = _sources(resources)
    state = store.state
    with _vector_errors(), _open_vectors(resources) as vectors:
        taken = []
        if snapshot:
            try:
                taken = [vectors.snapshot(n) for n in sources if vectors.collection_exists(n)]
            except SnapshotUnsupportedError as exc:
                _refuse(f"{exc}; nothing was moved (--no-snapshot moves without one)")
        try:
            result = apply_plan(
                plan,
                state,
                store.root,
                sync=lambda keys: resync(vectors, state, sources, keys),
                header={"snapshots": [s.as_dict() for s in taken]},
                progress=_progress("moved"),
            )
        except MoveError as exc:
            _refuse(str(exc), exc.problems)
    out |= {
        "applied": True,
        "journal": str(result.journal),
        "moved": len(result.moved),
        "snapshots": [s.as_dict() for s in taken],
        "synced": result.synced,
        "sync_error": result.sync_error,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for info in taken:
        click.echo(f"snapshot {info.id} of {info.collection!r}: {info.points} points")
    folder = ARCHIVE_FOLDERS[plan.kind]
    click.echo(f"moved {len(result.moved)} files into {folder}/ (journal {result.journal})")
    if result.sync_error:
        click.echo(
            f"warning: the collections were not updated ({result.sync_error}); the next ingest "
            "of these folders updates them",
            err=True,
        )
    else:
        click.echo(_counts(result.synced))
    click.echo(f"undo: vibe-assets {undo_hint} undo {result.journal.name}")


# -- duplicates archive / undo ---------------------------------------------------------------------


@click.command("archive")
@click.option(
    "--tier",
    type=click.Choice(["exact", "near"]),
    default="exact",
    show_default=True,
    help="exact: identical bytes (every copy but the keeper's path); near: the same picture "
    "re-encoded or resized (every file of every image but the keeper).",
)
@click.option("--collection", default=None, help="Collection whose model groups the images.")
@click.option("--apply", "apply", is_flag=True, help="Move the files (default: print the plan).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and result) as JSON.")
def duplicates_archive(tier: str, collection: str | None, apply: bool, as_json: bool) -> None:
    """Move every non-keeper of each duplicate group into _VibeDuplicates/<path relative to its
    folder>, under the registered folder that lists it.

    Without --apply, prints the plan and moves nothing. With --apply, checks every move first
    (a name clash, a read-only folder or a path leaving its folder refuses the whole plan),
    moves each file (SHA-256 verified), writes a journal under VIBE_HOME/journals, and updates
    the collections (points of images whose only file moved are deleted, other points get their
    paths rewritten; nothing is recomputed). `vibe-assets duplicates undo JOURNAL` moves
    everything back. Never deletes a file; _VibeDuplicates is never scanned."""
    resources = _resources()
    spec = _spec(collection)
    model_id = resources["clip"].for_model(spec.model, spec.weights).model_id
    groups = find_groups(resources["store"], model_id, (tier,))
    plan = plan_duplicates(resources["store"].state, groups, tiers={tier})
    _carry_out(plan, resources, apply, as_json, snapshot=False, undo_hint="duplicates")


@click.command("undo")
@click.argument("journal")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def undo_command(journal: str, as_json: bool) -> None:
    """Move every file of JOURNAL (a path, or a name under VIBE_HOME/journals) back where it
    was, byte-identical (SHA-256 checked), restore the folder listings and update the
    collections (points come back from the stored embeddings).

    Everything is checked first: a file back at its old path, an archived file that changed, or
    a read-only folder refuses the undo (nothing moved). An interrupted undo can be run again."""
    from vibe_assets.cli import _fail, _open_vectors, _vector_errors

    resources = _resources()
    store = resources["store"]
    try:
        path = find_journal(store.root, journal)
    except JournalError as exc:
        _fail(str(exc))
    sources = _sources(resources)
    state = store.state
    with _vector_errors(), _open_vectors(resources) as vectors:
        try:
            result = undo(
                path,
                state,
                sync=lambda keys: resync(vectors, state, sources, keys),
                progress=_progress("moved back"),
            )
        except JournalError as exc:
            _fail(str(exc))
        except MoveError as exc:
            _refuse(str(exc), exc.problems)
    if as_json:
        doc = {
            "journal": str(result.journal),
            "moved_back": [{"from": a, "to": b} for a, b in result.moved_back],
            "notes": result.notes,
            "synced": result.synced,
            "sync_error": result.sync_error,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    for note in result.notes:
        click.echo(f"  {note}")
    click.echo(f"moved {len(result.moved_back)} files back (journal {result.journal})")
    if result.sync_error:
        click.echo(f"warning: the collections were not updated ({result.sync_error})", err=True)
    elif result.moved_back:
        click.echo(_counts(result.synced))


# -- curate ----------------------------------------------------------------------------------------


@click.group()
def curate() -> None:
    """Archive a selection of photos (after a collection snapshot), with undo."""


def _groups_by_id(
    resources: dict[str, Any], model_id: str, wanted: Sequence[str]
) -> dict[str, GroupLike]:
    """The groups among ``wanted`` ids, looking through the tiers cheapest first and stopping
    once every id is found."""
    found: dict[str, GroupLike] = {}
    for tier in TIERS:
        for group in find_groups(resources["store"], model_id, (tier,)):
            if group.id in wanted:
                found.setdefault(group.id, group)
        if len(found) == len(set(wanted)):
            break
    return found


@curate.command("archive")
@click.option("--path", "paths", multiple=True, help="A listed photo file (repeatable).")
@click.option("--point-id", "point_ids", multiple=True, help="A point: all its files (repeatable).")
@click.option("--query", default=None, help="Text search: the hits scoring --min-score or more.")
@click.option("--min-score", type=float, default=None, help="Score threshold for --query.")
@click.option("--limit", default=100, show_default=True, help="Hits --query looks at.")
@click.option(
    "--group",
    "group_ids",
    multiple=True,
    help="A duplicate group id: its non-keepers, as `duplicates archive` (repeatable).",
)
@click.option("--collection", default=None, help="Collection (default: the first configured).")
@click.option("--apply", "apply", is_flag=True, help="Move the files (default: print the plan).")
@click.option("--no-snapshot", is_flag=True, help="Do not snapshot the collections before moving.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and result) as JSON.")
def curate_archive(
    paths: tuple[str, ...],
    point_ids: tuple[str, ...],
    query: str | None,
    min_score: float | None,
    limit: int,
    group_ids: tuple[str, ...],
    collection: str | None,
    apply: bool,
    no_snapshot: bool,
    as_json: bool,
) -> None:
    """Move a selection of photos into _VibeArchive/<path relative to its folder>, under the
    registered folder that lists each file, after a snapshot of every configured collection.

    The selection is the union of --path (one file), --point-id (every file of that image),
    --query with --min-score (every file of each hit scoring at least that), --group (the
    non-keepers of a duplicate group). Without --apply, prints the plan and moves nothing.
    With --apply: snapshots (`vibe-assets collections restore` brings one back), checks every
    move (a clash, a read-only folder or a path leaving its folder refuses all), moves each file
    (SHA-256 verified), writes a journal and updates the collections.
    `vibe-assets curate undo JOURNAL` moves everything back."""
    from vibe_assets.cli import _open_vectors, _vector_errors

    if not (paths or point_ids or query or group_ids):
        raise click.UsageError("select something: --path, --point-id, --query or --group")
    if query is not None and min_score is None:
        raise click.UsageError("--query needs --min-score (never archive hits by rank alone)")
    resources = _resources()
    store = resources["store"]
    spec = _spec(collection)
    wanted: list[str] = list(paths)
    notes: dict[str, str] = dict.fromkeys(paths, "selected path")
    skipped: list[Skipped] = []
    shas: dict[str, str] = {}  # sha256 -> why
    if query is not None:
        assert min_score is not None
        for hit in text_search(resources, spec, query, limit):
            sha = hit.payload.get("sha256")
            if hit.score >= min_score and isinstance(sha, str):
                shas.setdefault(sha, f"query {query!r}: score {hit.score:.3f}")
    if point_ids:
        valid = []
        for pid in point_ids:
            try:
                valid.append(str(uuid.UUID(pid)))
            except ValueError:
                skipped.append(Skipped(pid, "not a point id (a UUID)"))
        with _vector_errors(), _open_vectors(resources) as vectors:
            if not vectors.collection_exists(spec.name):
                raise click.UsageError(f"collection {spec.name!r} does not exist")
            got = {p.id: p for p in vectors.retrieve(spec.name, valid, with_payload=["sha256"])}
        for pid in valid:
            point = got.get(pid)
            sha = point.payload.get("sha256") if point else None
            if isinstance(sha, str):
                shas.setdefault(sha, f"point {pid}")
            else:
                skipped.append(Skipped(pid, f"no point with this id in {spec.name!r}"))
    if group_ids:
        model_id = resources["clip"].for_model(spec.model, spec.weights).model_id
        groups = _groups_by_id(resources, model_id, group_ids)
        for gid in group_ids:
            group = groups.get(gid)
            if group is None:
                skipped.append(Skipped(f"group {gid}", "no duplicate group with this id"))
                continue
            for path in group_archive_paths(group):
                wanted.append(path)
                notes.setdefault(path, f"{group.tier} group {gid}: keeps {keeper_path(group)}")
    if shas:
        from vibe_assets.moves import image_paths

        found = image_paths(store.state, shas)
        for sha, why in shas.items():
            if sha not in found:
                skipped.append(Skipped(sha, "no listed file holds these bytes"))
            for path in found.get(sha, []):
                wanted.append(path)
                notes.setdefault(path, why)
    plan = plan_paths(store.state, wanted, KIND_CURATE, notes, skipped)
    _carry_out(plan, resources, apply, as_json, snapshot=not no_snapshot, undo_hint="curate")


curate.add_command(undo_command)


@curate.command("journals")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def curate_journals(as_json: bool) -> None:
    """List the journals under VIBE_HOME/journals: name, kind, when, status, files moved (and
    not undone)."""
    store = _resources()["store"]
    rows = [
        {
            "journal": j.path.name,
            "kind": j.header.get("kind"),
            "created_at": j.header.get("created_at"),
            "status": j.status or "incomplete",
            "moved": j.moved,
            "snapshots": [s.get("id") for s in j.header.get("snapshots") or []],
        }
        for j in list_journals(store.root)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['journal']}\t{r['kind']}\t{r['status']}\t{r['moved']} moved")
    if not rows:
        click.echo("no journals")


# -- collections snapshot / snapshots / restore ----------------------------------------------------


def _snapshot_line(info: Any) -> str:
    points = "?" if info.points is None else info.points
    size = f"{info.size_bytes / 2**20:.1f} MiB"
    return f"{info.id}\t{info.created_at or '?'}\t{points} points\t{size}\t{info.location}"


@click.command("snapshot")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def collections_snapshot(name: str, as_json: bool) -> None:
    """Take a snapshot of collection NAME (embedded: a copy of its folder under
    VIBE_HOME/snapshots/NAME/; server: Qdrant's snapshot API)."""
    from vibe_assets.cli import _fail, _open_vectors, _vector_errors
    from vibe_assets.vectors.base import CollectionNotFoundError, SnapshotUnsupportedError

    with _vector_errors(), _open_vectors(_resources()) as vectors:
        try:
            info = vectors.snapshot(name)
        except CollectionNotFoundError:
            _fail(f"collection {name!r} does not exist")
        except SnapshotUnsupportedError as exc:
            _refuse(str(exc))
    click.echo(json.dumps(info.as_dict(), indent=2) if as_json else _snapshot_line(info))


@click.command("snapshots")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def collections_snapshots(name: str, as_json: bool) -> None:
    """List the snapshots of collection NAME, oldest first: id, time, points, size, where."""
    from vibe_assets.cli import _fail, _open_vectors, _vector_errors
    from vibe_assets.vectors.base import CollectionNotFoundError, SnapshotUnsupportedError

    with _vector_errors(), _open_vectors(_resources()) as vectors:
        try:
            infos = vectors.list_snapshots(name)
        except CollectionNotFoundError:
            _fail(f"collection {name!r} does not exist and has no snapshots")
        except SnapshotUnsupportedError as exc:
            _refuse(str(exc))
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    for info in infos:
        click.echo(_snapshot_line(info))
    if not infos:
        click.echo(f"no snapshots of {name!r}")


@click.command("restore")
@click.argument("name")
@click.argument("snapshot")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def collections_restore(name: str, snapshot: str, yes: bool) -> None:
    """Replace the points of collection NAME with those of SNAPSHOT (re-creating a deleted
    collection). Embedded: what it replaces is kept as a snapshot `<id>-before-restore`. The
    records of what the collection holds are then forgotten, so the next ingest run reconciles
    it with the folder listings (points of images no folder lists any more are deleted, paths
    are rewritten); files are not moved: undo an archive with `curate undo`."""
    from vibe_assets.cli import _fail, _open_vectors, _vector_errors
    from vibe_assets.state import reset_synced
    from vibe_assets.vectors.base import SnapshotNotFoundError, SnapshotUnsupportedError

    resources = _resources()
    if not yes:
        click.confirm(f"replace every point of {name!r} with snapshot {snapshot}?", abort=True)
    with _vector_errors(), _open_vectors(resources) as vectors:
        try:
            info = vectors.restore_snapshot(name, snapshot)
        except SnapshotNotFoundError as exc:
            _fail(str(exc))
        except SnapshotUnsupportedError as exc:
            _refuse(str(exc))
        points = vectors.count(name)
    reset_synced(resources["store"].state, name)
    click.echo(
        f"restored {name!r} from snapshot {info.id} ({points} points); the next ingest "
        "reconciles it with the folder listings"
    )


__all__ = [
    "KIND_DUPLICATES",
    "collections_restore",
    "collections_snapshot",
    "collections_snapshots",
    "curate",
    "curate_archive",
    "curate_journals",
    "duplicates_archive",
    "find_groups",
    "text_search",
    "undo_command",
]
