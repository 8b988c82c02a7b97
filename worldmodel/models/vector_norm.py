"""The vector observation's normalisation: computed once from the training stores, saved beside
the model as `vector_norm.json`, applied by every backend. Its one home.

Models see vectors with zero mean and unit std per dimension; envs, stores and
agents see the env's own units. A spec without a vector has empty stats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldmodel.spec import EnvSpec

VECTOR_NORM_FILE = "vector_norm.json"
_MIN_STD = 1e-6  # a dimension that never varies is left unscaled, not divided by ~0


@dataclass(frozen=True)
class VectorStats:
    """Per-dimension mean and std of the vector observation ([] and [] when the spec has none)."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"vector stats need as many means as stds, got {len(self.mean)} and {len(self.std)}")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"vector stds must be > 0, got {self.std}")

    @classmethod
    def fit(cls, values: np.ndarray) -> VectorStats:
        """Stats of vectors [N, D]; an empty array (no vector) gives empty stats."""
        values = np.asarray(values, np.float64)
        if values.size == 0:
            return cls()
        std = values.std(axis=0)
        return cls(values.mean(axis=0).tolist(), np.where(std > _MIN_STD, std, 1.0).tolist())

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> VectorStats:
        data = data or {}
        return cls(data.get("mean") or (), data.get("std") or ())

    def normalize_numpy(self, values: np.ndarray) -> np.ndarray:
        """vectors [..., D] in the env's units -> normalised float32 (training data)."""
        return ((np.asarray(values, np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / VECTOR_NORM_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> VectorStats:
        """The stats saved beside a model; ValueError when the directory has none."""
        path = Path(directory) / VECTOR_NORM_FILE
        if not path.is_file():
            raise ValueError(f"{directory} has no {VECTOR_NORM_FILE}: it was not written by this worldmodel's training")
        return cls.from_dict(json.loads(path.read_text()))


class VectorNorm:
    """VectorStats as tensors on a device: models see normalised vectors, envs and agents the env's units."""

    def __init__(self, spec: EnvSpec, stats: VectorStats | dict | None, device: str | torch.device):
        stats = stats if isinstance(stats, VectorStats) else VectorStats.from_dict(stats)
        size = spec.vector.size if spec.vector is not None else 0
        if stats.mean and len(stats.mean) != size:
            raise ValueError(f"vector stats have {len(stats.mean)} dims, the spec's vector {size}")
        self.has_vector = spec.vector is not None
        self.device = torch.device(device)
        self.stats = stats
        self.mean = torch.tensor(stats.mean or [0.0] * size, device=self.device)
        self.std = torch.tensor(stats.std or [1.0] * size, device=self.device)

    def normalize(self, vector) -> Tensor | None:
        if vector is None or not self.has_vector:
            return None
        return (torch.as_tensor(vector, device=self.device).float() - self.mean) / self.std

    def denormalize(self, vector: Tensor) -> Tensor:
        return vector * self.std + self.mean

    def context_tensors(self, context) -> tuple[Tensor, Tensor, Tensor | None]:
        """A Context's frames [B, L, H, W, C], actions [B, L(, A)] and normalised vectors [B, L, D] (or None)
        as tensors on the device: what every backend's initial_state starts from."""
        frames = torch.as_tensor(context.frames, device=self.device)
        actions = torch.as_tensor(context.actions, device=self.device)
        vectors = self.normalize(context.vectors)
        if self.has_vector and vectors is None:
            raise ValueError("this model's spec has a vector observation: the context needs vectors")
        return frames, actions, vectors


__all__ = ["VECTOR_NORM_FILE", "VectorNorm", "VectorStats"]
