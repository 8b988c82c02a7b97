"""The WorldModel interface, and its V-M-C backend.

Batch-first and stateless as an object: a state is a dict of tensors whose
first dimension is the batch, so many sessions batch as one `torch.cat`, one
forward and one split (`cat_states` / `split_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from worldmodel.models.controller import ControllerConfig
from worldmodel.models.images import to_model_input, to_uint8_images
from worldmodel.models.mdnrnn import MDNRNN
from worldmodel.models.vae import ConvVAE
from worldmodel.spec import EnvSpec

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


class WorldModel(Protocol):
    spec: EnvSpec
    backend: str

    def initial_state(self, context: Context) -> State: ...

    def step(
        self, state: State, action: Tensor, generator=None, temperature: float | None = None
    ) -> tuple[State, Transition]: ...


def cat_states(states: list[State]) -> State:
    return {key: torch.cat([s[key] for s in states]) for key in states[0]}


def split_state(state: State, sizes: list[int]) -> list[State]:
    parts = {key: value.split(sizes) for key, value in state.items()}
    return [{key: parts[key][i] for key in state} for i in range(len(sizes))]


def index_state(state: State, index) -> State:
    return {key: value[index] for key, value in state.items()}


def draw_uniform(batch: int, generator, device) -> Tensor:
    """[batch] uniforms from one generator, or one per row from a sequence of generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(batch, generator=generator, device=device)
    return torch.cat([torch.rand(1, generator=g, device=device) for g in generator])


def check_actions(spec: EnvSpec, action: Tensor | np.ndarray, batch: int, device) -> Tensor:
    """A batch of actions as the models take them, or ValueError saying what was expected."""
    action = torch.as_tensor(action, device=device)
    if spec.action.is_discrete:
        if action.shape != (batch,) or action.is_floating_point() or action.dtype == torch.bool:
            raise ValueError(f"expected {batch} discrete actions: an integer tensor of shape ({batch},), got {action.dtype} {tuple(action.shape)}")
        if batch and (int(action.min()) < 0 or int(action.max()) >= spec.action.n):
            raise ValueError(f"discrete actions must be in [0, {spec.action.n}), got {action.tolist()}")
        return action.long()
    expected = (batch, *spec.action.shape)
    if tuple(action.shape) != expected:
        raise ValueError(f"expected box actions of shape {expected}, got {tuple(action.shape)}")
    action = action.float()
    if not torch.isfinite(action).all():
        raise ValueError("actions contain NaN or infinite values")
    low = torch.tensor(spec.action.low, device=device)
    high = torch.tensor(spec.action.high, device=device)
    if ((action < low - 1e-6) | (action > high + 1e-6)).any():
        raise ValueError(f"box actions must lie in [{list(spec.action.low)}, {list(spec.action.high)}]")
    return action


class VectorNorm:
    """The vector observation's per-dimension mean and std from training (identity when unknown):
    models see normalised vectors, envs and agents the env's units."""

    def __init__(self, spec: EnvSpec, norm: dict | None, device):
        norm = norm or {}
        size = spec.vector.size if spec.vector is not None else 0
        self.has_vector = spec.vector is not None
        self.device = device
        self.mean = torch.tensor(norm.get("mean") or [0.0] * size, device=device)
        self.std = torch.tensor(norm.get("std") or [1.0] * size, device=device)

    def normalize(self, vector) -> Tensor | None:
        if vector is None or not self.has_vector:
            return None
        return (torch.as_tensor(vector, device=self.device).float() - self.mean) / self.std

    def denormalize(self, vector: Tensor) -> Tensor:
        return vector * self.std + self.mean


class VMCWorldModel:
    """V encodes, M dreams the next z (and reward, termination, vector), V decodes.

    State: z [B, Z], h and c [B, H] (the LSTM), and vector [B, D] (normalized) when the spec has one.
    """

    backend = "vmc"

    def __init__(
        self,
        spec: EnvSpec,
        vae: ConvVAE,
        mdnrnn: MDNRNN,
        *,
        vector_norm: dict[str, list[float]] | None = None,
        temperature: float = 1.0,
        device: str | torch.device = "cpu",
    ):
        self.spec = spec
        self.device = torch.device(device)
        self.vae = vae.to(self.device).eval()
        self.mdnrnn = mdnrnn.to(self.device).eval()
        self.temperature = float(temperature)
        self.contexts: Context | None = None  # real start contexts, set by load_bundle
        self.bundle_path = None
        self.bundle_config: dict | None = None
        self.vector_norm = VectorNorm(spec, vector_norm, self.device)

    @property
    def latent_dim(self) -> int:
        return self.vae.config.latent_dim

    @property
    def feature_dim(self) -> int:
        """Width of [z, h (, vector)], what the controller sees."""
        vector = self.spec.vector.size if self.spec.vector is not None else 0
        return self.latent_dim + self.mdnrnn.config.hidden_size + vector

    def controller_config(self) -> ControllerConfig:
        return ControllerConfig.from_spec(self.spec, self.feature_dim)

    @torch.no_grad()
    def encode(self, frames: Tensor | np.ndarray) -> Tensor:
        """Frames [..., H, W, C] uint8 -> z [..., Z] (the posterior mean)."""
        frames = torch.as_tensor(frames, device=self.device)
        lead = frames.shape[:-3]
        mu, _ = self.vae.encode(to_model_input(frames.reshape(-1, *frames.shape[-3:])))
        return mu.reshape(*lead, -1)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """z [B, Z] -> frames [B, H, W, C] uint8."""
        return to_uint8_images(self.vae.decode(z))

    def normalize_vector(self, vector) -> Tensor | None:
        return self.vector_norm.normalize(vector)

    @torch.no_grad()
    def initial_state(self, context: Context) -> State:
        """Encode the L context frames; M reads the first L-1 steps so h knows the recent past."""
        frames = torch.as_tensor(context.frames, device=self.device)
        b, length = frames.shape[:2]
        z = self.encode(frames)
        actions = torch.as_tensor(context.actions, device=self.device)
        vectors = self.normalize_vector(context.vectors)
        if self.spec.vector is not None and vectors is None:
            raise ValueError("this model's spec has a vector observation: the context needs vectors")
        h, c = self.mdnrnn.initial_state(b, self.device)
        if length > 1:
            _, (h, c) = self.mdnrnn(z[:, :-1], actions[:, :-1], None if vectors is None else vectors[:, :-1], (h, c))
        state = {"z": z[:, -1], "h": h[0], "c": c[0]}
        if vectors is not None:
            state["vector"] = vectors[:, -1]
        return state

    @torch.no_grad()
    def observe(self, state: State, action: Tensor, frame: Tensor | np.ndarray, vector=None) -> State:
        """Advance on a REAL next observation (evaluation in the real env): M's h reads (z_t, a_t),
        and z becomes the encoding of the real frame."""
        action = check_actions(self.spec, action, state["z"].shape[0], self.device)
        _, (h, c) = self.mdnrnn.step(state["z"], action, state.get("vector"), (state["h"][None], state["c"][None]))
        frame = torch.as_tensor(frame, device=self.device)
        next_state = {"z": self.encode(frame), "h": h[0], "c": c[0]}
        if self.spec.vector is not None:
            next_state["vector"] = self.normalize_vector(vector)
        return next_state

    @torch.no_grad()
    def step_latent(
        self, state: State, action: Tensor, generator=None, temperature: float | None = None
    ) -> tuple[State, Tensor, Tensor]:
        """The fast path agents use: no decoding. Returns (next state, reward [B], terminated [B]).

        `generator`: one torch.Generator, or one per row; `temperature` overrides the model's tau.
        """
        action = check_actions(self.spec, action, state["z"].shape[0], self.device)
        tau = self.temperature if temperature is None else temperature
        out, (h, c) = self.mdnrnn.step(state["z"], action, state.get("vector"), (state["h"][None], state["c"][None]))
        next_state = {"z": self.mdnrnn.sample_next_z(out, tau, generator), "h": h[0], "c": c[0]}
        if out.vector is not None:
            next_state["vector"] = out.vector
        # The dream ends the way M says the real env would: termination is drawn, not thresholded,
        # so a rare end (a pole that falls, a car that leaves the map) still happens in the dream.
        uniform = draw_uniform(state["z"].shape[0], generator, self.device)
        return next_state, out.reward.float(), uniform < torch.sigmoid(out.termination_logit.float())

    @torch.no_grad()
    def step(
        self, state: State, action: Tensor, generator=None, temperature: float | None = None
    ) -> tuple[State, Transition]:
        next_state, reward, terminated = self.step_latent(state, action, generator, temperature)
        return next_state, Transition(self.decode(next_state["z"]), self.vector_of(next_state), reward, terminated)

    def vector_of(self, state: State) -> Tensor | None:
        """The state's vector observation in the env's units."""
        if "vector" not in state:
            return None
        return self.vector_norm.denormalize(state["vector"])

    def features(self, state: State) -> Tensor:
        """[z, h] [B, Z + H], the controller's input in the paper, plus the (normalized) vector
        observation when the spec has one: the multimodal controller sees both."""
        parts = [state["z"], state["h"]] + ([state["vector"]] if "vector" in state else [])
        return torch.cat(parts, dim=-1)

    def observation_of(self, state: State) -> Transition:
        """The observation a state shows (used after reset)."""
        b = state["z"].shape[0]
        zeros = torch.zeros(b, device=self.device)
        return Transition(self.decode(state["z"]), self.vector_of(state), zeros, zeros.bool())
