"""Dagster resources: CLIP and BLIP models, vector store (qdrant-edge or a Qdrant server),
content-addressed store."""

from vibe_assets.resources.blip import BlipResource
from vibe_assets.resources.clip import ClipResource
from vibe_assets.resources.device import InferenceDeviceResource
from vibe_assets.resources.store import StoreResource
from vibe_assets.resources.vectors import VectorStoreResource

__all__ = [
    "BlipResource",
    "ClipResource",
    "InferenceDeviceResource",
    "StoreResource",
    "VectorStoreResource",
]
