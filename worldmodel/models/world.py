"""The WorldModel interface every backend implements, and the state helpers around it.

Batch-first and stateless as an object: a state is a dict of tensors whose
first dimension is the batch, so many sessions batch as one `torch.cat`, one
forward and one split (`cat_states` / `split_state`). The backends live in
their own modules: V-M-C in `models/vmc.py`, diffusion in `models/diffusion/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from worldmodel.models.noise import Noise, RowStreams, draw_uniform
from worldmodel.models.vector_norm import VectorNorm, VectorStats
from worldmodel.spec import EnvSpec

if TYPE_CHECKING:
    from worldmodel.models.controller import ControllerConfig

State = dict[str, Tensor]


@dataclass
class Context:
    """Real starting observations: frames [B, L, H, W, C] uint8, the actions taken at them
    [B, L] int64 or [B, L, A] float32, and vectors [B, L, D] when the spec has one."""

    frames: np.ndarray | Tensor
    actions: np.ndarray | Tensor
    vectors: np.ndarray | Tensor | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def select(self, indices) -> Context:
        pick = (lambda x: None if x is None else x[indices])
        return Context(pick(self.frames), pick(self.actions), pick(self.vectors))


@dataclass
class Transition:
    """What one dream step produces: image [B, H, W, C] uint8, vector [B, D] float32 or None,
    reward [B] float32, terminated [B] bool."""

    image: Tensor | None
    vector: Tensor | None
    reward: Tensor
    terminated: Tensor


@runtime_checkable
class WorldModel(Protocol):
    """A learned simulator: every backend, and all that DreamBatch, the envs and the service use."""

    spec: EnvSpec
    backend: str
    """"vmc" or "diffusion": the name bundles and the wire use."""
    device: torch.device
    temperature: float
    """The default sampling temperature; `step(temperature=)` overrides it for one call."""
    contexts: Context | None
    """Real start observations (a bundle carries them); None for a model built without any."""
    context_length: int
    """Real steps a start context needs at the least (V-M-C: 1; diffusion: its L frames)."""

    def initial_state(self, context: Context) -> State:
        """The state after the context's L real steps; takes no generator, so a context always begins the same dream."""
        ...

    def step(self, state: State, action: Tensor, generator: Noise = None,
             temperature: float | None = None) -> tuple[State, Transition]:
        """One step for the batch: the next state and what it shows (image, vector, reward, terminated).
        `generator`: a RowStreams (each row draws from its own stream, so it dreams the same whatever
        shares its batch), one torch.Generator for the batch, or None (torch's global generator)."""
        ...

    def observation_of(self, state: State) -> Transition:
        """The observation a state shows (after a reset), reward 0 and not terminated."""
        ...


@runtime_checkable
class LatentWorldModel(WorldModel, Protocol):
    """A world model with a compact latent state an agent acts on (V-M-C's [z, h]): dreams that skip
    decoding, and tracking of a real episode for controllers judged in the real env."""

    feature_dim: int
    """Width of `features`."""

    def features(self, state: State) -> Tensor:
        """What an agent sees of a state: [B, feature_dim] float."""
        ...

    def step_latent(self, state: State, action: Tensor, generator: Noise = None,
                    temperature: float | None = None) -> tuple[State, Tensor, Tensor]:
        """`step` without decoding: (next state, reward [B], terminated [B])."""
        ...

    def observe(self, state: State, action: Tensor, frame, vector=None) -> State:
        """Advance on a REAL next observation (frames [B, H, W, C], vectors [B, D]) after `action`."""
        ...

    def controller_config(self) -> ControllerConfig:
        """The config of a controller acting on this model's features."""
        ...


def has_latents(model: WorldModel) -> bool:
    """Whether the model offers the latent surface (observation="latent", controllers, `observe`)."""
    return isinstance(model, LatentWorldModel)


def cat_states(states: list[State]) -> State:
    return {key: torch.cat([s[key] for s in states]) for key in states[0]}


def split_state(state: State, sizes: list[int]) -> list[State]:
    parts = {key: value.split(sizes) for key, value in state.items()}
    return [{key: parts[key][i] for key in state} for i in range(len(sizes))]


def index_state(state: State, index) -> State:
    return {key: value[index] for key, value in state.items()}


def action_tensor(spec: EnvSpec, action, batch: int, device) -> Tensor:
    """A batch of actions checked by the spec's one checker, as a tensor on `device`."""
    return torch.as_tensor(spec.check_actions(action, batch), device=device)


__all__ = [
    "Context", "LatentWorldModel", "Noise", "RowStreams", "State", "Transition", "VectorNorm", "VectorStats", "WorldModel",
    "action_tensor", "cat_states", "draw_uniform", "has_latents", "index_state", "split_state",
]
