"""The pipeline's store: state (never evicted) and cache (one size limit), under ``VIBE_HOME``.

Layout of ``VIBE_HOME`` (details in :mod:`vibe_assets.state` and :mod:`vibe_assets.cache`):

- ``state.sqlite3``: STATE, never evicted. Folder registry, per-folder listings (rows: path,
  size, mtime_ns, inode, format, SHA-256; failures with their stage and code), sensor
  fingerprints, device probes, decode outcomes (preview info, or a failure with the decoder's
  fingerprint). Schema version + migrations; WAL; safe from several processes.
- ``cache/`` and ``previews/``: CACHE, recomputable, under ONE size limit
  (``VIBE_CACHE_SIZE_LIMIT_BYTES``, 8 GiB by default) that covers embeddings, captions, previews
  and thumbnails alike; the least recently stored entries are evicted past it. ``cache/`` is a
  diskcache whose :class:`SafeDisk` refuses to pickle or unpickle anything (a planted pickle
  reads as missing and is recomputed). Previews: ``previews/ab/<sha256>.jpg`` (long side
  512 px) and ``<sha256>.thumb.jpg`` (256 px), written atomically (temp file + ``os.replace``).
  An evicted preview is decoded again from the original when needed; previews of images no
  folder holds any more are collected at the end of ``photo_hashes``.
- ``qdrant/``, ``dagster/``: the embedded vector store and the Dagster instance.
- ``*.imported``: files of the layout before ``state.sqlite3``, imported once (safe to delete).

Keys are content addressed: pixels-derived data is keyed by the SHA-256 of the file bytes (plus the
model id for embeddings and captions), so renamed or copied files cost nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import diskcache
import numpy as np
from pydantic import PrivateAttr

from vibe_assets import state as state_db
from vibe_assets.cache import (
    Collected,
    SafeDisk,
    UnsafeCacheEntry,
    collect_unreferenced_previews,
    drop_preview,
    get_many,
    open_cache,
    preview_files,
    register_preview,
)
from vibe_assets.partitions import FolderRegistry
from vibe_assets.settings import cache_size_limit_bytes, preview_gc_grace_seconds, vibe_home
from vibe_assets.state import ListingWrite, StateDB, open_home_state

__all__ = ["Collected", "SafeDisk", "StoreResource", "UnsafeCacheEntry", "atomic_write"]

log = logging.getLogger(__name__)

UNIT_NORM_TOLERANCE = 1e-3  # a stored float32 embedding has L2 norm 1 within ~1e-6


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    A crash leaves either the old file or the new one, never a partial file.

    Raises:
        OSError: e.g. ``ENOSPC`` (disk full) or ``EACCES``; the temp file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unit_vector(key: str, raw: Any) -> np.ndarray | None:
    """The embedding stored as ``raw`` under ``key``: (D,) float32 when it is a unit vector,
    else None (logged when something else is there: garbage, truncated, NaN)."""
    if raw is None:
        return None
    if isinstance(raw, bytes) and len(raw) and len(raw) % 4 == 0:
        vector = np.frombuffer(raw, dtype=np.float32)
        with np.errstate(all="ignore"):
            norm = float(np.linalg.norm(vector.astype(np.float64)))
        if abs(norm - 1.0) <= UNIT_NORM_TOLERANCE:  # False for NaN and inf
            return vector
    log.warning("cache entry %s is not a unit float32 vector: it will be recomputed", key)
    return None


def _json_of(key: str, raw: Any) -> Any:
    if not isinstance(raw, str):
        return None
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("cache entry %s is not valid JSON: ignoring it", key)
        return None


def _caption_doc(doc: Any) -> dict[str, str] | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
        return None
    return doc


class StoreResource(dg.ConfigurableResource):
    """State and cache of the pipeline under ``home`` (``VIBE_HOME``); see the module docstring.

    Attributes:
        home: the ``VIBE_HOME`` directory (created on first use).
        size_limit_bytes: the cache's one size limit in bytes (embeddings, captions, previews
            and thumbnails together); None: ``VIBE_CACHE_SIZE_LIMIT_BYTES`` (default 8 GiB),
            read when the cache opens. Least recently stored entries are evicted past it (they
            are recomputed when needed, never lost data); the state is never evicted.
        preview_gc_grace_seconds: how long an image no folder holds any more keeps its preview
            (seconds); None: ``VIBE_PREVIEW_GC_GRACE_SECONDS`` (default one day).
    """

    home: str
    size_limit_bytes: int | None = None
    preview_gc_grace_seconds: float | None = None

    _state: StateDB | None = PrivateAttr(default=None)
    _cache: diskcache.Cache | None = PrivateAttr(default=None)
    _registry: FolderRegistry | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)

    @classmethod
    def from_env(cls) -> StoreResource:
        """Store at ``$VIBE_HOME`` (default ``~/.vibe_assets``), cache limit from
        ``VIBE_CACHE_SIZE_LIMIT_BYTES``."""
        return cls(home=str(vibe_home()), size_limit_bytes=cache_size_limit_bytes())

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """``home`` as an absolute path."""
        return Path(self.home).expanduser().resolve()

    @property
    def state(self) -> StateDB:
        """The state database (``home/state.sqlite3``), opened on first use; the old layout is
        imported the first time (:mod:`vibe_assets.legacy`).

        Raises:
            vibe_assets.state.SchemaTooNewError: written by a newer vibe_assets.
        """
        with self._lock:
            if self._state is None:
                self.root.mkdir(parents=True, exist_ok=True)
                self._state = open_home_state(self.root)
            return self._state

    @property
    def cache(self) -> diskcache.Cache:
        """The diskcache, opened on first use (after the state, so that an old layout's state
        documents are imported before anything can evict them)."""
        with self._lock:
            if self._cache is None:
                _ = self.state
                limit = self.size_limit_bytes
                self._cache = open_cache(
                    self.root, limit if limit is not None else cache_size_limit_bytes()
                )
            return self._cache

    @property
    def registry(self) -> FolderRegistry:
        """The folder registry (table ``folders`` of the state database)."""
        with self._lock:
            if self._registry is None:
                self._registry = FolderRegistry(self.state)
            return self._registry

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        """Close the cache and the state database (both reopen lazily on next use)."""
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None
            if self._state is not None:
                self._state.close()
                self._state = None
            self._registry = None

    def _get(self, key: str) -> Any:
        try:
            return self.cache.get(key)
        except UnsafeCacheEntry:
            log.warning("cache entry %s is pickled (not written by vibe_assets): ignoring it", key)
            self.cache.delete(key)
            return None

    def _get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        found, unsafe = get_many(self.cache, keys)
        for key in unsafe:
            log.warning("cache entry %s is pickled (not written by vibe_assets): ignoring it", key)
            self.cache.delete(key)
        return found

    def get_json(self, key: str) -> Any:
        """JSON document cached under ``key``; None when missing, unreadable or unsafe."""
        return _json_of(key, self._get(key))

    def set_json(self, key: str, value: Any) -> None:
        """Cache ``value`` (JSON-serialisable) under ``key`` (recomputable data only: it can be
        evicted)."""
        self.cache.set(key, json.dumps(value, separators=(",", ":")))

    def delete(self, key: str) -> None:
        """Remove cache entry ``key`` if present."""
        self.cache.delete(key)

    # -- per-folder listings (state) ------------------------------------------------------------
    def folder_scan(self, folder_key: str) -> dict[str, Any] | None:
        """Last scan of a folder written by ``photo_files``: ``{"root", "files": [{"path",
        "size", "mtime_ns", "inode", "format"}] (sorted by path), "failures", "skipped_hidden",
        "skipped_symlinks", "skipped_other", "removed"}``, or None."""
        return state_db.read_scan(self.state, folder_key)

    def set_folder_scan(self, folder_key: str, scan: dict[str, Any]) -> ListingWrite:
        """Store a folder's scan, writing only the rows that changed
        (:func:`vibe_assets.state.write_scan`)."""
        return state_db.write_scan(self.state, folder_key, scan)

    def folder_hashes(self, folder_key: str) -> dict[str, Any] | None:
        """Last hash listing of a folder written by ``photo_hashes``: ``{"root", "files":
        {path: {"path", "size", "mtime_ns", "inode", "format", "sha256"}}, "failures",
        "removed"}``, or None. A file scanned since with another stat is left out until hashed
        again."""
        return state_db.read_hashes(self.state, folder_key)

    def set_folder_hashes(self, folder_key: str, hashes: dict[str, Any]) -> ListingWrite:
        """Store a folder's hash listing, writing only the rows that changed
        (:func:`vibe_assets.state.write_hashes`)."""
        return state_db.write_hashes(self.state, folder_key, hashes)

    def collect_unreferenced_previews(self, limit: int | None = None) -> Collected:
        """Delete previews (files, cache entries) and decode outcomes of images that no folder
        listing has referenced for ``preview_gc_grace_seconds``
        (:func:`vibe_assets.cache.collect_unreferenced_previews`); at most ``limit`` images
        (default 5,000) per call."""
        grace = self.preview_gc_grace_seconds
        kwargs = {} if limit is None else {"limit": limit}
        return collect_unreferenced_previews(
            self.state,
            self.cache,
            self.root,
            grace if grace is not None else preview_gc_grace_seconds(),
            **kwargs,
        )

    # -- per-image decode outcomes (state) and previews (cache) ---------------------------------
    def preview_info(self, sha256: str) -> dict[str, Any] | None:
        """Decode result of an image: ``{"width", "height" (pixels), "format", "decoder",
        "exif"}`` and ``"phash"`` once the preview's perceptual hash is stored (or None if not
        decoded, or if it failed).

        A record without positive integer ``width``/``height`` and a string ``format`` (corrupt,
        or written by something else) reads as None, so the image is decoded again. The preview
        FILE may still be missing (evicted from the cache): see
        :func:`vibe_assets.assets.previews.needs_decode`.
        """
        return _preview_info(sha256, state_db.get_decode_outcome(self.state, sha256))

    def preview_infos(self, shas: Iterable[str]) -> dict[str, dict[str, Any]]:
        """:meth:`preview_info` of many images in one read of the state database: ``{sha256:
        info}`` of those that have one (one query per 500 images instead of one each)."""
        outcomes = state_db.get_decode_outcomes(self.state, shas)
        infos = {sha: _preview_info(sha, outcome) for sha, outcome in outcomes.items()}
        return {sha: info for sha, info in infos.items() if info is not None}

    def decode_failure(self, sha256: str) -> dict[str, Any] | None:
        """Recorded content failure of these bytes: ``{"code", "message", "decoder"}`` (or
        None).

        ``decoder`` is the fingerprint of the decoding code that failed
        (:func:`vibe_assets.assets.previews.decoder_fingerprint`); it is None in a record
        written before fingerprints existed. Whether a failure still counts is the caller's
        decision (:func:`vibe_assets.assets.previews.needs_decode`): one made by another decoder
        is retried once.
        """
        outcome = state_db.get_decode_outcome(self.state, sha256)
        if outcome is None or outcome["status"] != "failure":
            return None
        return {k: v for k, v in outcome.items() if k != "status"}

    def preview_path(self, sha256: str) -> Path:
        """Path of the preview JPEG of an image (long side 512 px)."""
        return preview_files(self.root, sha256)[0]

    def thumbnail_path(self, sha256: str) -> Path:
        """Path of the thumbnail JPEG of an image (long side 256 px)."""
        return preview_files(self.root, sha256)[1]

    def has_preview_files(self, sha256: str) -> bool:
        """True when both the preview and the thumbnail file exist (not evicted)."""
        return self.preview_path(sha256).is_file() and self.thumbnail_path(sha256).is_file()

    def put_preview(
        self, sha256: str, preview: bytes, thumbnail: bytes, info: dict[str, Any]
    ) -> None:
        """Write preview and thumbnail files, count them in the cache, then record ``info`` as
        the decode outcome (replacing a failure). Files first: a crash leaves files without a
        record (decoded again), never a record without files.

        Raises:
            OSError: a file cannot be written (e.g. ``ENOSPC``).
        """
        atomic_write(self.preview_path(sha256), preview)
        atomic_write(self.thumbnail_path(sha256), thumbnail)
        register_preview(self.cache, self.root, sha256)
        state_db.put_preview_outcome(self.state, sha256, info)

    def put_decode_failure(
        self, sha256: str, failure: dict[str, Any], decoder: str | None = None
    ) -> None:
        """Record that these bytes cannot be decoded by ``decoder`` (the decoder fingerprint,
        see :meth:`decode_failure`): ``failure`` is ``{"code", "message"}``. The record stays
        until a preview of these bytes is stored; callers retry it when the bytes change or
        the fingerprint does."""
        state_db.put_failure_outcome(self.state, sha256, failure, decoder)

    def forget_preview(self, sha256: str) -> None:
        """Drop an image's preview record and files (e.g. its preview is unreadable) so the next
        run decodes it again; a failure record is kept."""
        drop_preview(self.cache, self.root, sha256)
        state_db.delete_preview_outcome(self.state, sha256)

    # -- embeddings and captions (cache) --------------------------------------------------------
    @staticmethod
    def _embedding_key(model_id: str, sha256: str) -> str:
        return f"embedding/{model_id}/{sha256}"

    def get_embedding(self, model_id: str, sha256: str) -> np.ndarray | None:
        """Stored embedding, ``(D,) float32`` with L2 norm 1, or None.

        Embeddings are unit vectors; a value that is not one (garbage bytes, a truncated
        buffer, NaN) reads as None, so the image is embedded again.
        """
        key = self._embedding_key(model_id, sha256)
        return _unit_vector(key, self._get(key))

    def get_embeddings(self, model_id: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
        """:meth:`get_embedding` of many images at once (:func:`vibe_assets.cache.get_many`: one
        query per 500 instead of one each): ``{sha256: (D,) float32}`` of those that have a
        valid one."""
        keys = {self._embedding_key(model_id, sha): sha for sha in shas}
        out = {}
        for key, raw in self._get_many(keys).items():
            vector = _unit_vector(key, raw)
            if vector is not None:
                out[keys[key]] = vector
        return out

    def has_embedding(self, model_id: str, sha256: str) -> bool:
        """True when a valid embedding of ``sha256`` by ``model_id`` is stored (see
        :meth:`get_embedding`: a corrupt one does not count)."""
        return self.get_embedding(model_id, sha256) is not None

    def put_embeddings(self, model_id: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store ``(sha256, (D,) float32)`` pairs in one transaction (one batch at a time)."""
        with self.cache.transact():
            for sha256, vector in items:
                data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
                self.cache.set(self._embedding_key(model_id, sha256), data)

    @staticmethod
    def _caption_key(model_id: str, sha256: str) -> str:
        return f"caption/{model_id}/{sha256}"

    def get_caption(self, model_id: str, sha256: str) -> dict[str, str] | None:
        """Stored caption ``{"text", "captioned_at" (ISO 8601 UTC)}`` by ``model_id``, or None."""
        return _caption_doc(self.get_json(self._caption_key(model_id, sha256)))

    def get_captions(self, model_id: str, shas: Iterable[str]) -> dict[str, dict[str, str]]:
        """:meth:`get_caption` of many images at once (one query per 500): ``{sha256:
        {"text", "captioned_at"}}`` of those that have one."""
        keys = {self._caption_key(model_id, sha): sha for sha in shas}
        out = {}
        for key, raw in self._get_many(keys).items():
            doc = _caption_doc(_json_of(key, raw))
            if doc is not None:
                out[keys[key]] = doc
        return out

    def has_caption(self, model_id: str, sha256: str) -> bool:
        """True when ``sha256`` has a caption by ``model_id``."""
        return self._caption_key(model_id, sha256) in self.cache

    def put_captions(self, model_id: str, items: Iterable[tuple[str, str]]) -> None:
        """Store ``(sha256, caption text)`` pairs in one transaction, stamped with the time now."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self.cache.transact():
            for sha256, text in items:
                self.set_json(
                    self._caption_key(model_id, sha256), {"text": text, "captioned_at": now}
                )


def _preview_info(sha256: str, outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    """The preview record of a decode outcome (see :meth:`StoreResource.preview_info`)."""
    if outcome is None or outcome["status"] != "preview":
        return None
    info = {k: v for k, v in outcome.items() if k != "status"}
    if not (
        all(type(info.get(k)) is int and info[k] > 0 for k in ("width", "height"))
        and isinstance(info.get("format"), str)
        and isinstance(info.get("exif", {}), dict)
    ):
        log.warning("preview record of %s is malformed: it will be decoded again", sha256)
        return None
    return info
