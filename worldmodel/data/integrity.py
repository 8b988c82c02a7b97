"""What a reader trusts of a part: chunks that exist, and the committed prefix of `episode_ends`.

A writer commits an episode by growing `meta/episode_ends` after the episode's rows are in place
(writer.py, layout.append_rows), so a killed writer leaves nothing to distrust. These checks are
for damage from outside: a chunk file deleted, an array edited by hand, a part written by another
tool or by a version of this one that grew shapes before writing. zarr reads a missing chunk as
its fill value, zeros, which would pass for black frames and zero rewards; an entry of
`episode_ends` that is not a committed end would give negative or out-of-range episodes.
"""

from __future__ import annotations

import math

import numpy as np
import zarr
from zarr.core.sync import sync

from worldmodel.data.layout import (
    EPISODE_ENDS,
    EPISODE_SEEDS,
    EVERY_CHUNK_WRITTEN,
    StoreError,
    data_array,
    meta_array,
)


async def _keys_below(store, prefix: str) -> set[str]:
    return {key async for key in store.list_prefix(prefix)}


def check_chunks_present(part: zarr.Group, names: tuple[str, ...], location: str) -> None:
    """StoreError naming the part, the array and the rows if a chunk below an array's shape is missing.

    Only parts whose writer stored every chunk (EVERY_CHUNK_WRITTEN) can be checked: before
    that, a chunk equal to the fill value was legitimately never written.
    """
    if not part.attrs.get(EVERY_CHUNK_WRITTEN):
        return
    present = sync(_keys_below(part.store_path.store, f"{part.store_path.path}/"))
    arrays = [data_array(part, name) for name in names] + [meta_array(part, m) for m in (EPISODE_ENDS, EPISODE_SEEDS)]
    for array in arrays:
        length, rows = array.chunks[0], array.shape[0]
        rest = (0,) * (array.ndim - 1)
        for index in range(math.ceil(rows / length)):
            if f"{array.store_path.path}/{array.metadata.encode_chunk_key((index, *rest))}" not in present:
                first, last = index * length, min(rows, (index + 1) * length) - 1
                raise StoreError(
                    f"{location}: {array.store_path.path} is missing chunk {index} (rows {first}-{last}); "
                    "the store is damaged there: restore that part, or delete its directory to drop its episodes"
                )


def committed_prefix(ends: np.ndarray, rows: int) -> int:
    """How many leading entries of `ends` are committed episode ends: each > the one before (> 0 for
    the first) and <= `rows`, the rows every data array holds."""
    bad = (np.diff(ends, prepend=0) <= 0) | (ends > rows)
    return int(np.argmax(bad)) if bad.any() else len(ends)


def describe_distrust(part_id: str, ends: np.ndarray, trusted: int, rows: int) -> str:
    """One line on what a reader ignored in a part, for the store's warning."""
    shown = ends[max(0, trusted - 2) : trusted + 3].tolist()
    return (f"part {part_id}: episode_ends[{trusted}:] is not a committed end (around it: {shown}, "
            f"{rows} rows of data); reading its first {trusted} of {len(ends)} episodes")
