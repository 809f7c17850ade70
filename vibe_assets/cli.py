"""``vibe-assets``: ingest a photo folder, search it, manage folders and collections, export.

Runs go through the persistent Dagster instance (``$DAGSTER_HOME``, default
``$VIBE_HOME/dagster``), so they show in ``dagster dev -w workspace.yaml``. Progress logs go to
stderr; summaries (and ``--json`` output) to stdout.

Commands that read or write vectors (search, export, collections, folders remove) open the
store through :func:`_open_vectors`: an embedded collection held by a run is waited for
(``VIBE_VECTORS_WAIT_SECONDS``, default 300 s) with a progress line on stderr every 5 s, then the
command fails naming the holder (exit 1).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import dagster as dg

from vibe_assets.partitions import PARTITIONS_NAME, FolderError


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _register(path: str) -> tuple[Any, Any]:
    """Register ``path`` in the folder registry and as a dynamic partition."""
    from vibe_assets.instance import get_instance
    from vibe_assets.resources.store import StoreResource

    try:
        folder = StoreResource.from_env().registry.add(path)
    except FolderError as exc:
        _fail(str(exc))
    instance = get_instance()
    if not instance.has_dynamic_partition(PARTITIONS_NAME, folder.key):
        instance.add_dynamic_partitions(PARTITIONS_NAME, [folder.key])
    return folder, instance


@click.group()
def main() -> None:
    """Turn folders of photos into a searchable Qdrant collection (CLIP embeddings)."""
    warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is beta


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--captions/--no-captions",
    default=None,
    help="Caption with BLIP in this run (default VIBE_CAPTIONS=auto: on with a CUDA GPU, off on "
    "CPU; recaption_schedule captions later).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="Only warnings and errors on stderr, no progress.")
def ingest(paths: tuple[str, ...], captions: bool | None, as_json: bool, quiet: bool) -> None:
    """Register each folder in PATHS and ingest it: scan, hash, decode, embed, (caption,) upsert
    to Qdrant.

    One Dagster run per folder, executed in this process. With --json, one folder prints one
    JSON object, several print a JSON array of them. A run waiting for a pool slot held by
    another run says so every 10 s. Ctrl-C (or SIGTERM) stops the run after its current batch
    (at once while it waits), leaves it CANCELED with no slot held, and exits 130 (143 for
    SIGTERM); a second Ctrl-C stops at once. Exits 1 when a run failed, 2 on a usage error
    (e.g. a PATH that is not a directory; nothing is ingested then).
    """
    from vibe_assets.definitions import captions_enabled

    try:
        with_captions = captions if captions is not None else captions_enabled()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    registered = [_register(path) for path in paths]
    from vibe_assets.assets import blip_captions
    from vibe_assets.definitions import build_definitions, ingest_job
    from vibe_assets.runs import force_cancel_run, mark_canceling, run_interruptibly
    from vibe_assets.settings import CAPTIONS_TAG
    from vibe_assets.summary import format_summary, ingest_summary

    selection = None
    if not with_captions:  # BLIP is then never loaded
        keys = build_definitions().resolve_asset_graph().get_all_asset_keys()
        selection = sorted(keys - {blip_captions.key}, key=lambda k: k.to_user_string())
    level = "WARNING" if quiet else "INFO"
    recon = dg.reconstructable(ingest_job)
    summaries = []
    interrupted = None
    for folder, instance in registered:
        invocation = uuid.uuid4().hex
        tags = {
            "dagster/partition": folder.key,
            INVOCATION_TAG: invocation,
            CAPTIONS_TAG: "on" if with_captions else "off",
            "vibe/trigger": "cli",
        }

        def work(folder: Any = folder, instance: Any = instance, tags: dict = tags) -> dict:
            start = time.perf_counter()
            with dg.execute_job(
                recon,
                instance=instance,
                tags=tags,
                asset_selection=selection,
                run_config={"loggers": {"console": {"config": {"log_level": level}}}},
                raise_on_error=False,
            ) as result:
                return ingest_summary(
                    result,
                    folder=str(folder.path),
                    partition_key=folder.key,
                    seconds=time.perf_counter() - start,
                    status=_run_status(instance, result.run_id),
                )

        def cancel(instance: Any = instance, invocation: str = invocation) -> None:
            mark_canceling(instance, _run_id_of(instance, invocation), "interrupted")

        def force(instance: Any = instance, invocation: str = invocation) -> None:
            force_cancel_run(instance, _run_id_of(instance, invocation), "interrupted")

        summary, interrupted = run_interruptibly(
            work, cancel, force, say=lambda msg: click.echo(msg, err=True)
        )
        if summary is not None:
            summaries.append(summary)
            if not as_json:
                click.echo(format_summary(summary))
        if interrupted is not None:
            took = f"{interrupted.seconds:.1f} s after the signal"
            how = "force-stopped" if interrupted.forced else "canceled"
            click.echo(f"interrupted: run {how} {took}; re-run to resume", err=True)
            break
    if as_json and summaries:
        click.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    if interrupted is not None:
        sys.exit(interrupted.exit_code)
    sys.exit(0 if all(s["success"] for s in summaries) else 1)


INVOCATION_TAG = "vibe/invocation"
"""Run tag with a random id per CLI run, so the CLI finds its run (to force-cancel it)."""


def _run_id_of(instance: Any, invocation: str) -> str | None:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={INVOCATION_TAG: invocation}), limit=1)
    return runs[0].run_id if runs else None


def _run_status(instance: Any, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    return run.status.value if run is not None else "UNKNOWN"


def _say(message: str) -> None:
    click.echo(message, err=True)


def _open_vectors(resources: dict[str, Any]) -> Any:
    """The vector store of ``resources["qdrant"]`` for a command: waits for a busy embedded
    collection with a progress line on stderr, and migrates an old local-mode store first (one
    line on stderr)."""
    from vibe_assets.collections import load_collections
    from vibe_assets.point_source import store_rebuilder

    qdrant = resources["qdrant"]
    rebuild = store_rebuilder(
        resources["store"], resources["clip"], load_collections(), resources["blip"]
    )
    return qdrant.open(
        wait_seconds=qdrant.command_wait_seconds, on_wait=_say, rebuild=rebuild, log=_say
    )


@contextlib.contextmanager
def _vector_errors() -> Iterator[None]:
    """Vector-store errors end the command with their message and exit status 1."""
    from vibe_assets.vectors.base import (
        CollectionMismatchError,
        QdrantBusyError,
        QdrantRequestError,
        QdrantUnavailableError,
    )

    try:
        yield
    except (
        QdrantBusyError,
        QdrantUnavailableError,
        QdrantRequestError,
        CollectionMismatchError,
    ) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _collection(name: str | None) -> Any:
    """The configured collection called ``name`` (default: the first configured)."""
    from vibe_assets.collections import load_collections

    specs = load_collections()
    if name is None:
        return specs[0]
    for spec in specs:
        if spec.name == name:
            return spec
    _fail(f"no configured collection {name!r}; configured: {[s.name for s in specs]}")


@main.command()
@click.argument("text")
@click.option("--limit", default=10, show_default=True, help="Number of hits.")
@click.option("--collection", default=None, help="Collection (default: the first configured).")
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
def search(text: str, limit: int, collection: str | None, as_json: bool) -> None:
    """Print the images that best match TEXT: score, path and caption.

    The text is encoded before the store is opened, so a run writing the embedded store is
    held up for the query only; while a run holds it, the search waits (a line every 5 s)."""
    from vibe_assets.definitions import default_resources

    spec = _collection(collection)
    collection = spec.name
    resources = default_resources()
    clip = resources["clip"].for_model(spec.model, spec.weights)
    with _vector_errors(), _open_vectors(resources) as vectors:
        if not vectors.collection_exists(collection):
            _fail(f"collection {collection!r} does not exist yet: run `vibe-assets ingest PATH`")
    vector = clip.encode_texts([text])[0]
    with _vector_errors(), _open_vectors(resources) as vectors:
        hits = vectors.query(collection, vector, limit=limit)
    rows = [
        {
            "score": round(h.score, 4),
            "path": h.payload.get("paths", ["?"])[0],
            "paths": h.payload.get("paths", []),
            "sha256": h.payload.get("sha256"),
            "caption": h.payload.get("caption"),
        }
        for h in hits
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if clip.is_random:
        click.echo("warning: CLIP uses RANDOM WEIGHTS: scores are meaningless", err=True)
    for row in rows:
        more = f"  (+{len(row['paths']) - 1} copies)" if len(row["paths"]) > 1 else ""
        caption = f'  "{row["caption"]}"' if row["caption"] else ""
        click.echo(f"{row['score']:.4f}  {row['path']}{more}{caption}")
    if not rows:
        click.echo("no hits")


@main.group()
def folders() -> None:
    """Register, list and remove photo folders (one Dagster partition each)."""


@folders.command("add")
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
def folders_add(path: str) -> None:
    """Register PATH as a photo_folder partition."""
    folder, _ = _register(path)
    click.echo(f"{folder.key}\t{folder.path}")


@folders.command("list")
def folders_list() -> None:
    """List registered folders: partition key and path; a folder whose last ingest found it gone
    is marked removed, one that is gone but not ingested since is marked missing."""
    from vibe_assets.resources.store import StoreResource

    for folder in StoreResource.from_env().registry.list():
        if folder.vanished:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(folder.vanished_at))
            state = f"\t(removed: gone since {when}; its points were deleted)"
        else:
            state = "" if folder.path.is_dir() else "\t(missing: not ingested since)"
        click.echo(f"{folder.key}\t{folder.path}{state}")


@folders.command("remove")
@click.argument("key_or_path")
def folders_remove(key_or_path: str) -> None:
    """Unregister a folder (by partition key or path) and remove its paths from every
    configured collection (points of images with copies elsewhere are kept)."""
    from vibe_assets.collections import load_collections
    from vibe_assets.definitions import default_resources
    from vibe_assets.instance import get_instance
    from vibe_assets.points import sync_folder

    resources = default_resources()
    store = resources["store"]
    folder = store.registry.find(key_or_path)
    if folder is None:
        _fail(f"no registered folder matches {key_or_path!r} (see `vibe-assets folders list`)")
    with _vector_errors(), _open_vectors(resources) as vectors:
        for spec in load_collections():
            if not vectors.collection_exists(spec.name):
                continue
            result = sync_folder(
                vectors,
                store.state,
                spec.name,
                folder.key,
                {},
                lambda *_: None,
                leaving=True,  # only the paths this partition listed go; nested ones stay
            )
            click.echo(
                f"removed {folder.key} from {spec.name!r}: {result.counts['deleted']} points "
                f"deleted, {result.counts['payload_updated']} kept for copies elsewhere"
            )
    instance = get_instance()
    if instance.has_dynamic_partition(PARTITIONS_NAME, folder.key):
        instance.delete_dynamic_partition(PARTITIONS_NAME, folder.key)
    store.registry.remove(folder.key)
    click.echo(f"unregistered {folder.key}\t{folder.path}")


@main.group()
def collections() -> None:
    """List and delete vector collections."""


@collections.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def collections_list(as_json: bool) -> None:
    """Every collection in the vector store and every configured one: points, vector size,
    distance, engine (edge or server), model. JSON rows: name, configured, model, exists,
    engine, and for existing ones points, vector_size, distance, indexed_fields."""
    from vibe_assets.collections import load_collections
    from vibe_assets.definitions import default_resources

    configured = {spec.name: spec for spec in load_collections()}
    resources = default_resources()
    rows = []
    with _vector_errors(), _open_vectors(resources) as vectors:
        existing = {info.name: info for info in vectors.list_collections()}
    for name in sorted(set(existing) | set(configured)):
        spec = configured.get(name)
        row: dict[str, Any] = {
            "name": name,
            "configured": spec is not None,
            "model": f"{spec.model}/{spec.weights}" if spec else None,
            "exists": name in existing,
            "engine": resources["qdrant"].engine,
        }
        if name in existing:
            info = existing[name].as_dict()
            row.update((k, info[k]) for k in ("points", "vector_size", "distance"))
            row["indexed_fields"] = info["indexed_fields"]
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = (
            f"{r['points']} points, {r['vector_size']}-d {r['distance']} ({r['engine']})"
            if r["exists"]
            else "not created yet"
        )
        model = r["model"] or "(not configured)"
        click.echo(f"{r['name']}\t{state}\t{model}")


@collections.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def collections_delete(name: str, yes: bool) -> None:
    """Delete collection NAME from the vector store (points only; previews, embeddings and
    captions stay in the store, so re-creating it re-uploads without recomputing)."""
    from vibe_assets.definitions import default_resources
    from vibe_assets.resources.store import StoreResource
    from vibe_assets.state import reset_synced as forget_collection

    with _vector_errors(), _open_vectors(default_resources()) as vectors:
        if not vectors.collection_exists(name):
            _fail(f"collection {name!r} does not exist")
        points = vectors.count(name)
        if not yes:
            click.confirm(f"delete collection {name!r} with {points} points?", abort=True)
        vectors.delete_collection(name)
    forget_collection(StoreResource.from_env().state, name)  # its recorded syncs
    click.echo(f"deleted collection {name!r} ({points} points)")


@main.command()
@click.option("--collection", default=None, help="Collection (default: the first configured).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet"]),
    default="jsonl",
    show_default=True,
    help="JSON lines, or Parquet (needs --output).",
)
@click.option("--vectors", "with_vectors", is_flag=True, help="Include each point's vector.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="File to write (default: stdout for jsonl).",
)
def export(collection: str | None, fmt: str, with_vectors: bool, output: Path | None) -> None:
    """Stream every point of a collection: id, sha256, paths, payload (the other fields) and,
    with --vectors, the vector. Reads one page (1,000 points) at a time, so memory does not grow
    with the collection. JSON lines go to stdout unless --output is given; Parquet (one row
    group per page, payload as JSON text) needs --output. The count goes to stderr."""
    from vibe_assets.definitions import default_resources
    from vibe_assets.vectors.base import CollectionNotFoundError
    from vibe_assets.vectors.export import write_jsonl, write_parquet

    if fmt == "parquet" and output is None:
        _fail("--format parquet needs --output FILE")
    name = collection or _collection(None).name
    with _vector_errors(), _open_vectors(default_resources()) as vectors:
        try:
            if fmt == "parquet":
                assert output is not None
                n = write_parquet(vectors, name, output, with_vectors)
            elif output is None:
                n = write_jsonl(vectors, name, sys.stdout, with_vectors)
            else:
                with open(output, "w", encoding="utf-8") as out:
                    n = write_jsonl(vectors, name, out, with_vectors)
        except CollectionNotFoundError:
            _fail(f"collection {name!r} does not exist")
    where = output if output is not None else "stdout"
    click.echo(f"exported {n} points of {name!r} to {where} ({fmt})", err=True)


@main.group()
def cache() -> None:
    """Sizes of the state and the caches; clear caches (never state)."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cache_info_cmd(as_json: bool) -> None:
    """State database and cache sizes under VIBE_HOME, entries per cache kind, the limit."""
    from vibe_assets.cache import cache_info, describe_cache_info
    from vibe_assets.settings import cache_size_limit_bytes, vibe_home

    info = cache_info(vibe_home(), cache_size_limit_bytes())
    click.echo(json.dumps(info, indent=2) if as_json else describe_cache_info(info))


@cache.command("clear")
@click.option("--embeddings", is_flag=True, help="CLIP embeddings (recomputed from previews).")
@click.option("--captions", is_flag=True, help="BLIP captions (recomputed from previews).")
@click.option("--previews", is_flag=True, help="Previews and thumbnails (decoded again).")
@click.option("--all", "everything", is_flag=True, help="Every cache kind (the default).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear_cmd(
    embeddings: bool, captions: bool, previews: bool, everything: bool, yes: bool
) -> None:
    """Delete cached embeddings, captions and/or previews (all of them when no kind is named).
    State (folders, listings, decode outcomes, probes) is never touched; whatever is cleared is
    recomputed by the next run that needs it, and the vector collections keep their points."""
    from vibe_assets.cache import clear_cache, describe_cleared
    from vibe_assets.settings import vibe_home

    named = [k for k, on in (("embeddings", embeddings), ("captions", captions)) if on]
    named += ["previews"] if previews else []
    kinds = ["all"] if everything or not named else named
    if not yes:
        click.confirm(f"clear the cached {', '.join(kinds)} under {vibe_home()}?", abort=True)
    click.echo(describe_cleared(clear_cache(vibe_home(), kinds)))


@main.group()
def runs() -> None:
    """Dagster runs of this instance: clean up runs whose process died."""


@runs.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Only list the runs that would be cleaned up.")
def runs_cleanup(dry_run: bool) -> None:
    """End runs of this host whose process is gone (killed, crashed, power loss).

    Such a run stays STARTED in Dagster and keeps its pool slots, so every later run waits for
    it forever. Each one is marked FAILURE (CANCELED if it was being canceled) and its slots
    are freed. Runs started on other hosts, or by tools that do not record their worker, are
    listed and left alone. Every run does this by itself when it starts; this command is for
    a stuck instance seen in the UI.
    """
    from vibe_assets.instance import get_instance
    from vibe_assets.runs import cleanup_dead_runs, find_dead_runs

    instance = get_instance()
    _, unknown = find_dead_runs(instance)
    cleaned = cleanup_dead_runs(instance, dry_run=dry_run, log_fn=lambda _: None)
    verb = "would clean up" if dry_run else "cleaned up"
    for item in cleaned:
        held = f", freed pool(s) {', '.join(item.pools)}" if item.pools and not dry_run else ""
        click.echo(
            f"{verb} {item.run_id} ({item.job_name}, {item.status} -> {item.new_status}): "
            f"{item.reason}{held}"
        )
    for item in unknown:
        click.echo(f"left alone {item.run_id} ({item.job_name}, {item.status}): {item.why}")
    if not cleaned and not unknown:
        click.echo("no active runs: nothing to clean up")
    elif not cleaned:
        click.echo("no dead runs on this host")


if __name__ == "__main__":
    main()
