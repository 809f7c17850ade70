"""What the web pages do, without HTTP: search, photo details, duplicate groups, plans, moves,
undo, collections and uploads (Dagster-free apart from the resources' types).

Everything here calls the modules the CLI uses, never a copy of them:
:mod:`vibe_assets.query` (composed queries, rows), :mod:`vibe_assets.text_encoder` (the ONNX
text tower), :class:`~vibe_assets.resources.clip.ClipResource` (images),
:mod:`vibe_assets.duplicates` (groups, saved reports), :mod:`vibe_assets.moves` (plans,
checks, journals, undo) and the vector stores (:mod:`vibe_assets.vectors`).

One :class:`WebService` lives as long as the app: it keeps the CLIP text encoder (and the full
model once an image was searched) loaded, and opens the vector store per request through a
:class:`VectorLease` that keeps it open for ``hold_seconds`` after the last request (an
embedded collection admits one process at a time: an ingest run waits at most that long).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vibe_assets.duplicates import TIERS, DuplicateGroup, Member, read_report, report_path
from vibe_assets.imaging.formats import HEAD_BYTES, IMAGE_EXTENSIONS, sniff_format
from vibe_assets.moves import (
    KIND_CURATE,
    KIND_DUPLICATES,
    ApplyResult,
    Journal,
    JournalError,
    MoveError,
    Plan,
    UndoResult,
    apply_plan,
    check_plan,
    journals_dir,
    list_journals,
    plan_duplicates,
    plan_images,
    read_journal,
    rename_noreplace,
    resync,
    undo,
)
from vibe_assets.query import (
    QueryError,
    QueryTerm,
    check_time_range,
    combine_terms,
    describe_terms,
    parse_query,
    parse_time_bound,
    result_row,
)
from vibe_assets.scan import is_archive_path
from vibe_assets.vectors.base import PointFilter, QdrantBusyError, VectorStore, point_id
from vibe_assets.web.config import WebSettings

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
JOURNAL_RE = re.compile(r"^[0-9A-Za-z.]{1,40}-(duplicates|curate)\.jsonl$")
COLLECTION_RE = re.compile(r"^[a-z0-9_]{1,48}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}$")
UPLOADS_DIR = "uploads"
MAX_UPLOAD_FILES = 16
MINI_SIZE = 96
"""Long side (pixels) of the small thumbnails linked from Dagster metadata."""
_TEXT_CACHE = 256
_UPLOAD_CACHE = 32
_MINI_CACHE = 512


class WebError(Exception):
    """A request the service refuses; ``status`` is the HTTP status to answer with and the
    message says why (shown on the page)."""

    def __init__(self, message: str, status: int = 400, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.problems = list(problems)


def check_sha(value: str) -> str:
    """``value`` when it is a lowercase hex SHA-256.

    Raises:
        WebError: 404 otherwise (nothing else is ever looked up in the store: no paths).
    """
    if not SHA_RE.match(value or ""):
        raise WebError("no such image", 404)
    return value


class _Lru(OrderedDict):
    """A tiny LRU mapping (not thread-safe on its own: callers hold a lock)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def take(self, key: Any) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None


# -- the vector store, held briefly --------------------------------------------------------------


class VectorLease:
    """Opens the vector store on demand and closes it ``hold_seconds`` after the last use, so
    consecutive requests share one open (an embedded collection costs ~0.4 s to open at 100k
    points) while an ingest run is never kept waiting long. One request uses it at a time.

    Args:
        resource: the :class:`~vibe_assets.resources.vectors.VectorStoreResource`.
        hold_seconds: idle seconds before the store is closed (0: closed after every use).
        wait_seconds: how long opening waits for a collection a run holds.
    """

    def __init__(self, resource: Any, hold_seconds: float, wait_seconds: float) -> None:
        self.resource = resource
        self.hold_seconds = hold_seconds
        self.wait_seconds = wait_seconds
        self._lock = threading.RLock()
        self._store: VectorStore | None = None
        self._last = 0.0
        self._closer: threading.Thread | None = None
        self._stop = threading.Event()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[VectorStore]:
        """The open store, for one request (blocks while another request uses it).

        Raises:
            QdrantBusyError: a run held the collection past ``wait_seconds``.
        """
        with self._lock:
            if self._store is None:
                self._store = self.resource.open(wait_seconds=self.wait_seconds)
            try:
                yield self._store
            except QdrantBusyError:
                self._close()
                raise
            finally:
                self._last = time.monotonic()
                if self.hold_seconds <= 0:
                    self._close()
                else:
                    self._start_closer()

    def _close(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    def _start_closer(self) -> None:
        if self._closer is not None and self._closer.is_alive():
            return
        self._closer = threading.Thread(target=self._close_when_idle, daemon=True)
        self._closer.start()

    def _close_when_idle(self) -> None:
        while not self._stop.wait(min(0.25, self.hold_seconds)):
            with self._lock:
                if self._store is None:
                    return
                if time.monotonic() - self._last >= self.hold_seconds:
                    self._close()
                    return

    def close(self) -> None:
        """Close the store now (app shutdown)."""
        self._stop.set()
        with self._lock:
            self._close()


# -- view models ----------------------------------------------------------------------------------


@dataclass
class SearchParams:
    """One search as the page sends it (every field optional text, as typed)."""

    q: str = ""
    like: str = ""
    folder: str = ""
    after: str = ""
    before: str = ""
    camera: str = ""
    page: int = 1

    def query_string(self, **changes: Any) -> str:
        """The URL query of these parameters with ``changes`` applied (empty ones left out)."""
        from urllib.parse import urlencode

        values = {**self.__dict__, **changes}
        return urlencode({k: v for k, v in values.items() if v not in ("", None, 1) or k == "q"})


@dataclass
class SearchPage:
    """What the search page shows: ``rows`` (cards), whether there is a next page, the query
    as read (``terms``), an ``error`` message, ``mode`` (``browse`` without a query) and the
    server ``seconds`` it took."""

    params: SearchParams
    rows: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False
    terms: str = ""
    error: str = ""
    mode: str = "browse"
    seconds: float = 0.0
    like_thumb: str = ""
    random_weights: bool = False


@dataclass
class ChosenGroup:
    """A duplicate group with the keeper the page chose (:class:`vibe_assets.moves.GroupLike`:
    ``keep_path`` is the path that stays)."""

    id: str
    tier: str
    members: list[Member]
    keep: Member
    reason: str
    keep_path: str


@dataclass
class GroupsView:
    """Duplicate groups of one tier and where they come from: ``source`` is ``report`` (the
    ``duplicate_groups`` asset's saved report, ``created_at``) or ``live`` (computed now)."""

    tier: str
    groups: list[DuplicateGroup]
    source: str
    created_at: str


def plan_digest(plan: Plan) -> str:
    """A short digest of a plan's moves (what the confirmation page showed): the apply step
    recomputes the plan and refuses when the digest differs."""
    text = json.dumps([[m.source, m.dest, m.sha256] for m in plan.moves])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def human_bytes(n: int | None) -> str:
    """``1.2 MiB`` style size (``?`` when unknown)."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# -- the service ----------------------------------------------------------------------------------


class WebService:
    """The web app's state and actions (one per app; thread-safe).

    Args:
        settings: the app's settings.
        resources: ``{"store", "clip", "blip", "qdrant"}``; default
            :func:`vibe_assets.definitions.default_resources` (read from the environment now).

    Raises:
        vibe_assets.collections.CollectionConfigError: bad collections configuration, or
            ``settings.collection`` is not configured.
    """

    def __init__(self, settings: WebSettings, resources: dict[str, Any] | None = None) -> None:
        from vibe_assets.collections import CollectionConfigError, load_collections
        from vibe_assets.resources.clip import ClipResource
        from vibe_assets.settings import vibe_home
        from vibe_assets.text_encoder import digest_cache_file

        if resources is None:
            from vibe_assets.definitions import default_resources

            resources = default_resources()
        self.settings = settings
        self.resources = resources
        self.home = vibe_home()
        specs = load_collections()
        wanted = settings.collection or specs[0].name
        spec = next((s for s in specs if s.name == wanted), None)
        if spec is None:
            raise CollectionConfigError(
                f"no configured collection {wanted!r}; configured: {[s.name for s in specs]}"
            )
        self.spec = spec
        base = resources["clip"]
        self.clip = ClipResource(
            model_name=spec.model,
            weights=spec.weights,
            batch_size=base.batch_size,
            device=base.device,
            digest_cache=str(digest_cache_file(self.home)),
        )
        self.vectors = VectorLease(
            resources["qdrant"], settings.hold_seconds, settings.wait_seconds
        )
        self._encoder: Any = None
        self._model_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._texts = _Lru(_TEXT_CACHE)
        self._uploads = _Lru(_UPLOAD_CACHE)
        self._minis = _Lru(_MINI_CACHE)
        self._groups: dict[str, GroupsView] = {}
        self._changed_at = 0.0
        self._cameras: tuple[float, list[str]] = (0.0, [])

    @property
    def store(self) -> Any:
        """The :class:`~vibe_assets.resources.store.StoreResource`."""
        return self.resources["store"]

    def close(self) -> None:
        """Release the vector store and the text encoder."""
        self.vectors.close()
        with self._model_lock:
            if self._encoder is not None:
                self._encoder.close()
                self._encoder = None

    # -- embeddings -----------------------------------------------------------------------------
    def _text_vectors(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Embeddings of ``texts`` by the collection's model: the ONNX text tower kept open
        (exported on first use), or the full model when ``VIBE_TEXT_ENCODER=torch``; recent
        texts come from memory."""
        from vibe_assets.text_encoder import open_text_encoder

        out: dict[str, np.ndarray] = {}
        with self._cache_lock:
            for text in texts:
                hit = self._texts.take(text)
                if hit is not None:
                    out[text] = hit
        missing = [t for t in dict.fromkeys(texts) if t not in out]
        if missing:
            with self._model_lock:
                if self._encoder is None:
                    self._encoder = open_text_encoder(self.clip, self.home, log.warning)
                encoded = self._encoder.encode(missing)
            with self._cache_lock:
                for text, vector in zip(missing, encoded, strict=True):
                    self._texts.put(text, vector)
                    out[text] = vector
        return out

    def warm_up(self) -> None:
        """Load the text encoder now (exporting it on first use), so the first search is fast."""
        self._text_vectors(["a photo"])

    def _image_vector(self, sha: str, vectors: VectorStore | None = None) -> np.ndarray | None:
        """The vector of image ``sha``: its point in the collection, else its stored embedding
        (same model), else an uploaded image's; None when none is known."""
        with self._cache_lock:
            uploaded = self._uploads.take(sha)
        if uploaded is not None:
            return uploaded["vector"]
        if vectors is not None and vectors.collection_exists(self.spec.name):
            found = vectors.retrieve(
                self.spec.name, [point_id(sha)], with_payload=False, with_vectors=True
            )
            if found and found[0].vector is not None:
                return found[0].vector
        return self.store.get_embedding(self.clip.model_id, sha)

    def upload_for_search(self, filename: str, data: bytes) -> str:
        """Embed an uploaded image for "search by image" (never written into the library):
        an image the collection or the embedding cache knows (by SHA-256) costs nothing, another
        one is decoded like ingest does and embedded by the full CLIP model (loaded once, kept).

        Returns:
            The image's SHA-256 (use it as ``like=``); kept in memory for the last 32 uploads.

        Raises:
            WebError: too large, not an image, or it cannot be decoded (400).
        """
        from vibe_assets.imaging.errors import PhotoError
        from vibe_assets.resources.clip import ClipWeightsError

        check_upload(filename, data, self.settings.max_upload_bytes)
        sha = hashlib.sha256(data).hexdigest()
        with self.vectors() as vectors:
            known = self._image_vector(sha, vectors)
        thumb = small_data_url(data)
        if known is None:
            suffix = Path(filename).suffix.lower()
            with tempfile.TemporaryDirectory(prefix="vibe-web-") as tmp:
                path = Path(tmp) / f"upload{suffix}"
                path.write_bytes(data)
                try:
                    with self._model_lock:
                        known = self.clip.encode_photo(path)
                except PhotoError as exc:
                    raise WebError(f"{filename}: cannot be decoded ({exc})") from exc
                except ClipWeightsError as exc:
                    raise WebError(str(exc), 500) from exc
        with self._cache_lock:
            self._uploads.put(sha, {"vector": known, "thumb": thumb, "name": filename})
        return sha

    # -- search ---------------------------------------------------------------------------------
    def folder_keys_for(self, value: str) -> list[str]:
        """Partition keys for a folder filter: a registered key, or a path: the folder
        registered there and every registered folder below it.

        Raises:
            WebError: nothing registered matches (400).
        """
        from vibe_assets.partitions import is_valid_key

        value = value.strip()
        registry = self.store.registry
        if is_valid_key(value) and registry.get(value) is not None:
            return [value]
        try:
            root = str(Path(value).expanduser().resolve())
        except (OSError, RuntimeError):
            root = value
        keys = [
            f.key
            for f in registry.list()
            if str(f.path) == root or str(f.path).startswith(root.rstrip(os.sep) + os.sep)
        ]
        if not keys:
            raise WebError(f"folder {value!r} is no registered folder")
        return keys

    def cameras(self) -> list[str]:
        """Camera models found in the decoded images' EXIF (sorted; cached for 60 s)."""
        stamp, names = self._cameras
        if time.monotonic() - stamp < 60 and stamp:
            return names
        with self.store.state.read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT json_extract(exif, '$.camera_model') FROM decode_outcomes"
                " WHERE status = 'preview' AND exif LIKE '%camera_model%' LIMIT 500"
            ).fetchall()
        names = sorted({r[0] for r in rows if isinstance(r[0], str) and r[0]})
        self._cameras = (time.monotonic(), names)
        return names

    def folders(self) -> list[Any]:
        """Registered folders (:class:`vibe_assets.partitions.Folder`), oldest first."""
        return self.store.registry.list()

    def _filter(self, params: SearchParams) -> PointFilter:
        after = parse_time_bound(params.after, "from") if params.after.strip() else None
        before = parse_time_bound(params.before, "until") if params.before.strip() else None
        check_time_range(after, before)
        return PointFilter.where(
            folder_keys=self.folder_keys_for(params.folder) if params.folder.strip() else None,
            taken_after=after,
            taken_before=before,
            camera_models=params.camera.strip() or None,
        )

    def search(self, params: SearchParams) -> SearchPage:
        """One page of results: the composed text query ``q`` (see :mod:`vibe_assets.query`)
        and/or the image ``like`` (a SHA-256), filtered; without either, the collection's
        images in id order (browse).

        A bad query, date or folder is reported in the page's ``error``, not raised.

        Raises:
            QdrantBusyError: a run held the collection past ``wait_seconds``.
        """
        start = time.perf_counter()
        page = SearchPage(params=params, random_weights=self.clip.is_random)
        size = self.settings.page_size
        params.page = max(1, min(int(params.page or 1), 100))
        try:
            flt = self._filter(params)
            terms = parse_query(params.q) if params.q.strip() else []
            like = check_sha(params.like) if params.like else ""
        except (QueryError, WebError) as exc:
            page.error = str(exc)
            return page
        name = self.spec.name
        embedded: dict[QueryTerm, np.ndarray] = {}
        if terms:
            by_text = self._text_vectors([t.text for t in terms])
            embedded.update((t, by_text[t.text]) for t in terms)
        offset = (params.page - 1) * size
        with self.vectors() as vectors:
            if not vectors.collection_exists(name):
                page.error = (
                    f"collection {name!r} does not exist yet: ingest a folder first "
                    "(vibe-assets ingest PATH)"
                )
                return page
            if like:
                vector = self._image_vector(like, vectors)
                if vector is None:
                    page.error = "that image is not known any more: upload it again"
                    return page
                term = QueryTerm(like, 1.0, "image")
                terms = [term, *terms]
                embedded[term] = vector
                page.like_thumb = self._like_thumb(like)
            if terms:
                page.mode = "search"
                shown = [QueryTerm("(image)", t.weight) if t.kind == "image" else t for t in terms]
                page.terms = describe_terms(shown)
                try:
                    query_vector = combine_terms(terms, embedded)
                except QueryError as exc:
                    page.error = str(exc)
                    return page
                hits = vectors.query(name, query_vector, offset + size + 1, flt)
                found = [(h.score, h.payload) for h in hits[offset:]]
            else:
                points = vectors.scroll(name, flt, page_size=min(1000, offset + size + 1))
                found = [
                    (None, p.payload) for p in itertools.islice(points, offset, offset + size + 1)
                ]
        page.has_more = len(found) > size
        page.rows = [self.card(score, payload) for score, payload in found[:size]]
        page.seconds = time.perf_counter() - start
        return page

    def _like_thumb(self, sha: str) -> str:
        with self._cache_lock:
            uploaded = self._uploads.take(sha)
        if uploaded is not None:
            return uploaded["thumb"]
        return f"/thumb/{sha}"

    def card(self, score: float | None, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A result card: :func:`vibe_assets.query.result_row` plus ``name`` (file name),
        ``has_thumb``, ``width``/``height``."""
        row = result_row(score if score is not None else 0.0, payload)
        if score is None:
            row["score"] = None
        sha = row.get("sha256") or ""
        row["name"] = Path(row["path"]).name
        row["has_thumb"] = bool(SHA_RE.match(sha)) and self.store.thumbnail_path(sha).is_file()
        row["width"], row["height"] = payload.get("width"), payload.get("height")
        return row

    # -- one photo ------------------------------------------------------------------------------
    def photo(self, sha: str) -> dict[str, Any]:
        """Everything shown about one image: ``payload`` (its point, ``{}`` when the collection
        has none), ``info`` (decode record: width, height, format, EXIF), ``paths`` (listed
        files), ``has_preview``.

        Raises:
            WebError: unknown image (404).
        """
        from vibe_assets.moves import image_paths

        sha = check_sha(sha)
        with self.vectors() as vectors:
            payload: dict[str, Any] = {}
            if vectors.collection_exists(self.spec.name):
                found = vectors.retrieve(self.spec.name, [point_id(sha)])
                payload = dict(found[0].payload) if found else {}
        info = self.store.preview_info(sha) or {}
        paths = image_paths(self.store.state, [sha]).get(sha) or list(payload.get("paths") or [])
        if not payload and not info and not paths:
            raise WebError("no such image", 404)
        exif = dict(info.get("exif") or {})
        return {
            "sha256": sha,
            "payload": payload,
            "info": info,
            "exif": exif,
            "paths": paths,
            "name": Path(paths[0]).name if paths else sha[:12],
            "has_preview": self.store.preview_path(sha).is_file(),
        }

    def thumbnail_file(self, sha: str, preview: bool = False) -> Path:
        """The stored thumbnail (256 px) or preview (512 px) file of an image.

        Raises:
            WebError: not a SHA-256, or no such file in the store (404).
        """
        sha = check_sha(sha)
        path = self.store.preview_path(sha) if preview else self.store.thumbnail_path(sha)
        if not path.is_file():
            raise WebError("no stored thumbnail for this image", 404)
        return path

    def mini_thumbnail(self, sha: str) -> tuple[bytes, str]:
        """A :data:`MINI_SIZE` px JPEG made from the stored thumbnail (for Dagster metadata),
        and its ETag; kept in memory (the last 512).

        Raises:
            WebError: as :meth:`thumbnail_file`.
        """
        from PIL import Image

        path = self.thumbnail_file(sha)
        st = path.stat()
        etag = f'"m{sha[:16]}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        with self._cache_lock:
            hit = self._minis.take(etag)
        if hit is not None:
            return hit, etag
        with Image.open(path) as im:
            im.thumbnail((MINI_SIZE, MINI_SIZE))
            out = io.BytesIO()
            im.convert("RGB").save(out, "JPEG", quality=80)
        data = out.getvalue()
        with self._cache_lock:
            self._minis.put(etag, data)
        return data, etag

    # -- duplicate groups -----------------------------------------------------------------------
    def groups(self, tier: str, refresh: bool = False) -> GroupsView:
        """The groups of ``tier``: the saved report of the ``duplicate_groups`` asset when it
        covers the tier and is newer than this app's last move, else computed now (and kept
        until ``refresh`` or the next move).

        Raises:
            WebError: unknown tier (400).
        """
        from datetime import UTC, datetime

        from vibe_assets.duplicates import find_groups

        if tier not in TIERS:
            raise WebError(f"unknown tier {tier!r}; one of {', '.join(TIERS)}")
        if not refresh and tier in self._groups:
            return self._groups[tier]
        path = report_path(self.store.root, self.spec.name)
        view = None
        if not refresh and path.is_file() and path.stat().st_mtime > self._changed_at:
            with contextlib.suppress(ValueError, FileNotFoundError):
                doc = read_report(path)
                if tier in doc.get("tiers", []):
                    groups = [g for g in doc["groups"] if g.tier == tier]
                    view = GroupsView(tier, groups, "report", str(doc.get("created_at")))
        if view is None:
            model_id = self.clip.model_id if tier == "similar" else None
            groups = find_groups(self.store, model_id, tiers=[tier])
            now = datetime.now(UTC).isoformat(timespec="seconds")
            view = GroupsView(tier, groups, "live", now)
        self._groups[tier] = view
        return view

    def chosen_groups(self, tier: str, keep: Mapping[str, str]) -> list[ChosenGroup]:
        """The groups ``keep`` names (``{group id: the path to keep}``), each with that keeper.

        Raises:
            WebError: no group chosen, an unknown group id, or a path that is not the group's.
        """
        if not keep:
            raise WebError("choose at least one group to archive")
        by_id = {g.id: g for g in self.groups(tier).groups}
        chosen = []
        for gid, path in keep.items():
            group = by_id.get(gid)
            if group is None:
                raise WebError(f"no {tier} group {gid} any more: reload the page", 409)
            member = next((m for m in group.members if path in m.paths), None)
            if member is None:
                raise WebError(f"{path} is not a file of group {gid}")
            chosen.append(
                ChosenGroup(group.id, group.tier, group.members, member, group.reason, path)
            )
        return chosen

    def duplicates_plan(self, tier: str, keep: Mapping[str, str]) -> tuple[Plan, list[str]]:
        """The plan archiving the non-keepers of the chosen groups into ``_VibeDuplicates``
        (:func:`vibe_assets.moves.plan_duplicates`) and every reason it would be refused
        (:func:`vibe_assets.moves.check_plan`; reads the disk, moves nothing)."""
        plan = plan_duplicates(self.store.state, self.chosen_groups(tier, keep), tiers={tier})
        return plan, check_plan(plan)

    def curate_plan(self, shas: Sequence[str]) -> tuple[Plan, list[str]]:
        """The plan archiving every listed file of the images ``shas`` into ``_VibeArchive``
        (:func:`vibe_assets.moves.plan_images`), and its problems.

        Raises:
            WebError: nothing selected, or a value that is not a SHA-256.
        """
        if not shas:
            raise WebError("select at least one photo")
        wanted = [check_sha(s) for s in shas]
        plan = plan_images(self.store.state, wanted, KIND_CURATE, note="selected in the web app")
        return plan, check_plan(plan)

    def apply(self, plan: Plan, digest: str, snapshot: bool) -> ApplyResult:
        """Apply ``plan`` as ``vibe-assets duplicates archive --apply`` / ``curate archive
        --apply`` do: a snapshot of every configured collection first (when ``snapshot``), the
        moves with their journal, then a re-sync of the collections.

        Raises:
            WebError: the plan is not the one confirmed (``digest`` differs: 409), it is empty,
                has problems, or a snapshot cannot be taken; MoveError's problems are passed on.
        """
        from vibe_assets.vectors.base import SnapshotUnsupportedError

        if plan_digest(plan) != digest:
            raise WebError("the plan changed since it was shown: check it again", 409)
        if not plan.moves:
            raise WebError("nothing to move")
        problems = check_plan(plan)
        if problems:
            raise WebError(f"{len(problems)} problems: nothing was moved", 409, problems)
        sources = self._sources()
        state = self.store.state
        with self.vectors() as vectors:
            taken = []
            if snapshot:
                try:
                    taken = [vectors.snapshot(n) for n in sources if vectors.collection_exists(n)]
                except SnapshotUnsupportedError as exc:
                    raise WebError(f"{exc}; nothing was moved", 409) from exc
            try:
                result = apply_plan(
                    plan,
                    state,
                    self.store.root,
                    sync=lambda keys: resync(vectors, state, sources, keys),
                    header={"snapshots": [s.as_dict() for s in taken], "via": "web"},
                )
            except MoveError as exc:
                raise WebError(str(exc), 409, exc.problems) from exc
            finally:
                self._moved()
        return result

    def _sources(self) -> dict[str, Any]:
        from vibe_assets.point_source import collection_point_sources

        return collection_point_sources(self.resources)

    def _moved(self) -> None:
        self._changed_at = time.time() + 1
        self._groups.clear()

    # -- journals -------------------------------------------------------------------------------
    def journal_path(self, name: str) -> Path:
        """The journal file called ``name`` under ``$VIBE_HOME/journals`` (names only).

        Raises:
            WebError: not a journal name, or no such journal (404).
        """
        if not JOURNAL_RE.match(name or ""):
            raise WebError("no such journal", 404)
        path = journals_dir(self.store.root) / name
        if not path.is_file():
            raise WebError("no such journal", 404)
        return path

    def journals(self, kind: str | None = None) -> list[Journal]:
        """Journals, newest first (of ``kind`` when given: ``duplicates`` or ``curate``)."""
        found = list_journals(self.store.root)
        return [j for j in reversed(found) if kind is None or j.header.get("kind") == kind]

    def journal(self, name: str) -> Journal:
        """One journal, parsed.

        Raises:
            WebError: no such journal (404) or unreadable (500).
        """
        try:
            return read_journal(self.journal_path(name))
        except JournalError as exc:
            raise WebError(str(exc), 500) from exc

    def undo(self, name: str) -> UndoResult:
        """Move every file of journal ``name`` back (:func:`vibe_assets.moves.undo`) and
        re-sync the collections.

        Raises:
            WebError: no such journal, or the undo is refused (its problems; nothing moved).
        """
        path = self.journal_path(name)
        sources = self._sources()
        state = self.store.state
        with self.vectors() as vectors:
            try:
                return undo(path, state, sync=lambda keys: resync(vectors, state, sources, keys))
            except JournalError as exc:
                raise WebError(str(exc), 400) from exc
            except MoveError as exc:
                raise WebError(str(exc), 409, exc.problems) from exc
            finally:
                self._moved()

    # -- collections ----------------------------------------------------------------------------
    def collection_rows(self) -> list[dict[str, Any]]:
        """Every collection in the store and every configured one (as ``vibe-assets
        collections list --json``), with the number of snapshots of each existing one."""
        from vibe_assets.collections import collection_rows, load_collections

        with self.vectors() as vectors:
            existing = vectors.list_collections()
            snapshots = {}
            for info in existing:
                with contextlib.suppress(Exception):
                    snapshots[info.name] = len(vectors.list_snapshots(info.name))
        rows = collection_rows(existing, load_collections(), self.resources["qdrant"].engine)
        for row in rows:
            row["snapshots"] = snapshots.get(row["name"])
            row["searched"] = row["name"] == self.spec.name
        return rows

    def snapshot(self, name: str) -> Any:
        """Take a snapshot of collection ``name`` (:class:`~vibe_assets.vectors.base.SnapshotInfo`).

        Raises:
            WebError: no such collection (404), or the store has no snapshots.
        """
        from vibe_assets.vectors.base import CollectionNotFoundError, SnapshotUnsupportedError

        self._check_name(name)
        with self.vectors() as vectors:
            try:
                return vectors.snapshot(name)
            except CollectionNotFoundError as exc:
                raise WebError(f"collection {name!r} does not exist", 404) from exc
            except SnapshotUnsupportedError as exc:
                raise WebError(str(exc), 409) from exc

    def delete_collection(self, name: str) -> int:
        """Delete collection ``name`` from the vector store and forget its recorded syncs (as
        ``vibe-assets collections delete``); previews, embeddings and captions stay.

        Returns:
            The number of points it held.

        Raises:
            WebError: no such collection (404).
        """
        from vibe_assets.state import reset_synced

        self._check_name(name)
        with self.vectors() as vectors:
            if not vectors.collection_exists(name):
                raise WebError(f"collection {name!r} does not exist", 404)
            points = vectors.count(name)
            vectors.delete_collection(name)
        reset_synced(self.store.state, name)
        return points

    def create_collection(self, name: str, model: str, weights: str, distance: str) -> str:
        """Create collection ``name`` in the vector store for ``model``'s vector size. A name
        that is not configured yet is appended to the collections file
        (``$VIBE_COLLECTIONS_FILE``, else ``$VIBE_HOME/collections.toml``, which is first
        written with the collections configured now), so the next code-location load has its
        ``qdrant_<name>`` asset.

        Returns:
            One sentence saying what was done.

        Raises:
            WebError: bad name, model, weights or distance; a configured name with another
                model; an unknown architecture.
        """
        from vibe_assets.collections import (
            DISTANCES,
            CollectionSpec,
            collections_file,
            load_collections,
        )
        from vibe_assets.resources.clip import ClipResource, ClipWeightsError

        self._check_name(name)
        model, weights, distance = model.strip(), weights.strip(), distance.strip() or "cosine"
        if not MODEL_RE.match(model) or not MODEL_RE.match(weights):
            raise WebError("model and weights must be open_clip names, tags or checkpoint paths")
        if distance not in DISTANCES:
            raise WebError(f"distance must be one of {', '.join(sorted(DISTANCES))}")
        specs = load_collections()
        spec = next((s for s in specs if s.name == name), None)
        if spec is not None and (spec.model, spec.weights) != (model, weights):
            raise WebError(f"{name!r} is configured with {spec.model}/{spec.weights}")
        try:
            dim = ClipResource(model_name=model, weights=weights).embedding_dim()
        except ClipWeightsError as exc:
            raise WebError(str(exc)) from exc
        said = ""
        if spec is None:
            spec = CollectionSpec(name, model, weights, distance)
            path = collections_file() or self.home / "collections.toml"
            text = path.read_text() if path.is_file() else "".join(map(_toml_entry, specs))
            path.parent.mkdir(parents=True, exist_ok=True)
            gap = "\n\n" if text.strip() else ""
            path.write_text(text.rstrip("\n") + gap + _toml_entry(spec))
            said = f" and added to {path} (reload the code location in the Dagster UI)"
        with self.vectors() as vectors:
            created = vectors.ensure_collection(name, dim, spec.vector_distance)
        state = "created" if created else "already existed"
        return f"collection {name!r} ({dim}-d {spec.distance}) {state}{said}"

    @staticmethod
    def _check_name(name: str) -> None:
        if not COLLECTION_RE.match(name or ""):
            raise WebError("a collection name is 1-48 characters of a-z, 0-9 and _", 404)

    def dagster_links(self, key: str) -> dict[str, str]:
        """Links into the Dagster UI for folder partition ``key``: its runs, and the
        collection asset's partition page."""
        from urllib.parse import quote

        base = self.settings.dagster_url
        runs = f"{base}/runs?q%5B0%5D={quote(f'tag:dagster/partition={key}', safe='')}"
        asset = f"{base}/assets/{self.spec.asset_name}?partition={quote(key, safe='')}"
        return {"runs": runs, "asset": asset}

    # -- uploads --------------------------------------------------------------------------------
    def upload_targets(self) -> list[dict[str, str]]:
        """Where uploads may go: every registered folder that exists (``folder:<key>``) and an
        ``uploads`` folder under each configured photo root (``root:<n>``; the
        ``new_photo_folders`` sensor ingests what lands there)."""
        from vibe_assets.settings import photo_roots

        out = [
            {
                "id": f"root:{i}",
                "label": f"{root / UPLOADS_DIR} (new folder under a photo root)",
                "path": str(root / UPLOADS_DIR),
            }
            for i, root in enumerate(photo_roots())
        ]
        for folder in self.folders():
            if not folder.vanished and folder.path.is_dir() and not is_archive_path(folder.path):
                path = str(folder.path)
                out.append({"id": f"folder:{folder.key}", "label": path, "path": path})
        return out

    def _target_folder(self, target: str) -> tuple[Path, Path]:
        """``(destination folder, the registered root it must stay inside)`` of an upload
        target id (see :meth:`upload_targets`).

        Raises:
            WebError: unknown target, or a folder that is not a real folder inside its root.
        """
        from vibe_assets.settings import photo_roots

        kind, _, value = target.partition(":")
        if kind == "root" and value.isdigit():
            roots = photo_roots()
            if int(value) >= len(roots):
                raise WebError("unknown upload destination")
            root = roots[int(value)]
            dest = root / UPLOADS_DIR
            dest.mkdir(exist_ok=True)
        elif kind == "folder":
            folder = self.store.registry.get(value)
            if folder is None or folder.vanished:
                raise WebError("unknown upload destination")
            root = dest = folder.path
        else:
            raise WebError("unknown upload destination")
        real = Path(os.path.realpath(dest))
        inside = real.is_relative_to(os.path.realpath(root))
        if dest.is_symlink() or not real.is_dir() or not inside:
            raise WebError(f"{dest} is not a folder inside {root}: refused")
        if is_archive_path(dest):
            raise WebError(f"{dest} is an archive folder: refused")
        return real, Path(os.path.realpath(root))

    def save_uploads(
        self, target: str, files: Sequence[tuple[str, bytes]]
    ) -> tuple[list[str], list[str], bool]:
        """Write uploaded files into the target folder. Each file's size and type are checked
        before anything of it is written (:func:`check_upload`); it is written to a hidden
        temporary file beside its final name (never scanned), then renamed without replacing
        anything (a clash gets `` (1)``, `` (2)``... before the extension).

        Returns:
            ``(saved paths, refusals "name: why", whether the sensor will pick them up)``.

        Raises:
            WebError: no file, too many, or an unknown destination.
        """
        from vibe_assets.settings import photo_roots

        if not files:
            raise WebError("choose at least one file")
        if len(files) > MAX_UPLOAD_FILES:
            raise WebError(f"at most {MAX_UPLOAD_FILES} files per upload")
        dest, _root = self._target_folder(target)
        saved, refused = [], []
        for filename, data in files:
            try:
                name = check_upload(filename, data, self.settings.max_upload_bytes)
            except WebError as exc:
                refused.append(str(exc))
                continue
            saved.append(str(_write_new(dest, name, data)))
        sensor = any(dest.is_relative_to(r) for r in photo_roots())
        return saved, refused, sensor


def _toml_entry(spec: Any) -> str:
    """One ``[[collection]]`` table (strings quoted as TOML basic strings)."""
    lines = ["[[collection]]"]
    for key in ("name", "model", "weights", "distance"):
        lines.append(f"{key} = {json.dumps(getattr(spec, key))}")
    return "\n".join(lines) + "\n"


def safe_name(filename: str) -> str:
    """The file name part of an uploaded name, without folders, control characters or a
    leading dot.

    Raises:
        WebError: nothing usable is left.
    """
    base = re.split(r"[\\/]", filename or "")[-1]
    base = "".join(c for c in base if c.isprintable() and c not in '<>:"|?*').strip().lstrip(".")
    if not base or base in (".", ".."):
        raise WebError(f"{filename!r}: not a usable file name")
    return base[:200]


def check_upload(filename: str, data: bytes, max_bytes: int) -> str:
    """Check an uploaded file before anything is written: an image extension
    (:data:`vibe_assets.imaging.formats.IMAGE_EXTENSIONS`), at most ``max_bytes`` bytes, not
    empty, and content that sniffs as an image format (magic numbers, not the name).

    Returns:
        The safe file name (:func:`safe_name`).

    Raises:
        WebError: the first check that fails (the message names the file).
    """
    name = safe_name(filename)
    ext = Path(name).suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise WebError(f"{name}: {ext or 'no extension'} is not an image type this app takes")
    if len(data) > max_bytes:
        size, limit = human_bytes(len(data)), human_bytes(max_bytes)
        raise WebError(f"{name}: {size} is over the {limit} limit")
    if not data:
        raise WebError(f"{name}: empty file")
    if sniff_format(data[:HEAD_BYTES]) is None:
        raise WebError(f"{name}: the content is not an image (unknown format)")
    return name


def _write_new(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as a new file ``name`` in ``folder`` (a free name: ``stem (n).ext``),
    via a hidden temporary file and a no-replace rename."""
    stem, ext = Path(name).stem, Path(name).suffix
    tmp = folder / f".{name}.vibe-upload-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for n in range(1000):
            target = folder / (name if n == 0 else f"{stem} ({n}){ext}")
            try:
                rename_noreplace(str(tmp), str(target))
                return target
            except FileExistsError:
                continue
        raise WebError(f"{name}: too many files of that name")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def small_data_url(data: bytes, size: int = 160) -> str:
    """A ``data:`` URL of a small JPEG of an uploaded image (shown beside its results), or ""
    when Pillow cannot read it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im)
            im.thumbnail((size, size))
            out = io.BytesIO()
            im.convert("RGB").save(out, "JPEG", quality=80)
    except Exception:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


__all__ = [
    "KIND_CURATE",
    "KIND_DUPLICATES",
    "GroupsView",
    "SearchPage",
    "SearchParams",
    "VectorLease",
    "WebError",
    "WebService",
    "check_upload",
    "plan_digest",
]
