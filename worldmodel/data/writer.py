"""PartWriter: one writer appends whole episodes to its own part of a store.

Steps are buffered in memory and checked as they arrive; `end_episode` writes
the data arrays first and extends `meta/episode_ends` last, which is what
makes the episode visible; each array grows its chunks before its shape
(layout.append_rows). A writer killed at any point loses at most the
episode it was writing, no reader ever sees half of one, and
`episode_ends` only ever holds committed ends.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
import warnings
from typing import Any, Protocol

import numpy as np

from worldmodel.data.layout import (
    DEFAULT_IMAGE_CHUNK,
    EPISODE_ENDS,
    EPISODE_SEEDS,
    append_rows,
    array_layout,
    array_names,
    create_part,
    data_array,
    meta_array,
    open_parts_for_writing,
)
from worldmodel.spec import EnvSpec


class WritableStore(Protocol):
    """What a writer needs of its store (an EpisodeStore): where it is, its spec, and a cache to drop."""

    location: str
    storage_options: dict | None
    spec: EnvSpec

    def refresh(self) -> None: ...


def new_writer_id() -> str:
    """Unique and sortable by time: many collectors on many hosts never collide."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class PartWriter:
    """Owns `parts/<writer_id>` of a store and appends episodes to it.

    Use `add_step(...)` per step and `end_episode(seed=)` per episode, or
    `write_episode(arrays, seed=)` for a whole episode at once.
    """

    def __init__(
        self,
        store: WritableStore,
        writer_id: str | None = None,
        *,
        image_chunk: int = DEFAULT_IMAGE_CHUNK,
        attrs: dict[str, Any] | None = None,
    ):
        self.store = store
        self.spec = store.spec
        self.writer_id = writer_id or new_writer_id()
        self._layout = array_layout(self.spec)
        self._names = array_names(self.spec)
        self._buffer: dict[str, list[np.ndarray]] = {name: [] for name in self._names}
        self._closed = False
        parts = open_parts_for_writing(store.location, store.storage_options)
        part_attrs = {"host": socket.gethostname(), "pid": os.getpid(), "created": time.time(), **(attrs or {})}
        self._group = create_part(parts, self.writer_id, self.spec, image_chunk=image_chunk, attrs=part_attrs)
        self.episodes_written = 0
        self.steps_written = 0

    # -- step by step -----------------------------------------------------
    @property
    def pending_steps(self) -> int:
        return len(self._buffer["reward"])

    def add_step(
        self,
        image: Any,
        action: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        vector: Any | None = None,
    ) -> None:
        """Buffer one step; a step that does not fit the spec raises ValueError and is not kept."""
        self._check_open()
        row = {
            "image": self._check_image(np.asarray(image)),
            "action": self._check_action(action),
            "reward": self._check_reward(reward),
            "terminated": np.bool_(bool(terminated)),
            "truncated": np.bool_(bool(truncated)),
        }
        if self.spec.vector is not None:
            if vector is None:
                raise ValueError(f"this store's spec has a vector observation of {self.spec.vector.size} dims")
            row["vector"] = self._check_vector(np.asarray(vector))
        elif vector is not None:
            raise ValueError("this store's spec has no vector observation, but a vector was given")
        for name in self._names:
            self._buffer[name].append(row[name])

    def end_episode(self, seed: int | None = None) -> int:
        """Write the buffered episode and make it visible. Returns its length."""
        self._check_open()
        arrays = {name: np.stack(values) if values else None for name, values in self._buffer.items()}
        try:
            if arrays["reward"] is None:
                raise ValueError("cannot end an empty episode: add at least one step")
            return self._write(arrays, seed)
        finally:
            self.discard_episode()

    def discard_episode(self) -> None:
        for values in self._buffer.values():
            values.clear()

    # -- whole episodes ---------------------------------------------------
    def write_episode(self, arrays: dict[str, Any], seed: int | None = None) -> int:
        """Check and write one whole episode given as arrays [N, ...]. Returns N."""
        self._check_open()
        if self.pending_steps:
            raise RuntimeError("an episode is being added step by step; end or discard it first")
        missing = set(self._names) - set(arrays)
        extra = set(arrays) - set(self._names)
        if missing or extra:
            raise ValueError(f"episode arrays must be exactly {sorted(self._names)}; missing {sorted(missing)}, extra {sorted(extra)}")
        checked = {}
        lengths = set()
        for name, (shape, dtype) in self._layout.items():
            arr = np.asarray(arrays[name])
            if arr.ndim == 0 or arr.shape[1:] != shape:
                raise ValueError(f"episode {name!r} must have shape (N, {', '.join(map(str, shape))}), got {arr.shape}")
            if name == "image" and arr.dtype != np.uint8:
                raise ValueError(f"episode images must be uint8, got {arr.dtype}")
            if name == "action" and self.spec.action.is_discrete:
                if not np.issubdtype(arr.dtype, np.integer) or arr.size and (arr.min() < 0 or arr.max() >= self.spec.action.n):
                    raise ValueError(f"discrete actions must be integers in [0, {self.spec.action.n})")
            arr = arr.astype(dtype, copy=False)
            if dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ValueError(f"episode {name!r} has NaN or infinite values")
            checked[name] = arr
            lengths.add(arr.shape[0])
        if len(lengths) != 1:
            raise ValueError(f"episode arrays disagree on length: {sorted(lengths)}")
        if lengths == {0}:
            raise ValueError("cannot write an empty episode")
        return self._write(checked, seed)

    def _write(self, arrays: dict[str, np.ndarray], seed: int | None) -> int:
        n = len(arrays["reward"])
        group = self._group
        for name in self._names:  # data first ...
            append_rows(data_array(group, name), arrays[name])
        append_rows(meta_array(group, EPISODE_SEEDS), np.array([-1 if seed is None else int(seed)], np.int64))
        end = self.steps_written + n
        append_rows(meta_array(group, EPISODE_ENDS), np.array([end], np.int64))  # ... visibility last
        self.steps_written = end
        self.episodes_written += 1
        self.store.refresh()
        return n

    # -- checks -----------------------------------------------------------
    def _check_image(self, image: np.ndarray) -> np.ndarray:
        if image.shape != self.spec.image.shape or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image of shape {self.spec.image.shape}, got {image.dtype} {image.shape}")
        return image

    def _check_vector(self, vector: np.ndarray) -> np.ndarray:
        vector = vector.astype(np.float32)
        if vector.shape != (self.spec.vector.size,):
            raise ValueError(f"expected a vector of shape ({self.spec.vector.size},), got {vector.shape}")
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"vector observation has NaN or infinite values: {vector}")
        return vector

    def _check_action(self, action: Any) -> np.ndarray:
        return self.spec.check_action(action)

    @staticmethod
    def _check_reward(reward: float) -> np.float32:
        value = np.float32(reward)
        if not np.isfinite(value):
            raise ValueError(f"reward must be finite, got {reward!r}")
        return value

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"writer {self.writer_id} is closed")

    # -- lifetime ---------------------------------------------------------
    def close(self) -> None:
        if self.pending_steps and not self._closed:
            warnings.warn(f"writer {self.writer_id} closed with {self.pending_steps} unended steps; they are dropped")
        self.discard_episode()
        self._closed = True

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
