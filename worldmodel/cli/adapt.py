"""`worldmodel adapt`: a pretrained diffusion backbone learns a new env from a few of its episodes."""

from __future__ import annotations

import argparse
from pathlib import Path

from worldmodel.cli.common import (
    CliError, Subparsers, add_command, add_training_arguments, check_output_directory, positive_int,
)


def add_adapt_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "adapt", run_adapt,
        help="adapt a pretrained diffusion bundle to a new env (LoRA, heads or full fine-tuning)",
        description="The bundle's diffusion backbone learns the env of --store: the new env gets its own embedding, "
        "action and vector encoders and reward/termination head, which always train; --method lora also trains "
        "LoRA weights on the UNet (peft; its base weights stay frozen), heads nothing more, full everything. "
        "Reads: --bundle (left untouched), --store. Writes: --out, a bundle whose start contexts come from --store; "
        "with lora or heads it holds only the new parts and a reference to --bundle (keep that bundle), with full "
        "a whole backbone; and the training run (metrics.csv, loss.png, checkpoints) in --run. Time: like "
        "`train diffusion` for as many steps.",
    )
    parser.add_argument("--bundle", required=True, help="the pretrained bundle (with the diffusion backend)")
    parser.add_argument("--store", action="append", required=True, help="the new env's episodes (repeat for several)")
    parser.add_argument("--method", default="lora", choices=("lora", "heads", "full"),
                        help="what trains besides the new env's parts (default: lora)")
    parser.add_argument("--rank", type=positive_int, default=None,
                        help="--method lora: the LoRA rank (default 2: about 3%% of a small UNet's parameters)")
    parser.add_argument("--episodes", type=positive_int, default=None, help="learn from the first K episodes only")
    parser.add_argument("--run", dest="run_dir", default=None,
                        help="the training run directory (default: OUT.run beside --out)")
    parser.add_argument("--contexts", type=positive_int, default=64, help="real start contexts to carry")
    add_training_arguments(parser)


def run_adapt(args: argparse.Namespace) -> None:
    from worldmodel.bundle import write_adapted_bundle
    from worldmodel.train.adapt import adapt_diffusion, check_adaptable
    from worldmodel.train.launcher import LaunchOptions

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CliError(f"--out {out} is not empty: the adapted bundle goes to a new directory")
    if args.method != "lora" and args.rank is not None:
        raise CliError(f"--rank is LoRA's: it means nothing with --method {args.method}")
    check_output_directory(args.run_dir, "--run")
    check_adaptable(args.bundle, args.store)  # before Ray starts or anything is written
    run = args.run_dir or f"{str(out).rstrip('/')}.run"
    options = LaunchOptions(out=run, workers=args.workers, gpus_per_worker=args.gpus_per_worker, resume=args.resume)
    adapted, config, facts = adapt_diffusion(
        args.bundle, args.store, options, method=args.method, rank=args.rank or 2, preset=args.preset,
        max_steps=args.max_steps, seed=args.seed, episodes=args.episodes,
    )
    path = write_adapted_bundle(out, adapted, args.bundle, args.store, facts, config.provenance(),
                                contexts=args.contexts, seed=args.seed)
    share = facts["lora_parameters"] / facts["unet_parameters"] if facts["unet_parameters"] else 0.0
    print(f"adapted bundle written to {path} ({args.method}: {facts['trainable_parameters']:,} trainable parameters"
          + (f", LoRA {facts['lora_parameters']:,} = {share:.1%} of the UNet" if args.method == "lora" else "") + ")")
    print(f"training run: {run} (loss curve: {Path(run) / 'loss.png'})")


__all__ = ["add_adapt_command"]
