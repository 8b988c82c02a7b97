"""The on-disk layout of an episode store: the one place that names its paths, arrays and encodings.

A store is a zarr v3 group of parts (DESIGN.md; a part follows diffusion_policy's zarr ReplayBuffer):

    store.zarr/zarr.json                      attrs["worldmodel"]: format, version, spec, source
    store.zarr/parts/<writer-id>/             attrs: host, pid, created, every_chunk_written
                                /data/image   (N, H, W, C) uint8, chunked in time, zstd
                                /data/vector  (N, D) float32 (if the spec has one)
                                /data/action  (N, A) float32 | (N,) int64
                                /data/reward, /data/terminated, /data/truncated  (N,)
                                /meta/episode_ends   (E,) int64, cumulative
                                /meta/episode_seeds  (E,) int64, -1 when unknown

The README documents this layout and outside tools read it: changing any name,
dtype, chunking or codec here changes the format and needs a FORMAT_VERSION bump.
`store.py` (reading) and `writer.py` (appending) both take it from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.core.array import AsyncArray

from worldmodel.errors import UserError
from worldmodel.spec import EnvSpec

FORMAT = "worldmodel.episodes"
FORMAT_VERSION = 1
ATTRS_KEY = "worldmodel"  # the root attribute holding {format, version, spec, source}

PARTS = "parts"
DATA = "data"
META = "meta"
EPISODE_ENDS = "episode_ends"
EPISODE_SEEDS = "episode_seeds"

# 32 frames of 64x64x3 is a 384 KiB chunk: a T=16 window touches one or two
# chunks; decoding one costs about a millisecond, which the sampler's chunk
# cache pays once per chunk (benchmarks/store.py).
DEFAULT_IMAGE_CHUNK = 32
SCALAR_CHUNK = 4096
META_CHUNK = 1024

EVERY_CHUNK_WRITTEN = "every_chunk_written"
"""Part attribute: its writer stored every chunk, even one equal to the fill value, so a missing
chunk below the part's shape is damage, not zeros (parts written before it was set skip that check)."""
_WRITE_CONFIG = {"write_empty_chunks": True}


class StoreError(UserError):
    """A path that is no store, a store of another version, or data that does not fit it."""


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def zarr_store(location: str, *, read_only: bool, storage_options: dict | None = None):
    """A zarr Store for a local path or an fsspec URL (memory://, s3://, ...)."""
    location = str(location)
    if _is_url(location):
        with fsspec_backend(location):
            return zarr.storage.FsspecStore.from_url(location, storage_options=storage_options, read_only=read_only)
    return zarr.storage.LocalStore(location.removeprefix("file://"), read_only=read_only)


@contextmanager
def fsspec_backend(location: str):
    """Turn fsspec's ImportError for a URL scheme whose package is missing into a StoreError naming it."""
    try:
        yield
    except ImportError as err:
        scheme = location.split("://", 1)[0]
        package = getattr(err, "name", None) or _FSSPEC_PACKAGES.get(scheme, f"the fsspec backend for {scheme}://")
        raise StoreError(
            f"{location}: {scheme}:// URLs need the package {package!r}, which is not installed; "
            f"pip install {package}"
        ) from err


_FSSPEC_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


# -- root attributes ------------------------------------------------------
def root_attrs(spec: EnvSpec, source: dict[str, Any] | None) -> dict[str, Any]:
    """The attributes a new store's root group gets."""
    return {ATTRS_KEY: {"format": FORMAT, "version": FORMAT_VERSION, "spec": spec.to_dict(), "source": source or {}}}


def read_root_attrs(attrs: dict[str, Any], location: str) -> tuple[EnvSpec, dict[str, Any]]:
    """(spec, source) from a root group's attributes; StoreError if they are no store of this version."""
    ours = attrs.get(ATTRS_KEY)
    if not isinstance(ours, dict) or ours.get("format") != FORMAT:
        raise StoreError(f"{location} is not a worldmodel episode store (no '{ATTRS_KEY}' attributes)")
    if ours.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"{location} has store format version {ours.get('version')}; this worldmodel reads version {FORMAT_VERSION}"
        )
    return EnvSpec.from_dict(ours["spec"]), dict(ours.get("source") or {})


# -- data arrays ----------------------------------------------------------
def array_names(spec: EnvSpec) -> tuple[str, ...]:
    """The data arrays a store of this spec holds, in the order writers append them."""
    names = ["image"]
    if spec.vector is not None:
        names.append("vector")
    return (*names, "action", "reward", "terminated", "truncated")


def array_layout(spec: EnvSpec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-step shape and dtype of every data array (an array holds (N, *shape) rows)."""
    layout = {"image": (spec.image.shape, np.dtype(np.uint8))}
    if spec.vector is not None:
        layout["vector"] = ((spec.vector.size,), np.dtype(np.float32))
    layout["action"] = (spec.action.store_shape, spec.action.store_dtype)
    layout["reward"] = ((), np.dtype(np.float32))
    layout["terminated"] = ((), np.dtype(np.bool_))
    layout["truncated"] = ((), np.dtype(np.bool_))
    return layout


def check_keys(spec: EnvSpec, keys: Sequence[str] | None) -> tuple[str, ...]:
    """`keys` as a tuple (None: every data array of the spec); ValueError naming the valid ones if any is unknown."""
    names = array_names(spec)
    if keys is None:
        return names
    if isinstance(keys, str):
        raise ValueError(f"keys must be a sequence of array names such as ({keys!r},), not a string")
    unknown = [key for key in keys if key not in names]
    if unknown:
        raise ValueError(f"unknown keys {unknown}; the store has {names}")
    return tuple(keys)


def _compressor(dtype: np.dtype) -> BloscCodec:
    # Bytes of frames repeat whole (flat road, grass, the HUD): zstd finds them unshuffled,
    # 10.5x on CarRacing vs 5.9x bitshuffled (benchmarks/store.py). Byte shuffle suits floats.
    shuffle = BloscShuffle.noshuffle if dtype == np.uint8 else BloscShuffle.shuffle
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


# -- parts ----------------------------------------------------------------
def open_parts_for_writing(location: str, storage_options: dict | None = None) -> zarr.Group:
    """The parts group of the store at `location`, opened for writing (readers keep a read-only root)."""
    store = zarr_store(location, read_only=False, storage_options=storage_options)
    return zarr.open_group(store, mode="r+")[PARTS]


def create_part(
    parts: zarr.Group, part_id: str, spec: EnvSpec, *, image_chunk: int, attrs: dict[str, Any]
) -> zarr.Group:
    """Create the empty group `parts/<part_id>` with every data and meta array of `spec`.

    StoreError if the part exists: one writer per part.
    """
    if part_id in parts:
        raise StoreError(f"part {part_id!r} already exists: one writer per part")
    group = parts.create_group(part_id)
    group.attrs.update({**attrs, EVERY_CHUNK_WRITTEN: True})
    data = group.create_group(DATA)
    for name, (shape, dtype) in array_layout(spec).items():
        time_chunk = image_chunk if name == "image" else SCALAR_CHUNK
        data.create_array(
            name,
            shape=(0, *shape),
            chunks=(time_chunk, *shape),
            dtype=dtype,
            compressors=[_compressor(dtype)],
            fill_value=0,
        )
    meta = group.create_group(META)
    for name in (EPISODE_SEEDS, EPISODE_ENDS):
        meta.create_array(name, shape=(0,), chunks=(META_CHUNK,), dtype=np.int64, fill_value=0)
    return group


def part_path(part_id: str) -> str:
    """Path of a part's group below the store root."""
    return f"{PARTS}/{part_id}"


def data_array(part: zarr.Group, key: str) -> zarr.Array:
    """The data array `key` (rows (N, ...)) of a part's group."""
    return part[f"{DATA}/{key}"]


def meta_array(part: zarr.Group, name: str) -> zarr.Array:
    """The meta array `name` (EPISODE_ENDS or EPISODE_SEEDS, rows (E,)) of a part's group."""
    return part[f"{META}/{name}"]


def append_rows(array: zarr.Array, rows: np.ndarray) -> None:
    """Append `rows` along axis 0: their chunks first, the grown shape last.

    zarr's own `append` saves the grown shape first, so a writer killed between the two leaves
    rows that read as the fill value (a 0 at the end of `episode_ends`). In this order a kill
    leaves the old shape, and chunk bytes past it that no reader sees. Each file write is atomic
    (LocalStore writes a temporary file and renames it; an object store puts whole objects).
    """
    start = array.shape[0]
    grown = array.metadata.update_shape((start + len(rows), *array.shape[1:]))
    zarr.Array(AsyncArray(grown, array.store_path, _WRITE_CONFIG))[start:] = rows
    array.resize(grown.shape)


def read_rows(array: zarr.Array, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of `array`; a chunk that does not decode is a StoreError naming it."""
    try:
        return np.asarray(array[start:stop])
    except RuntimeError as err:  # what blosc and zstd raise for bytes that are not their frames
        raise StoreError(
            f"{array.store_path}: rows [{start}, {stop}) do not decode ({err}); the store is damaged "
            "there: restore that part, or delete its directory to drop its episodes"
        ) from err
