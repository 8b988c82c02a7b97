"""`worldmodel train vae|mdnrnn|diffusion|controller|rllib`: one function per trainer, the shared
flags from `add_training_arguments`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from worldmodel.cli.common import (
    CliError, Subparsers, TrainingFlags, add_command, add_training_arguments, model_dir, positive_float, positive_int,
)

RAY_TRAIN_OUTPUTS = "Writes: --out (metrics.csv, loss.png, model/ and Ray checkpoints)"
CMAES_FLAGS = TrainingFlags(
    length_flag="--generations", length_help="CMA-ES generations",
    workers_help="Ray workers sharing each generation", workers_default=None,
    gpus_help="GPUs per Ray worker; 0: the dreams run on the CPU",
    resume_help="continue from the last generation in --out",
)
RLLIB_FLAGS = TrainingFlags(
    length_flag="--iterations", length_help="RLlib training iterations",
    workers_help="RLlib env runners; 0 samples in this process", workers_default=0, workers_minimum=0,
    gpus_help="GPUs of the learner; 0: it learns on the CPU",
    resume_help="continue from the newest RLlib checkpoint in --out",
)


def add_train_command(subparsers: Subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a model on Ray (vae | mdnrnn | diffusion | controller | rllib)",
        description="Train one model on Ray (embedded Ray on 127.0.0.1, or the cluster of `ray job submit`). "
        "Every trainer takes --preset tiny|small|paper, its length (--max-steps, --generations or "
        "--iterations), --workers, --gpus-per-worker, --resume, --seed and --out.",
    )
    models = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    add_train_vae(models)
    add_train_mdnrnn(models)
    add_train_diffusion(models)
    add_train_controller(models)
    add_train_rllib(models)


# -- V, M and the diffusion backbone: Ray Train -------------------------------------------------------


def _add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", action="append", required=True, help="episode store (repeat for several)")


def add_train_vae(models: Subparsers) -> None:
    parser = add_command(
        models, "vae", run_train_vae,
        help="train V, the ConvVAE, on frames",
        description=f"Train V, the ConvVAE, on frames. Reads: --store (one or more). {RAY_TRAIN_OUTPUTS}. "
        "Time: tiny about 20 s; small about 10 min on 2 CPUs (2,000 steps); paper: GPU hours (plus 30 s Ray start-up).",
    )
    _add_store_argument(parser)
    add_training_arguments(parser)


def run_train_vae(args: argparse.Namespace) -> None:
    from worldmodel.train.vae import train_vae

    target = train_vae(args.store, launch_options(args), preset=args.preset, max_steps=args.max_steps, seed=args.seed)
    print_run(target, args.out)


def add_train_mdnrnn(models: Subparsers) -> None:
    parser = add_command(
        models, "mdnrnn", run_train_mdnrnn,
        help="train M, the MDN-RNN, on V's latents",
        description="Train M, the MDN-RNN, on V's latents. Reads: --store (one or more) and --vae. "
        f"{RAY_TRAIN_OUTPUTS}; and STORE.latents.zarr beside each store (a cache). "
        "Time: tiny about 25 s; small about 5 min on 2 CPUs; paper: GPU hours (plus 30 s Ray start-up).",
    )
    _add_store_argument(parser)
    parser.add_argument("--vae", required=True, help="the `train vae` run directory")
    parser.add_argument("--predict-delta", action="store_true",
                        help="predict z(t+1) - z(t) rather than z(t+1) (not in the paper; see MDNRNNConfig)")
    add_training_arguments(parser)


def run_train_mdnrnn(args: argparse.Namespace) -> None:
    from worldmodel.models.io import load_pretrained
    from worldmodel.train.mdnrnn import train_mdnrnn

    vae_dir = model_dir(args.vae)
    try:
        load_pretrained(vae_dir, expected="ConvVAE")  # a wrong directory fails here, before Ray starts
    except ValueError as err:
        raise CliError(f"--vae {args.vae}: {err}") from err
    target = train_mdnrnn(
        args.store, vae_dir, launch_options(args),
        preset=args.preset, max_steps=args.max_steps, seed=args.seed, predict_delta=args.predict_delta,
    )
    print_run(target, args.out)


def add_train_diffusion(models: Subparsers) -> None:
    parser = add_command(
        models, "diffusion", run_train_diffusion,
        help="train the diffusion backbone (DIAMOND-style UNet denoiser + reward head) on frames",
        description="Train the diffusion backbone (DIAMOND-style UNet denoiser + reward head) on frames. Reads: "
        f"--store (one or more). {RAY_TRAIN_OUTPUTS}; model/ holds the UNet in diffusers format. Time: tiny about "
        "30-60 s on 2 idle CPUs (30 steps); small about 1-2 h (2,000 steps); paper (DIAMOND sizes): GPU days "
        "(plus 30 s Ray start-up).",
    )
    _add_store_argument(parser)
    parser.add_argument("--context-length", type=positive_int, default=None, help="L, frames the denoiser sees (default 4)")
    add_training_arguments(parser)


def run_train_diffusion(args: argparse.Namespace) -> None:
    from worldmodel.train.diffusion import train_diffusion

    target = train_diffusion(
        args.store, launch_options(args), preset=args.preset, max_steps=args.max_steps, seed=args.seed,
        context_length=args.context_length,
    )
    print_run(target, args.out)


def launch_options(args: argparse.Namespace):
    from worldmodel.train.launcher import LaunchOptions

    return LaunchOptions(out=args.out, workers=args.workers, gpus_per_worker=args.gpus_per_worker, resume=args.resume)


def print_run(target: Path, out: str) -> None:
    print(f"model: {target}\nloss curve: {os.path.join(out, 'loss.png')}\nmetrics: {os.path.join(out, 'metrics.csv')}")


# -- C with CMA-ES, and RLlib: agents in the dream ------------------------------------------------------


def add_train_controller(models: Subparsers) -> None:
    parser = add_command(
        models, "controller", run_train_controller,
        help="evolve C with CMA-ES inside the dream",
        description="CMA-ES evolves the controller in the bundle's dream; each generation is one batched dream "
        "of population x rollouts envs (latent observations). Reads: --bundle. Writes: --out (cmaes.csv, "
        "cmaes.png, controller/) and controller.safetensors into the bundle. Time: tiny seconds; small a few "
        "minutes on 2 CPUs; paper: hours (2,000 generations in the paper).",
    )
    parser.add_argument("--bundle", required=True)
    add_training_arguments(parser, CMAES_FLAGS)
    parser.add_argument("--population", type=positive_int, default=None, help="candidates per generation")
    parser.add_argument("--rollouts", type=positive_int, default=None, help="dreams per candidate")
    parser.add_argument("--temperature", type=positive_float, default=None, help="tau while dreaming (paper: 1.15)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="steps per dream rollout")


def run_train_controller(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from agents.cmaes import PRESETS, train_controller

    chosen = {
        "generations": args.generations, "population": args.population, "rollouts": args.rollouts,
        "temperature": args.temperature, "max_steps": args.max_steps, "seed": args.seed, "workers": args.workers,
        "gpus_per_worker": args.gpus_per_worker,
    }
    config = replace(PRESETS[args.preset], **{k: v for k, v in chosen.items() if v is not None})
    try:
        result = train_controller(args.bundle, args.out, config, resume=args.resume)
    except FileExistsError as err:  # an earlier run in --out, and no --resume
        raise CliError(str(err)) from err
    print(f"best return in the dream: {result['best_dream_return']:.2f} after {result['generations']} generations")
    print(f"controller saved into {args.bundle}; curve: {result['curve']}")


def add_train_rllib(models: Subparsers) -> None:
    parser = add_command(
        models, "rllib", run_train_rllib,
        help="train an RLlib policy (PPO) in the dream, in-process or through the gRPC service",
        description="RLlib's new API stack on `worldmodel/Dream-v0` (latent observations), or with --remote on "
        "the served model through `worldmodel/Remote-v0`. Reads: --bundle (and the server). Writes: --out "
        "(rllib.json, policy.safetensors, RLlib's checkpoints/). Time: about 5-15 s per 2,000-step iteration on "
        "2 CPUs: tiny (1 iteration of 200 steps) about 30 s with RLlib's start-up; small (10 of 2,000) a few "
        "minutes; paper (200 of 4,000): hours on CPUs.",
    )
    parser.add_argument("--bundle", required=True)
    add_training_arguments(parser, RLLIB_FLAGS)
    parser.add_argument("--algo", default="PPO", choices=["PPO"])
    parser.add_argument("--remote", default=None, metavar="ADDRESS", help="train through `worldmodel serve` at ADDRESS")
    parser.add_argument("--model-name", default=None, help="the served model's name (default: the bundle directory's)")
    parser.add_argument("--temperature", type=positive_float, default=1.0)
    parser.add_argument("--max-episode-steps", type=positive_int, default=1000)
    parser.add_argument("--train-batch-size", type=positive_int, default=None, help="env steps per iteration (default: the preset's)")


def run_train_rllib(args: argparse.Namespace) -> None:
    from agents.rllib import train_rllib
    from worldmodel.bundle import read_bundle_config

    read_bundle_config(args.bundle)  # a missing or broken bundle is one line here, not an RLlib env-runner failure
    result = train_rllib(
        args.bundle, args.out, algo=args.algo, preset=args.preset, iterations=args.iterations, remote=args.remote,
        model_name=args.model_name, temperature=args.temperature, max_episode_steps=args.max_episode_steps,
        train_batch_size=args.train_batch_size, workers=args.workers, gpus=args.gpus_per_worker,
        resume=args.resume, seed=args.seed,
    )
    last = result["iterations"][-1]
    print(f"{len(result['iterations'])} iterations; last episode return mean in the dream: "
          f"{last['episode_return_mean']:.2f}\npolicy: {result['policy']}")


__all__ = ["add_train_command"]
