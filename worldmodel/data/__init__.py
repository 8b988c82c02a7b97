"""The zarr episode store: writer, reader, window sampling (torch lives in data.dataset)."""

from worldmodel.data.sampler import ChunkCache, WindowSampler, split_episodes
from worldmodel.data.store import FORMAT_VERSION, EpisodeRef, EpisodeStore, StoreError
from worldmodel.data.writer import PartWriter

__all__ = [
    "FORMAT_VERSION",
    "ChunkCache",
    "EpisodeRef",
    "EpisodeStore",
    "PartWriter",
    "StoreError",
    "WindowSampler",
    "split_episodes",
]
