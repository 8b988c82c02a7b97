"""DreamBatch: N dreams of one world model stepping together, the core that the
gymnasium vector env and the gRPC service both drive.

It owns what an environment adds to a WorldModel: start contexts drawn from
the bundle, one numpy rng and one counter-based noise stream per env (a Philox key and the step it
is at: models/noise.py), so an env's dream does not depend on what else shares its batch, step
counters and truncation,
and the observation each env shows. `step_many` steps several batches of the
same model in one forward, which is what the service's dynamic batcher runs.

Seeding follows gymnasium's vector envs (and envs/dream.py): a seed s seeds
env i with s + i; each reset of env i draws its start context and then its
noise key from env i's rng. So env i of a batch seeded with s dreams what
a one-env batch (or `DreamEnv.reset(seed=s + i)`) dreams under the same
actions, up to float rounding of batched matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from worldmodel.models.noise import RowStreams
from worldmodel.models.world import Context, State, Transition, WorldModel, action_tensor, cat_states, has_latents, split_state

from worldmodel.spec import OBSERVATION_MODES  # re-exported: session users read it here
_SEED_BOUND = 2**63  # noise keys in [0, 2**63), drawn from each env's rng


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
        model: WorldModel,
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
        if not isinstance(model, WorldModel):
            raise TypeError(f"{type(model).__name__} is not a WorldModel (see worldmodel.models.world)")
        if observation == "latent" and not has_latents(model):
            raise ValueError(f"the {model.backend} backend has no latent observation; use observation='pixels'")
        if max_episode_steps < 0:
            raise ValueError(f"max_episode_steps must be >= 0 (0: never truncate), got {max_episode_steps}")
        if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be >= 0 (or unset for fresh entropy), got {seed}")
        if model.contexts is None or len(model.contexts) == 0:
            raise ValueError("the model carries no start contexts: load it from a bundle")
        self.model = model
        self.spec = model.spec
        self.num_envs = int(num_envs)
        self.observation_mode = observation
        self.max_episode_steps = int(max_episode_steps)
        self.temperature = model.temperature if temperature is None else float(temperature)
        self.rngs = [np.random.default_rng(None if seed is None else seed + i) for i in range(num_envs)]
        # Each env's noise: a Philox key drawn at its reset and the steps it has dreamed since.
        self.noise_keys = torch.zeros(num_envs, dtype=torch.int64, device=model.device)
        self.noise_steps = torch.zeros(num_envs, dtype=torch.int64, device=model.device)
        self.elapsed = np.zeros(num_envs, dtype=np.int64)
        self.state: State | None = None
        self.observation: dict[str, Tensor] | None = None
        self.steps_taken = 0
        # Start states per context, filled as contexts are first drawn (see _starts).
        self._cached = np.zeros(len(model.contexts), dtype=bool)
        self._cache: tuple[State, dict[str, Tensor]] | None = None

    @property
    def decodes(self) -> bool:
        return self.observation_mode == "pixels"

    # -- reset -------------------------------------------------------------
    def reset(self, seed: int | None = None, indices=None, *, seeds=None, picks=None) -> dict[str, Tensor]:
        """Start envs (all, or `indices`) from real contexts; returns every env's observation.

        `seed` reseeds the envs it resets, env i with seed + i; `seeds` gives one seed per reset env
        instead (None keeps that env's stream). `picks` chooses each reset env's start context (indices
        into `model.contexts`); by default each env draws it from its own stream. Without seeds each env
        draws from its own stream, so an env's dream never depends on its batch-mates.
        """
        indices = self._reset_indices(indices)
        if indices.size == 0:
            return dict(self.observation)
        for i, env_seed in zip(indices, self._reset_seeds(seed, seeds, indices)):
            if env_seed is not None:
                self.rngs[i] = np.random.default_rng(env_seed)
        count = len(self.model.contexts)
        drawn = np.array([self.rngs[i].integers(count) for i in indices], dtype=np.int64)
        if picks is not None:
            drawn = np.asarray(picks, dtype=np.int64).reshape(-1)
            if drawn.shape != indices.shape or drawn.min() < 0 or drawn.max() >= count:
                raise ValueError(f"picks must be {len(indices)} context indices in [0, {count}), got {drawn.tolist()}")
        keys = [int(self.rngs[i].integers(_SEED_BOUND)) for i in indices]
        fresh, observed = self._starts(drawn)
        if self.state is None or len(indices) == self.num_envs:
            order = torch.as_tensor(np.argsort(indices), device=self.model.device)
            self.state = {key: value[order] for key, value in fresh.items()}
            self.observation = {key: value[order] for key, value in observed.items()}
            self.noise_keys = torch.as_tensor(keys, dtype=torch.int64, device=self.model.device)[order]
            self.noise_steps = torch.zeros_like(self.noise_keys)
        else:
            # index_copy is out of place: observations handed out earlier never change under the caller.
            index = torch.as_tensor(indices, device=self.model.device)
            self.state = {key: value.index_copy(0, index, fresh[key]) for key, value in self.state.items()}
            self.observation = {key: value.index_copy(0, index, observed[key]) for key, value in self.observation.items()}
            self.noise_keys = self.noise_keys.index_copy(0, index, torch.as_tensor(keys, device=self.model.device))
            self.noise_steps = self.noise_steps.index_fill(0, index, 0)
        self.elapsed[indices] = 0
        return dict(self.observation)

    def _reset_indices(self, indices) -> np.ndarray:
        if indices is None or self.state is None:
            return np.arange(self.num_envs)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_envs):
            raise ValueError(f"env indices must be in [0, {self.num_envs}), got {indices.tolist()}")
        if len(np.unique(indices)) != len(indices):
            raise ValueError(f"env indices must not repeat, got {indices.tolist()}")
        return indices

    @staticmethod
    def _reset_seeds(seed: int | None, seeds, indices: np.ndarray) -> list[int | None]:
        if seed is not None and seeds is not None:
            raise ValueError("give seed (env i gets seed + i) or seeds (one per env), not both")
        if seeds is not None:
            seeds = [None if s is None else int(s) for s in seeds]
            if len(seeds) != len(indices):
                raise ValueError(f"{len(seeds)} seeds for {len(indices)} envs to reset")
        else:
            seeds = [None if seed is None else int(seed) + int(i) for i in indices]
        negative = [s for s in seeds if s is not None and s < 0]
        if negative:
            raise ValueError(f"{'seed' if seed is not None else 'seeds'} must be >= 0, got {negative[0]}")
        return seeds

    def _starts(self, picks: np.ndarray) -> tuple[State, dict[str, Tensor]]:
        """Start states and observations of the contexts `picks`, each context computed once and kept.

        initial_state takes no generator, so a context always begins the same dream: resets index
        this cache instead of encoding L frames again, the cost that dominates when dreams end often
        (a vector env autoresets every ended env).
        """
        missing = np.unique(picks[~self._cached[picks]])
        if missing.size:
            state = self.model.initial_state(self.model.contexts.select(missing))
            observed = self._observe(state)
            if self._cache is None:
                count = len(self._cached)
                empty = (lambda part: {k: v.new_zeros((count, *v.shape[1:])) for k, v in part.items()})
                self._cache = (empty(state), empty(observed))
            index = torch.as_tensor(missing, device=self.model.device)
            for part, new in zip(self._cache, (state, observed)):
                for key, value in new.items():
                    part[key].index_copy_(0, index, value)  # in place on the cache only: it is never handed out
            self._cached[missing] = True
        pick = torch.as_tensor(picks, device=self.model.device)
        state, observed = ({k: v[pick] for k, v in part.items()} for part in self._cache)
        return state, observed

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
        """Actions [N] int (discrete) or [N, A] (box) as a tensor, or ValueError saying what was expected."""
        return action_tensor(self.spec, actions, self.num_envs, self.model.device)

    def check_reset_mask(self, reset_mask) -> np.ndarray:
        mask = np.asarray(reset_mask, dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have {self.num_envs} entries, got shape {mask.shape}")
        return mask

    def step(self, actions, reset_mask=None) -> StepResult:
        """Step every env; envs flagged in `reset_mask` are reset instead (their actions ignored)."""
        return step_many([self], [actions], [reset_mask])[0]

    def _apply(self, next_state: State, observation: dict[str, Tensor], reward: np.ndarray, terminated: np.ndarray,
               reset_mask) -> StepResult:
        """Take this batch's rows of a step: its state and observation, reward and terminated (numpy, its own
        rows of the fused batch's arrays), then reset the envs in `reset_mask`."""
        self.state = next_state
        self.observation = observation
        self.noise_steps = self.noise_steps + 1
        self.elapsed += 1
        self.steps_taken += 1
        # As gymnasium's TimeLimit: truncated at the limit whether or not the step also terminated.
        truncated = self.elapsed >= self.max_episode_steps if self.max_episode_steps else np.zeros(self.num_envs, bool)
        if reset_mask is not None:
            mask = self.check_reset_mask(reset_mask)
            if mask.any():
                self.reset(indices=np.flatnonzero(mask))
                reward[mask], terminated[mask], truncated[mask] = 0.0, False, False
        return StepResult(dict(self.observation), reward, terminated, truncated)

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
    action = _checked_actions(batches, actions)
    masks = [None if m is None or len(m) == 0 else b.check_reset_mask(m) for b, m in zip(batches, masks)]
    state = cat_states([b.state for b in batches]) if len(batches) > 1 else batches[0].state
    noise = _row_streams(batches)
    tau = batches[0].temperature
    if batches[0].decodes:
        next_state, transition = model.step(state, action, noise, tau)
        reward, terminated = transition.reward, transition.terminated
    else:
        next_state, reward, terminated = model.step_latent(state, action, noise, tau)
        transition = None
    # What every env shows and gets, made once for the fused batch and split: per-session work here cost
    # as much as the forward when the service fused 64 one-env sessions.
    sizes = [b.num_envs for b in batches]
    observed = batches[0]._observe(next_state, transition)
    observations = [dict(zip(observed, rows)) for rows in zip(*(value.split(sizes) for value in observed.values()))]
    cuts = np.cumsum(sizes)[:-1]
    rewards = np.split(reward.detach().cpu().numpy().astype(np.float32), cuts)
    terms = np.split(terminated.detach().cpu().numpy().astype(bool), cuts)
    states = split_state(next_state, sizes)
    return [b._apply(*parts) for b, *parts in zip(batches, states, observations, rewards, terms, masks)]


def _row_streams(batches: list[DreamBatch]) -> RowStreams:
    """Every env's noise stream at the step it is at: one vectorised draw serves the fused batch."""
    if len(batches) == 1:
        return RowStreams(batches[0].noise_keys, batches[0].noise_steps)
    return RowStreams(torch.cat([b.noise_keys for b in batches]), torch.cat([b.noise_steps for b in batches]))


def _checked_actions(batches: list[DreamBatch], actions: list) -> Tensor:
    """All batches' actions as one tensor [sum of num_envs, ...], or ValueError naming the batch at fault.

    Checked once for all (a check is a few torch ops, costly when a fused batch holds 64 requests of one
    env); when that fails, each batch is checked alone so the error says which actions and why.
    """
    if len(batches) == 1:
        return batches[0].check_actions(actions[0])
    tensors = [a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a)) for a in actions]
    alike = len({(t.dtype, tuple(t.shape[1:])) for t in tensors}) == 1
    if not alike or any(t.ndim == 0 or t.shape[0] != b.num_envs for t, b in zip(tensors, batches)):
        for batch, a in zip(batches, actions):
            batch.check_actions(a)  # raises for the culprit
    device = batches[0].model.device
    total = sum(b.num_envs for b in batches)
    try:
        return action_tensor(batches[0].spec, torch.cat([t.to(device) for t in tensors]), total, device)
    except ValueError:
        for batch, a in zip(batches, actions):
            batch.check_actions(a)
        raise


__all__ = ["DreamBatch", "StepResult", "step_many", "Context"]
