"""Content-addressed store for per-file state: scans, hashes, previews, embeddings.

Everything lives under ``VIBE_HOME``:

- ``cache/``: a size-limited `diskcache` (SQLite) holding JSON documents and raw ``bytes``
  (embeddings). Its :class:`SafeDisk` refuses to pickle or unpickle anything, so a planted cache
  entry cannot run code when read: a pickled entry reads as missing and is recomputed.
- ``previews/ab/<sha256>.jpg`` (long side 512 px) and ``<sha256>.thumb.jpg`` (256 px): plain
  image files, written atomically (temp file + ``os.replace``).
- ``registry.sqlite3``: the folder registry (:class:`vibe_assets.partitions.FolderRegistry`).

Keys are content addressed: pixels-derived data is keyed by the SHA-256 of the file bytes (plus the
model id for embeddings), so renamed or copied files cost nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import diskcache
import numpy as np
from pydantic import PrivateAttr

from vibe_assets.partitions import FolderRegistry
from vibe_assets.settings import vibe_home

log = logging.getLogger(__name__)

DEFAULT_SIZE_LIMIT_BYTES = 8 * 2**30  # 8 GiB: ~4M embeddings of 512 float32 plus JSON documents.
UNIT_NORM_TOLERANCE = 1e-3  # a stored float32 embedding has L2 norm 1 within ~1e-6


class UnsafeCacheEntry(ValueError):
    """A cache entry was stored pickled (not written by us): it is never loaded."""


class SafeDisk(diskcache.Disk):
    """diskcache ``Disk`` that only stores ``str``/``bytes``/``int``/``float`` keys and values.

    Raises:
        TypeError: on storing any other type (which the stock ``Disk`` would pickle).
        UnsafeCacheEntry: on reading a pickled key or value.
    """

    _ALLOWED = (str, bytes, int, float)

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) not in self._ALLOWED:
            raise TypeError(f"cache keys must be str/bytes/int/float, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise UnsafeCacheEntry("refusing to unpickle a cache key")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not read and type(value) not in self._ALLOWED:
            raise TypeError(f"cache values must be str/bytes/int/float, not {type(value).__name__}")
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise UnsafeCacheEntry("refusing to unpickle a cache value")
        return super().fetch(mode, filename, value, read)


def _sha_dir(root: Path, sha256: str) -> Path:
    return root / sha256[:2]


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


class StoreResource(dg.ConfigurableResource):
    """Per-file state of the pipeline under ``home`` (``VIBE_HOME``); see the module docstring.

    Attributes:
        home: state directory (created on first use).
        size_limit_bytes: diskcache size limit in bytes; least-recently-stored entries are evicted
            past it (they are recomputed when needed, never lost data).
    """

    home: str
    size_limit_bytes: int = DEFAULT_SIZE_LIMIT_BYTES

    _cache: diskcache.Cache | None = PrivateAttr(default=None)
    _registry: FolderRegistry | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> StoreResource:
        """Store at ``$VIBE_HOME`` (default ``~/.vibe_assets``)."""
        return cls(home=str(vibe_home()))

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """``home`` as an absolute path."""
        return Path(self.home).expanduser().resolve()

    @property
    def cache(self) -> diskcache.Cache:
        """The diskcache, opened on first use."""
        if self._cache is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(
                str(self.root / "cache"),
                disk=SafeDisk,
                size_limit=self.size_limit_bytes,
                eviction_policy="least-recently-stored",
            )
        return self._cache

    @property
    def registry(self) -> FolderRegistry:
        """The folder registry (``home/registry.sqlite3``)."""
        if self._registry is None:
            self._registry = FolderRegistry(self.root / "registry.sqlite3")
        return self._registry

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        """Close the diskcache (reopened lazily on next use)."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def _get(self, key: str) -> Any:
        try:
            return self.cache.get(key)
        except UnsafeCacheEntry:
            log.warning("cache entry %s is pickled (not written by vibe_assets): ignoring it", key)
            self.cache.delete(key)
            return None

    def get_json(self, key: str) -> Any:
        """JSON document stored under ``key``; None when missing, unreadable or unsafe."""
        raw = self._get(key)
        if not isinstance(raw, str):
            return None
        try:
            return json.loads(raw)
        except ValueError:
            log.warning("cache entry %s is not valid JSON: ignoring it", key)
            return None

    def set_json(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``."""
        self.cache.set(key, json.dumps(value, separators=(",", ":")))

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        self.cache.delete(key)

    # -- per-folder documents -------------------------------------------------------------------
    def folder_scan(self, folder_key: str) -> dict[str, Any] | None:
        """Last scan of a folder written by ``photo_files``."""
        return self.get_json(f"scan/{folder_key}")

    def set_folder_scan(self, folder_key: str, scan: dict[str, Any]) -> None:
        self.set_json(f"scan/{folder_key}", scan)

    def folder_hashes(self, folder_key: str) -> dict[str, Any] | None:
        """Last hash listing of a folder written by ``photo_hashes``."""
        return self.get_json(f"hashes/{folder_key}")

    def set_folder_hashes(self, folder_key: str, hashes: dict[str, Any]) -> None:
        self.set_json(f"hashes/{folder_key}", hashes)

    # -- per-image (content addressed) ----------------------------------------------------------
    def preview_info(self, sha256: str) -> dict[str, Any] | None:
        """Decode result of an image: width, height, format, decoder (or None if not decoded).

        A record without positive integer ``width``/``height`` and a string ``format`` (corrupt,
        or written by something else) reads as None, so the image is decoded again.
        """
        info = self.get_json(f"preview/{sha256}")
        if info is None:
            return None
        if not (
            isinstance(info, dict)
            and all(type(info.get(k)) is int and info[k] > 0 for k in ("width", "height"))
            and isinstance(info.get("format"), str)
            and isinstance(info.get("exif", {}), dict)
        ):
            log.warning("preview record of %s is malformed: it will be decoded again", sha256)
            return None
        return info

    def decode_failure(self, sha256: str) -> dict[str, Any] | None:
        """Cached content failure of these bytes: ``{"code", "message", "decoder"}`` (or None).

        ``decoder`` is the fingerprint of the decoding code that failed
        (:func:`vibe_assets.assets.previews.decoder_fingerprint`); it is None in a record
        written before fingerprints existed. Whether a failure still counts is the caller's
        decision (:func:`vibe_assets.assets.previews.needs_decode`): one made by another decoder
        is retried once.
        """
        doc = self.get_json(f"failure/{sha256}")
        if not isinstance(doc, dict) or "code" not in doc:
            return None
        return {**doc, "decoder": doc.get("decoder")}

    def preview_path(self, sha256: str) -> Path:
        """Path of the preview JPEG of an image (long side 512 px)."""
        return _sha_dir(self.root / "previews", sha256) / f"{sha256}.jpg"

    def thumbnail_path(self, sha256: str) -> Path:
        """Path of the thumbnail JPEG of an image (long side 256 px)."""
        return _sha_dir(self.root / "previews", sha256) / f"{sha256}.thumb.jpg"

    def put_preview(
        self, sha256: str, preview: bytes, thumbnail: bytes, info: dict[str, Any]
    ) -> None:
        """Write preview and thumbnail files, then record ``info`` (files first: crash-safe)."""
        atomic_write(self.preview_path(sha256), preview)
        atomic_write(self.thumbnail_path(sha256), thumbnail)
        self.cache.delete(f"failure/{sha256}")
        self.set_json(f"preview/{sha256}", info)

    def put_decode_failure(
        self, sha256: str, failure: dict[str, Any], decoder: str | None = None
    ) -> None:
        """Record that these bytes cannot be decoded by ``decoder`` (the decoder fingerprint,
        see :meth:`decode_failure`): ``failure`` is ``{"code", "message"}``. The record stays
        until a preview of these bytes is stored; callers retry it when the bytes change or
        the fingerprint does."""
        self.set_json(f"failure/{sha256}", {**failure, "decoder": decoder})

    def forget_preview(self, sha256: str) -> None:
        """Drop a preview record (e.g. its file went missing) so the next run re-decodes it."""
        self.cache.delete(f"preview/{sha256}")

    @staticmethod
    def _embedding_key(model_id: str, sha256: str) -> str:
        return f"embedding/{model_id}/{sha256}"

    def get_embedding(self, model_id: str, sha256: str) -> np.ndarray | None:
        """Stored embedding, ``(D,) float32`` with L2 norm 1, or None.

        Embeddings are unit vectors; a value that is not one (garbage bytes, a truncated
        buffer, NaN) reads as None, so the image is embedded again.
        """
        key = self._embedding_key(model_id, sha256)
        raw = self._get(key)
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
        doc = self.get_json(self._caption_key(model_id, sha256))
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            return None
        return doc

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
