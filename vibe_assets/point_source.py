"""What a collection's points are made of, read from our store (no model is run here).

A point is one image: id = :func:`~vibe_assets.vectors.base.point_id` of its SHA-256, vector =
its stored CLIP embedding for the collection's model ((D,) float32, L2-normalised), payload =
sha256, paths, folder_keys, width/height/format from its preview record, ``phash`` (the
preview's 64-bit perceptual hash as 16 hex digits, :mod:`vibe_assets.imaging.phash`; absent for
an image decoded before hashes were stored), embed_model, EXIF fields and, once captioned,
caption/caption_model/captioned_at. Points written before ``phash`` existed are not rewritten
for it. The ``qdrant_<collection>``
asset syncs folders with it; the migration from the old local-mode store rebuilds whole
collections with it (:func:`rebuild_collection`), so both produce the same points.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from vibe_assets.points import MakePoint, sync_folders
from vibe_assets.state import StateDB
from vibe_assets.vectors.base import Distance, VectorPoint, VectorStore, point_id


class _Store(Protocol):  # the parts of StoreResource used here
    @property
    def state(self) -> StateDB: ...
    def preview_info(self, sha256: str) -> dict[str, Any] | None: ...
    def preview_infos(self, shas: Iterable[str]) -> dict[str, dict[str, Any]]: ...
    def get_embedding(self, model_id: str, sha256: str) -> Any: ...
    def get_embeddings(self, model_id: str, shas: Iterable[str]) -> dict[str, Any]: ...
    def get_caption(self, model_id: str, sha256: str) -> dict[str, str] | None: ...
    def get_captions(self, model_id: str, shas: Iterable[str]) -> dict[str, dict[str, str]]: ...
    def folder_hashes(self, folder_key: str) -> dict[str, Any] | None: ...


READ_AHEAD = (64, 1_000)
"""Embeddings the point builder reads per query ((D,) float32 each: 2 KiB at D = 512): 64, and
twice as many as the last read (up to 1,000) when the builder asks for the image right after
it. A folder of new images then costs one query per thousand points and bounded memory, and a
few new images in a large folder read 64 each."""


def exif_payload(exif: dict[str, Any]) -> dict[str, Any]:
    """Payload fields from a photo's EXIF (:func:`vibe_assets.imaging.exif.photo_metadata`):
    the fields as they are (taken_at, camera_make, camera_model, lens, focal_length_mm,
    aperture, exposure_s, iso, gps_lat, gps_lon), plus ``location`` ``{"lat", "lon"}`` (Qdrant's
    geo format) when both coordinates are present."""
    payload = dict(exif)
    if "gps_lat" in exif and "gps_lon" in exif:
        payload["location"] = {"lat": exif["gps_lat"], "lon": exif["gps_lon"]}
    return payload


def paths_by_sha(hashes: dict[str, Any]) -> dict[str, list[str]]:
    """``{sha256: [paths...]}`` of one folder's hash listing (paths sorted)."""
    out: dict[str, list[str]] = {}
    for path, entry in hashes["files"].items():
        out.setdefault(entry["sha256"], []).append(path)
    return {sha: sorted(paths) for sha, paths in out.items()}


@dataclass
class PointSource:
    """Points of one collection built from ``store``.

    Attributes:
        store: our store (previews' metadata, embeddings, captions, hash listings).
        model_id: the CLIP model id whose stored embeddings are the vectors.
        dim: the model's vector size D; an embedding of another shape is not used.
        caption_model: the BLIP model id whose stored captions go into payloads.
    """

    store: _Store
    model_id: str
    dim: int
    caption_model: str
    # The folder being synced, replaced by the next current(): its preview records and
    # captions (read in bulk by current()), its images in order, the embeddings read ahead for
    # the point builder (images _ahead[0] to _ahead[1] - 1 of _order) and the last read's size.
    _infos: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _captions: dict[str, dict[str, str] | None] = field(default_factory=dict, repr=False)
    _order: list[str] = field(default_factory=list, repr=False)
    _vectors: dict[str, Any] = field(default_factory=dict, repr=False)
    _ahead: tuple[int, int] = (0, 0)
    _last_read: int = 0

    def _caption_payload(self, stored: dict[str, str] | None) -> dict[str, str] | None:
        if stored is None:
            return None
        return {
            "caption": stored["text"],
            "caption_model": self.caption_model,
            "captioned_at": stored["captioned_at"],
        }

    def caption_for(self, sha: str) -> dict[str, str] | None:
        """The caption payload (``caption``, ``caption_model``, ``captioned_at``) of an image, or
        None when it has no stored caption from :attr:`caption_model`."""
        if sha in self._captions:
            return self._captions[sha]
        return self._caption_payload(self.store.get_caption(self.caption_model, sha))

    def current(self, hashes: dict[str, Any]) -> dict[str, list[str]]:
        """``{sha256: paths}`` of a folder's images that have a preview (decoded). Their preview
        records and captions are read in bulk and kept for :meth:`caption_for` and
        :meth:`point_builder` until the next call."""
        by_sha = paths_by_sha(hashes)
        self._infos = self.store.preview_infos(by_sha)
        stored = self.store.get_captions(self.caption_model, self._infos)
        self._captions = {sha: self._caption_payload(stored.get(sha)) for sha in self._infos}
        self._order = sorted(self._infos)
        self._vectors, self._ahead, self._last_read = {}, (0, 0), 0
        return {sha: paths for sha, paths in by_sha.items() if sha in self._infos}

    def _embedding(self, sha: str) -> Any:
        """The stored embedding of ``sha`` (or None). For an image of the current folder, it
        and the images after it (in SHA-256 order, the order
        :func:`~vibe_assets.points.sync_folder` builds points in) are read in one query, as
        many as :data:`READ_AHEAD` says."""
        if sha not in self._infos:
            return self.store.get_embedding(self.model_id, sha)
        at = bisect.bisect_left(self._order, sha)
        if not self._ahead[0] <= at < self._ahead[1]:
            sequential = at == self._ahead[1]  # right after the last read: read more next
            size = min(2 * self._last_read, READ_AHEAD[1]) if sequential else 0
            size = max(size, READ_AHEAD[0])
            self._last_read, self._ahead = size, (at, at + size)
            self._vectors = self.store.get_embeddings(self.model_id, self._order[at : at + size])
        return self._vectors.get(sha)  # None: read ahead, it has none

    def point_builder(self, folder_key: str) -> MakePoint:
        """Builds the full point of a new image synced from partition ``folder_key`` from
        (sha256, its paths, the folder keys listing them); None when it has no preview or no
        embedding of shape (D,)."""

        def build(sha: str, paths: list[str], keys: list[str]) -> VectorPoint | None:
            info = self._infos.get(sha) or self.store.preview_info(sha)
            vector = self._embedding(sha)
            if info is None or vector is None or vector.shape != (self.dim,):
                return None
            payload = {
                "sha256": sha,
                "paths": paths,
                "folder_keys": keys or [folder_key],
                "width": info["width"],
                "height": info["height"],
                "format": info["format"],
                **({"phash": info["phash"]} if info.get("phash") else {}),
                "embed_model": self.model_id,
                "ingested_at": datetime.now(UTC).isoformat(timespec="seconds"),
                **exif_payload(info.get("exif") or {}),
                **(self.caption_for(sha) or {}),
            }
            return VectorPoint(point_id(sha), vector, payload)

        return build


def rebuild_collection(
    vectors: VectorStore,
    state: StateDB,
    name: str,
    source: PointSource,
    distance: Distance,
    folder_keys: Iterable[str],
) -> int:
    """Create collection ``name`` if needed and sync every folder of ``folder_keys`` that has a
    hash listing into it, exactly as the ``qdrant_<name>`` asset would; returns the points it
    then holds. Reads the store only: no decoding, no embedding.

    Raises:
        CollectionMismatchError: ``name`` exists with another vector size or distance.
    """
    vectors.ensure_collection(name, source.dim, distance)
    folders = []
    for key in folder_keys:
        hashes = source.store.folder_hashes(key)
        if hashes is not None:  # registered, never hashed: nothing of it was in the old store
            folders.append((key, source.current(hashes)))
    sync_folders(vectors, state, name, folders, source.point_builder, source.caption_for)
    return vectors.count(name)


class _Spec(Protocol):
    name: str
    model: str
    weights: str
    distance: str


def store_rebuilder(
    store: Any, clip: Any, specs: Sequence[_Spec], blip: Any
) -> Callable[[VectorStore, str], int | None]:
    """The ``rebuild`` of :meth:`VectorStoreResource.open
    <vibe_assets.resources.vectors.VectorStoreResource.open>`: rebuilds a configured
    collection from ``store`` (a :class:`~vibe_assets.resources.store.StoreResource`) over every
    registered folder; None for a collection that is not among ``specs``.

    ``clip`` (a :class:`~vibe_assets.resources.clip.ClipResource`) gives each spec's model id
    and vector size (from open_clip's config, no weights loaded), ``blip`` the caption model id;
    both are only read when a migration happens.
    """
    by_name = {spec.name: spec for spec in specs}

    def rebuild(vectors: VectorStore, name: str) -> int | None:
        spec = by_name.get(name)
        if spec is None:
            return None
        model = clip.for_model(spec.model, spec.weights)
        source = PointSource(store, model.model_id, model.embedding_dim(), blip.model_id)
        keys = [folder.key for folder in store.registry.list()]
        return rebuild_collection(vectors, store.state, name, source, Distance(spec.distance), keys)

    return rebuild


def collection_point_sources(resources: dict[str, Any]) -> dict[str, PointSource]:
    """``{collection: PointSource}`` of every configured collection, from the resources of
    :func:`vibe_assets.definitions.default_resources` (``clip``, ``store``, ``blip``): model
    ids and vector sizes only, no model is loaded. Used to re-sync collections after files
    moved (:func:`vibe_assets.moves.resync`) by the CLI and the web app."""
    from vibe_assets.collections import load_collections

    clip, store = resources["clip"], resources["store"]
    caption_model = resources["blip"].model_id
    out = {}
    for spec in load_collections():
        model = clip.for_model(spec.model, spec.weights)
        out[spec.name] = PointSource(store, model.model_id, model.embedding_dim(), caption_model)
    return out
