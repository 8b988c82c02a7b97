"""CMA-ES evolves the controller C (World Models, section 3.4), readable top to bottom.

Each generation asks CMA-ES for a population, scores every candidate with a
fitness function, and tells CMA-ES the mean returns. The fitness is the dream
(agents/dream_fitness.py: the population x rollouts as one batched dream) or the
real env (agents/real_fitness.py: the paper's procedure for CarRacing, real
rollouts in Ray workers that hold envs and V and M). The best controller is
re-judged on more rollouts and saved into the bundle.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodel.errors import choose
from worldmodel.models.controller import Controller
from worldmodel.train.metrics import MetricsLog, plot_returns

STATE_FILE = "cmaes_state.json"
LOG_FILE = "cmaes.csv"


@dataclass
class CMAESConfig:
    generations: int = 300
    """Generations to run (the paper ran CarRacing for about 2,000 at this population)."""
    population: int = 64
    """Candidates per generation (the paper: 64)."""
    rollouts: int = 16
    """Rollouts per candidate; its fitness is their mean return (the paper: 16)."""
    temperature: float = 1.15
    """The MDN-RNN's tau while dreaming; above 1 makes the dream harder to exploit."""
    max_steps: int = 1000
    """Steps per rollout at most."""
    sigma0: float = 0.1
    """Initial step size of CMA-ES."""
    seed: int = 0
    """Seeds CMA-ES and the rollouts of each generation."""
    workers: int = 1
    """Ray workers the population is split over (1: this process)."""
    gpus_per_worker: float = 0.0
    """GPUs per Ray worker (0: the CPU); the models run on the GPU when given one."""
    where: str = "dream"
    """Where candidates are judged: "dream" (inside the world model) or "real" (the bundle's source env)."""
    envs_per_worker: int = 8
    """"real" only: real envs each worker steps as one batch."""
    patience: int = 0
    """"real" only: end a rollout after this many steps without a positive reward (0: never; see real_fitness)."""
    start: str = "zero"
    """The first CMA-ES mean: "zero" (all parameters 0, the paper's), "data" (a controller that does the
    training data's mean action whatever it sees; zeros for discrete actions), or "controller" (the
    bundle's C). In CarRacing dreams "zero" transferred better (README); real-env presets start at "data",
    where a car that drives from the first generation on gives CMA-ES a signal at once."""

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, got {self.where!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {self.start!r}")
        for name in ("generations", "population", "rollouts", "max_steps", "workers", "envs_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.population < 2:
            raise ValueError(f"CMA-ES needs a population of at least 2, got {self.population}")


WHERE = ("dream", "real")
STARTS = ("data", "zero", "controller")

PRESETS = {
    "dream": {
        "tiny": CMAESConfig(generations=3, population=8, rollouts=2, max_steps=50),
        "small": CMAESConfig(generations=30, population=32, rollouts=8, max_steps=300),
        "paper": CMAESConfig(),
    },
    # Real rollouts cost ~10 ms a step on a CPU: fewer, early-stopped, split over workers.
    "real": {
        "tiny": CMAESConfig(generations=3, population=6, rollouts=1, max_steps=50, where="real", envs_per_worker=3,
                            start="data"),
        "small": CMAESConfig(generations=15, population=16, rollouts=1, max_steps=1000, where="real", patience=60,
                             workers=2, envs_per_worker=8, start="data"),
        "paper": CMAESConfig(generations=2000, population=64, rollouts=16, max_steps=1000, where="real", workers=64,
                             envs_per_worker=16, start="data"),
    },
}


def preset(where: str, name: str) -> CMAESConfig:
    return choose(choose(PRESETS, where, "place to judge candidates"), name, f"CMA-ES preset ({where})")


def make_fitness(bundle: str, config: CMAESConfig):
    """The fitness function `config.where` names."""
    if config.where == "dream":
        from agents.dream_fitness import DreamFitness

        return DreamFitness(bundle, rollouts=config.rollouts, max_steps=config.max_steps,
                            temperature=config.temperature, workers=config.workers,
                            gpus_per_worker=config.gpus_per_worker)
    elif config.where == "real":
        from agents.real_fitness import RealFitness

        return RealFitness(bundle, rollouts=config.rollouts, max_steps=config.max_steps, workers=config.workers,
                           envs_per_worker=config.envs_per_worker, patience=config.patience,
                           gpus_per_worker=config.gpus_per_worker)
    else:
        raise ValueError(f"where must be one of {WHERE}, got {config.where!r}")


def train_controller(bundle: str, out: str, config: CMAESConfig, resume: bool = False, show_progress: bool = True) -> dict:
    """Evolve C; write OUT/cmaes.csv, OUT/cmaes.png, OUT/controller/ and the bundle's controller."""
    import cma
    from tqdm import tqdm

    from worldmodel.bundle import load_bundle

    controller = Controller(load_bundle(bundle).controller_config())
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, mean, sigma, best = _start(out_dir, first_mean(bundle, controller, config.start), config, resume)
    log = MetricsLog(out_dir / LOG_FILE, resume_after=start, key="generation")
    # A resumed run restarts CMA-ES from the saved mean and step size; the covariance is
    # learned again (saving it exactly would need pickling the library's state).
    es = cma.CMAEvolutionStrategy(mean, sigma, {"popsize": config.population, "seed": config.seed + start + 1, "verbose": -9})
    fitness = make_fitness(bundle, config)
    try:
        bar = tqdm(range(start, config.generations), desc=f"CMA-ES in the {fitness.name}", unit="gen",
                   disable=not show_progress)
        for generation in bar:
            began = time.perf_counter()
            candidates = np.asarray(es.ask())
            returns = fitness(candidates, seed=config.seed * 100_003 + generation)
            es.tell(list(candidates), list(-returns))  # cma minimises
            if returns.max() > best["return"]:
                best = {"return": float(returns.max()), "params": candidates[returns.argmax()], "generation": generation}
            log.append({
                "generation": generation + 1, "best": float(returns.max()), "mean": float(returns.mean()),
                "std": float(returns.std()), "best_ever": best["return"], "sigma": float(es.sigma),
                "seconds": time.perf_counter() - began, "real_steps": fitness.steps,
            })
            bar.set_postfix(best=f"{returns.max():.1f}", mean=f"{returns.mean():.1f}")
            _save_state(out_dir, generation + 1, es, best, config)
        chosen = _rejudge(fitness, best, es.mean, config)
    finally:
        fitness.close()
    return _save(bundle, out_dir, controller, chosen, config, fitness.name, generations=len(log.rows))


def first_mean(bundle: str, controller: Controller, start: str) -> np.ndarray:
    """Where CMA-ES starts (see CMAESConfig.start)."""
    from worldmodel.bundle import load_controller, read_bundle_config

    if start == "zero" or (start == "data" and controller.config.discrete_actions):
        return np.zeros(controller.num_params)
    elif start == "data":
        action_mean = read_bundle_config(bundle).get("action_mean")
        if action_mean is None:  # a bundle written before the mean was recorded
            return np.zeros(controller.num_params)
        return controller.flat_for_action(action_mean).numpy().astype(np.float64)
    elif start == "controller":
        previous = load_controller(bundle)
        if previous.num_params != controller.num_params:
            raise ValueError(f"the bundle's controller has {previous.num_params} parameters; this one needs "
                             f"{controller.num_params}")
        return previous.get_flat().numpy().astype(np.float64)
    else:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")


def _start(out_dir: Path, mean0: np.ndarray, config: CMAESConfig, resume: bool):
    """(first generation, CMA-ES mean, step size, best so far): fresh, or from OUT's saved state."""
    state_path = out_dir / STATE_FILE
    if not state_path.is_file():
        return 0, mean0, config.sigma0, {"return": -np.inf, "params": None, "generation": -1}
    saved = json.loads(state_path.read_text())
    if not resume:
        raise FileExistsError(f"{out_dir} holds a CMA-ES run at generation {saved['generation']}: "
                              "pass --resume, or choose another --out")
    best = {"return": saved["best_return"], "params": np.asarray(saved["best_params"]), "generation": saved["best_generation"]}
    return saved["generation"], np.asarray(saved["mean"]), saved["sigma"], best


def _save_state(out_dir: Path, generation: int, es, best: dict, config: CMAESConfig) -> None:
    (out_dir / STATE_FILE).write_text(json.dumps({
        "generation": generation, "mean": es.mean.tolist(), "sigma": float(es.sigma),
        "best_return": best["return"], "best_params": np.asarray(best["params"]).tolist(),
        "best_generation": best["generation"], "config": asdict(config),
    }))


def _rejudge(fitness, best: dict, mean: np.ndarray, config: CMAESConfig) -> dict:
    """The best single evaluation is partly luck (a max over noisy returns): re-judge it and the
    distribution's mean on 4x the rollouts and fresh seeds, and keep the better."""
    finalists = np.stack([np.asarray(best["params"]), mean])
    final = fitness(finalists, seed=config.seed + 7_919, rollouts=4 * config.rollouts)
    chosen = int(final.argmax())
    return {**best, "params": finalists[chosen], "return": float(final[chosen]), "chosen": ("best", "mean")[chosen]}


def _save(bundle: str, out_dir: Path, controller: Controller, chosen: dict, config: CMAESConfig, where: str,
          generations: int) -> dict:
    from worldmodel.bundle import save_controller
    from worldmodel.models.io import save_pretrained

    controller.set_flat(torch.as_tensor(chosen["params"], dtype=torch.float32))
    info = {f"{where}_return": chosen["return"], "trained_in": where, "chosen": chosen["chosen"],
            "generation": chosen["generation"], "cmaes": asdict(config)}
    save_pretrained(controller, out_dir / "controller", extra=info)
    save_controller(bundle, controller, info)
    plot_returns(out_dir / LOG_FILE, out_dir / "cmaes.png", f"return in the {where}")
    return {f"best_{where}_return": chosen["return"], "chosen": chosen["chosen"], "generations": generations,
            "curve": str(out_dir / "cmaes.png")}


__all__ = ["CMAESConfig", "PRESETS", "make_fitness", "train_controller"]
