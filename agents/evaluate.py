"""Judge a policy in the REAL environment, through the same preprocessing as collection.

The controller never saw the real env: V encodes each real frame, M's hidden
state advances on the real observations and the chosen actions, C acts on
[z, h (, vector)]. The random policy runs on the same episode seeds beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from envs.policies import make_policy
from envs.sources import make_source
from agents.real_fitness import first_state, split_observation

POLICIES = ("controller", "rllib", "random")


@dataclass
class EvalResult:
    policy: str
    seeds: list[int]
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


class LatentPolicy:
    """A policy on the world model's view of the real episode so far: C, or an RLlib module."""

    def __init__(self, model, act):
        self.model, self.act_on = model, act  # act: features [1, F] -> actions [1, ...]
        self.state = None

    def start(self, observation) -> None:
        self.state = first_state(self.model, [observation])

    def act(self):
        action = self.act_on(self.model.features(self.state))[0]
        return int(action) if self.model.spec.action.is_discrete else action.cpu().numpy().astype(np.float32)

    def observe(self, action, observation) -> None:
        image, vector = split_observation(observation)
        action_t = torch.as_tensor(np.asarray(action)[None])
        self.state = self.model.observe(self.state, action_t, image[None], None if vector is None else vector[None])


def evaluate(
    bundle: str, env_id: str | None, episodes: int, policy: str = "controller", *, seed: int = 10_000,
    max_steps: int = 1000, gif: str | None = None, rllib_run: str | None = None,
) -> EvalResult:
    """Run `episodes` real episodes (seeds seed, seed+1, ...) with the policy; optionally a GIF of the first."""
    from worldmodel.bundle import load_bundle, load_controller
    from worldmodel.errors import UserError

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    if episodes < 1:  # no returns to average: the report would index an empty list
        raise UserError(f"evaluation needs at least 1 episode, got {episodes}")
    model = load_bundle(bundle)
    env_id = env_id or model.spec.env_id
    env = make_source(env_id)
    seeds = [seed + i for i in range(episodes)]
    result = EvalResult(policy, seeds)
    agent = None
    if policy == "controller":
        agent = LatentPolicy(model, load_controller(bundle).act)
    elif policy == "rllib":
        from agents.rllib import RLlibPolicy

        if rllib_run is None:
            raise ValueError("policy 'rllib' needs the `worldmodel train rllib` output directory")
        module = RLlibPolicy(rllib_run, model.spec.action_space())
        agent = LatentPolicy(model, lambda features: module(features, model.spec.action.is_discrete))
    for episode, episode_seed in enumerate(seeds):
        observation, _ = env.reset(seed=episode_seed)
        random_policy = make_policy("random", model.spec, seed=episode_seed) if agent is None else None
        if agent is not None:
            agent.start(observation)
        frames = []
        total, steps = 0.0, 0
        for steps in range(1, max_steps + 1):
            action = agent.act() if agent is not None else random_policy(observation)
            if gif and episode == 0 and agent is not None:
                frames.append(_predicted_beside_real(model, agent.state, action, observation))
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if agent is not None:
                agent.observe(action, observation)
            if terminated or truncated:
                break
        result.returns.append(total)
        result.lengths.append(steps)
        if frames:
            _write_gif(gif, frames)
    env.close()
    return result


def judge_controller(bundle: str, episodes: int, *, seed: int = 10_000, max_steps: int = 1000,
                     workers: int = 2) -> EvalResult:
    """The bundle's controller on real episodes seeded seed, seed + 1, ...: what `evaluate` measures, with
    the episodes spread over Ray workers that each step theirs as one batch (agents/real_fitness.py)."""
    from agents.real_fitness import RealFitness
    from worldmodel.bundle import load_controller

    seeds = np.arange(seed, seed + episodes)
    params = load_controller(bundle).get_flat().numpy()[None].repeat(episodes, axis=0)
    per_worker = -(-episodes // max(1, workers))
    fitness = RealFitness(bundle, rollouts=1, max_steps=max_steps, workers=workers, envs_per_worker=per_worker)
    try:
        returns = fitness.episode_returns(params, seeds, patience=0)
    finally:
        fitness.close()
    return EvalResult("controller", seeds.tolist(), returns.tolist())


def _predicted_beside_real(model, state, action, observation):
    """(real frame t, the dream's guess of frame t+1 from here): what the model expects next."""
    action_t = torch.as_tensor(np.asarray(action)[None])
    _, transition = model.step(state, action_t, torch.Generator().manual_seed(0))
    return split_observation(observation)[0], transition.image[0].numpy()


def _write_gif(path: str, pairs) -> None:
    from worldmodel.media import save_gif, side_by_side

    real = np.stack([p[0] for p in pairs[1:]])  # the real frame t+1 beside the guess made at t
    guessed = np.stack([p[1] for p in pairs[:-1]])
    save_gif(Path(path), side_by_side([real, guessed], scale=3), fps=15)


def format_results(results: list[EvalResult], env_id: str) -> str:
    lines = [f"real {env_id}, {len(results[0].seeds)} episodes, seeds {results[0].seeds[0]}..{results[0].seeds[-1]}"]
    for r in results:
        lines.append(f"  {r.policy:10s} {r.mean:9.2f} +- {r.std:7.2f}   per episode: {', '.join(f'{x:.1f}' for x in r.returns)}")
    return "\n".join(lines)
