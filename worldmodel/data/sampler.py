"""Windows of T consecutive steps that never cross an episode end.

Reading through zarr costs about half a millisecond per call, whatever its
size, so windows are cut from whole decoded chunks kept in a byte-bounded LRU
cache: a chunk is decoded once and serves every window that touches it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from worldmodel.data.store import EpisodeRef, EpisodeStore, StoreError, array_names


class ChunkCache:
    """Decoded zarr chunks, least recently used evicted first past `max_bytes`."""

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key: tuple, array, chunk: int) -> np.ndarray:
        found = self._chunks.get(key)
        if found is not None:
            self._chunks.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        length = array.chunks[0]
        block = np.asarray(array[chunk * length : (chunk + 1) * length])
        self._chunks[key] = block
        self.nbytes += block.nbytes
        while self.nbytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self.nbytes -= old.nbytes
        return block


class WindowSampler:
    """Sample or index windows of `window` steps from one or more stores of the same spec.

    Episodes shorter than the window are skipped (`skipped_episodes` counts them).
    """

    def __init__(
        self,
        stores: EpisodeStore | Sequence[EpisodeStore],
        window: int,
        *,
        keys: Sequence[str] | None = None,
        cache_bytes: int = 2 << 30,
        episodes: Sequence[tuple[int, EpisodeRef]] | None = None,
    ):
        self.stores = [stores] if isinstance(stores, EpisodeStore) else list(stores)
        if not self.stores:
            raise StoreError("a window sampler needs at least one store")
        self.spec = self.stores[0].spec
        for store in self.stores[1:]:
            if store.spec != self.spec:
                raise StoreError(f"stores of different specs cannot share a sampler: {store.location}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        self.keys = tuple(keys) if keys is not None else array_names(self.spec)
        unknown = set(self.keys) - set(array_names(self.spec))
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; the store has {array_names(self.spec)}")
        if episodes is None:
            episodes = [(i, ref) for i, store in enumerate(self.stores) for ref in store.episodes]
        self.episodes = [(s, ref) for s, ref in episodes if ref.length >= self.window]
        self.skipped_episodes = len(episodes) - len(self.episodes)
        counts = np.array([ref.length - self.window + 1 for _, ref in self.episodes], dtype=np.int64)
        self._cumulative = np.cumsum(counts)
        self.cache = ChunkCache(cache_bytes)
        self._arrays: dict[tuple[int, str, str], object] = {}

    def __len__(self) -> int:
        return int(self._cumulative[-1]) if len(self._cumulative) else 0

    def locate(self, index: int) -> tuple[int, EpisodeRef, int]:
        """(store index, episode, first row in the part) of window `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range [0, {len(self)})")
        e = int(np.searchsorted(self._cumulative, index, side="right"))
        before = int(self._cumulative[e - 1]) if e else 0
        store_index, ref = self.episodes[e]
        return store_index, ref, ref.start + index - before

    def window_at(self, index: int) -> dict[str, np.ndarray]:
        """Window `index` as arrays [T, ...]."""
        store_index, ref, row = self.locate(index)
        return {key: self._read(store_index, ref.part, key, row) for key in self.keys}

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`batch_size` windows drawn uniformly over all valid windows, as arrays [B, T, ...]."""
        if len(self) == 0:
            raise StoreError(f"no episode is at least {self.window} steps long")
        indices = rng.integers(0, len(self), size=batch_size)
        windows = [self.window_at(int(i)) for i in indices]
        return {key: np.stack([w[key] for w in windows]) for key in self.keys}

    def _read(self, store_index: int, part: str, key: str, row: int) -> np.ndarray:
        array = self._arrays.get((store_index, part, key))
        if array is None:
            array = self.stores[store_index].part(part)[f"data/{key}"]
            self._arrays[(store_index, part, key)] = array
        length = array.chunks[0]
        first, last = row // length, (row + self.window - 1) // length
        pieces = [self.cache.get((store_index, part, key, c), array, c) for c in range(first, last + 1)]
        block = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        offset = row - first * length
        return block[offset : offset + self.window]


def split_episodes(
    stores: Sequence[EpisodeStore], heldout_fraction: float, seed: int = 0
) -> tuple[list[tuple[int, EpisodeRef]], list[tuple[int, EpisodeRef]]]:
    """Split all episodes into (train, heldout) lists by a seeded shuffle of whole episodes."""
    episodes = [(i, ref) for i, store in enumerate(stores) for ref in store.episodes]
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_heldout = int(round(len(episodes) * heldout_fraction))
    heldout = [episodes[i] for i in sorted(order[:n_heldout])]
    train = [episodes[i] for i in sorted(order[n_heldout:])]
    return train, heldout
