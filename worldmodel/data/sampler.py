"""Windows of T consecutive steps that never cross an episode end.

Reading through zarr costs about half a millisecond per call, whatever its
size, so windows are cut from whole decoded chunks kept in a byte-bounded LRU
cache: a chunk is decoded once and serves every window that touches it. A
batch is located with one searchsorted, each chunk it touches is looked up
once, and windows are copied straight into the batch arrays (no per-window
concatenate or stack): benchmarks/store.py measures this against numpy in RAM.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from worldmodel.data.layout import array_layout, check_keys, read_rows
from worldmodel.data.store import EpisodeRef, EpisodeStore, StoreError


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
        block = read_rows(array, chunk * length, (chunk + 1) * length)
        self._chunks[key] = block
        self.nbytes += block.nbytes
        while self.nbytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self.nbytes -= old.nbytes
        return block

    def get_many(self, prefix: tuple, array, chunks: Sequence[int]) -> list[np.ndarray]:
        """Chunks `chunks` of `array` (cached under keys (*prefix, chunk)), in that order."""
        found, touch, blocks = self._chunks.get, self._chunks.move_to_end, []
        for chunk in chunks:
            key = (*prefix, chunk)
            block = found(key)
            if block is None:
                block = self.get(key, array, chunk)
            else:
                touch(key)
                self.hits += 1
            blocks.append(block)
        return blocks


class WindowSampler:
    """Sample or index windows of `window` steps from one or more stores whose arrays of `keys` are alike
    (of one spec, or of several envs whose frames match when only frames are read).

    Episodes shorter than the window are skipped (`skipped_episodes` counts them).
    Windows are fresh arrays (never views of cached chunks): changing one changes nothing else.
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
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        self.keys = check_keys(self.spec, keys)
        # Stores of different envs share a sampler when the arrays it reads are alike (V reads frames only).
        first = array_layout(self.spec)
        for store in self.stores[1:]:
            layout = array_layout(store.spec)
            unlike = [key for key in self.keys if layout.get(key) != first[key]]
            if unlike:
                raise StoreError(f"stores whose {', '.join(unlike)} differ cannot share a sampler: {store.location}")
        if episodes is None:
            episodes = [(i, ref) for i, store in enumerate(self.stores) for ref in store.episodes]
        self.episodes = [(s, ref) for s, ref in episodes if ref.length >= self.window]
        self.skipped_episodes = len(episodes) - len(self.episodes)
        counts = np.array([ref.length - self.window + 1 for _, ref in self.episodes], dtype=np.int64)
        self._cumulative = np.cumsum(counts)
        # Per episode: windows before it, its first row, and which (store, part) holds it;
        # lets `sample` locate a whole batch with one searchsorted.
        self._before = self._cumulative - counts
        self._starts = np.array([ref.start for _, ref in self.episodes], dtype=np.int64)
        source_ids: dict[tuple[int, str], int] = {}
        for s, ref in self.episodes:
            source_ids.setdefault((s, ref.part), len(source_ids))
        self._sources: list[tuple[int, str]] = list(source_ids)
        self._source_of = np.array([source_ids[(s, ref.part)] for s, ref in self.episodes], dtype=np.int64)
        self.cache = ChunkCache(cache_bytes)
        self._arrays: dict[tuple[int, str], object] = {}  # (source, key) -> zarr array, opened on first use
        # Per key, the chunk length in time of its array in each source (0: not opened yet).
        self._lengths = {key: np.zeros(len(self._sources), dtype=np.int64) for key in self.keys}

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
        self.locate(index)  # range check
        batch = self._gather(np.array([index], dtype=np.int64))
        return {key: value[0] for key, value in batch.items()}

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`batch_size` windows drawn uniformly over all valid windows, as arrays [B, T, ...]."""
        if len(self) == 0:
            raise StoreError(f"no episode is at least {self.window} steps long")
        indices = rng.integers(0, len(self), size=batch_size)
        return self._gather(np.asarray(indices, dtype=np.int64))

    # -- reading ----------------------------------------------------------
    def _gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Windows `indices` (valid window numbers) as arrays [B, T, ...]."""
        if len(indices) == 0:
            arrays = {key: self._array(0, key) for key in self.keys}
            return {key: np.empty((0, self.window, *a.shape[1:]), dtype=a.dtype) for key, a in arrays.items()}
        e = np.searchsorted(self._cumulative, indices, side="right")
        rows = self._starts[e] + indices - self._before[e]
        sources = self._source_of[e]
        batch = {}
        plans: dict[bytes, _Plan] = {}  # arrays chunked alike share one plan
        for key in self.keys:
            lengths = self._lengths[key]
            lengths_here = lengths[sources]
            if not lengths_here.all():
                for source in np.unique(sources[lengths_here == 0]).tolist():
                    lengths[source] = self._array(source, key).chunks[0]
                lengths_here = lengths[sources]
            signature = lengths_here.tobytes()
            plan = plans.get(signature)
            if plan is None:
                plan = plans[signature] = _Plan(rows, sources, lengths_here, self.window)
            batch[key] = self._cut(key, plan)
        return batch

    def _array(self, source: int, key: str):
        """The zarr array of `key` in source `source` (a (store, part) pair)."""
        array = self._arrays.get((source, key))
        if array is None:
            store_index, part = self._sources[source]
            array = self._arrays[(source, key)] = self.stores[store_index].data_array(part, key)
        return array

    def _cut(self, key: str, plan: _Plan) -> np.ndarray:
        """The windows of `plan` from the arrays of `key`, as one array [B, T, ...]."""
        # Each chunk the batch touches is fetched once (from the cache or decoded) and held
        # here until the batch is cut, whatever the cache evicts meanwhile.
        blocks: dict[int, np.ndarray] = {}
        for source, chunks, codes in plan.needed:
            store_index, part = self._sources[source]
            blocks.update(zip(codes, self.cache.get_many((store_index, part, key), self._array(source, key), chunks)))
        sample = blocks[plan.needed[0][2][0]]
        window = self.window
        out = np.empty((plan.batch_size, window, *sample.shape[1:]), dtype=sample.dtype)
        for code, targets, offsets in plan.grouped:
            out[targets] = blocks[code][offsets]
        for t, code, o, length in plan.loop:
            block = blocks[code]
            if o + window <= length:
                out[t] = block[o : o + window]
                continue
            done = length - o
            out[t, :done] = block[o:]
            while done < window:
                code += 1
                piece = blocks[code][: window - done]
                out[t, done : done + len(piece)] = piece
                done += len(piece)
        return out


class _Plan:
    """How to cut a batch of windows from chunked arrays: which chunks, and which slice of each.

    A chunk is named by one int, code = source << 32 | chunk index, so consecutive chunks
    of one source have consecutive codes.
    """

    def __init__(self, rows: np.ndarray, sources: np.ndarray, lengths: np.ndarray, window: int):
        self.batch_size = len(rows)
        first = rows // lengths
        last = (rows + window - 1) // lengths
        base = sources << 32
        if window <= lengths.min():  # a window touches one chunk or two
            needed = np.unique(np.concatenate([base + first, base + last]))
        else:
            needed = np.unique(np.concatenate([np.arange(b + f, b + l + 1) for b, f, l in zip(base, first, last, strict=True)]))
        # (source, chunk indices, codes), one entry per source, for the cache.
        self.needed: list[tuple[int, list[int], list[int]]] = []
        owners = needed >> 32
        splits = np.flatnonzero(np.diff(owners)) + 1
        for group in np.split(needed, splits):
            source = int(group[0] >> 32)
            self.needed.append((source, (group - (source << 32)).tolist(), group.tolist()))
        codes = base + first
        offsets = rows - first * lengths
        target = np.arange(len(rows))
        # (code, targets, row indices): one fancy-index gather per chunk for the windows inside
        # it, worth it when many windows share a chunk (small arrays in long chunks) ...
        self.grouped: list[tuple[int, np.ndarray, np.ndarray]] = []
        loop = np.ones(len(rows), dtype=bool)
        if len(rows) > 2 * len(needed):
            single = first == last
            s_codes, s_offsets, s_target = codes[single], offsets[single], target[single]
            order = np.argsort(s_codes, kind="stable")
            s_codes, s_offsets, s_target = s_codes[order], s_offsets[order], s_target[order]
            chunk_codes, starts = np.unique(s_codes, return_index=True)
            bounds = [*starts.tolist(), len(s_codes)]
            steps = np.arange(window)
            for j, code in enumerate(chunk_codes.tolist()):
                lo, hi = bounds[j], bounds[j + 1]
                self.grouped.append((code, s_target[lo:hi], s_offsets[lo:hi, None] + steps))
            loop = ~single
        # ... and (target, first chunk's code, offset, chunk length): one slice copy per window
        # and chunk it covers (images: few windows per chunk).
        self.loop = list(
            zip(target[loop].tolist(), codes[loop].tolist(), offsets[loop].tolist(), lengths[loop].tolist(), strict=True)
        )


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
