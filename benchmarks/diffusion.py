"""Benchmark of the diffusion backbone (issue 4): frames/s of 1-step and 3-step sampling at batch 1 and 64,
against a V-M-C pixel step (M's LSTM step, the z sample, V decoding the frame), printed as ratios.

Both backends are built here at their default (published) sizes with UNTRAINED weights: speed depends on
the sizes, not on what the weights learned. Diffusion: DIAMOND's UNet (channels 64/64/64/64, 2 residual
blocks per level, condition embedding 256, L = 4) on 64x64x3 frames, plus its reward/termination head
(CNN 32/32/32/32 + LSTM 512). V-M-C: the ConvVAE (z 32) and MDN-RNN (LSTM 256, 5 mixtures) of Ha &
Schmidhuber. The spec is CarRacing-like: a 3-dim box action and no vector observation.

Each measurement runs one warm-up call, then `--rounds` timed rounds of `--repeats` steps; the best round is
kept (other load on the machine only ever slows a round down). The anchor for a GPU: DIAMOND reports 20.4 ms
per batched imagination step (3 Euler steps) on an RTX 4090; `--device cuda` measures that here.
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

from benchmarks.common import benchmark_parser  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description="Frames/s of the diffusion backbone's sampling (1 and 3 Euler steps) at batch 1 and 64 vs a V-M-C "
        "pixel step, default sizes, untrained weights. Prints a table of ratios, then one line of JSON.",
        epilog="Reads: nothing. Writes: nothing. Takes: about 2-4 minutes on 1 CPU thread (the 3-step batch-64 "
        "measurement dominates); seconds on a GPU.",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3], help="Euler steps per frame")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="dream steps per timed round (diffusion)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent")
    return parser.parse_args(argv)


def build(device: str):
    from worldmodel.models import MDNRNN, ConvVAE, MDNRNNConfig, VAEConfig
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld, DiffusionWorldModel, parameter_count
    from worldmodel.models.vmc import VMCWorldModel
    from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec

    torch.manual_seed(0)
    spec = EnvSpec(ImageSpec(64, 64, 3), ActionSpec.box([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]), env_id="CarRacing-like")
    vae = ConvVAE(VAEConfig.from_spec(spec))
    vmc = VMCWorldModel(spec, vae, MDNRNN(MDNRNNConfig.from_spec(spec, latent_dim=vae.config.latent_dim)), device=device)
    world = DiffusionWorld(DiffusionConfig.from_spec(spec))
    diffusion = DiffusionWorldModel(spec, world, device=device)
    sizes = {"unet_parameters": parameter_count(world.unet), "diffusion_parameters": parameter_count(world),
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
    """Best over rounds of the mean wall time of one `step` (per-row generators, as the service steps)."""
    generators = [torch.Generator(device=model.device).manual_seed(i) for i in range(len(action))]

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    model.step(state, action, generators)  # warm-up
    sync()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            model.step(state, action, generators)
        sync()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    spec, vmc, diffusion, sizes = build(args.device)
    gpu = torch.cuda.is_available() and args.device.startswith("cuda")
    print("diffusion backbone vs V-M-C, default sizes, UNTRAINED weights (speed depends on sizes only)")
    print(f"device: {args.device}" + ("" if gpu else f", {args.threads} thread(s). GPU: none lent to this task; "
                                      "the DIAMOND anchor (20.4 ms per 3-step batched step, RTX 4090) was not measured"))
    print(f"parameters: UNet {sizes['unet_parameters']:,}, diffusion total {sizes['diffusion_parameters']:,}, "
          f"V-M-C {sizes['vmc_parameters']:,}\n")
    results = []
    print(f"{'batch':>5s} {'model':>18s} {'ms/step':>10s} {'frames/s':>10s} {'vs VMC':>10s}")
    for batch in args.batches:
        with torch.no_grad():
            ctx = context(spec, batch)
            action = torch.rand(batch, 3, device=args.device) * torch.tensor([2.0, 1.0, 1.0], device=args.device) - torch.tensor([1.0, 0.0, 0.0], device=args.device)
            vmc_state = vmc.initial_state(ctx)
            vmc_s = seconds_per_step(vmc, vmc_state, action, args.rounds, max(args.repeats, 10))
            rows = [("vmc", vmc_s)]
            diffusion_state = diffusion.initial_state(ctx)
            for steps in args.steps:
                diffusion.sampling_steps = steps
                rows.append((f"diffusion {steps}-step", seconds_per_step(diffusion, diffusion_state, action, args.rounds, args.repeats)))
        for name, seconds in rows:
            ratio = vmc_s / seconds  # frames/s relative to V-M-C's
            print(f"{batch:5d} {name:>18s} {seconds * 1000:10.2f} {batch / seconds:10.1f} {ratio:9.4f}x")
            results.append({"batch": batch, "model": name, "ms_per_step": seconds * 1000, "frames_per_s": batch / seconds,
                            "ratio_to_vmc": ratio})
    print("\n'vs VMC': frames/s of the row divided by frames/s of the V-M-C pixel step at the same batch.")
    print(json.dumps({"device": args.device, "gpu_lent": gpu, "threads": args.threads, **sizes, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
