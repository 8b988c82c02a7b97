"""Benchmark of the diffusion backbone (issue 4; GPU readiness, issue 15): ms per batched imagination step and
frames/s of 1-step and 3-step sampling at batch 1 and 64, against a V-M-C pixel step (M's LSTM step, the z
sample, V decoding the frame), printed as ratios, with DIAMOND's anchor beside the 3-step rows.

Both backends are built here with UNTRAINED weights: speed depends on the sizes, not on what the weights
learned. Diffusion: the "paper" preset (DiffusionConfig's defaults, DIAMOND's sizes: UNet channels
64/64/64/64, 2 residual blocks per level, condition embedding 256, L = 4) on 64x64x3 frames, plus its
reward/termination head (CNN 32/32/32/32 + LSTM 512); `--quick` uses the "tiny" preset's sizes instead (a
smoke run: its figures are not DIAMOND's). V-M-C: the ConvVAE (z 32) and MDN-RNN (LSTM 256, 5 mixtures) of
Ha & Schmidhuber. The spec is CarRacing-like: a 3-dim box action and no vector observation.

A step is what the service runs: `model.step` with per-row noise streams (worldmodel.models.noise.RowStreams,
as DreamBatch passes them: a row dreams the same whatever shares its batch): the UNet's Euler steps and the
head. Each measurement runs one warm-up call, then `--rounds` timed rounds of `--repeats` steps; the best
round is kept (other load on the machine only ever slows a round down). The anchor: DIAMOND reports 20.4 ms
per batched imagination step (3 Euler steps) on an RTX 4090; on a CPU it is context only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/diffusion.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import (  # noqa: E402
    add_device_argument, benchmark_parser, device_report, require_positive, rounded, set_quiet_env, synchronize,
)

set_quiet_env(OMP_NUM_THREADS="1")

import torch  # noqa: E402

DIAMOND_MS_PER_STEP = 20.4
"""DIAMOND (Alonso et al. 2024): ms per batched imagination step with 3 Euler steps on an RTX 4090."""
DIAMOND_EULER_STEPS = 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description="ms per batched imagination step and frames/s of the diffusion backbone's sampling (1 and 3 "
        "Euler steps) at batch 1 and 64 vs a V-M-C pixel step, untrained weights, DIAMOND's 20.4 ms (RTX 4090) "
        "beside the 3-step rows. Prints a table, then one line of JSON.",
        epilog="Reads: nothing. Writes: nothing. Takes: seconds on a GPU; on 1 CPU thread the paper size at batch "
        "64 takes 10-80 s per 3-step step (minutes in all); --quick (tiny sizes, 3 steps, 1 round) about 20 s.",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="Euler steps per frame (default: 1 3; "
                        "--quick: 3)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds, the best counts (default: 2; --quick: 1)")
    parser.add_argument("--repeats", type=int, default=1, help="dream steps per timed round (diffusion)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: the tiny preset's diffusion sizes (not DIAMOND's), 3 Euler steps, 1 round")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    args.steps = args.steps or ([DIAMOND_EULER_STEPS] if args.quick else [1, DIAMOND_EULER_STEPS])
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.preset = "tiny" if args.quick else "paper"
    if min(args.batches) < 1 or min(args.steps) < 1:
        parser.error("--batches and --steps must be >= 1")
    require_positive(parser, args, ("rounds", "repeats", "threads"))
    return args


def build(device: str, preset: str):
    """A CarRacing-like spec, V-M-C at its paper sizes and the diffusion backbone at `preset`'s sizes, on `device`."""
    from worldmodel.models import MDNRNN, ConvVAE, MDNRNNConfig, VAEConfig
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld, DiffusionWorldModel, parameter_count
    from worldmodel.models.vmc import VMCWorldModel
    from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec
    from worldmodel.train.presets import get_preset

    torch.manual_seed(0)
    spec = EnvSpec(ImageSpec(64, 64, 3), ActionSpec.box([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]), env_id="CarRacing-like")
    vae = ConvVAE(VAEConfig.from_spec(spec))
    vmc = VMCWorldModel(spec, vae, MDNRNN(MDNRNNConfig.from_spec(spec, latent_dim=vae.config.latent_dim)), device=device)
    world = DiffusionWorld(DiffusionConfig.from_spec(spec, **get_preset("diffusion", preset).model))
    diffusion = DiffusionWorldModel(spec, world, device=device)
    sizes = {"unet_channels": list(world.config.block_out_channels), "unet_parameters": parameter_count(world.unet),
             "diffusion_parameters": parameter_count(world),
             "vmc_parameters": parameter_count(vae) + parameter_count(vmc.mdnrnn)}
    return spec, vmc, diffusion, sizes


def context(spec, batch: int, length: int = 4):
    import numpy as np

    from worldmodel.models.world import Context

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(batch, length, *spec.image.shape), dtype=np.uint8)
    actions = rng.uniform(0, 1, size=(batch, length, 3)).astype(np.float32)
    return Context(frames, actions)


def seconds_per_step(model, state, action, rounds: int, repeats: int) -> float:
    """Best over rounds of the mean wall time of one `step` (per-row noise streams, a new step's each call,
    as the service steps)."""
    from worldmodel.models.noise import RowStreams

    keys = torch.arange(len(action), device=model.device)
    calls = iter(range(1 << 62))

    def step() -> None:
        model.step(state, action, RowStreams(keys, torch.full_like(keys, next(calls))))

    device = str(model.device)
    step()  # warm-up: allocator pools, cuDNN's algorithm choice
    synchronize(device)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def measure(args, spec, vmc, diffusion) -> list[dict]:
    """One row per (batch, model): ms per step, frames/s and the ratio to V-M-C's frames/s at that batch."""
    results = []
    low = torch.tensor([-1.0, 0.0, 0.0], device=args.device)
    for batch in args.batches:
        with torch.no_grad():
            ctx = context(spec, batch)
            action = torch.rand(batch, 3, device=args.device) * (1.0 - low) + low
            vmc_s = seconds_per_step(vmc, vmc.initial_state(ctx), action, args.rounds, max(args.repeats, 10))
            rows = [("vmc", None, vmc_s)]
            diffusion_state = diffusion.initial_state(ctx)
            for steps in args.steps:
                diffusion.sampling_steps = steps
                rows.append((f"diffusion {steps}-step", steps,
                             seconds_per_step(diffusion, diffusion_state, action, args.rounds, args.repeats)))
        for name, steps, seconds in rows:
            results.append({"batch": batch, "model": name, "euler_steps": steps, "ms_per_step": seconds * 1000,
                            "frames_per_s": batch / seconds, "ratio_to_vmc": vmc_s / seconds})
            anchor = f"{DIAMOND_MS_PER_STEP:.1f} ms" if steps == DIAMOND_EULER_STEPS else ""
            print(f"{batch:5d} {name:>18s} {seconds * 1000:10.2f} {batch / seconds:10.1f} {vmc_s / seconds:9.4f}x "
                  f"{anchor:>10s}  (load {os.getloadavg()[0]:.1f})", flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    device = device_report(args.device)
    torch.set_num_threads(args.threads)
    spec, vmc, diffusion, sizes = build(args.device, args.preset)
    print("diffusion backbone vs V-M-C, UNTRAINED weights (speed depends on sizes only)")
    print(f"device: {device['device']} ({device['device_name']}), {args.threads} torch thread(s); diffusion sizes: "
          f"{args.preset} preset" + (" (--quick: NOT DIAMOND's sizes)" if args.quick else " (DIAMOND's)"))
    print(f"parameters: UNet {sizes['unet_parameters']:,}, diffusion total {sizes['diffusion_parameters']:,}, "
          f"V-M-C {sizes['vmc_parameters']:,}\n")
    print(f"{'batch':>5s} {'model':>18s} {'ms/step':>10s} {'frames/s':>10s} {'vs VMC':>10s} {'DIAMOND':>10s}")
    results = measure(args, spec, vmc, diffusion)
    print("\n'vs VMC': frames/s of the row divided by frames/s of the V-M-C pixel step at the same batch. 'DIAMOND': "
          f"its {DIAMOND_MS_PER_STEP} ms per batched imagination step ({DIAMOND_EULER_STEPS} Euler steps, RTX 4090)"
          + ("" if device["device"].startswith("cuda") else "; on a CPU, context only"))
    three_step = {str(r["batch"]): r["ms_per_step"] for r in results if r["euler_steps"] == DIAMOND_EULER_STEPS}
    print(json.dumps({"benchmark": "diffusion", **device, "threads": args.threads, "preset": args.preset, **sizes,
                      "diamond_anchor_ms": DIAMOND_MS_PER_STEP, "three_step_ms_per_step": rounded(three_step),
                      "load_avg": round(os.getloadavg()[0], 2), "results": rounded(results)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
