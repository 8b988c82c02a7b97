"""One CMA-ES generation in the batched dream vs the same generation in the real CarRacing env.

The dream side runs a real generation: population x rollouts dreams of
--steps steps as one batch (latent observations, the paper's model sizes).
The real side runs a few candidates for --real-steps steps in the real env,
each step doing what evaluation does (V encodes the frame, M advances, C
acts), and EXTRAPOLATES that per-step time to population x rollouts x
steps: printed as such.

Reads: --bundle (default: builds a paper-size bundle from a small real
CarRacing collection in --workdir, about 2 minutes; training steps are few
because speed depends on the sizes, not the weights). Writes: only under
--workdir (a temp dir by default, removed unless --keep). Time: about 3-6 minutes on 2 CPUs with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/agents.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (and this file's name never shadows agents/)

from benchmarks.common import (  # noqa: E402
    add_bundle_arguments, benchmark_parser, build_bundle, require_positive, scratch_workdir, set_quiet_env,
)

set_quiet_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description="Seconds of one CMA-ES generation in the batched dream vs the same generation in the real "
        "CarRacing env (extrapolated from a few candidates). Prints the figures, then one line of JSON.",
        epilog="Reads: --bundle when given. Otherwise builds a paper-size bundle under --workdir first (about 2 "
        "minutes). Writes: only under --workdir (a temp dir by default, removed unless --keep). Takes: about 3-6 "
        "minutes on 2 CPUs with the defaults.",
    )
    add_bundle_arguments(parser)
    parser.add_argument("--population", type=int, default=64, help="CMA-ES candidates of the generation")
    parser.add_argument("--rollouts", type=int, default=16, help="dreams per candidate")
    parser.add_argument("--steps", type=int, default=1000, help="steps of each dream")
    parser.add_argument("--real-candidates", type=int, default=2, help="candidates run in the real env")
    parser.add_argument("--real-steps", type=int, default=300, help="real steps per candidate at most")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    require_positive(parser, args, ("population", "rollouts", "steps", "real_candidates", "real_steps", "threads"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with scratch_workdir(args, "wm-bench-agents-") as workdir:
        bundle = args.bundle or str(build_bundle(args, workdir))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
