"""CMA-ES evolves the controller entirely inside the dream (World Models, section 3.4).

Readable top to bottom: each generation asks CMA-ES for a population,
evaluates every candidate x rollouts as ONE batched dream (latent
observations, no pixels), and tells CMA-ES the mean returns. With
`workers` > 1, Ray splits the population over workers, each running its
share as one batched dream.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from worldmodel.models.controller import Controller
from worldmodel.session import DreamBatch

STATE_FILE = "cmaes_state.json"
LOG_FILE = "cmaes.csv"


@dataclass
class CMAESConfig:
    generations: int = 300
    """Generations to run (the paper ran CarRacing for about 2,000 at this population)."""
    population: int = 64
    """Candidates per generation (the paper: 64)."""
    rollouts: int = 16
    """Dreams per candidate; its fitness is their mean return (the paper: 16)."""
    temperature: float = 1.15
    """The MDN-RNN's tau while dreaming; above 1 makes the dream harder to exploit."""
    max_steps: int = 1000
    """Steps per dream rollout at most."""
    sigma0: float = 0.1
    """Initial step size of CMA-ES."""
    seed: int = 0
    workers: int = 1


PRESETS = {
    "tiny": CMAESConfig(generations=3, population=8, rollouts=2, max_steps=50),
    "small": CMAESConfig(generations=30, population=32, rollouts=8, max_steps=300),
    "paper": CMAESConfig(),
}


@torch.no_grad()
def dream_returns(
    model, params: np.ndarray, rollouts: int, max_steps: int, temperature: float, seed: int, stop_early: bool = True
) -> np.ndarray:
    """Mean dream return of each parameter vector [P, n]: P x rollouts dreams stepped as one batch
    (until all have ended, or for all max_steps when not `stop_early`, as the benchmark times it).

    Every candidate meets the same start contexts and noise (common random numbers), so
    differences in return come from the candidates, not from luck.
    """
    population = len(params)
    controller = Controller(model.controller_config()).to(model.device)
    theta = torch.as_tensor(params, dtype=torch.float32, device=model.device).repeat_interleave(rollouts, 0)
    dreams = DreamBatch(model, population * rollouts, observation="latent", temperature=temperature)
    starts = np.random.default_rng(seed)
    picks = np.tile(starts.integers(0, len(model.contexts), size=rollouts), population)
    noise_seeds = np.tile(starts.integers(0, 2**63 - 1, size=rollouts), population)
    _reset_with(dreams, picks, noise_seeds)
    total = torch.zeros(population * rollouts, device=model.device)
    alive = torch.ones(population * rollouts, dtype=torch.bool, device=model.device)
    for _ in range(max_steps):
        actions = controller.population_actions(theta, dreams.observation["latent"])
        result = dreams.step(actions)
        total += torch.as_tensor(result.reward, device=model.device) * alive
        alive &= ~torch.as_tensor(result.terminated, device=model.device)
        if stop_early and not alive.any():
            break
    return total.reshape(population, rollouts).mean(dim=1).cpu().numpy()


def _reset_with(dreams: DreamBatch, picks: np.ndarray, noise_seeds: np.ndarray) -> None:
    """Start dream i from context picks[i] with noise seed noise_seeds[i]."""
    model = dreams.model
    dreams.state = model.initial_state(model.contexts.select(picks))
    for generator, seed in zip(dreams.generators, noise_seeds):
        generator.manual_seed(int(seed))
    dreams.observation = {"latent": model.features(dreams.state).float()}
    dreams.elapsed[:] = 0


def _evaluate(bundle: str, params: np.ndarray, config: CMAESConfig, seed: int) -> np.ndarray:
    """Fitness of a population, split over Ray workers when config.workers > 1."""
    from worldmodel.bundle import load_bundle

    if config.workers <= 1:
        return dream_returns(load_bundle(bundle), params, config.rollouts, config.max_steps, config.temperature, seed)
    import ray

    from worldmodel.raycluster import init_ray

    init_ray()
    task = ray.remote(num_cpus=1)(_evaluate_chunk)
    chunks = np.array_split(params, config.workers)
    refs = [task.remote(bundle, chunk, config.rollouts, config.max_steps, config.temperature, seed) for chunk in chunks if len(chunk)]
    return np.concatenate(ray.get(refs))


def _evaluate_chunk(bundle, params, rollouts, max_steps, temperature, seed):
    from worldmodel.bundle import load_bundle

    torch.set_num_threads(1)
    return dream_returns(load_bundle(bundle), params, rollouts, max_steps, temperature, seed)


def train_controller(bundle: str, out: str, config: CMAESConfig, resume: bool = False, show_progress: bool = True) -> dict:
    """Evolve C in the dream; write OUT/cmaes.csv, OUT/cmaes.png, OUT/controller/ and the bundle's controller."""
    import cma
    from tqdm import tqdm

    from worldmodel.bundle import load_bundle, save_controller

    model = load_bundle(bundle, temperature=config.temperature)
    controller = Controller(model.controller_config())
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE
    start, mean, sigma = 0, np.zeros(controller.num_params), config.sigma0
    best = {"return": -np.inf, "params": None, "generation": -1}
    rows: list[dict] = []
    if resume and state_path.is_file():
        saved = json.loads(state_path.read_text())
        start, mean, sigma = saved["generation"], np.asarray(saved["mean"]), saved["sigma"]
        best = {"return": saved["best_return"], "params": np.asarray(saved["best_params"]), "generation": saved["best_generation"]}
        rows = _read_log(out_dir / LOG_FILE)[:start]
    elif state_path.is_file():
        raise FileExistsError(f"{out_dir} holds a CMA-ES run at generation "
                              f"{json.loads(state_path.read_text())['generation']}: pass --resume, or choose another --out")
    # A resumed run restarts CMA-ES from the saved mean and step size; the covariance is
    # learned again (saving it exactly would need pickling the library's state).
    es = cma.CMAEvolutionStrategy(mean, sigma, {"popsize": config.population, "seed": config.seed + start + 1, "verbose": -9})
    bar = tqdm(range(start, config.generations), desc="CMA-ES in the dream", unit="gen", disable=not show_progress)
    for generation in bar:
        began = time.perf_counter()
        candidates = np.asarray(es.ask())
        returns = _evaluate(bundle, candidates, config, seed=config.seed * 100_003 + generation)
        es.tell(list(candidates), list(-returns))  # cma minimises
        if returns.max() > best["return"]:
            best = {"return": float(returns.max()), "params": candidates[returns.argmax()], "generation": generation}
        row = {
            "generation": generation + 1, "best": float(returns.max()), "mean": float(returns.mean()),
            "std": float(returns.std()), "best_ever": best["return"], "sigma": float(es.sigma),
            "seconds": time.perf_counter() - began,
        }
        rows.append(row)
        bar.set_postfix(best=f"{row['best']:.1f}", mean=f"{row['mean']:.1f}")
        _write_log(out_dir / LOG_FILE, rows)
        state_path.write_text(json.dumps({
            "generation": generation + 1, "mean": es.mean.tolist(), "sigma": float(es.sigma),
            "best_return": best["return"], "best_params": np.asarray(best["params"]).tolist(),
            "best_generation": best["generation"], "config": asdict(config),
        }))
    # The best single evaluation is partly luck (a max over noisy returns): re-judge it and the
    # distribution's mean on 4x the rollouts and fresh dreams, and keep the better.
    finalists = np.stack([np.asarray(best["params"]), es.mean])
    final = _evaluate(bundle, finalists, replace(config, rollouts=4 * config.rollouts, population=2), seed=config.seed + 7_919)
    chosen = int(final.argmax())
    best = {**best, "params": finalists[chosen], "return": float(final[chosen]), "chosen": ("best", "mean")[chosen]}
    controller.set_flat(torch.as_tensor(best["params"], dtype=torch.float32))
    from worldmodel.models.io import save_pretrained

    info = {"dream_return": best["return"], "chosen": best["chosen"], "generation": best["generation"], "cmaes": asdict(config)}
    save_pretrained(controller, out_dir / "controller", extra=info)
    save_controller(bundle, controller, info)
    _plot(out_dir / LOG_FILE, out_dir / "cmaes.png")
    return {"best_dream_return": best["return"], "chosen": best["chosen"], "generations": len(rows), "curve": str(out_dir / "cmaes.png")}


def _write_log(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _plot(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_log(csv_path)
    gens = [r["generation"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    mean = np.array([r["mean"] for r in rows])
    std = np.array([r["std"] for r in rows])
    ax.plot(gens, [r["best"] for r in rows], label="best of generation")
    ax.plot(gens, mean, label="population mean")
    ax.fill_between(gens, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("generation")
    ax.set_ylabel("return in the dream")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
