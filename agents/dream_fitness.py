"""Fitness in the dream: the mean return of a controller's rollouts inside the world model.

The whole population x rollouts runs as ONE batched dream (latent observations,
no pixels), so a generation is a few hundred batched forwards. With workers > 1,
Ray actors each hold the model once and dream their share of the population.
"""

from __future__ import annotations

import numpy as np
import torch

from worldmodel.models.controller import Controller
from worldmodel.models.world import LatentWorldModel
from worldmodel.session import DreamBatch

_SEED_BOUND = 2**63 - 1


@torch.no_grad()
def dream_returns(
    model: LatentWorldModel, params: np.ndarray, rollouts: int, max_steps: int, temperature: float, seed: int,
    stop_early: bool = True,
) -> np.ndarray:
    """Mean dream return of each parameter vector [P, n]: P x rollouts dreams stepped as one batch
    (until all have ended, or for all max_steps when not `stop_early`, as the benchmark times it).

    Every candidate meets the same start contexts and noise (common random numbers): rollout r of
    every candidate is seeded alike, so differences in return come from the candidates, not from luck.
    """
    population = len(params)
    controller = Controller(model.controller_config()).to(model.device)
    theta = torch.as_tensor(params, dtype=torch.float32, device=model.device).repeat_interleave(rollouts, 0)
    dreams = DreamBatch(model, population * rollouts, observation="latent", temperature=temperature)
    rollout_seeds = np.random.default_rng(seed).integers(0, _SEED_BOUND, size=rollouts)
    observation = dreams.reset(seeds=np.tile(rollout_seeds, population))
    total = torch.zeros(population * rollouts, device=model.device)
    alive = torch.ones(population * rollouts, dtype=torch.bool, device=model.device)
    for _ in range(max_steps):
        result = dreams.step(controller.population_actions(theta, observation["latent"]))
        observation = result.observation
        total += torch.as_tensor(result.reward, device=model.device) * alive
        alive &= ~torch.as_tensor(result.terminated, device=model.device)
        if stop_early and not alive.any():
            break
    return total.reshape(population, rollouts).mean(dim=1).cpu().numpy()


class DreamWorker:
    """One process's share of the population: the bundle loaded once, dreams on `device`."""

    def __init__(self, bundle: str, device: str = "cpu", threads: int = 0):
        from worldmodel.bundle import load_bundle

        if threads:
            torch.set_num_threads(threads)
        self.model = load_bundle(bundle, device=device)

    def returns(self, params: np.ndarray, rollouts: int, max_steps: int, temperature: float, seed: int) -> np.ndarray:
        return dream_returns(self.model, params, rollouts, max_steps, temperature, seed)


class DreamFitness:
    """fitness(params [P, n], seed) -> mean dream return per candidate [P]; Ray actors when workers > 1."""

    name = "dream"

    def __init__(self, bundle: str, *, rollouts: int, max_steps: int, temperature: float, workers: int = 1,
                 gpus_per_worker: float = 0.0):
        self.rollouts, self.max_steps, self.temperature = rollouts, max_steps, temperature
        self.steps = 0  # dream steps are not counted: they cost no real interaction
        device = "cuda" if gpus_per_worker > 0 else "cpu"
        if workers <= 1:
            self.local, self.actors = DreamWorker(bundle, device), []
            return
        import ray

        from worldmodel.raycluster import init_ray

        init_ray()
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(DreamWorker)
        self.local, self.actors = None, [remote.remote(bundle, device, 1) for _ in range(workers)]

    def __call__(self, params: np.ndarray, seed: int, rollouts: int | None = None) -> np.ndarray:
        rollouts = rollouts or self.rollouts
        if self.local is not None:
            return self.local.returns(params, rollouts, self.max_steps, self.temperature, seed)
        import ray

        chunks = [c for c in np.array_split(params, len(self.actors)) if len(c)]
        refs = [a.returns.remote(c, rollouts, self.max_steps, self.temperature, seed) for a, c in zip(self.actors, chunks)]
        return np.concatenate(ray.get(refs))

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
