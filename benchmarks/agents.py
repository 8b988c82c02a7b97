"""One CMA-ES generation in the batched dream vs the same generation in the real CarRacing env.

The dream side runs a real generation: population x rollouts dreams of
--steps steps as one batch (latent observations, the paper's model sizes).
The real side runs a few candidates for --real-steps steps in the real env,
each step doing what evaluation does (V encodes the frame, M advances, C
acts), and EXTRAPOLATES that per-step time to population x rollouts x
steps: printed as such.

Reads: --bundle (default: builds a paper-size bundle from a small real
CarRacing collection in a temp dir, about 2 minutes; training steps are few
because speed depends on the sizes, not the weights). Writes: nothing else.
Time: about 3-6 minutes on 2 CPUs with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import set_quiet_env  # while this folder is still on the import path

# This file is named after the package it measures: keep its own folder off the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

set_quiet_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def build_bundle(workdir: str) -> str:
    from envs.collect import collect
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    store = os.path.join(workdir, "store.zarr")
    collect("CarRacing-v3", store, episodes=4, max_steps=100, workers=2, seed=0, show_progress=False)
    vae = train_vae([store], LaunchOptions(out=os.path.join(workdir, "vae")), preset="paper", max_steps=2)
    mdnrnn = train_mdnrnn([store], str(vae), LaunchOptions(out=os.path.join(workdir, "m")), preset="paper", max_steps=2)
    return str(write_vmc_bundle(os.path.join(workdir, "bundle"), vae, mdnrnn, [store], contexts=16))


def dream_generation(bundle: str, population: int, rollouts: int, steps: int) -> float:
    """Seconds for one full generation in the dream (no early termination: every dream runs `steps`)."""
    from agents.dream_fitness import dream_returns
    from worldmodel.bundle import load_bundle
    from worldmodel.models import Controller

    model = load_bundle(bundle)
    params = np.random.default_rng(0).normal(0, 0.1, (population, Controller(model.controller_config()).num_params))
    began = time.perf_counter()
    dream_returns(model, params, rollouts, steps, temperature=1.15, seed=0, stop_early=False)
    return time.perf_counter() - began


@torch.no_grad()
def real_seconds_per_step(bundle: str, candidates: int, steps: int) -> float:
    """Seconds per real CarRacing step with the evaluation pipeline (V encode, M observe, C act)."""
    from agents.evaluate import LatentPolicy
    from envs.sources import make_source
    from worldmodel.bundle import load_bundle
    from worldmodel.models import Controller

    model = load_bundle(bundle)
    env = make_source("CarRacing-v3")
    controller = Controller(model.controller_config())
    total_steps, began = 0, time.perf_counter()
    for c in range(candidates):
        torch.nn.init.normal_(controller.linear.weight, std=0.1)
        agent = LatentPolicy(model, controller.act)
        observation, _ = env.reset(seed=c)
        agent.start(observation)
        for _ in range(steps):
            action = agent.act()
            observation, _, terminated, truncated, _ = env.step(action)
            agent.observe(action, observation)
            total_steps += 1
            if terminated or truncated:
                break
    env.close()
    return (time.perf_counter() - began) / total_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--real-candidates", type=int, default=2)
    parser.add_argument("--real-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        bundle = args.bundle or build_bundle(workdir)
        dream_s = dream_generation(bundle, args.population, args.rollouts, args.steps)
        per_step = real_seconds_per_step(bundle, args.real_candidates, args.real_steps)
    real_s = per_step * args.population * args.rollouts * args.steps
    ratio = real_s / dream_s
    print(f"one CMA-ES generation: population {args.population} x {args.rollouts} rollouts x {args.steps} steps")
    print(f"  dream (one batch of {args.population * args.rollouts}, measured)      {dream_s:10.1f} s")
    print(f"  real CarRacing (extrapolated from {args.real_candidates} candidates x {args.real_steps} steps, "
          f"{per_step * 1000:.2f} ms/step)  {real_s:10.1f} s")
    print(f"  speed-up dream vs real: {ratio:.0f}x   (target >= 100x: {'PASS' if ratio >= 100 else 'MISS'})")
    print(json.dumps({"dream_generation_s": dream_s, "real_ms_per_step": per_step * 1000,
                      "real_generation_s_extrapolated": real_s, "ratio": ratio}))


if __name__ == "__main__":
    main()
