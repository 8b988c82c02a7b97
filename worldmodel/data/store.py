"""The episode store: open or create one, list its episodes, read them, hand out part writers.

The on-disk layout (paths, arrays, dtypes, chunking, codecs) lives in `layout.py`.

Row t of an episode holds the observation o_t, the action a_t taken there, and
the reward and end flags that followed it; the observation after the last
action is not stored (as DIAMOND's and diffusion_policy's buffers).

An episode is visible once `episode_ends` covers it. Writers extend it only
after the episode's data is in place, so a reader never sees a torn episode
and data past the last end (a writer killed mid-write) is ignored. Damage
from outside is caught, not read as zeros (data/integrity.py): a missing
chunk is a StoreError naming it, and entries of `episode_ends` that are no
committed end are ignored with one StoreWarning.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from worldmodel.data.integrity import check_chunks_present, committed_prefix, describe_distrust
from worldmodel.data.layout import (
    EPISODE_ENDS,
    EPISODE_SEEDS,
    PARTS,
    StoreError,
    array_layout,
    array_names,
    check_keys,
    data_array,
    fsspec_backend,
    meta_array,
    part_path,
    read_root_attrs,
    read_rows,
    root_attrs,
    zarr_store,
)
from worldmodel.data.writer import PartWriter
from worldmodel.spec import EnvSpec

# Importable from here as before: users catch StoreError, train/latents.py opens its cache with zarr_store.
__all__ = ["EpisodeRef", "EpisodeStore", "StoreError", "StoreWarning", "zarr_store"]


class StoreWarning(UserWarning):
    """A reader ignored entries of a part that are not committed episodes (see data/integrity.py)."""


@dataclass(frozen=True)
class EpisodeRef:
    """Where one episode lives: its part, its index in the part, and its rows [start, stop)."""

    part: str
    index: int
    start: int
    stop: int
    seed: int

    @property
    def length(self) -> int:
        return self.stop - self.start


class EpisodeStore:
    """A store of episodes: open or create one, list its episodes, read them, add parts."""

    def __init__(self, root: zarr.Group, location: str, storage_options: dict | None = None):
        self._root = root
        self.location = str(location)
        self.storage_options = storage_options
        self.spec, self.source = read_root_attrs(root.attrs.asdict(), self.location)
        self._episodes: list[EpisodeRef] | None = None

    # -- opening ----------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, storage_options: dict | None = None) -> EpisodeStore:
        """Open an existing store for reading (and for adding parts)."""
        try:
            root = zarr.open_group(zarr_store(location, read_only=True, storage_options=storage_options), mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as err:
            raise StoreError(f"{location} is not a worldmodel episode store: no zarr group there") from err
        except json.JSONDecodeError as err:
            raise StoreError(f"{location} has unreadable zarr metadata: {err}") from err
        return cls(root, location, storage_options)

    @classmethod
    def create(
        cls,
        location: str,
        spec: EnvSpec,
        *,
        source: dict[str, Any] | None = None,
        exist_ok: bool = True,
        storage_options: dict | None = None,
    ) -> EpisodeStore:
        """Create a store for `spec`, or open the one there if its spec is the same.

        Opening an existing store whose spec differs raises StoreError and changes nothing.
        """
        store = zarr_store(location, read_only=False, storage_options=storage_options)
        try:
            existing = cls.open(location, storage_options=storage_options)
        except StoreError:
            existing = None
            if _has_content(location, storage_options):
                raise StoreError(f"{location} exists and is not a worldmodel episode store; refusing to write there")
        if existing is not None:
            if not exist_ok:
                raise StoreError(f"{location} already holds a store")
            if existing.spec != spec:
                raise StoreError(
                    f"{location} holds episodes of another spec:\n  store: {existing.spec.to_json()}\n"
                    f"  given: {spec.to_json()}"
                )
            return existing
        root = zarr.open_group(store, mode="w-")
        root.create_group(PARTS)
        root.attrs.update(root_attrs(spec, source))
        return cls(root, location, storage_options)

    # -- listing ----------------------------------------------------------
    def refresh(self) -> None:
        """Forget the cached episode list (other writers may have added episodes)."""
        self._episodes = None

    def part_ids(self) -> list[str]:
        if PARTS not in self._root:
            return []
        return sorted(self._root[PARTS].group_keys())

    def _part(self, part_id: str) -> zarr.Group:
        return self._root[part_path(part_id)]

    @property
    def episodes(self) -> list[EpisodeRef]:
        if self._episodes is None:
            refs, distrusted = [], []
            names = array_names(self.spec)
            for part_id in self.part_ids():
                part = self._part(part_id)
                check_chunks_present(part, names, self.location)
                ends = np.asarray(meta_array(part, EPISODE_ENDS)[:], dtype=np.int64)
                seeds = np.asarray(meta_array(part, EPISODE_SEEDS)[:], dtype=np.int64)
                rows = min(data_array(part, name).shape[0] for name in names)
                trusted = committed_prefix(ends, rows)
                if trusted < len(ends):
                    distrusted.append(describe_distrust(part_id, ends, trusted, rows))
                start = 0
                for i, end in enumerate(ends[:trusted].tolist()):
                    seed = int(seeds[i]) if i < len(seeds) else -1
                    refs.append(EpisodeRef(part_id, i, start, end, seed))
                    start = end
            if distrusted:
                warnings.warn(f"{self.location}: {'; '.join(distrusted)}", StoreWarning, stacklevel=2)
            self._episodes = refs
        return self._episodes

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(ref.length for ref in self.episodes)

    # -- reading ----------------------------------------------------------
    def read_episode(
        self,
        ref: EpisodeRef | int,
        keys: Sequence[str] | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Rows [ref.start + start, ref.start + stop) of the data arrays `keys`, as {key: [stop - start, ...]}.

        `ref`: an episode of this store, or its index in `episodes`. `keys`: names from the
        spec's arrays (default all: image, vector if the spec has one, action, reward,
        terminated, truncated). `stop` None: the episode's end. ValueError for an unknown
        key or rows outside 0 <= start <= stop <= ref.length.
        """
        ref = ref if isinstance(ref, EpisodeRef) else self.episodes[ref]
        names = check_keys(self.spec, keys)
        stop = ref.length if stop is None else stop
        if not 0 <= start <= stop <= ref.length:
            raise ValueError(
                f"rows [{start}, {stop}) are not within episode {ref.index} of part {ref.part!r}: "
                f"need 0 <= start <= stop <= {ref.length} (its length)"
            )
        part = self._part(ref.part)
        return {name: read_rows(data_array(part, name), ref.start + start, ref.start + stop) for name in names}

    def data_array(self, part_id: str, key: str) -> zarr.Array:
        """The zarr array [N, ...] of data column `key` in part `part_id`, for chunk-level random access.

        Read-only by contract: writing through it would bypass the writer's checks and the
        order that keeps episodes whole. N counts every row written, including rows past the
        part's last episode end that are not an episode yet: read only rows of `episodes`.
        ValueError for an unknown key or part.
        """
        check_keys(self.spec, (key,))
        try:
            part = self._part(part_id)
        except KeyError as err:
            raise ValueError(f"{self.location} has no part {part_id!r}") from err
        return data_array(part, key)

    def read_column(self, name: str) -> np.ndarray:
        """One data array over every visible episode, concatenated in episode order."""
        last_end: dict[str, int] = {}
        for ref in self.episodes:
            last_end[ref.part] = ref.stop
        pieces = [read_rows(data_array(self._part(part_id), name), 0, stop) for part_id, stop in last_end.items()]
        if not pieces:
            shape, dtype = array_layout(self.spec)[name]
            return np.zeros((0, *shape), dtype)
        return np.concatenate(pieces)

    # -- writing ----------------------------------------------------------
    def writer(self, writer_id: str | None = None, **kwargs) -> PartWriter:
        """A PartWriter that owns a new part of this store (see data/writer.py)."""
        return PartWriter(self, writer_id, **kwargs)

    # -- size -------------------------------------------------------------
    def bytes_on_disk(self) -> int:
        import fsspec.core

        with fsspec_backend(self.location):
            fs, path = fsspec.core.url_to_fs(self.location, **(self.storage_options or {}))
        return int(fs.du(path, total=True))

    def bytes_raw(self) -> int:
        """Bytes the visible episodes take uncompressed."""
        per_step = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in array_layout(self.spec).values())
        return per_step * self.num_steps

    def __repr__(self) -> str:
        return f"EpisodeStore({self.location!r}, episodes={self.num_episodes}, steps={self.num_steps})"


def _has_content(location: str, storage_options: dict | None) -> bool:
    import fsspec.core

    with fsspec_backend(str(location)):
        fs, path = fsspec.core.url_to_fs(str(location).removeprefix("file://"), **(storage_options or {}))
    return bool(fs.exists(path) and fs.ls(path))
