"""DreamBatch: N dreams of one world model stepping together, the core that the
gymnasium vector env and the gRPC service both drive.

It owns what an environment adds to a WorldModel: start contexts drawn from
the bundle, one torch.Generator per env (so an env's dream does not depend on
what else shares its batch), step counters and truncation, and the
observation each env shows. `step_many` steps several batches of the same
model in one forward, which is what the service's dynamic batcher runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from worldmodel.models.world import Context, State, Transition, cat_states, split_state

OBSERVATION_MODES = ("pixels", "latent")


@dataclass
class StepResult:
    """One step of a batch: observation dict of tensors [N, ...], reward [N] float32,
    terminated and truncated [N] bool (numpy)."""

    observation: dict[str, Tensor]
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


class DreamBatch:
    """`num_envs` dreams of `model`. Observation "pixels" gives image (+ vector), "latent" gives the
    model's features ([z, h] for V-M-C), which skips decoding frames altogether."""

    def __init__(
        self,
        model,
        num_envs: int,
        *,
        observation: str = "pixels",
        max_episode_steps: int = 0,
        temperature: float | None = None,
        seed: int | None = None,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if observation not in OBSERVATION_MODES:
            raise ValueError(f"observation must be one of {OBSERVATION_MODES}, got {observation!r}")
        if observation == "latent" and not hasattr(model, "features"):
            raise ValueError(f"the {model.backend} backend has no latent observation; use observation='pixels'")
        if max_episode_steps < 0:
            raise ValueError(f"max_episode_steps must be >= 0 (0: never truncate), got {max_episode_steps}")
        if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if model.contexts is None or len(model.contexts) == 0:
            raise ValueError("the model carries no start contexts: load it from a bundle")
        self.model = model
        self.spec = model.spec
        self.num_envs = int(num_envs)
        self.observation_mode = observation
        self.max_episode_steps = int(max_episode_steps)
        self.temperature = model.temperature if temperature is None else float(temperature)
        self.rng = np.random.default_rng(seed)
        self.generators = [torch.Generator(device=model.device) for _ in range(num_envs)]
        self.elapsed = np.zeros(num_envs, dtype=np.int64)
        self.state: State | None = None
        self.observation: dict[str, Tensor] | None = None
        self.steps_taken = 0

    @property
    def decodes(self) -> bool:
        return self.observation_mode == "pixels"

    # -- reset -------------------------------------------------------------
    def reset(self, seed: int | None = None, indices=None) -> dict[str, Tensor]:
        """Start envs (all, or `indices`) from fresh real contexts; returns every env's observation."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        if indices is None or self.state is None:
            indices = np.arange(self.num_envs)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return self.observation
        if indices.min() < 0 or indices.max() >= self.num_envs:
            raise ValueError(f"env indices must be in [0, {self.num_envs}), got {indices.tolist()}")
        picks = self.rng.integers(0, len(self.model.contexts), size=len(indices))
        for i, env_seed in zip(indices, self.rng.integers(0, 2**63 - 1, size=len(indices))):
            self.generators[i].manual_seed(int(env_seed))
        fresh = self.model.initial_state(self.model.contexts.select(picks))
        observed = self._observe(fresh)
        if self.state is None or len(indices) == self.num_envs and (indices == np.arange(self.num_envs)).all():
            self.state, self.observation = fresh, observed
        else:
            index = torch.as_tensor(indices, device=self.model.device)
            for key in self.state:
                self.state[key][index] = fresh[key]
            for key in self.observation:
                self.observation[key][index] = observed[key]
        self.elapsed[indices] = 0
        return self.observation

    def _observe(self, state: State, transition: Transition | None = None) -> dict[str, Tensor]:
        if not self.decodes:
            return {"latent": self.model.features(state).float()}
        seen = transition if transition is not None and transition.image is not None else self.model.observation_of(state)
        observation = {"image": seen.image}
        if self.spec.vector is not None:
            observation["vector"] = seen.vector.float()
        return observation

    # -- step --------------------------------------------------------------
    def check_actions(self, actions) -> Tensor:
        from worldmodel.models.world import check_actions

        return check_actions(self.spec, actions, self.num_envs, self.model.device)

    def check_reset_mask(self, reset_mask) -> np.ndarray:
        mask = np.asarray(reset_mask, dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have {self.num_envs} entries, got shape {mask.shape}")
        return mask

    def step(self, actions, reset_mask=None) -> StepResult:
        """Step every env; envs flagged in `reset_mask` are reset instead (their actions ignored)."""
        return step_many([self], [actions], [reset_mask])[0]

    def _apply(self, next_state: State, reward: Tensor, terminated: Tensor, transition, reset_mask) -> StepResult:
        self.state = next_state
        self.observation = self._observe(next_state, transition)
        self.elapsed += 1
        self.steps_taken += 1
        reward_np = reward.detach().cpu().numpy().astype(np.float32)
        terminated_np = terminated.detach().cpu().numpy().astype(bool)
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated_np if self.max_episode_steps else np.zeros(self.num_envs, bool)
        if reset_mask is not None:
            mask = self.check_reset_mask(reset_mask)
            if mask.any():
                self.reset(indices=np.flatnonzero(mask))
                reward_np[mask], terminated_np[mask], truncated[mask] = 0.0, False, False
        return StepResult(dict(self.observation), reward_np, terminated_np, truncated)

    def __len__(self) -> int:
        return self.num_envs


def step_many(batches: list[DreamBatch], actions: list, reset_masks: list | None = None) -> list[StepResult]:
    """Step several DreamBatches of ONE model (same temperature and observation mode) in one forward."""
    if not batches:
        return []
    model = batches[0].model
    for batch in batches[1:]:
        if batch.model is not model or batch.temperature != batches[0].temperature or batch.decodes != batches[0].decodes:
            raise ValueError("step_many needs batches of one model, temperature and observation mode")
    for batch in batches:
        if batch.state is None:
            raise RuntimeError("reset the batch before stepping it")
    masks = reset_masks or [None] * len(batches)
    # Check everything before any batch changes: a bad request fails alone, and nothing half-applies.
    checked = [batch.check_actions(a) for batch, a in zip(batches, actions)]
    masks = [None if m is None or len(m) == 0 else b.check_reset_mask(m) for b, m in zip(batches, masks)]
    state = cat_states([b.state for b in batches]) if len(batches) > 1 else batches[0].state
    action = torch.cat(checked) if len(checked) > 1 else checked[0]
    generators = [g for b in batches for g in b.generators]
    tau = batches[0].temperature
    if batches[0].decodes:
        next_state, transition = model.step(state, action, generators, tau)
        reward, terminated = transition.reward, transition.terminated
    else:
        next_state, reward, terminated = model.step_latent(state, action, generators, tau)
        transition = None
    sizes = [b.num_envs for b in batches]
    states = split_state(next_state, sizes)
    rewards, terms = reward.split(sizes), terminated.split(sizes)
    transitions = _split_transition(transition, sizes) if transition is not None else [None] * len(batches)
    return [b._apply(s, r, t, tr, m) for b, s, r, t, tr, m in zip(batches, states, rewards, terms, transitions, masks)]


def _split_transition(transition: Transition, sizes: list[int]) -> list[Transition]:
    parts = {
        name: (value.split(sizes) if value is not None else [None] * len(sizes))
        for name, value in vars(transition).items()
    }
    return [Transition(**{name: parts[name][i] for name in parts}) for i in range(len(sizes))]


__all__ = ["DreamBatch", "StepResult", "step_many", "Context"]
