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
    from vibe_assets.collections import load_collections
    from vibe_assets.definitions import build_assets, ingest_job
    from vibe_assets.runs import force_cancel_run, mark_canceling, run_interruptibly
    from vibe_assets.settings import CAPTIONS_TAG
    from vibe_assets.summary import format_summary, ingest_summary

    selection = None
    if not with_captions:  # BLIP is then never loaded
        keys = {key for asset in build_assets(load_collections()) for key in asset.keys}
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
    """The configured collection called ``name`` (default: the first configured); a usage
    error (exit 2) when there is none or the collections file is invalid."""
    from vibe_assets.collections import CollectionConfigError, load_collections

    try:
        specs = load_collections()
    except CollectionConfigError as exc:
        _fail(str(exc))
    if name is None:
        return specs[0]
    for spec in specs:
        if spec.name == name:
            return spec
    _fail(f"no configured collection {name!r}; configured: {[s.name for s in specs]}")


class _QueryCommand(click.Command):
    """A command whose QUERY may start with "-" (``search "- people"``): an argument that
    starts with "-" and holds whitespace (no option name does), and is no option's value, is
    moved behind a "--" so click takes it as QUERY, not as an unknown option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" not in args:
            takes_value = {
                name
                for param in self.params
                if isinstance(param, click.Option) and not param.is_flag
                for name in param.opts
            }
            queries: list[str] = []
            rest: list[str] = []
            for arg in args:
                after_option = bool(rest) and rest[-1] in takes_value
                if arg.startswith("-") and any(c.isspace() for c in arg) and not after_option:
                    queries.append(arg)
                else:
                    rest.append(arg)
            if queries:
                args = [*rest, "--", *queries]
        return super().parse_args(ctx, args)


@main.command(cls=_QueryCommand)
@click.argument("query", required=False)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Find images like this photo (repeatable; added to QUERY's terms with weight 1). One "
    "already in the collection uses its stored vector; another is decoded like ingest does "
    "and embedded with the collection's model.",
)
@click.option("--limit", default=10, show_default=True, type=click.IntRange(min=1), help="Hits.")
@click.option("--collection", default=None, help="Collection (default: the first configured).")
@click.option(
    "--folder",
    "folders_",
    multiple=True,
    metavar="KEY_OR_PATH",
    help="Only images of this registered folder (partition key or path; a path also covers "
    "the registered folders below it). Repeatable: any of them.",
)
@click.option(
    "--after",
    default=None,
    metavar="DATE",
    help="Only photos taken on or after DATE (EXIF taken_at; ISO 8601: 2024-05-01 or "
    "2024-05-01T18:00; no zone: UTC). Photos without a capture time are left out.",
)
@click.option(
    "--before", default=None, metavar="DATE", help="Only photos taken before DATE (exclusive)."
)
@click.option(
    "--camera",
    "cameras",
    multiple=True,
    metavar="MODEL",
    help="Only photos from this camera model (the exact EXIF Model text, e.g. 'Canon EOS R5'). "
    "Repeatable: any of them.",
)
@click.option(
    "--min-score",
    type=float,
    default=None,
    help="Drop hits scoring below this (cosine, -1..1); fewer than --limit may remain.",
)
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
def search(
    query: str | None,
    images: tuple[Path, ...],
    limit: int,
    collection: str | None,
    folders_: tuple[str, ...],
    after: str | None,
    before: str | None,
    cameras: tuple[str, ...],
    min_score: float | None,
    as_json: bool,
) -> None:
    """Print the images that best match QUERY and/or --image: score, path and caption.

    QUERY composes texts: terms are separated by "+" (add) and "-" (subtract; only at the start
    or after a space, so "t-shirt" is one word), and "W:" weighs a term: "beach + sunset -
    people", "2:dog + grass", "- people" (a QUERY that starts with "-" needs a space in it, or
    a "--" before it: `search -- -people`). The query vector is normalize(sum of w * e) over the
    terms' unit embeddings e, subtracted terms with negative w (see vibe_assets.query).

    Filters (--folder, --after/--before, --camera) restrict the candidates in the vector store,
    so --limit hits still come back when enough images match. JSON rows: score, path, paths,
    sha256, caption, and taken_at and camera when the photo has them.

    A text search loads only the CLIP text tower, exported once per model to ONNX under
    $VIBE_HOME/models/text (the first search pays the export); VIBE_TEXT_ENCODER=torch uses the
    full model. Texts and images are embedded before the store is opened for the query, so a
    run writing the embedded store is held up for the query only; while a run holds it, the
    search waits (a line every 5 s). Exits 2 on a usage error (bad query, date, folder, image).
    """
    from vibe_assets.query import (
        QueryError,
        QueryTerm,
        check_time_range,
        describe_terms,
        parse_query,
        parse_time_bound,
        passes_min_score,
        result_row,
    )
    from vibe_assets.vectors.base import PointFilter

    try:
        terms = parse_query(query) if query is not None else []
        taken_after = parse_time_bound(after, "--after") if after else None
        taken_before = parse_time_bound(before, "--before") if before else None
        check_time_range(taken_after, taken_before)
    except QueryError as exc:
        _fail(str(exc))
    if not terms and not images:
        _fail("give a QUERY, an --image PATH, or both")
    spec = _collection(collection)
    if min_score is not None and spec.distance not in ("cosine", "dot"):
        _fail(f"--min-score needs a cosine or dot collection; {spec.name!r} uses {spec.distance}")
    image_terms = _image_terms(images)
    terms = [*(term for term, _ in image_terms), *terms]
    resources, clip = _search_resources(spec)
    flt = PointFilter.where(
        folder_keys=_search_folder_keys(resources["store"], folders_) or None,
        taken_after=taken_after,
        taken_before=taken_before,
        camera_models=cameras or None,
    )
    embedded: dict[QueryTerm, Any] = {}
    hits = None
    with _vector_errors(), _open_vectors(resources) as vectors:
        if not vectors.collection_exists(spec.name):
            _fail(f"collection {spec.name!r} does not exist yet: run `vibe-assets ingest PATH`")
        embedded.update(_stored_image_vectors(vectors, spec.name, image_terms))
        if all(term in embedded for term in terms):  # images of the collection only: no model
            hits = vectors.query(spec.name, _combine(terms, embedded), limit, flt)
    if hits is None:
        embedded.update(_embed_missing(terms, embedded, image_terms, resources, clip))
        vector = _combine(terms, embedded)
        with _vector_errors(), _open_vectors(resources) as vectors:
            hits = vectors.query(spec.name, vector, limit, flt)
    rows = [result_row(h.score, h.payload) for h in hits if passes_min_score(h.score, min_score)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if clip.is_random:
        click.echo("warning: CLIP uses RANDOM WEIGHTS: scores are meaningless", err=True)
    if len(terms) > 1 or any(t.weight != 1.0 for t in terms):
        click.echo(f"query: {describe_terms(terms)}", err=True)
    for row in rows:
        more = f"  (+{len(row['paths']) - 1} copies)" if len(row["paths"]) > 1 else ""
        caption = f'  "{row["caption"]}"' if row["caption"] else ""
        click.echo(f"{row['score']:.4f}  {row['path']}{more}{caption}")
    if not rows:
        click.echo("no hits")


def _combine(terms: list[Any], embedded: dict[Any, Any]) -> Any:
    """The query vector ((D,) float32, L2-normalised: :func:`vibe_assets.query.combine_terms`),
    or a usage error (exit 2) when the terms cancel out."""
    from vibe_assets.query import QueryError, combine_terms

    try:
        return combine_terms(terms, embedded)
    except QueryError as exc:
        _fail(str(exc))


def _search_resources(spec: Any) -> tuple[dict[str, Any], Any]:
    """``default_resources()`` and the collection's CLIP model, which remembers checkpoint
    digests under ``$VIBE_HOME/models`` (naming a checkpoint model then costs no re-hash)."""
    from vibe_assets.definitions import default_resources
    from vibe_assets.resources.clip import ClipResource
    from vibe_assets.settings import vibe_home
    from vibe_assets.text_encoder import digest_cache_file

    resources = default_resources()
    base = resources["clip"]
    clip = ClipResource(
        model_name=spec.model,
        weights=spec.weights,
        batch_size=base.batch_size,
        device=base.device,
        digest_cache=str(digest_cache_file(vibe_home())),
    )
    return resources, clip


def _image_terms(images: tuple[Path, ...]) -> list[tuple[Any, str]]:
    """``[(QueryTerm(path, 1.0, "image"), sha256)]`` of the --image files (usage error exit 2
    when one cannot be read)."""
    from vibe_assets.hashing import sha256_file
    from vibe_assets.imaging.errors import PhotoError
    from vibe_assets.query import QueryTerm

    out = []
    for path in images:
        try:
            out.append((QueryTerm(str(path), 1.0, "image"), sha256_file(str(path))))
        except PhotoError as exc:
            _fail(f"--image {path}: {exc}")
    return out


def _stored_image_vectors(
    vectors: Any, collection: str, image_terms: list[tuple[Any, str]]
) -> dict[Any, Any]:
    """Vectors of the --image files that are points of ``collection`` (by SHA-256: a copy or a
    renamed file counts), read from the store: no decoding, no model."""
    from vibe_assets.vectors.base import point_id

    if not image_terms:
        return {}
    ids = {point_id(sha): term for term, sha in image_terms}
    found = vectors.retrieve(collection, list(ids), with_payload=False, with_vectors=True)
    return {ids[p.id]: p.vector for p in found if p.vector is not None}


def _embed_missing(
    terms: list[Any],
    embedded: dict[Any, Any],
    image_terms: list[tuple[Any, str]],
    resources: dict[str, Any],
    clip: Any,
) -> dict[Any, Any]:
    """Embeddings of the terms the collection did not hold: an image from the embedding cache
    (same model, by SHA-256) or decoded and embedded by the full model; texts by the cheapest
    text encoder (the ONNX text tower; the full model when it is loaded anyway for an image)."""
    from vibe_assets.imaging.errors import PhotoError
    from vibe_assets.resources.clip import ClipWeightsError
    from vibe_assets.settings import vibe_home
    from vibe_assets.text_encoder import TorchTextEncoder, open_text_encoder

    out: dict[Any, Any] = {}
    try:
        for term, sha in image_terms:
            if term in embedded:
                continue
            cached = resources["store"].get_embedding(clip.model_id, sha)
            out[term] = cached if cached is not None else clip.encode_photo(term.text)
        texts = sorted({t.text for t in terms if t.kind == "text" and t not in embedded})
        if texts:
            encoder = (
                TorchTextEncoder(clip)
                if clip.loaded
                else open_text_encoder(clip, vibe_home(), _say)
            )
            try:
                by_text = dict(zip(texts, encoder.encode(texts), strict=True))
            finally:
                encoder.close()  # before the store opens: the peak memory is one of them
            out.update((t, by_text[t.text]) for t in terms if t.kind == "text")
    except PhotoError as exc:
        _fail(f"--image: {exc}")
    except (ClipWeightsError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    return out


def _search_folder_keys(store: Any, values: tuple[str, ...]) -> list[str]:
    """Partition keys for --folder values: a registered key, or a path: the folder registered
    there and every registered folder below it (usage error exit 2 when nothing matches)."""
    from vibe_assets.partitions import is_valid_key, is_within

    keys: list[str] = []
    registry = store.registry
    registered = registry.list() if values else []
    for value in values:
        found = registry.get(value) if is_valid_key(value) else None
        if found is not None:
            matched = [found.key]
        else:
            try:
                root = Path(value).expanduser().resolve()
            except (OSError, RuntimeError):
                root = None
            matched = [f.key for f in registered if root is not None and is_within(f.path, root)]
        if not matched:
            _fail(f"--folder {value!r} is no registered folder (see `vibe-assets folders list`)")
        keys.extend(k for k in matched if k not in keys)
    return keys


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
    """List, delete, snapshot and restore vector collections."""


@collections.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def collections_list(as_json: bool) -> None:
    """Every collection in the vector store and every configured one: points, vector size,
    distance, engine (edge or server), model. JSON rows: name, configured, model, exists,
    engine, and for existing ones points, vector_size, distance, indexed_fields."""
    from vibe_assets.collections import collection_rows, load_collections
    from vibe_assets.definitions import default_resources

    resources = default_resources()
    with _vector_errors(), _open_vectors(resources) as vectors:
        existing = vectors.list_collections()
    rows = collection_rows(existing, load_collections(), resources["qdrant"].engine)
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


def _register_commands() -> None:
    """Commands defined in their own modules: duplicates (report, archive, undo), curate,
    serve (the web app) and, under ``collections``, snapshots and the migration to a server."""
    from vibe_assets.cli_curate import (
        collections_restore,
        collections_snapshot,
        collections_snapshots,
        curate,
        duplicates_archive,
        undo_command,
    )
    from vibe_assets.cli_duplicates import duplicates
    from vibe_assets.cli_migrate import collections_migrate_to_server
    from vibe_assets.cli_serve import serve

    duplicates.add_command(duplicates_archive)
    duplicates.add_command(undo_command)
    main.add_command(duplicates)
    main.add_command(curate)
    main.add_command(serve)
    for command in (
        collections_snapshot,
        collections_snapshots,
        collections_restore,
        collections_migrate_to_server,
    ):
        collections.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
