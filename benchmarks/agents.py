"""One CMA-ES generation in the batched dream vs the same generation in the real CarRacing env.

The dream side runs a real generation: population x rollouts dreams of
--steps steps as one batch (latent observations, the paper's model sizes).
The real side runs --real-jobs rollouts of --real-steps steps through the
real-env fitness (agents/real_fitness.py: each step the env steps, V encodes
the frame, M advances, C acts), with 1 Ray worker and with 2, and prints the
steps/s of each and their ratio; the real generation's time is EXTRAPOLATED
from the 2-worker rate to population x rollouts x steps, printed as such.
--device puts the models of both sides there (a GPU: the real side's workers
share it, 1/workers of it each); the envs always step on the CPU.

Reads: --bundle (default: builds a paper-size bundle from a small real
CarRacing collection in --workdir, about 2 minutes; training steps are few
because speed depends on the sizes, not the weights). Writes: only under
--workdir (a temp dir by default, removed unless --keep). Time: about 3-6 minutes on 2 CPUs with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/agents.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (and this file's name never shadows agents/)

from benchmarks.common import (  # noqa: E402
    add_bundle_arguments, add_device_argument, benchmark_parser, build_bundle, device_report, require_positive,
    scratch_workdir, set_quiet_env, synchronize,
)

set_quiet_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def dream_generation(bundle: str, population: int, rollouts: int, steps: int, device: str) -> float:
    """Seconds for one full generation in the dream on `device` (no early termination: every dream runs `steps`)."""
    from agents.dream_fitness import dream_returns
    from worldmodel.bundle import load_bundle
    from worldmodel.models import Controller

    model = load_bundle(bundle, device=device)
    params = np.random.default_rng(0).normal(0, 0.1, (population, Controller(model.controller_config()).num_params))
    began = time.perf_counter()
    dream_returns(model, params, rollouts, steps, temperature=1.15, seed=0, stop_early=False)
    synchronize(device)
    return time.perf_counter() - began


def real_steps_per_second(bundle: str, workers: int, jobs: int, steps: int, envs_per_worker: int, device: str) -> float:
    """Real CarRacing steps/s of `jobs` controller rollouts of `steps` steps through RealFitness (each step: the
    env steps, V encodes the frame, M advances, C acts), split over `workers` Ray workers (1: this process).
    Every worker computes on one torch thread, as each Ray worker does (it holds one CPU): the ratio then
    measures workers, not a single worker's intra-op threads. On a GPU the workers share it (RealFitness puts
    its models on "cuda" when it is given a share)."""
    from agents.real_fitness import RealFitness
    from worldmodel.bundle import load_bundle
    from worldmodel.models import Controller

    model = load_bundle(bundle)
    params = np.random.default_rng(0).normal(0, 0.1, (jobs, Controller(model.controller_config()).num_params))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gpus = 1.0 / workers if device.startswith("cuda") else 0.0
    fitness = RealFitness(bundle, rollouts=1, max_steps=steps, workers=workers, envs_per_worker=envs_per_worker,
                          gpus_per_worker=gpus)
    try:
        fitness.episode_returns(params[:1], np.array([0]), patience=0)  # actors up, envs built: not timed
        fitness.steps = 0
        began = time.perf_counter()
        fitness.episode_returns(params, np.arange(1, jobs + 1), patience=0)
        return fitness.steps / (time.perf_counter() - began)
    finally:
        fitness.close()
        torch.set_num_threads(threads)


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
    parser.add_argument("--real-jobs", type=int, default=16, help="real rollouts timed at each worker count")
    parser.add_argument("--real-steps", type=int, default=150, help="steps of each real rollout")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    require_positive(parser, args, ("population", "rollouts", "steps", "real_jobs", "real_steps", "threads"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = device_report(args.device)
    torch.set_num_threads(args.threads)
    with scratch_workdir(args, "wm-bench-agents-") as workdir:
        bundle = args.bundle or str(build_bundle(args, workdir))
        dream_s = dream_generation(bundle, args.population, args.rollouts, args.steps, args.device)
        one = real_steps_per_second(bundle, 1, args.real_jobs, args.real_steps, 8, args.device)
        two = real_steps_per_second(bundle, 2, args.real_jobs, args.real_steps, 8, args.device)
    real_s = args.population * args.rollouts * args.steps / two
    scaling, ratio = two / one, real_s / dream_s
    load = os.getloadavg()[0]
    print(f"device: {device['device']} ({device['device_name']}), load average {load:.1f}")
    print(f"real CarRacing rollouts through RealFitness ({args.real_jobs} x {args.real_steps} steps, 8 envs a worker):")
    print(f"  1 worker  {one:8.1f} steps/s")
    print(f"  2 workers {two:8.1f} steps/s   ratio {scaling:.2f}x   (floor 1.6x on 2 cores: "
          f"{'PASS' if scaling >= 1.6 else 'MISS'})")
    print(f"one CMA-ES generation: population {args.population} x {args.rollouts} rollouts x {args.steps} steps")
    print(f"  dream (one batch of {args.population * args.rollouts}, measured)          {dream_s:10.1f} s")
    print(f"  real CarRacing, 2 workers (extrapolated from the rate above)  {real_s:10.1f} s")
    print(f"  speed-up dream vs real: {ratio:.0f}x   (target >= 100x: {'PASS' if ratio >= 100 else 'MISS'})")
    print(json.dumps({"benchmark": "agents", **device, "load_avg": round(load, 2), "dream_generation_s": dream_s,
                      "real_steps_per_s_1_worker": one, "real_steps_per_s_2_workers": two,
                      "real_worker_scaling": scaling, "real_generation_s_extrapolated": real_s, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
