"""Software-defined assets, one module per stage of the ingest chain."""

from vibe_assets.assets.captions import blip_captions
from vibe_assets.assets.embeddings import build_decode_and_embed
from vibe_assets.assets.files import photo_files
from vibe_assets.assets.hashes import photo_hashes
from vibe_assets.assets.qdrant import build_qdrant_asset

__all__ = [
    "blip_captions",
    "build_decode_and_embed",
    "build_qdrant_asset",
    "photo_files",
    "photo_hashes",
]
