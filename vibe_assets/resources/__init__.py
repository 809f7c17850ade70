"""Dagster resources: CLIP and BLIP models, Qdrant connection, content-addressed store."""

from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.clip import ClipResource
from vibe_assets.resources.device import InferenceDeviceResource
from vibe_assets.resources.qdrant import QdrantResource
from vibe_assets.resources.store import StoreResource

__all__ = [
    "BlipResource",
    "ClipResource",
    "InferenceDeviceResource",
    "QdrantResource",
    "StoreResource",
]
