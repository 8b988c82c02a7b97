"""The episode store: a zarr v3 group of parts, each written by one writer.

Layout (DESIGN.md; a part follows diffusion_policy's zarr ReplayBuffer):

    store.zarr/zarr.json                      attrs["worldmodel"]: format, version, spec, source
    store.zarr/parts/<writer-id>/data/image   (N, H, W, C) uint8, chunked in time, zstd
                                /data/vector  (N, D) float32 (if the spec has one)
                                /data/action  (N, A) float32 | (N,) int64
                                /data/reward, /data/terminated, /data/truncated  (N,)
                                /meta/episode_ends   (E,) int64, cumulative
                                /meta/episode_seeds  (E,) int64, -1 when unknown

Row t of an episode holds the observation o_t, the action a_t taken there, and
the reward and end flags that followed it; the observation after the last
action is not stored (as DIAMOND's and diffusion_policy's buffers).

An episode is visible once `episode_ends` covers it. Writers extend it only
after the episode's data is in place, so a reader never sees a torn episode
and data past the last end (a writer killed mid-write) is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
import zarr.storage

from worldmodel.errors import UserError
from worldmodel.spec import EnvSpec

FORMAT = "worldmodel.episodes"
FORMAT_VERSION = 1
ATTRS_KEY = "worldmodel"


class StoreError(UserError):
    """A path that is no store, a store of another version, or data that does not fit it."""


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


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def zarr_store(location: str, *, read_only: bool, storage_options: dict | None = None):
    """A zarr Store for a local path or an fsspec URL (memory://, s3://, ...)."""
    location = str(location)
    if _is_url(location):
        return zarr.storage.FsspecStore.from_url(location, storage_options=storage_options, read_only=read_only)
    return zarr.storage.LocalStore(location.removeprefix("file://"), read_only=read_only)


def array_names(spec: EnvSpec) -> tuple[str, ...]:
    """The data arrays a store of this spec holds, in the order writers append them."""
    names = ["image"]
    if spec.vector is not None:
        names.append("vector")
    return (*names, "action", "reward", "terminated", "truncated")


def array_layout(spec: EnvSpec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-step shape and dtype of every data array."""
    layout = {"image": (spec.image.shape, np.dtype(np.uint8))}
    if spec.vector is not None:
        layout["vector"] = ((spec.vector.size,), np.dtype(np.float32))
    layout["action"] = (spec.action.store_shape, spec.action.store_dtype)
    layout["reward"] = ((), np.dtype(np.float32))
    layout["terminated"] = ((), np.dtype(np.bool_))
    layout["truncated"] = ((), np.dtype(np.bool_))
    return layout


class EpisodeStore:
    """A store of episodes: open or create one, list its episodes, read them, add parts."""

    def __init__(self, root: zarr.Group, location: str, storage_options: dict | None = None):
        self._root = root
        self.location = str(location)
        self.storage_options = storage_options
        attrs = root.attrs.asdict().get(ATTRS_KEY)
        if not isinstance(attrs, dict) or attrs.get("format") != FORMAT:
            raise StoreError(f"{self.location} is not a worldmodel episode store (no '{ATTRS_KEY}' attributes)")
        if attrs.get("version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.location} has store format version {attrs.get('version')}; "
                f"this worldmodel reads version {FORMAT_VERSION}"
            )
        self.spec = EnvSpec.from_dict(attrs["spec"])
        self.source: dict[str, Any] = dict(attrs.get("source") or {})
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
        root.create_group("parts")
        attrs = {"format": FORMAT, "version": FORMAT_VERSION, "spec": spec.to_dict(), "source": source or {}}
        root.attrs.update({ATTRS_KEY: attrs})
        return cls(root, location, storage_options)

    # -- listing ----------------------------------------------------------
    def refresh(self) -> None:
        """Forget the cached episode list (other writers may have added episodes)."""
        self._episodes = None

    def part_ids(self) -> list[str]:
        if "parts" not in self._root:
            return []
        return sorted(self._root["parts"].group_keys())

    def part(self, part_id: str) -> zarr.Group:
        return self._root[f"parts/{part_id}"]

    @property
    def episodes(self) -> list[EpisodeRef]:
        if self._episodes is None:
            refs = []
            for part_id in self.part_ids():
                meta = self.part(part_id)["meta"]
                ends = np.asarray(meta["episode_ends"][:], dtype=np.int64)
                seeds = np.asarray(meta["episode_seeds"][:], dtype=np.int64)
                start = 0
                for i, end in enumerate(ends.tolist()):
                    seed = int(seeds[i]) if i < len(seeds) else -1
                    refs.append(EpisodeRef(part_id, i, start, end, seed))
                    start = end
            self._episodes = refs
        return self._episodes

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return sum(ref.length for ref in self.episodes)

    def read_episode(self, index: int | EpisodeRef) -> dict[str, np.ndarray]:
        """Every array of one episode, by global index or reference."""
        ref = index if isinstance(index, EpisodeRef) else self.episodes[index]
        data = self.part(ref.part)["data"]
        return {name: np.asarray(data[name][ref.start : ref.stop]) for name in array_names(self.spec)}

    def read_column(self, name: str) -> np.ndarray:
        """One data array over every visible episode, concatenated in episode order."""
        pieces = []
        for part_id in self.part_ids():
            ends = self.part(part_id)["meta/episode_ends"][:]
            if len(ends):
                pieces.append(np.asarray(self.part(part_id)[f"data/{name}"][: int(ends[-1])]))
        if not pieces:
            shape, dtype = array_layout(self.spec)[name]
            return np.zeros((0, *shape), dtype)
        return np.concatenate(pieces)

    # -- writing ----------------------------------------------------------
    def writer(self, writer_id: str | None = None, **kwargs):
        """A PartWriter that owns a new part of this store (see data/writer.py)."""
        from worldmodel.data.writer import PartWriter

        return PartWriter(self, writer_id, **kwargs)

    def _parts_group(self) -> zarr.Group:
        """The parts group, opened for writing (readers keep a read-only root)."""
        store = zarr_store(self.location, read_only=False, storage_options=self.storage_options)
        return zarr.open_group(store, mode="r+")["parts"]

    # -- size -------------------------------------------------------------
    def bytes_on_disk(self) -> int:
        import fsspec.core

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

    fs, path = fsspec.core.url_to_fs(str(location).removeprefix("file://"), **(storage_options or {}))
    return bool(fs.exists(path) and fs.ls(path))
