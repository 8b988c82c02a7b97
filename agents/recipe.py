"""The paper's CarRacing procedure at CPU scale: a recipe of at most an hour on 2 cores.

Collect random-walk episodes -> train V and M (Ray Train) -> bundle -> CMA-ES in the REAL env on V and M
features (rollouts in 2 Ray workers, 8 envs each, hopeless rollouts stopped) -> judge on 5 held-out seeds.
The same steps as commands (the README lists them):

    worldmodel collect --env CarRacing-v3 --episodes 48 --max-steps 500 --workers 2 --out RUN/store.zarr
    worldmodel train vae --store RUN/store.zarr --out RUN/vae --preset small --max-steps 2000
    worldmodel train mdnrnn --store RUN/store.zarr --vae RUN/vae --out RUN/mdnrnn --preset small --max-steps 2000
    worldmodel bundle --vae RUN/vae --mdnrnn RUN/mdnrnn --store RUN/store.zarr --out RUN/bundle
    worldmodel train controller --in real --bundle RUN/bundle --out RUN/cmaes --preset small --generations 15
    worldmodel eval --bundle RUN/bundle --episodes 5
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class RealRecipe:
    env_id: str = "CarRacing-v3"
    episodes: int = 48
    """Random-walk episodes collected for V and M."""
    max_steps: int = 500
    """Steps per collected episode."""
    vae_steps: int = 2000
    mdnrnn_steps: int = 2000
    generations: int = 15
    """CMA-ES generations in the real env (the small preset's population 16, 1 rollout, patience 60)."""
    judge_episodes: int = 5
    judge_seed: int = 10_000
    workers: int = 2


def run_real_recipe(out: str, seed: int = 0, recipe: RealRecipe = RealRecipe()) -> dict:
    """Run the recipe into `out`; returns the judged returns, their mean and std, and the minutes it took."""
    from agents.cmaes import preset, train_controller
    from agents.evaluate import judge_controller
    from envs.collect import collect
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    run = Path(out).resolve()
    run.mkdir(parents=True, exist_ok=True)
    began, minutes = time.perf_counter(), {}

    def lap(name: str) -> None:
        minutes[name] = (time.perf_counter() - began) / 60 - sum(minutes.values())

    store = str(run / "store.zarr")
    collect(recipe.env_id, store, episodes=recipe.episodes, max_steps=recipe.max_steps, workers=recipe.workers, seed=seed)
    lap("collect")
    vae = train_vae([store], LaunchOptions(out=str(run / "vae")), preset="small", max_steps=recipe.vae_steps, seed=seed)
    mdnrnn = train_mdnrnn([store], str(vae), LaunchOptions(out=str(run / "mdnrnn")), preset="small",
                          max_steps=recipe.mdnrnn_steps, seed=seed)
    bundle = str(write_vmc_bundle(run / "bundle", vae, mdnrnn, [store], seed=seed))
    lap("train V and M")
    config = replace(preset("real", "small"), generations=recipe.generations, workers=recipe.workers, seed=seed)
    train_controller(bundle, str(run / "cmaes"), config)
    lap("CMA-ES in the real env")
    judged = judge_controller(bundle, recipe.judge_episodes, seed=recipe.judge_seed, workers=recipe.workers)
    lap("judge")
    result = {"returns": judged.returns, "seeds": judged.seeds, "mean": judged.mean, "std": judged.std,
              "minutes": sum(minutes.values()), "minutes_per_stage": minutes, "recipe": asdict(recipe), "seed": seed}
    (run / "recipe.json").write_text(json.dumps(result, indent=2))
    return result


__all__ = ["RealRecipe", "run_real_recipe"]
