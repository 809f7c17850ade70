"""Configured vector collections: each is (name, CLIP model + weights, distance).

One collection (``photos``, the CLIP settings from the environment) unless a TOML file lists
several: ``$VIBE_COLLECTIONS_FILE``, else ``$VIBE_HOME/collections.toml`` when it exists::

    [[collection]]
    name = "photos"
    model = "ViT-B-32"
    weights = "laion2b_s34b_b79k"      # pretrained tag, checkpoint file, or "random"

    [[collection]]
    name = "photos_l14"
    model = "ViT-L-14"
    weights = "openai"
    distance = "cosine"                 # cosine (default), dot or euclid

Each collection gets its own ``qdrant_<name>`` asset over the same folder partitions, so
"backfill every folder into the new collection" is one backfill of that asset (with its
upstream). Embeddings are stored per model id, so collections that share a model share them.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vibe_assets.settings import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_WEIGHTS,
    DEFAULT_COLLECTION,
    env_str,
    vibe_home,
)
from vibe_assets.vectors.base import CollectionInfo, Distance

_NAME_RE = re.compile(r"^[a-z0-9_]{1,48}$")
DISTANCES = {"cosine": Distance.COSINE, "dot": Distance.DOT, "euclid": Distance.EUCLID}


class CollectionConfigError(ValueError):
    """The collections configuration is invalid (message names the file and entry)."""


@dataclass(frozen=True)
class CollectionSpec:
    """One collection: ``name`` (``[a-z0-9_]``, part of the asset name ``qdrant_<name>``),
    open_clip ``model`` and ``weights``, and ``distance`` (cosine, dot or euclid)."""

    name: str
    model: str = DEFAULT_CLIP_MODEL
    weights: str = DEFAULT_CLIP_WEIGHTS
    distance: str = "cosine"

    @property
    def vector_distance(self) -> Distance:
        """The vector-store distance."""
        return DISTANCES[self.distance]

    @property
    def asset_name(self) -> str:
        """Name of this collection's asset."""
        return f"qdrant_{self.name}"


def _validate(spec: CollectionSpec, where: str) -> CollectionSpec:
    if not _NAME_RE.match(spec.name):
        raise CollectionConfigError(f"{where}: collection name must match [a-z0-9_]{{1,48}}")
    if spec.distance not in DISTANCES:
        raise CollectionConfigError(f"{where}: distance must be one of {sorted(DISTANCES)}")
    return spec


def default_collection() -> CollectionSpec:
    """The single collection configured by ``VIBE_COLLECTION``, ``VIBE_CLIP_MODEL`` and
    ``VIBE_CLIP_WEIGHTS`` (defaults ``photos``, ``ViT-B-32``, ``laion2b_s34b_b79k``)."""
    spec = CollectionSpec(
        name=env_str("VIBE_COLLECTION", DEFAULT_COLLECTION),
        model=env_str("VIBE_CLIP_MODEL", DEFAULT_CLIP_MODEL),
        weights=env_str("VIBE_CLIP_WEIGHTS", DEFAULT_CLIP_WEIGHTS),
    )
    return _validate(spec, "VIBE_COLLECTION")


def collections_file() -> Path | None:
    """``$VIBE_COLLECTIONS_FILE``, else ``$VIBE_HOME/collections.toml`` if it exists, else None.

    Raises:
        CollectionConfigError: ``VIBE_COLLECTIONS_FILE`` names a missing file.
    """
    env = env_str("VIBE_COLLECTIONS_FILE", "")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise CollectionConfigError(f"VIBE_COLLECTIONS_FILE {path} does not exist")
        return path
    path = vibe_home() / "collections.toml"
    return path if path.is_file() else None


def load_collections(path: Path | None = None) -> list[CollectionSpec]:
    """Configured collections, in file order (at least one, names unique).

    Args:
        path: TOML file to read; default :func:`collections_file`, else the single
            :func:`default_collection`.

    Raises:
        CollectionConfigError: unreadable TOML, unknown keys, bad name or distance, duplicates.
    """
    path = path or collections_file()
    if path is None:
        return [default_collection()]
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CollectionConfigError(f"{path}: {exc}") from exc
    entries = doc.get("collection")
    if not isinstance(entries, list) or not entries:
        raise CollectionConfigError(f"{path}: needs at least one [[collection]] table")
    specs: list[CollectionSpec] = []
    for i, entry in enumerate(entries):
        where = f"{path} [[collection]] #{i + 1}"
        unknown = set(entry) - {"name", "model", "weights", "distance"}
        if unknown or "name" not in entry:
            raise CollectionConfigError(f"{where}: needs 'name'; unknown keys {sorted(unknown)}")
        specs.append(_validate(CollectionSpec(**{k: str(v) for k, v in entry.items()}), where))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CollectionConfigError(f"{path}: collection names must be unique, got {names}")
    return specs


def collection_rows(
    existing: Iterable[CollectionInfo], configured: Iterable[CollectionSpec], engine: str
) -> list[dict[str, Any]]:
    """One row per collection that exists in the vector store or is configured, by name:
    ``name``, ``configured``, ``model`` (``model/weights`` or None), ``exists``, ``engine``
    and, for existing ones, ``points``, ``vector_size``, ``distance``, ``indexed_fields``
    (``vibe-assets collections list --json`` and the web app's Collections page)."""
    found = {info.name: info for info in existing}
    specs = {spec.name: spec for spec in configured}
    rows = []
    for name in sorted(set(found) | set(specs)):
        spec = specs.get(name)
        row: dict[str, Any] = {
            "name": name,
            "configured": spec is not None,
            "model": f"{spec.model}/{spec.weights}" if spec else None,
            "exists": name in found,
            "engine": engine,
        }
        if name in found:
            info = found[name].as_dict()
            row.update((k, info[k]) for k in ("points", "vector_size", "distance"))
            row["indexed_fields"] = info["indexed_fields"]
        rows.append(row)
    return rows
