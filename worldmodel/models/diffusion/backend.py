"""DiffusionWorldModel: the WorldModel interface over a DiffusionWorld (batch-first, stateless as an object)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from worldmodel.models.diffusion.edm import frames_to_unit
from worldmodel.models.diffusion.network import DiffusionWorld
from worldmodel.models.noise import Noise, draw_uniform
from worldmodel.models.world import Context, State, Transition, VectorNorm
from worldmodel.spec import EnvSpec

if TYPE_CHECKING:
    from worldmodel.models.vector_norm import VectorStats


class DiffusionWorldModel:
    """The WorldModel of the diffusion backbone.

    State: frames [B, L, H, W, C] uint8 (the last L frames, the newest last), actions [B, L - 1(, A)]
    (those taken at all but the newest frame), vectors [B, L, D] (normalized; when the spec has one),
    h and c [B, head_hidden] (the reward head's LSTM). A backbone of several envs simulates one of them,
    `env` (an index into its config's envs): its encoders and its head.
    """

    backend = "diffusion"

    def __init__(
        self,
        spec: EnvSpec,
        world: DiffusionWorld,
        *,
        contexts: Context | None = None,
        vector_norm: VectorStats | dict[str, list[float]] | None = None,
        sampling_steps: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        device: str | torch.device = "cpu",
        env: int = 0,
    ):
        self.spec = spec
        self.device = torch.device(device)
        self.world = world.to(self.device).eval()
        self.config = world.config
        if not 0 <= env < len(world.envs):
            raise ValueError(f"env {env} is not one of this backbone's {len(world.envs)} envs")
        self.env = int(env)
        self.parts = world.envs[self.env]
        self.sampling_steps = int(sampling_steps or self.config.sampling_steps)
        if self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {self.sampling_steps}")
        self.temperature = float(temperature)
        """Scales the initial noise of each frame's sampling (1: the trained model as is)."""
        self.generator = None if seed is None else torch.Generator(device=self.device).manual_seed(int(seed))
        """Used when `step` is given no generator: a seeded model dreams reproducibly."""
        self.contexts = contexts
        """Real start contexts (a bundle carries them), so the model alone is a complete simulator."""
        self.vector_norm = VectorNorm(spec, vector_norm, self.device)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    @torch.no_grad()
    def initial_state(self, context: Context) -> State:
        """The last L context frames; the head's LSTM reads every context step but the newest."""
        frames, actions, vectors = self.vector_norm.context_tensors(context)
        b, length = frames.shape[:2]
        big_l = self.context_length
        if length < big_l:
            raise ValueError(f"this model conditions on {big_l} frames: the context has {length}")
        hc = self.parts.head.initial_state(b, self.device)
        if length > 1:
            _, _, _, hc = self.parts.head(
                frames_to_unit(frames[:, :-1]), self.parts.action_features(actions[:, :-1]),
                None if vectors is None else vectors[:, :-1], hc,
            )
        state = {"frames": frames[:, -big_l:].contiguous(), "actions": actions[:, length - big_l : length - 1].contiguous(),
                 "h": hc[0], "c": hc[1]}
        if vectors is not None:
            state["vectors"] = vectors[:, -big_l:].contiguous()
        return state

    @torch.no_grad()
    def step(
        self, state: State, action: Tensor,
        generator: Noise = None, temperature: float | None = None,
    ) -> tuple[State, Transition]:
        """Sample the next frame (per-row streams: a row dreams the same whatever shares its batch);
        the head gives reward, termination (drawn, as in V-M-C) and the next vector."""
        frames = state["frames"]
        b = frames.shape[0]
        action = torch.as_tensor(self.spec.check_actions(action, b), device=self.device)
        generator = self.generator if generator is None else generator
        scale = self.temperature if temperature is None else float(temperature)
        actions = torch.cat([state["actions"], action[:, None]], dim=1)
        vectors = state.get("vectors")
        next_frame = self.world.sample_next(frames, actions, vectors, generator, self.sampling_steps, scale, self.env)
        (reward, logit, next_vector), (h, c) = self.parts.head.step(
            frames_to_unit(frames[:, -1]), self.parts.action_features(action),
            None if vectors is None else vectors[:, -1], (state["h"], state["c"]),
        )
        terminated = draw_uniform(b, generator, self.device) < torch.sigmoid(logit.float())
        next_state = {"frames": torch.cat([frames[:, 1:], next_frame[:, None]], dim=1), "actions": actions[:, 1:],
                      "h": h, "c": c}
        if vectors is not None:
            next_state["vectors"] = torch.cat([vectors[:, 1:], next_vector[:, None]], dim=1)
        return next_state, Transition(next_frame, self.vector_of(next_state), reward.float(), terminated)

    def vector_of(self, state: State) -> Tensor | None:
        if "vectors" not in state:
            return None
        return self.vector_norm.denormalize(state["vectors"][:, -1])

    def observation_of(self, state: State) -> Transition:
        b = state["frames"].shape[0]
        zeros = torch.zeros(b, device=self.device)
        return Transition(state["frames"][:, -1], self.vector_of(state), zeros, zeros.bool())


__all__ = ["DiffusionWorldModel"]
