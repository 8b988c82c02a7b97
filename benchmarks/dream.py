"""Benchmark of the dream environments (issue "Dream environments"): steps/s of a dream vs the real env.

Measured side by side in one run, rounds alternated and the best round of each
kept (other load on the machine only ever slows a round down), printed as a
table against the targets, then as one line of JSON:

1. DreamVectorEnv, VMC backend, observation="latent", 256 envs (one batched
   LSTM step per call, no decoding) vs the real CarRacing-v3 source env
   (`envs.sources.make_source`, 64x64 image + vector, one process).
                                                                 target >= 1000x
2. the same with observation="pixels" (every step decodes 256 frames with V).
3. DreamEnv alone (one env, latent), to show what batching buys.
4. figure 1 again with M's termination logit biased to --long-episode-bias (default
   log(1/999), about one end per 1,000 steps, CarRacing's episode length): the bundle
   built here is barely trained and ends its dreams every few steps, so figure 1
   mostly times resets; a trained CarRacing model ends about once per episode.

Both sides run on one core by default (--threads 1): the real env is one
single-threaded process.

The bundle: --bundle B, or one built here in a temp dir from real CarRacing
episodes through worldmodel.train with the "paper" model sizes (V: 32/64/128/256
channels, z 32; M: LSTM 256, 5 mixtures) but only a few training steps: speed
depends on the sizes, not on how well the weights are trained. Diffusion: not
built yet, so not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/dream.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import (  # noqa: E402
    add_bundle_arguments, benchmark_parser, build_bundle, require_positive, scratch_workdir, set_quiet_env,
)

set_quiet_env()

import numpy as np  # noqa: E402

TARGET_LATENT_RATIO = 1000.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description=(
            "Steps/s of DreamVectorEnv (VMC; latent and pixel observations; 256 envs) and of DreamEnv vs the real "
            "CarRacing-v3 source env, measured in one run. Prints a table with targets and PASS/MISS, then one "
            "line of JSON; exits 0 whatever the figures."
        ),
        epilog=(
            "Reads: --bundle when given (else nothing). Writes: only under --workdir (a temp dir by default, removed "
            "unless --keep): a CarRacing store and the V, M and bundle directories, plus Ray's own session files. "
            "Takes: about 4 minutes on 2 idle CPUs when it builds the bundle (collection ~10 s, Ray ~10 s, training "
            "paper-size V and M for a few steps ~2-3 min), then about a minute of measuring; with --bundle, about a minute."
        ),
    )
    add_bundle_arguments(parser, train_steps=10)
    parser.add_argument("--envs", type=int, default=256, help="sub-envs of the DreamVectorEnv")
    parser.add_argument("--rounds", type=int, default=3, help="alternated measuring rounds; the best of each counts")
    parser.add_argument("--real-steps", type=int, default=300, help="real CarRacing steps per round")
    parser.add_argument("--latent-steps", type=int, default=100, help="batched latent dream steps per round")
    parser.add_argument("--pixel-steps", type=int, default=5, help="batched pixel dream steps per round")
    parser.add_argument("--single-steps", type=int, default=300, help="DreamEnv steps per round")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default). 1 by default: one core each, as the real "
                        "env is one single-threaded process; and on a busy machine the small ops of a dream step "
                        "wait on every thread of a larger pool (2 threads measured up to 8x slower under load)")
    parser.add_argument("--long-episode-bias", type=float, default=-6.9,
                        help="termination logit bias of figure 4 (log(1/999): about 1,000 steps per episode)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    require_positive(parser, args, ("envs", "rounds", "real_steps", "latent_steps", "pixel_steps", "single_steps",
                                    "train_steps"))
    return args


def time_real(env, policy, steps: int) -> float:
    """Steps/s of the real source env driven by the collection policy (resets inside the timed loop count).

    The policy matters: what CarRacing draws (track tiles, grass) sets its speed, so it drives as
    the stores were collected (random walk), not with uniform noise that leaves the car standing.
    """
    obs = None
    start = time.perf_counter()
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        if terminated or truncated:
            env.reset()
            policy.reset()
    return steps / (time.perf_counter() - start)


def time_dream(env, steps: int, rng: np.random.Generator, batch: int | None, ends: list | None = None) -> float:
    """Env steps/s of a dream env (batch sub-envs per call, or one DreamEnv when batch is None);
    appends to `ends` the fraction of sub-env steps that ended an episode."""
    space = env.single_action_space if batch else env.action_space
    shape = (steps, batch) if batch else (steps,)
    actions = rng.uniform(space.low, space.high, (*shape, *space.shape)).astype(np.float32)
    ended = 0
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        ended += int(np.sum(terminated | truncated))
        if batch is None and (terminated or truncated):
            env.reset()
    seconds = time.perf_counter() - start
    if ends is not None:
        ends.append(ended / (steps * (batch or 1)))
    return steps * (batch or 1) / seconds


def print_table(args, figures: dict, best: dict[str, float]) -> None:
    rows = [
        ("real CarRacing-v3 (1 process, 64x64 + vector)", best["real"], None, None),
        (f"DreamVectorEnv VMC latent, {args.envs} envs", best["latent"], figures["latent_ratio"], TARGET_LATENT_RATIO),
        (f"DreamVectorEnv VMC pixels, {args.envs} envs", best["pixels"], figures["pixels_ratio"], None),
        ("DreamEnv VMC latent, 1 env", best["single"], figures["single_ratio"], None),
        (f"DreamVectorEnv VMC latent, {args.envs} envs, long episodes", best["latent_long"], figures["latent_long_ratio"],
         TARGET_LATENT_RATIO),
    ]
    print(f"\n{'':48s} {'steps/s':>12s} {'vs real':>10s} {'target':>9s}")
    for name, speed, ratio, target in rows:
        verdict = "" if target is None else ("PASS" if ratio >= target else "MISS")
        ratio_text = "" if ratio is None else f"{ratio:,.0f}x"
        target_text = "" if target is None else f">= {target:,.0f}x"
        print(f"{name:48s} {speed:12,.0f} {ratio_text:>10s} {target_text:>9s} {verdict}")
    print(f"(paper-size V and M trained a few steps; their dreams end every {1 / max(figures['dream_end_rate'], 1e-9):.0f} "
          f"steps on average, and each end costs a reset; with the termination bias at {args.long_episode_bias:g} "
          f"(long episodes) every {1 / max(figures['long_end_rate'], 1e-9):,.0f} steps; {figures['torch_threads']} torch threads, "
          f"load average {figures['load_avg']:.1f})")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import worldmodel
    from envs.dream import DreamEnv, DreamVectorEnv
    from envs.policies import make_policy
    from envs.sources import make_source, source_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict = {"torch_threads": torch.get_num_threads()}
    with scratch_workdir(args, "bench-dream-") as workdir:
        start = time.perf_counter()
        bundle = args.bundle or build_bundle(args, workdir, contexts=64)
        figures["bundle_build_s"] = 0.0 if args.bundle else time.perf_counter() - start
        model = worldmodel.load_bundle(bundle)
        if not model.spec.env_id.startswith("CarRacing") or model.spec.action.is_discrete:
            print(f"note: the bundle simulates {model.spec.env_id!r}, not CarRacing", flush=True)
        figures["model"] = {"latent_dim": model.latent_dim, "hidden": model.mdnrnn.config.hidden_size,
                            "mixtures": model.mdnrnn.config.num_mixtures,
                            "vae_channels": list(model.vae.config.encoder_channels)}
        real = make_source("CarRacing-v3")
        real.reset(seed=args.seed)
        policy = make_policy("auto", source_spec(real), seed=args.seed)
        long_model = worldmodel.load_bundle(bundle)
        with torch.no_grad():
            long_model.mdnrnn.termination_head.bias.fill_(args.long_episode_bias)
        envs = {
            "latent": DreamVectorEnv(args.envs, model=model, observation="latent"),
            "latent_long": DreamVectorEnv(args.envs, model=long_model, observation="latent"),
            "pixels": DreamVectorEnv(args.envs, model=model, observation="pixels"),
            "single": DreamEnv(model=model, observation="latent"),
        }
        for name, env in envs.items():  # warm-up: the start-state cache, the allocator's pools
            env.reset(seed=args.seed)
            time_dream(env, 2 if name == "pixels" else 20, np.random.default_rng(0),
                       args.envs if isinstance(env, DreamVectorEnv) else None)
        time_real(real, policy, 20)  # warm-up: CarRacing's first frames build its surfaces
        rng = np.random.default_rng(args.seed)
        best: dict[str, float] = {"real": 0.0, "latent": 0.0, "pixels": 0.0, "single": 0.0, "latent_long": 0.0}
        ends: list[float] = []
        long_ends: list[float] = []
        for r in range(args.rounds):
            got = {
                "real": time_real(real, policy, args.real_steps),
                "latent": time_dream(envs["latent"], args.latent_steps, rng, args.envs, ends),
                "pixels": time_dream(envs["pixels"], args.pixel_steps, rng, args.envs),
                "single": time_dream(envs["single"], args.single_steps, rng, None),
                "latent_long": time_dream(envs["latent_long"], args.latent_steps, rng, args.envs, long_ends),
            }
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:,.0f} steps/s" for k, v in got.items()),
                  flush=True)
            best = {k: max(best[k], got[k]) for k in best}
        real.close()
        figures.update({f"{k}_steps_per_s": v for k, v in best.items()})
        figures.update({f"{k}_ratio": best[k] / best["real"] for k in ("latent", "pixels", "single", "latent_long")})
        figures["dream_end_rate"] = float(np.mean(ends))  # episodes ended per sub-env step (latent runs)
        figures["long_end_rate"] = float(np.mean(long_ends))
        figures["load_avg"] = os.getloadavg()[0]

    print_table(args, figures, best)
    print(json.dumps(figures, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
