"""Training throughput of V, the paper-size ConvVAE (issue 15, GPU readiness): samples/s of one training step
on --device, as worldmodel.train's loop runs it (frames copied to the device, the VAE loss, backward, Adam).

The model and the schedule are the "paper" preset's (worldmodel/train/presets.py: z 32, encoder channels
32/64/128/256, batch 100, lr 1e-4); the frames are random uint8 64x64x3 (speed depends on the sizes, not on
what the frames show), drawn once in host memory and copied to the device every step as a store's batch
would be. After --warmup steps (allocator pools, cuDNN's algorithm choice), --rounds timed rounds of
--steps steps; the best round counts (other load on the machine only ever slows a round down). No Ray, no
DDP: benchmarks/train.py measures what Ray Train's worker adds to this loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/vae_train.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import (  # noqa: E402
    add_device_argument, benchmark_parser, device_report, require_positive, rounded, set_quiet_env, synchronize,
)

set_quiet_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402

PRESET = "paper"


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description="Samples/s of the paper-preset ConvVAE's training step (batch 100, Adam) on --device, on random "
        "64x64 frames. Prints the figure, then one line of JSON.",
        epilog="Reads: nothing. Writes: nothing. Takes: seconds on a GPU; on 2 CPUs about 0.5-2 s a step (about "
        "half a minute with the defaults, 10 s with --quick).",
    )
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="frames per step (default: the paper preset's)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (default: 10; --quick: 2)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds, the best counts (default: 2; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3; --quick: 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 warm-up step and one round of 2 steps")
    args = parser.parse_args(argv)
    from worldmodel.train.presets import get_preset

    args.batch_size = args.batch_size or get_preset("vae", PRESET).batch_size
    args.steps = args.steps or (2 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.threads < 0 or args.warmup < 0:
        parser.error("--threads and --warmup must be >= 0")
    require_positive(parser, args, ("batch_size", "steps", "rounds"))
    return args


def training_step(device: str, batch_size: int, seed: int):
    """The paper-preset ConvVAE, its Adam, and one step of the training loop as a function of nothing."""
    from worldmodel.models import ConvVAE, VAEConfig, to_model_input
    from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec
    from worldmodel.train.presets import get_preset

    torch.manual_seed(seed)
    preset = get_preset("vae", PRESET)
    spec = EnvSpec(ImageSpec(64, 64, 3), ActionSpec.box([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]), env_id="CarRacing-like")
    model = ConvVAE(VAEConfig.from_spec(spec, **preset.model)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.lr)
    frames = np.random.default_rng(seed).integers(0, 256, size=(4, batch_size, 64, 64, 3), dtype=np.uint8)
    count = [0]

    def step() -> None:
        batch = torch.from_numpy(frames[count[0] % len(frames)]).to(device)
        count[0] += 1
        loss, _ = model.loss(to_model_input(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    parameters = sum(p.numel() for p in model.parameters())
    return step, parameters


def main(argv=None) -> int:
    args = parse_args(argv)
    device = device_report(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    step, parameters = training_step(args.device, args.batch_size, args.seed)
    for _ in range(args.warmup):
        step()
    synchronize(args.device)
    best = 0.0
    for r in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(args.device)
        rate = args.steps * args.batch_size / (time.perf_counter() - start)
        best = max(best, rate)
        print(f"  round {r + 1}/{args.rounds}: {rate:,.1f} samples/s", flush=True)
    load = os.getloadavg()[0]
    print(f"\nConvVAE training, {PRESET} preset ({parameters:,} parameters), batch {args.batch_size}, Adam: "
          f"{best:,.1f} samples/s ({best / args.batch_size:.2f} steps/s) on {device['device']} ({device['device_name']}), "
          f"{torch.get_num_threads()} torch threads, load average {load:.1f}")
    print(json.dumps({"benchmark": "vae_train", **device, "preset": PRESET, "parameters": parameters,
                      "batch_size": args.batch_size, "samples_per_s": rounded(best),
                      "steps_per_s": rounded(best / args.batch_size),
                      "torch_threads": torch.get_num_threads(), "load_avg": round(load, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
