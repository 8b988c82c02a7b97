"""Roll real environments out into an episode store, one Ray task per part.

Each task owns one part (one writer), so any number of tasks on any number of
nodes write into the same store without locks. Episode seeds are drawn once
by the driver and recorded per episode, so every episode can be replayed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from collections.abc import Callable

from envs.policies import Policy, make_policy
from envs.sources import make_source, source_spec
from worldmodel.data import EpisodeStore, StoreError
from worldmodel.spec import EnvSpec

PolicyFactory = Callable[[EnvSpec, int | None], Policy]
"""Makes the policy of one collecting task from the env's spec and a seed (it must pickle: Ray ships it)."""

PROGRESS_EVERY = 50  # steps between progress reports from a task


@dataclass
class PartResult:
    writer_id: str
    episodes: int = 0
    steps: int = 0
    returns: list[float] = field(default_factory=list)
    seconds: float = 0.0


def collect_part(
    location: str,
    env_id: str,
    seeds: list[int],
    max_steps: int,
    policy: str | PolicyFactory = "auto",
    writer_id: str | None = None,
    progress=None,
    storage_options: dict | None = None,
) -> PartResult:
    """Run one episode per seed in one env and write them to a new part of the store."""
    start = time.perf_counter()
    env = make_source(env_id)
    spec = source_spec(env)
    store = EpisodeStore.open(location, storage_options=storage_options)
    if store.spec != spec:
        raise StoreError(f"{env_id} produces {spec.to_json()}, but {location} holds {store.spec.to_json()}")
    actor = _policy(policy, spec, seeds[0] if seeds else None)
    unreported = 0
    with store.writer(writer_id, attrs={"env_id": env_id, "policy": policy_name(policy)}) as writer:
        result = PartResult(writer.writer_id)
        for seed in seeds:
            obs, _ = env.reset(seed=int(seed))
            actor.reset(int(seed))
            episode_return = 0.0
            for t in range(max_steps):
                action = actor(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                truncated = bool(truncated) or (t == max_steps - 1 and not terminated)
                image, vector = (obs["image"], obs["vector"]) if isinstance(obs, dict) else (obs, None)
                writer.add_step(image, action, float(reward), bool(terminated), truncated, vector=vector)
                episode_return += float(reward)
                obs = next_obs
                unreported += 1
                if progress is not None and unreported >= PROGRESS_EVERY:
                    progress.add.remote(unreported, 0)
                    unreported = 0
                if terminated or truncated:
                    break
            result.steps += writer.end_episode(seed=int(seed))
            result.episodes += 1
            result.returns.append(episode_return)
            if progress is not None:
                progress.add.remote(unreported, 1)
                unreported = 0
    env.close()
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class CollectSummary:
    store: str
    episodes: int
    steps: int
    seconds: float
    parts: list[PartResult]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


def _policy(policy: str | PolicyFactory, spec: EnvSpec, seed: int | None) -> Policy:
    return make_policy(policy, spec, seed=seed) if isinstance(policy, str) else policy(spec, seed)


def policy_name(policy: str | PolicyFactory) -> str:
    """What a part records as its policy: the name, or the factory's `name` (its class name without one)."""
    return policy if isinstance(policy, str) else str(getattr(policy, "name", type(policy).__name__))


def episode_seeds(count: int, seed: int | None) -> list[int]:
    """`count` distinct episode seeds; from `seed` when given, else fresh entropy."""
    rng = np.random.default_rng(seed)
    return [int(s) for s in rng.choice(2**31 - 1, size=count, replace=False)]


def collect(
    env_id: str,
    out: str,
    *,
    episodes: int,
    max_steps: int,
    workers: int = 1,
    policy: str | PolicyFactory = "auto",
    seed: int | None = None,
    show_progress: bool = True,
    storage_options: dict | None = None,
) -> CollectSummary:
    """Collect `episodes` episodes with `workers` Ray tasks (0: in this process) into `out`.

    A store already at `out` must have the same spec; new episodes are appended as new parts.
    `policy`: a collection policy's name (envs/policies.py), or a PolicyFactory (e.g. a trained
    controller with exploration noise, agents/loop.py).
    """
    if episodes < 1 or max_steps < 1:
        raise ValueError(f"episodes and max_steps must be >= 1, got {episodes} and {max_steps}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    spec = _probe_spec(env_id)
    _policy(policy, spec, 0)  # fail on a bad policy before any work
    EpisodeStore.create(out, spec, source={"env_id": env_id, "policy": policy_name(policy)},
                        storage_options=storage_options)
    seeds = episode_seeds(episodes, seed)
    start = time.perf_counter()
    if workers == 0:
        parts = [collect_part(out, env_id, seeds, max_steps, policy, storage_options=storage_options)]
    else:
        parts = _collect_on_ray(out, env_id, seeds, max_steps, policy, workers, show_progress, storage_options)
    seconds = time.perf_counter() - start
    return CollectSummary(out, sum(p.episodes for p in parts), sum(p.steps for p in parts), seconds, parts)


def _probe_spec(env_id: str):
    env = make_source(env_id)
    try:
        return source_spec(env)
    finally:
        env.close()


def _collect_on_ray(out, env_id, seeds, max_steps, policy, workers, show_progress, storage_options):
    import ray
    from tqdm import tqdm

    from worldmodel.raycluster import init_ray

    init_ray()

    @ray.remote(num_cpus=0)
    class Progress:
        def __init__(self):
            self.steps = 0
            self.episodes = 0

        def add(self, steps: int, episodes: int) -> None:
            self.steps += steps
            self.episodes += episodes

        def get(self) -> tuple[int, int]:
            return self.steps, self.episodes

    progress = Progress.remote()
    task = ray.remote(num_cpus=1)(collect_part)
    groups = [g.tolist() for g in np.array_split(np.array(seeds), min(workers, len(seeds)))]
    pending = [task.remote(out, env_id, g, max_steps, policy, None, progress, storage_options) for g in groups]
    refs = list(pending)
    with tqdm(desc=f"collect {env_id}", unit="step", disable=not show_progress) as bar:
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            steps, done = ray.get(progress.get.remote())
            bar.update(steps - bar.n)
            bar.set_postfix(episodes=f"{done}/{len(seeds)}")
    results = ray.get(refs)
    ray.kill(progress)
    return results
