"""Benchmark of the dream environments (issue "Dream environments"): steps/s of a dream vs the real env.

Measured side by side in one run, rounds alternated and the best round of each
kept (other load on the machine only ever slows a round down), printed as a
table against the targets, then as one line of JSON:

1. DreamVectorEnv, VMC backend, observation="latent", at each batch of --envs
   (default 256 and 1024 sub-envs; one batched LSTM step per call, no decoding)
   vs the real CarRacing-v3 source env (`envs.sources.make_source`, 64x64 image
   + vector, one process). The best batch up to 1024 counts.   target >= 1000x
2. the same with observation="pixels" (every step decodes a frame per sub-env with V).
3. DreamEnv alone (one env, latent), to show what batching buys.
4. figure 1 again with M's termination logit biased to --long-episode-bias (default
   log(1/999), about one end per 1,000 steps, CarRacing's episode length): the bundle
   built here is barely trained and ends its dreams every few steps, so figure 1
   mostly times resets; a trained CarRacing model ends about once per episode.

Both sides run on one core by default (--threads 1): the real env is one
single-threaded process. --device cuda runs the dreams on a GPU (the real env
stays on the CPU); `make bench-gpu` passes --envs 256,1024,4096.

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
    add_bundle_arguments, add_device_argument, benchmark_parser, build_bundle, device_report, require_positive,
    scratch_workdir, set_quiet_env, synchronize,
)

set_quiet_env()

import numpy as np  # noqa: E402

TARGET_LATENT_RATIO = 1000.0
TARGET_MAX_BATCH = 1024
"""The floor counts the best batch up to this many sub-envs (issue 15)."""


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
    parser.add_argument("--envs", type=batch_sizes, default=[256, 1024],
                        help="sub-envs of the DreamVectorEnv: one batch size or a comma list (e.g. 256,1024,4096)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated measuring rounds; the best of each counts")
    parser.add_argument("--real-steps", type=int, default=300, help="real CarRacing steps per round")
    parser.add_argument("--latent-steps", type=int, default=100, help="batched latent dream steps per round")
    parser.add_argument("--pixel-steps", type=int, default=3, help="batched pixel dream steps per round")
    parser.add_argument("--single-steps", type=int, default=300, help="DreamEnv steps per round")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default). 1 by default: one core each, as the real "
                        "env is one single-threaded process; and on a busy machine the small ops of a dream step "
                        "wait on every thread of a larger pool (2 threads measured up to 8x slower under load)")
    parser.add_argument("--long-episode-bias", type=float, default=-6.9,
                        help="termination logit bias of figure 4 (log(1/999): about 1,000 steps per episode)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    require_positive(parser, args, ("rounds", "real_steps", "latent_steps", "pixel_steps", "single_steps",
                                    "train_steps"))
    return args


def batch_sizes(text: str) -> list[int]:
    """"256" or "256,1024,4096" -> [256, ...]: positive and distinct, in the order given."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 256 or 256,1024, got {text!r}") from None
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be distinct and >= 1, got {text!r}")
    return sizes


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
    synchronize(env.model.device)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)  # returns numpy: the device's work is done
        ended += int(np.sum(terminated | truncated))
        if batch is None and (terminated or truncated):
            env.reset()
    seconds = time.perf_counter() - start
    if ends is not None:
        ends.append(ended / (steps * (batch or 1)))
    return steps * (batch or 1) / seconds


def compute_ceiling(model, batch: int, rounds: int) -> dict:
    """What the hardware allows a latent step: the matmuls of one M step (the LSTM's [x, h] @ W and the
    mixture head's h @ W, the FLOPs that grow with the batch) timed alone at `batch`, as GFLOP/s, and
    the steps/s a dream would reach if it did nothing else."""
    import torch

    config, device = model.mdnrnn.config, model.device
    inputs = model.mdnrnn.input_dim + config.hidden_size
    shapes = [(inputs, 4 * config.hidden_size), (config.hidden_size, 3 * config.latent_dim * config.num_mixtures)]
    operands = [(torch.randn(batch, k, device=device), torch.randn(k, n, device=device)) for k, n in shapes]
    flops = sum(2 * batch * k * n for k, n in shapes)
    best = float("inf")
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(20):
            for a, w in operands:
                a @ w
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / 20)
    return {"batch": batch, "mflop_per_env_step": flops / batch / 1e6, "gflops": flops / best / 1e9,
            "steps_per_s": batch / best}


DREAMS = (("latent", "DreamVectorEnv VMC latent"), ("latent_long", "DreamVectorEnv VMC latent, long episodes"),
          ("pixels", "DreamVectorEnv VMC pixels"))


def best_counted(batches: dict[int, dict], name: str) -> tuple[int, float]:
    """(batch, steps/s) of the fastest batch up to TARGET_MAX_BATCH (or the smallest measured)."""
    eligible = [b for b in batches if b <= TARGET_MAX_BATCH] or [min(batches)]
    batch = max(eligible, key=lambda b: batches[b][f"{name}_steps_per_s"])
    return batch, batches[batch][f"{name}_steps_per_s"]


def every(rate: float) -> str:
    return f"every {1 / rate:,.0f} steps" if rate > 0 else "never in the measured steps"


def print_table(args, figures: dict) -> None:
    real = figures["real_steps_per_s"]
    rows = [("real CarRacing-v3 (1 process, 64x64 + vector)", real, None, None)]
    for name, what in DREAMS:
        counted, _ = best_counted(figures["batches"], name)
        for batch, measured in figures["batches"].items():
            target = TARGET_LATENT_RATIO if name != "pixels" and batch == counted else None
            rows.append((f"{what}, {batch} envs", measured[f"{name}_steps_per_s"], measured[f"{name}_ratio"], target))
    rows.append(("DreamEnv VMC latent, 1 env", figures["single_steps_per_s"], figures["single_ratio"], None))
    print(f"\n{'':52s} {'steps/s':>12s} {'vs real':>10s} {'target':>9s}")
    for name, speed, ratio, target in rows:
        verdict = "" if target is None else ("PASS" if ratio >= target else "MISS")
        ratio_text = "" if ratio is None else f"{ratio:,.0f}x"
        target_text = "" if target is None else f">= {target:,.0f}x"
        print(f"{name:52s} {speed:12,.0f} {ratio_text:>10s} {target_text:>9s} {verdict}")
    print(f"(the target row of each latent kind is its best batch up to {TARGET_MAX_BATCH}; paper-size V and M trained "
          f"a few steps: their dreams end {every(figures['dream_end_rate'])} on average, and each "
          f"end costs a reset; with the termination bias at {args.long_episode_bias:g} (long episodes) "
          f"{every(figures['long_end_rate'])}; {figures['torch_threads']} torch threads on "
          f"{figures['device']} ({figures['device_name']}), load average {figures['load_avg']:.1f})")
    ceiling = figures["compute_ceiling"]
    print(f"compute ceiling at {ceiling['batch']} envs: M's matmuls alone ({ceiling['mflop_per_env_step']:.2f} MFLOP per "
          f"env step) run at {ceiling['gflops']:.0f} GFLOP/s here, so no latent dream of this model can pass "
          f"{ceiling['steps_per_s']:,.0f} steps/s ({ceiling['ratio']:,.0f}x the real env) on this device")


def main(argv=None) -> int:
    args = parse_args(argv)
    figures: dict = device_report(args.device)
    import torch

    import worldmodel
    from envs.dream import DreamEnv, DreamVectorEnv
    from envs.policies import make_policy
    from envs.sources import make_source, source_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    figures["torch_threads"] = torch.get_num_threads()
    with scratch_workdir(args, "bench-dream-") as workdir:
        start = time.perf_counter()
        bundle = args.bundle or build_bundle(args, workdir, contexts=64)
        figures["bundle_build_s"] = 0.0 if args.bundle else time.perf_counter() - start
        model = worldmodel.load_bundle(bundle, device=args.device)
        if not model.spec.env_id.startswith("CarRacing") or model.spec.action.is_discrete:
            print(f"note: the bundle simulates {model.spec.env_id!r}, not CarRacing", flush=True)
        figures["model"] = {"latent_dim": model.latent_dim, "hidden": model.mdnrnn.config.hidden_size,
                            "mixtures": model.mdnrnn.config.num_mixtures,
                            "vae_channels": list(model.vae.config.encoder_channels)}
        real = make_source("CarRacing-v3")
        real.reset(seed=args.seed)
        policy = make_policy("auto", source_spec(real), seed=args.seed)
        long_model = worldmodel.load_bundle(bundle, device=args.device)
        with torch.no_grad():
            long_model.mdnrnn.termination_head.bias.fill_(args.long_episode_bias)
        envs = {}
        for batch in args.envs:
            envs[("latent", batch)] = DreamVectorEnv(batch, model=model, observation="latent")
            envs[("latent_long", batch)] = DreamVectorEnv(batch, model=long_model, observation="latent")
            envs[("pixels", batch)] = DreamVectorEnv(batch, model=model, observation="pixels")
        envs[("single", None)] = DreamEnv(model=model, observation="latent")
        for (name, batch), env in envs.items():  # warm-up: the start-state cache, the allocator's pools
            env.reset(seed=args.seed)
            time_dream(env, 2 if name == "pixels" else 20, np.random.default_rng(0), batch)
        time_real(real, policy, 20)  # warm-up: CarRacing's first frames build its surfaces
        rng = np.random.default_rng(args.seed)
        steps = {"latent": args.latent_steps, "latent_long": args.latent_steps, "pixels": args.pixel_steps,
                 "single": args.single_steps}
        best: dict = {"real": 0.0}
        ends: dict[str, list[float]] = {"latent": [], "latent_long": []}
        for r in range(args.rounds):
            got = {"real": time_real(real, policy, args.real_steps)}
            for (name, batch), env in envs.items():
                got[(name, batch)] = time_dream(env, steps[name], rng, batch, ends.get(name))
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k if k == 'real' else k[0] + ('' if k[1] is None else f'@{k[1]}')} {v:,.0f}" for k, v in got.items())
                + " steps/s", flush=True)
            best = {k: max(best.get(k, 0.0), v) for k, v in got.items()}
        real.close()
        figures["real_steps_per_s"] = best["real"]
        figures["single_steps_per_s"] = best[("single", None)]
        figures["single_ratio"] = best[("single", None)] / best["real"]
        figures["batches"] = {
            batch: {key: value for name, _ in DREAMS for key, value in (
                (f"{name}_steps_per_s", best[(name, batch)]), (f"{name}_ratio", best[(name, batch)] / best["real"]))}
            for batch in args.envs
        }
        for name in ("latent", "latent_long"):
            batch, speed = best_counted(figures["batches"], name)
            figures[f"{name}_best_batch"] = batch
            figures[f"{name}_ratio"] = speed / best["real"]
        figures["dream_end_rate"] = float(np.mean(ends["latent"]))  # episodes ended per sub-env step (latent runs)
        figures["long_end_rate"] = float(np.mean(ends["latent_long"]))
        figures["compute_ceiling"] = compute_ceiling(model, figures["latent_long_best_batch"], args.rounds)
        figures["compute_ceiling"]["ratio"] = figures["compute_ceiling"]["steps_per_s"] / best["real"]
        figures["load_avg"] = os.getloadavg()[0]

    print_table(args, figures)
    print(json.dumps(figures, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
