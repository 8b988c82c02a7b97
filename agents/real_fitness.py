"""Fitness in the REAL env: the paper's procedure for CarRacing (World Models, section 4.4).

C acts on V's and M's view of real frames ([z, h (, vector)]); its fitness is the
mean return of real rollouts. Each worker (a Ray actor, or this process when
workers is 1) holds a few real envs and V and M, and steps its envs as one batch:
every env steps in turn, then V encodes all the new frames in one forward and M
advances all the hidden states in one step. A slot whose rollout ends starts the
next job at once, so no env idles while others finish.

Early stopping (`patience`, off by default): a rollout that has earned no positive
reward for `patience` steps is ended there, with the return it has. On CarRacing
that is a car off the track or standing still; it saves most of the time spent on
hopeless candidates, and it spares a hopeless rollout the -0.1 a step it would still
have paid, which ranks such candidates a little higher than running them out would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldmodel.models.controller import Controller
from worldmodel.models.world import Context, LatentWorldModel, State

TRAINING_SEEDS = (1_000_000, 2**31 - 1)
"""Training rollouts draw env seeds from here, far from the seeds evaluation holds out (10,000 and up)."""


def split_observation(observation) -> tuple[np.ndarray, np.ndarray | None]:
    """(image, vector or None) of a source's observation."""
    if isinstance(observation, dict):
        return observation["image"], observation.get("vector")
    return observation, None


@torch.no_grad()
def first_state(model: LatentWorldModel, observations: list) -> State:
    """M's state at the first real observation of each episode: a context of one step, no action yet."""
    images, vectors = zip(*(split_observation(o) for o in observations))
    spec = model.spec
    no_action = np.zeros((len(images), 1, *spec.action.store_shape), spec.action.store_dtype)
    stacked = None if vectors[0] is None else np.stack(vectors)[:, None]
    return model.initial_state(Context(np.stack(images)[:, None], no_action, stacked))


@dataclass
class Rollouts:
    """What a worker reports: the return of each job, in job order, and the real steps it took."""

    returns: np.ndarray
    steps: int


class RealWorker:
    """`slots` real envs of the bundle's source and its V and M, stepped as one batch."""

    def __init__(self, bundle: str, slots: int, device: str = "cpu", threads: int = 0, env_id: str | None = None):
        from envs.sources import make_source
        from worldmodel.bundle import load_bundle

        if threads:
            torch.set_num_threads(threads)
        self.model = load_bundle(bundle, device=device)
        self.envs = [make_source(env_id or self.model.spec.env_id) for _ in range(slots)]
        self.controller = Controller(self.model.controller_config()).to(self.model.device)

    def run(self, params: np.ndarray, seeds: np.ndarray, max_steps: int, patience: int = 0) -> Rollouts:
        """Job j runs the controller params[j] on an episode seeded seeds[j]; returns each job's return."""
        theta = torch.tensor(np.asarray(params), dtype=torch.float32, device=self.model.device)  # Ray hands read-only arrays
        jobs = list(range(len(seeds)))[::-1]  # popped from the end: job 0 first
        returns = np.zeros(len(seeds))
        slots = _Slots(len(self.envs))
        steps = 0
        state = None
        while jobs or slots.busy():
            starting = [s for s in slots.free() if jobs][: len(jobs)]
            if starting:
                state = self._start(state, slots, starting, [jobs.pop() for _ in starting], seeds)
            active = slots.busy()
            features = self.model.features(_rows(state, active))
            actions = self.controller.population_actions(theta[[slots.job[s] for s in active]], features)
            observed, done = self._step_envs(slots, active, actions.cpu().numpy(), max_steps, patience)
            steps += len(active)
            state = _put_rows(state, active, self.model.observe(
                _rows(state, active), actions, *_stack_observations(observed)))
            for slot in done:
                returns[slots.job[slot]] = slots.total[slot]
                slots.release(slot)
        return Rollouts(returns, steps)

    def _start(self, state: State | None, slots: _Slots, starting: list[int], job_ids: list[int], seeds) -> State:
        observations = []
        for slot, job in zip(starting, job_ids):
            observation, _ = self.envs[slot].reset(seed=int(seeds[job]))
            observations.append(observation)
            slots.take(slot, job)
        fresh = first_state(self.model, observations)
        if state is None:  # the first wave fills every slot it uses; the rest are placeholders never read
            state = {k: v.new_zeros((len(self.envs), *v.shape[1:])) for k, v in fresh.items()}
        return _put_rows(state, starting, fresh)

    def _step_envs(self, slots: _Slots, active: list[int], actions: np.ndarray, max_steps: int, patience: int):
        """Step each active env; returns (their observations, the slots whose rollout ended)."""
        observed, done = [], []
        for slot, action in zip(active, actions):
            action = int(action) if self.model.spec.action.is_discrete else action
            observation, reward, terminated, truncated, _ = self.envs[slot].step(action)
            observed.append(observation)
            slots.record(slot, float(reward))
            hopeless = patience and slots.since_gain[slot] >= patience
            if terminated or truncated or slots.steps[slot] >= max_steps or hopeless:
                done.append(slot)
        return observed, done

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _Slots:
    """Which job each env slot runs, and its running return, length and steps since a positive reward."""

    def __init__(self, count: int):
        self.job = [-1] * count
        self.total, self.steps, self.since_gain = np.zeros(count), np.zeros(count, int), np.zeros(count, int)

    def free(self) -> list[int]:
        return [s for s, j in enumerate(self.job) if j < 0]

    def busy(self) -> list[int]:
        return [s for s, j in enumerate(self.job) if j >= 0]

    def take(self, slot: int, job: int) -> None:
        self.job[slot] = job
        self.total[slot], self.steps[slot], self.since_gain[slot] = 0.0, 0, 0

    def record(self, slot: int, reward: float) -> None:
        self.total[slot] += reward
        self.steps[slot] += 1
        self.since_gain[slot] = 0 if reward > 0 else self.since_gain[slot] + 1

    def release(self, slot: int) -> None:
        self.job[slot] = -1


def _rows(state: State, rows: list[int]) -> State:
    index = torch.as_tensor(rows, device=next(iter(state.values())).device)
    return {k: v.index_select(0, index) for k, v in state.items()}


def _put_rows(state: State, rows: list[int], values: State) -> State:
    index = torch.as_tensor(rows, device=next(iter(state.values())).device)
    return {k: v.index_copy(0, index, values[k]) for k, v in state.items()}


def _stack_observations(observations: list) -> tuple[np.ndarray, np.ndarray | None]:
    images, vectors = zip(*(split_observation(o) for o in observations))
    return np.stack(images), None if vectors[0] is None else np.stack(vectors)


class RealFitness:
    """fitness(params [P, n], seed) -> mean real return per candidate [P]: P x rollouts real episodes,
    split over `workers` (Ray actors when more than one), each stepping `envs_per_worker` envs as a batch."""

    name = "real"

    def __init__(self, bundle: str, *, rollouts: int, max_steps: int, workers: int = 1, envs_per_worker: int = 8,
                 patience: int = 0, gpus_per_worker: float = 0.0):
        if envs_per_worker < 1:
            raise ValueError(f"envs_per_worker must be >= 1, got {envs_per_worker}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0 (0: never stop early), got {patience}")
        self.rollouts, self.max_steps, self.patience = rollouts, max_steps, patience
        self.steps = 0
        """Real env steps taken so far."""
        device = "cuda" if gpus_per_worker > 0 else "cpu"
        if workers <= 1:
            self.local, self.actors = RealWorker(bundle, envs_per_worker, device), []
            return
        import ray

        from worldmodel.raycluster import init_ray

        init_ray()
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(RealWorker)
        self.local, self.actors = None, [remote.remote(bundle, envs_per_worker, device, 1) for _ in range(workers)]

    def __call__(self, params: np.ndarray, seed: int, rollouts: int | None = None) -> np.ndarray:
        """Rollout r of every candidate runs the same track (seed): differences come from the candidates."""
        rollouts = rollouts or self.rollouts
        population = len(params)
        env_seeds = np.random.default_rng(seed).integers(*TRAINING_SEEDS, size=rollouts)
        # Candidate-major jobs: job p * rollouts + r.
        returns = self.episode_returns(np.repeat(params, rollouts, axis=0), np.tile(env_seeds, population))
        return returns.reshape(population, rollouts).mean(axis=1)

    def episode_returns(self, params: np.ndarray, seeds: np.ndarray, patience: int | None = None) -> np.ndarray:
        """The return of each job j (controller params[j] on the episode seeded seeds[j]), split over the workers.
        Judging passes `patience=0`: every episode runs to its end."""
        patience = self.patience if patience is None else patience
        if self.local is not None:
            done, order = [self.local.run(params, seeds, self.max_steps, patience)], [np.arange(len(seeds))]
        else:
            import ray

            order = [o for o in np.array_split(np.arange(len(seeds)), len(self.actors)) if len(o)]
            done = ray.get([a.run.remote(params[o], seeds[o], self.max_steps, patience) for a, o in zip(self.actors, order)])
        returns = np.zeros(len(seeds))
        for rows, result in zip(order, done):
            returns[rows] = result.returns
            self.steps += result.steps
        return returns

    def close(self) -> None:
        import ray

        if self.local is not None:
            self.local.close()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
