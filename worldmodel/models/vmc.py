"""The V-M-C backend (Ha & Schmidhuber 2018): V encodes a frame to z, M dreams the next z (and the
reward, termination and vector), V decodes. A dream step is one LSTM step; `step_latent` skips
decoding, which is what controllers evolve on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from worldmodel.models.controller import ControllerConfig
from worldmodel.models.images import to_model_input, to_uint8_images
from worldmodel.models.mdnrnn import MDNRNN
from worldmodel.models.vae import ConvVAE
from worldmodel.models.vector_norm import VectorNorm, VectorStats
from worldmodel.models.noise import Noise, uniform_and_normal
from worldmodel.models.world import Context, State, Transition, action_tensor
from worldmodel.spec import EnvSpec


class VMCWorldModel:
    """V encodes, M dreams the next z (and reward, termination, vector), V decodes.

    State: z [B, Z], h and c [B, H] (the LSTM), and vector [B, D] (normalized) when the spec has one.
    """

    backend = "vmc"
    context_length = 1
    """One real frame starts a dream; a longer context also warms M's h."""

    def __init__(
        self,
        spec: EnvSpec,
        vae: ConvVAE,
        mdnrnn: MDNRNN,
        *,
        contexts: Context | None = None,
        vector_norm: VectorStats | dict | None = None,
        temperature: float = 1.0,
        device: str | torch.device = "cpu",
    ):
        self.spec = spec
        self.device = torch.device(device)
        self.vae = vae.to(self.device).eval()
        self.mdnrnn = mdnrnn.to(self.device).eval()
        self.temperature = float(temperature)
        self.contexts = contexts
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

    @torch.no_grad()
    def initial_state(self, context: Context) -> State:
        """Encode the L context frames; M reads the first L-1 steps so h knows the recent past."""
        frames, actions, vectors = self.vector_norm.context_tensors(context)
        b, length = frames.shape[:2]
        z = self.encode(frames)
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
        action = action_tensor(self.spec, action, state["z"].shape[0], self.device)
        _, (h, c) = self.mdnrnn.step(state["z"], action, state.get("vector"), (state["h"][None], state["c"][None]))
        frame = torch.as_tensor(frame, device=self.device)
        next_state = {"z": self.encode(frame), "h": h[0], "c": c[0]}
        if self.spec.vector is not None:
            next_state["vector"] = self.vector_norm.normalize(vector)
        return next_state

    @torch.no_grad()
    def step_latent(
        self, state: State, action: Tensor, generator: Noise = None, temperature: float | None = None
    ) -> tuple[State, Tensor, Tensor]:
        """The fast path agents use: no decoding. Returns (next state, reward [B], terminated [B]).

        `generator`: per-row streams, one torch.Generator or None; `temperature` overrides the model's tau.
        """
        batch = state["z"].shape[0]
        action = action_tensor(self.spec, action, batch, self.device)
        tau = self.temperature if temperature is None else temperature
        out, (h, c) = self.mdnrnn.step(
            state["z"], action, state.get("vector"), (state["h"][None], state["c"][None]), dream=True, generator=generator
        )
        # One draw for the step: the mixture's uniforms and normals, and the termination's uniform.
        z = self.latent_dim
        uniform, normal = uniform_and_normal(generator, batch, z + 1, z, self.device, out.mu.dtype)
        next_state = {"z": self.mdnrnn.next_z_from(out, tau, uniform[:, :z], normal), "h": h[0], "c": c[0]}
        if out.vector is not None:
            next_state["vector"] = out.vector
        reward = out.reward if out.reward is not None else self.mdnrnn.next_reward(out.hidden, next_state["z"], out.vector)
        # The dream ends the way M says the real env would: termination is drawn, not thresholded,
        # so a rare end (a pole that falls, a car that leaves the map) still happens in the dream.
        return next_state, reward.float(), uniform[:, z].float() < torch.sigmoid(out.termination_logit.float())

    @torch.no_grad()
    def step(
        self, state: State, action: Tensor, generator: Noise = None, temperature: float | None = None
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
