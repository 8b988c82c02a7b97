"""Roll real environments out into an episode store, one Ray task per part.

Each task owns one part (one writer), so any number of tasks on any number of
nodes write into the same store without locks. Episode seeds are drawn once
by the driver and recorded per episode, so every episode can be replayed.

Any gymnasium env works, a user's own too: ``"mypkg.envs:MyEnv-v0"`` (the
module registers the id), with constructor kwargs and, for a dict observation,
the image and vector keys (envs/sources.py SourceOptions); and so does a
user's own policy, ``"mypkg.policies:drive"`` (envs/policies.py). Ray workers
import such modules by name: they get the driver's sys.path (worker_runtime_env).
The flags are checked in the driver, by making the env and asking the policy
for one action, before Ray starts or the store is written.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.policies import Policy, make_policy
from envs.sources import SourceOptions, make_source, source_spec
from worldmodel.data import EpisodeStore, StoreError
from worldmodel.errors import UserError
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
    cpu_seconds: float = 0.0
    """CPU time of the collecting process over the part (all its threads): with `seconds`, how much of a
    core the part got, whatever else ran on the machine."""


def collect_part(
    location: str,
    env_id: str,
    seeds: list[int],
    max_steps: int,
    policy: str | PolicyFactory = "auto",
    writer_id: str | None = None,
    storage_options: dict | None = None,
    source_options: SourceOptions | None = None,
) -> PartResult:
    """Run one episode per seed in one env and write them to a new part of the store.

    The policy is reseeded with each episode's seed, so an episode replays from its recorded seed.
    """
    steps = iter_part(location, env_id, seeds, max_steps, policy, writer_id, storage_options, source_options)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def iter_part(
    location: str,
    env_id: str,
    seeds: list[int],
    max_steps: int,
    policy: str | PolicyFactory = "auto",
    writer_id: str | None = None,
    storage_options: dict | None = None,
    source_options: SourceOptions | None = None,
) -> Generator[tuple[int, int], None, PartResult]:
    """`collect_part` as a generator: yields progress, (steps, episodes) done since the last yield, every
    PROGRESS_EVERY steps and at each episode's end; returns the PartResult."""
    start, cpu_start = time.perf_counter(), time.process_time()
    env = make_source(env_id, options=source_options)
    spec = source_spec(env)
    store = EpisodeStore.open(location, storage_options=storage_options)
    if store.spec != spec:
        raise StoreError(f"{env_id} produces {spec.to_json()}, but {location} holds {store.spec.to_json()}")
    actor = _policy(policy, spec, seeds[0] if seeds else None)
    try:
        with store.writer(writer_id, attrs=source_attrs(env_id, policy, source_options)) as writer:
            result = PartResult(writer.writer_id)
            for seed in seeds:
                try:
                    episode_return, unreported = yield from _record_episode(env, actor, writer, int(seed), max_steps,
                                                                            policy)
                except UserError:
                    writer.discard_episode()  # the policy's mistake, which the error reports: drop it quietly
                    raise
                result.steps += writer.end_episode(seed=int(seed))
                result.episodes += 1
                result.returns.append(episode_return)
                yield unreported, 1
    finally:
        env.close()
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result


def _record_episode(env, actor: Policy, writer, seed: int, max_steps: int,
                    policy) -> Generator[tuple[int, int], None, tuple[float, int]]:
    """Step one episode from `reset(seed)` into the writer (not ended yet), yielding progress every
    PROGRESS_EVERY steps; returns its return and the steps not yet reported."""
    obs, _ = env.reset(seed=seed)
    actor.reset(seed)
    episode_return, unreported = 0.0, 0
    for t in range(max_steps):
        action = checked_action(actor(obs), writer.spec, policy)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        truncated = bool(truncated) or (t == max_steps - 1 and not terminated)
        image, vector = (obs["image"], obs["vector"]) if isinstance(obs, dict) else (obs, None)
        writer.add_step(image, action, float(reward), bool(terminated), truncated, vector=vector)
        episode_return += float(reward)
        obs = next_obs
        unreported += 1
        if unreported >= PROGRESS_EVERY:
            yield unreported, 0
            unreported = 0
        if terminated or truncated:
            break
    return episode_return, unreported


def _part_task(*args, **kwargs) -> Iterator[tuple[int, int] | PartResult]:
    """A Ray task's body: `iter_part`'s progress, then its PartResult, as one stream the driver reads while
    the task runs (Ray's streaming generator: no progress actor, whose process start cost each call about
    1.2 CPU-seconds on 2 cores)."""
    result = yield from iter_part(*args, **kwargs)
    yield result


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


def source_attrs(env_id: str, policy: str | PolicyFactory, options: SourceOptions | None) -> dict[str, Any]:
    """What a store and each of its parts record about where their episodes came from."""
    return {"env_id": env_id, "policy": policy_name(policy), **(options.to_attrs() if options else {})}


def checked_action(action: Any, spec: EnvSpec, policy: str | PolicyFactory) -> Any:
    """The policy's action, or a UserError naming the policy when it does not fit the action space (checked
    before the env steps: an env given a bad action may fail in any way, or not at all)."""
    try:
        spec.check_action(action)
    except ValueError as err:
        raise UserError(f"policy {policy_name(policy)} returned {action!r}, which does not fit the action space: "
                        f"{err}") from None
    return action


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
    source_options: SourceOptions | None = None,
) -> CollectSummary:
    """Collect `episodes` episodes with `workers` Ray tasks (0: in this process) into `out`.

    A store already at `out` must have the same spec; new episodes are appended as new parts.
    `policy`: a collection policy's name or a user's "module:callable" (envs/policies.py), or a
    PolicyFactory (e.g. a trained controller with exploration noise, agents/loop.py).
    `source_options`: env kwargs and the keys of a dict observation (envs/sources.py); recorded in
    the store's and each part's attrs.
    """
    if episodes < 1 or max_steps < 1:
        raise ValueError(f"episodes and max_steps must be >= 1, got {episodes} and {max_steps}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    spec = probe(env_id, policy, source_options)  # fail on a bad env or policy before any work
    EpisodeStore.create(out, spec, source=source_attrs(env_id, policy, source_options),
                        storage_options=storage_options)
    seeds = episode_seeds(episodes, seed)
    start = time.perf_counter()
    options = {"storage_options": storage_options, "source_options": source_options}
    if workers == 0:
        parts = [collect_part(out, env_id, seeds, max_steps, policy, **options)]
    else:
        parts = _collect_on_ray(out, env_id, seeds, max_steps, policy, workers, show_progress, options)
    seconds = time.perf_counter() - start
    return CollectSummary(out, sum(p.episodes for p in parts), sum(p.steps for p in parts), seconds, parts)


def probe(env_id: str, policy: str | PolicyFactory, options: SourceOptions | None = None) -> EnvSpec:
    """The env's spec, after the policy gave one action that fits it on a reset observation; raises what
    making the env or the policy raises, or a UserError for a policy's action that does not fit."""
    env = make_source(env_id, options=options)
    try:
        spec = source_spec(env)
        obs, _ = env.reset(seed=0)
        checked_action(_policy(policy, spec, 0)(obs), spec, policy)
        return spec
    finally:
        env.close()


def worker_runtime_env() -> dict[str, Any]:
    """A Ray task's runtime_env that lets it import what this driver imports from outside its installed
    packages: a user's env or policy module in the working directory or on sys.path / PYTHONPATH.

    Given per task, not per job, so it also works on a Ray someone else started (a shared one; a job's
    runtime_env is fixed when it connects). PYTHONPATH names this machine's directories, which is enough for
    a local Ray; on a multi-node cluster the module must be installed on every node, or shipped with the
    job (`ray job submit --runtime-env-json '{"py_modules": [...]}'` or a working_dir, which Ray uploads).
    """
    installed = {os.path.realpath(prefix) for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())  # "" is the working directory
        inside_python = any(path == root or path.startswith(root + os.sep) for root in installed)
        if os.path.isdir(path) and not inside_python and path not in paths:
            paths.append(path)  # the interpreter's own paths are the workers' already
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}} if paths else {}


def _collect_on_ray(out, env_id, seeds, max_steps, policy, workers, show_progress, options) -> list[PartResult]:
    import ray
    from tqdm import tqdm

    from worldmodel.raycluster import init_ray

    init_ray()
    task = ray.remote(num_cpus=1)(_part_task)
    if ":" in env_id or (isinstance(policy, str) and ":" in policy):
        # A user's module, imported by name in the worker. Only then: a runtime_env of its own costs fresh
        # worker processes, where the project's own envs and policies run on the workers Ray already has.
        task = task.options(runtime_env=worker_runtime_env())
    groups = [g.tolist() for g in np.array_split(np.array(seeds), min(workers, len(seeds)))]
    streams = [task.remote(out, env_id, group, max_steps, policy, **options) for group in groups]
    results: dict[int, PartResult] = {}
    try:
        with tqdm(desc=f"collect {env_id}", unit="step", disable=not show_progress) as bar:
            pending, done = list(streams), 0
            while pending:
                ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0.5, fetch_local=False)
                for stream in ready:
                    try:
                        item = ray.get(next(stream))
                    except StopIteration:
                        pending.remove(stream)
                        continue
                    if isinstance(item, PartResult):
                        results[streams.index(stream)] = item
                        continue
                    steps, episodes = item
                    done += episodes
                    bar.update(steps)
                    bar.set_postfix(episodes=f"{done}/{len(seeds)}")
        return [results[i] for i in range(len(streams))]
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, UserError):  # the user's mistake, found in a worker: its message, no traceback
            raise err.cause from None
        raise
