"""The zarr episode store: its on-disk layout, writer, reader and window sampling."""

from worldmodel.data.sampler import ChunkCache, WindowSampler, split_episodes
from worldmodel.data.layout import FORMAT_VERSION
from worldmodel.data.store import EpisodeRef, EpisodeStore, StoreError, StoreWarning
from worldmodel.data.writer import PartWriter

__all__ = [
    "FORMAT_VERSION",
    "ChunkCache",
    "EpisodeRef",
    "EpisodeStore",
    "PartWriter",
    "StoreError",
    "StoreWarning",
    "WindowSampler",
    "split_episodes",
]
