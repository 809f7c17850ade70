"""``photo_previews``: decode each new image once into a preview and a thumbnail.

The asset itself is materialized by the ``decode_and_embed`` step
(:mod:`vibe_assets.assets.embeddings`), which hides decoding behind CLIP inference; this module
holds the decode stage: what to decode, decoding and storing one image, and the run's file report.
"""

import functools
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from PIL import Image

from vibe_assets.batching import Batch, prefetch_batches
from vibe_assets.imaging.decode import decode_photo, encode_preview, encode_thumbnail
from vibe_assets.imaging.errors import ErrorCode, PhotoError
from vibe_assets.imaging.phash import phash_of_jpeg, store_phash
from vibe_assets.partitions import photo_folder_partitions
from vibe_assets.point_source import paths_by_sha
from vibe_assets.report import failure_metadata, run_metadata
from vibe_assets.resources.store import StoreResource
from vibe_assets.runs import raise_if_cancelled
from vibe_assets.settings import cpu_budget

PHOTO_PREVIEWS = dg.AssetKey("photo_previews")
PREVIEW_SIZE = 512  # px, long side; CLIP (224 px) and BLIP (384 px) inputs both fit under it.
THUMBNAIL_SIZE = 256  # px, long side.
PROGRESS_EVERY_SECONDS = 10.0

# Failures that depend on the moment, not on the bytes: never cached, retried next run.
TRANSIENT_CODES = {
    ErrorCode.ERR_FILE_VANISHED,
    ErrorCode.ERR_PERMISSION_DENIED,
    ErrorCode.ERR_READ_FAILED,
}

# Version of our own decode logic (vibe_assets.imaging: decode.py, formats.py, progressive.py,
# exif.py). Bump it by hand when a change there may read files that failed before: every
# cached content failure is then retried once (see decoder_fingerprint).
DECODE_LOGIC_VERSION = 1


def _library_versions() -> dict[str, str]:
    """Versions of the decoding libraries: Pillow, rawpy and its LibRaw, pillow-heif and its
    libheif (``"none"`` when pillow-heif is not installed)."""
    import PIL
    import rawpy

    versions = {
        "pillow": PIL.__version__,
        "rawpy": rawpy.__version__,
        "libraw": ".".join(str(part) for part in rawpy.libraw_version),
    }
    try:
        import pillow_heif
    except ImportError:
        versions.update(pillow_heif="none", libheif="none")
    else:
        versions["pillow_heif"] = pillow_heif.__version__
        try:
            versions["libheif"] = str(pillow_heif.libheif_version())
        except Exception:  # an unusual build without the call: the wrapper's version decides
            versions["libheif"] = "unknown"
    return versions


@functools.cache
def decoder_fingerprint() -> str:
    """What decodes originals in this process, as text stored with every cached content
    failure: ``"vibe_decode=<DECODE_LOGIC_VERSION>;pillow=...;rawpy=...;libraw=...;
    pillow_heif=...;libheif=..."``.

    A cached failure whose fingerprint differs from this one (a library was upgraded, or
    :data:`DECODE_LOGIC_VERSION` bumped) or that has none (written by an older version) does not
    count: the file is decoded once more (:func:`needs_decode`); if it fails again its failure
    is cached with this fingerprint and not retried while the installation stays the same.

    Computed on first call (a few module version reads, well under a millisecond after the
    decoders are imported), then cached for the process; never at import.
    """
    parts = {"vibe_decode": str(DECODE_LOGIC_VERSION), **_library_versions()}
    return ";".join(f"{name}={version}" for name, version in parts.items())


def require_hashes(store: StoreResource, key: str) -> dict[str, Any]:
    """The stored ``photo_hashes`` listing of a partition.

    Raises:
        dg.Failure: ``photo_hashes`` has not been materialized for that partition.
    """
    hashes = store.folder_hashes(key)
    if hashes is None:
        raise dg.Failure(
            f"no hashes for partition {key!r}: materialize photo_hashes first",
            allow_retries=False,
        )
    return hashes


def previewed_shas(store: StoreResource, partition_keys: list[str]) -> list[str]:
    """Unique SHA-256s, in listing order, of the images of these partitions that have a preview
    (the inputs of every model stage)."""
    seen: dict[str, None] = {}
    for key in partition_keys:
        for sha in paths_by_sha(require_hashes(store, key)):
            if sha not in seen and store.preview_info(sha) is not None:
                seen[sha] = None
    return list(seen)


Stat = tuple[int, int, int]  # (size, mtime_ns, inode) of a file when it was scanned


def _stat_of(entry: dict[str, Any]) -> Stat:
    return (entry["size"], entry["mtime_ns"], entry["inode"])


def _changed_since_hashed(path: str, expected: Stat | None) -> bool:
    """True when ``path`` no longer has the (size, mtime_ns, inode) it had when it was scanned
    and hashed (or is gone): its bytes may not be the ones its SHA-256 names."""
    if expected is None:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return True
    return (st.st_size, st.st_mtime_ns, st.st_ino) != expected


_CHANGED = "the file changed after it was hashed (being written or replaced?); read again next run"


class _Changed(PhotoError):
    """A failure seen on a file that changed after it was hashed: reported, never cached."""


class PreviewWriteError(RuntimeError):
    """A preview cannot be written under the store (e.g. disk full): our problem, not the
    photo's, so it fails the run instead of being recorded against the file."""


@dataclass(frozen=True)
class DecodeOutcome:
    """What :func:`decode_and_store` did with one image: ``preview`` (the stored preview's JPEG
    bytes) and ``phash`` (its perceptual hash, 16 hex digits, see
    :mod:`vibe_assets.imaging.phash`) on success, else ``error``; ``seconds`` of wall time spent
    on it (decode, encode, hash, store)."""

    preview: bytes | None = None
    error: PhotoError | None = None
    seconds: float = 0.0
    phash: str | None = None


def decode_and_store(
    store: StoreResource,
    sha256: str,
    paths: list[str],
    stats: dict[str, Stat] | None = None,
) -> DecodeOutcome:
    """Decode the first readable path holding these bytes and store preview + thumbnail, then
    the stored JPEG's perceptual hash with the decode outcome (``decode_outcomes.phash``, see
    :func:`vibe_assets.imaging.phash.phash_of_jpeg`; ~0.5 ms per image).

    With ``stats`` (``{path: (size, mtime_ns, inode)}`` from the listing), a file that changed
    between its hashing and the end of its decoding is not trusted: nothing is stored under
    ``sha256`` (the pixels may be another file's), its failure is not cached, and the next run
    hashes it again. A content failure (not transient, file unchanged) is cached by hash with
    the :func:`decoder_fingerprint` of this process (see :func:`needs_decode`).

    Raises:
        PreviewWriteError: the preview cannot be written under the store (e.g. disk full).
    """
    start = time.perf_counter()
    err: PhotoError | None = None
    for path in paths:
        expected = (stats or {}).get(path)
        try:
            decoded = decode_photo(path, preview_size=PREVIEW_SIZE)
        except PhotoError as exc:
            err = exc
            if exc.code in TRANSIENT_CODES:
                continue  # another copy of the same bytes may still be readable
            if _changed_since_hashed(path, expected):
                err = _Changed(exc.code, f"{exc.detail}; {_CHANGED}" if exc.detail else _CHANGED)
                continue
            break
        if _changed_since_hashed(path, expected):
            err = _Changed(ErrorCode.ERR_READ_FAILED, _CHANGED)
            continue
        info = {
            "width": decoded.width,
            "height": decoded.height,
            "format": decoded.format,
            "decoder": decoded.decoder,
            "exif": decoded.exif,
        }
        preview = encode_preview(decoded.image)
        phash = phash_of_jpeg(preview)  # our own JPEG: always readable
        try:
            store.put_preview(
                sha256, preview, encode_thumbnail(decoded.image, THUMBNAIL_SIZE), info
            )
        except OSError as exc:  # e.g. disk full under VIBE_HOME: a problem of ours, not the file's
            raise PreviewWriteError(f"cannot write preview under {store.root}: {exc}") from exc
        # after the outcome row exists (put_preview replaces the row, clearing the column); a
        # crash in between leaves it NULL, computed from the preview file when first needed
        store_phash(store.state, sha256, phash)
        return DecodeOutcome(preview=preview, seconds=time.perf_counter() - start, phash=phash)
    assert err is not None
    if err.code not in TRANSIENT_CODES and not isinstance(err, _Changed):
        store.put_decode_failure(sha256, err.to_dict(), decoder=decoder_fingerprint())
    return DecodeOutcome(error=err, seconds=time.perf_counter() - start)


def current_decode_failure(store: StoreResource, sha256: str) -> dict[str, Any] | None:
    """The cached content failure of these bytes (``{"code", "message", "decoder"}``) when the
    decoder of this process made it (same :func:`decoder_fingerprint`), else None: a failure by
    another decoder, or one written before fingerprints existed, no longer counts."""
    failure = store.decode_failure(sha256)
    if failure is None or failure.get("decoder") != decoder_fingerprint():
        return None
    return failure


def needs_decode(store: StoreResource, sha256: str) -> bool:
    """True when these bytes have neither a usable preview nor a content failure cached by the
    current decoder (:func:`current_decode_failure`).

    So a file whose failure was cached by other library versions (an upgraded rawpy/LibRaw,
    Pillow or pillow-heif/libheif, or a bumped :data:`DECODE_LOGIC_VERSION`) is decoded once
    more; an unchanged installation never retries it. A preview whose files were evicted from
    the cache (its decode outcome is state and stays) is decoded again too.
    """
    if current_decode_failure(store, sha256) is not None:
        return False
    if store.preview_info(sha256) is None:
        return True
    return not store.has_preview_files(sha256)


@dataclass
class DecodePlan:
    """The decode work of a run: ``listings`` (``{partition key: photo_hashes listing}``),
    ``todo`` (``{sha256: [paths holding those bytes]}`` with neither a preview nor a content
    failure cached by the current decoder, see :func:`needs_decode`), ``stats``
    (``{path: (size, mtime_ns, inode)}`` when hashed) and ``unique`` (unique images in the
    partitions)."""

    listings: dict[str, dict[str, Any]]
    todo: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, Stat] = field(default_factory=dict)
    unique: int = 0


def plan_decode(store: StoreResource, partition_keys: Sequence[str]) -> DecodePlan:
    """What to decode for these partitions (see :class:`DecodePlan`).

    Raises:
        dg.Failure: ``photo_hashes`` has not been materialized for one of the partitions.
    """
    plan = DecodePlan(listings={key: require_hashes(store, key) for key in partition_keys})
    all_shas: set[str] = set()
    for hashes in plan.listings.values():
        for sha, paths in paths_by_sha(hashes).items():
            all_shas.add(sha)
            if needs_decode(store, sha):
                plan.todo.setdefault(sha, []).extend(paths)
                plan.stats.update((p, _stat_of(hashes["files"][p])) for p in paths)
    plan.todo = {sha: sorted(set(paths)) for sha, paths in plan.todo.items()}
    plan.unique = len(all_shas)
    return plan


def decode_all(
    context: dg.AssetExecutionContext, store: StoreResource, plan: DecodePlan
) -> dict[str, PhotoError]:
    """Decode ``plan.todo`` in a thread pool (one thread per core); returns this run's failures
    by sha. Progress is logged every ``PROGRESS_EVERY_SECONDS`` and at the end.

    Raises:
        PreviewWriteError: a preview cannot be written under the store.
    """
    failures: dict[str, PhotoError] = {}
    start = last_log = time.perf_counter()

    def work(item: tuple[str, list[str]]) -> tuple[str, DecodeOutcome]:
        return item[0], decode_and_store(store, item[0], item[1], plan.stats)

    # one thread per usable CPU: Pillow and LibRaw release the GIL while decoding
    with ThreadPoolExecutor(max_workers=cpu_budget()) as pool:
        for done, (sha, outcome) in enumerate(pool.map(work, plan.todo.items()), start=1):
            if outcome.error is not None:
                failures[sha] = outcome.error
            raise_if_cancelled()  # Ctrl-C: pending decodes are cancelled with the map
            now = time.perf_counter()
            if now - last_log > PROGRESS_EVERY_SECONDS or done == len(plan.todo):
                context.log.info(
                    f"decoded {done}/{len(plan.todo)} images ({done / (now - start):.1f} img/s), "
                    f"{len(failures)} failed"
                )
                last_log = now
    return failures


def folder_report(
    store: StoreResource, hashes: dict[str, Any], new_failures: dict[str, PhotoError]
) -> tuple[list[str], list[dict[str, str]]]:
    """Processed paths and failed ``{"path", "code", "message"}`` rows of one folder: this
    run's failures (``new_failures`` by sha), else the cached failure of files not decoded
    again (whatever decoder made it), else processed when a preview exists."""
    processed: list[str] = []
    failures: list[dict[str, str]] = list(hashes["failures"])
    for sha, paths in paths_by_sha(hashes).items():
        err = new_failures.get(sha)
        failure = err.to_dict() if err else store.decode_failure(sha)
        if failure is None and store.preview_info(sha) is None:
            failure = PhotoError(ErrorCode.ERR_READ_FAILED, "no preview was produced").to_dict()
        if failure is None:
            processed.extend(paths)
        else:
            row = {"code": failure["code"], "message": failure["message"]}
            failures.extend({"path": p, **row} for p in paths)
    return processed, failures


def previews_metadata(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    plan: DecodePlan,
    new_failures: dict[str, PhotoError],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The ``photo_previews`` file report, per partition and for the run.

    Per partition (``{key: metadata}``), that folder's own numbers: every file processed or
    failed with a code (``files_processed``, ``failed``, ``failed_by_code``, ``failures``
    table, ``failures_json``), ``unique_images`` (unique images of the folder), ``decoded``
    (of them, decoded by this run) and ``from_cache`` (not decoded again: a preview or a
    cached failure existed). An image shared by two folders counts in each.

    Run level: :func:`vibe_assets.report.run_metadata` of the run's totals (range runs only),
    where images shared by folders count once (``run_unique_images``, ``run_decoded``,
    ``run_from_cache``) and files add up (``run_files_processed``, ``run_failed``).
    Logs one line per partition with failures.
    """
    per_partition: dict[str, dict[str, Any]] = {}
    processed = failed = 0
    for key, hashes in plan.listings.items():
        ok, bad = folder_report(store, hashes, new_failures)
        shas = paths_by_sha(hashes)
        todo = [sha for sha in shas if sha in plan.todo]
        per_partition[key] = {
            "files_processed": len(ok),
            "unique_images": len(shas),
            "decoded": sum(sha not in new_failures for sha in todo),
            "from_cache": len(shas) - len(todo),
            **failure_metadata(bad),
        }
        processed += len(ok)
        failed += len(bad)
        if bad:
            context.log.info(f"{key}: {len(ok)} files processed, {len(bad)} failed")
    totals = {
        "files_processed": processed,
        "failed": failed,
        "unique_images": plan.unique,
        "decoded": len(plan.todo) - len(new_failures),
        "from_cache": plan.unique - len(plan.todo),
    }
    return per_partition, run_metadata(list(plan.listings), totals)


def photo_previews_spec() -> dg.AssetSpec:
    """The ``photo_previews`` asset (materialized by the ``decode_and_embed`` step)."""
    return dg.AssetSpec(
        PHOTO_PREVIEWS,
        deps=["photo_hashes"],
        partitions_def=photo_folder_partitions,
        group_name="ingest",
        kinds={"python"},
        description=(
            "One upright sRGB preview (JPEG, long side 512 px) and thumbnail (JPEG, 256 px) per "
            "unique image, decoded once from the original (JPEG at reduced scale, RAW from its "
            "embedded preview when large enough) and stored by SHA-256. Undecodable files get a "
            "structured error code; content failures are cached by hash and by the decoding "
            "libraries' versions, so a file is retried when its bytes change or once after the "
            "decoders change. Each partition's metadata is its folder's file report: every file "
            "is processed or failed with a code."
        ),
    )


def open_preview(
    store: StoreResource,
    sha256: str,
    paths: Sequence[str] = (),
    stats: dict[str, Stat] | None = None,
) -> Image.Image:
    """The stored preview of an image as an RGB image. When its file is missing (evicted from
    the cache, or collected) it is decoded again from ``paths`` (the files holding these bytes)
    and stored, so the model stages never depend on the cache having kept it.

    Raises:
        FileNotFoundError: the preview is missing and ``paths`` is empty.
        PhotoError: it is missing and decoding again failed (the failure is recorded as usual).
        PreviewWriteError: it could not be stored again.
        OSError: the preview exists but cannot be read.
    """
    try:
        with Image.open(store.preview_path(sha256)) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        if not paths:
            raise
    outcome = decode_and_store(store, sha256, list(paths), stats)
    if outcome.preview is None:
        assert outcome.error is not None
        raise outcome.error
    with Image.open(io.BytesIO(outcome.preview)) as im:
        return im.convert("RGB")


def listed_paths(
    listings: Iterable[dict[str, Any]],
) -> tuple[dict[str, list[str]], dict[str, Stat]]:
    """``({sha256: [paths]}, {path: (size, mtime_ns, inode)})`` of hash listings: what
    :func:`open_preview` needs to decode an evicted preview again."""
    paths: dict[str, list[str]] = {}
    stats: dict[str, Stat] = {}
    for hashes in listings:
        for sha, found in paths_by_sha(hashes).items():
            paths.setdefault(sha, []).extend(found)
            stats.update((p, _stat_of(hashes["files"][p])) for p in found)
    return paths, stats


def preview_batches(
    store: StoreResource,
    shas: Sequence[str],
    load: Callable[[str], Any],
    batch_size: int,
    log: Callable[[str], None],
    verb: str,
) -> Iterator[Batch[str, Any]]:
    """Batches of ``load(sha)`` (a preview opened and prepared for a model), prefetched in a
    thread pool up to two batches ahead (:func:`vibe_assets.batching.prefetch_batches`).

    A preview that cannot be read is forgotten (the next run decodes it again) and logged; it
    stays in ``Batch.errors`` for the caller to count, and batches with no readable preview are
    not yielded. A :class:`PreviewWriteError` (``load`` decoding an evicted preview again and
    failing to store it) is raised. Progress (``"<verb> n/N images (x img/s)"``) is logged every
    ``PROGRESS_EVERY_SECONDS``.
    """
    done = 0
    start = last_log = time.perf_counter()
    for batch in prefetch_batches(shas, load, batch_size):
        for sha, exc in batch.errors:
            if isinstance(exc, PreviewWriteError):
                raise exc  # ours (e.g. disk full): fails the run, never blamed on the photo
            log(f"preview of {sha} unreadable ({exc}); it will be re-decoded next run")
            store.forget_preview(sha)
        if batch.items:
            yield batch
            done += len(batch.items)
        now = time.perf_counter()
        if now - last_log > PROGRESS_EVERY_SECONDS:
            log(f"{verb} {done}/{len(shas)} images ({done / (now - start):.2f} img/s)")
            last_log = now
