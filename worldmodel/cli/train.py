"""`worldmodel train vae|mdnrnn|diffusion|controller|loop|rllib`: one function per trainer, the shared
flags from `add_training_arguments`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from worldmodel.cli.common import (
    CliError, Subparsers, TrainingFlags, add_command, add_training_arguments, bounded_number, model_dir,
    non_negative_float, non_negative_int, positive_float, positive_int,
)

dropout_rate = bounded_number(float, 0.0, maximum=0.99)

RAY_TRAIN_OUTPUTS = "Writes: --out (metrics.csv, loss.png, model/ and Ray checkpoints)"
CMAES_FLAGS = TrainingFlags(
    length_flag="--generations", length_help="CMA-ES generations",
    workers_help="Ray workers sharing each generation", workers_default=None,
    gpus_help="GPUs per Ray worker; 0: the dreams run on the CPU",
    resume_help="continue from the last generation in --out",
)
LOOP_FLAGS = TrainingFlags(
    length_flag="--generations", length_help="CMA-ES generations a round",
    workers_help="Ray workers for collection, training and CMA-ES", workers_default=2,
    gpus_help="GPUs per Ray worker", resume_help="continue after the last finished round in --out",
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
        help="train a model on Ray (vae | mdnrnn | diffusion | controller | loop | rllib)",
        description="Train one model on Ray (embedded Ray on 127.0.0.1, or the cluster of `ray job submit`). "
        "Every trainer takes --preset tiny|small|paper, its length (--max-steps, --generations or "
        "--iterations), --workers, --gpus-per-worker, --resume, --seed and --out.",
    )
    models = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    add_train_vae(models)
    add_train_mdnrnn(models)
    add_train_diffusion(models)
    add_train_controller(models)
    add_train_loop(models)
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
    parser.add_argument("--init-from", default="", metavar="RUN",
                        help="start from this `train vae` run's weights (fine-tuning), keeping its sizes")
    add_training_arguments(parser)


def run_train_vae(args: argparse.Namespace) -> None:
    from worldmodel.train.vae import train_vae

    target = train_vae(args.store, launch_options(args), preset=args.preset, max_steps=args.max_steps, seed=args.seed,
                       init_from=args.init_from)
    print_run(target, args.out)


def add_train_mdnrnn(models: Subparsers) -> None:
    parser = add_command(
        models, "mdnrnn", run_train_mdnrnn,
        help="train M, the MDN-RNN, on V's latents",
        description="Train M, the MDN-RNN, on V's latents. Reads: --store (one or more) and --vae. "
        f"{RAY_TRAIN_OUTPUTS}; and V's latents of each store under --out/latents (a cache). "
        "Time: tiny about 25 s; small about 5 min on 2 CPUs; paper: GPU hours (plus 30 s Ray start-up).",
    )
    _add_store_argument(parser)
    parser.add_argument("--vae", required=True, help="the `train vae` run directory")
    parser.add_argument("--predict-delta", action="store_true",
                        help="predict z(t+1) - z(t) rather than z(t+1) (not in the paper; see MDNRNNConfig)")
    parser.add_argument("--reward-from-next", action="store_true",
                        help="the reward head reads the next latent and vector, so the dream pays for what it shows")
    parser.add_argument("--dropout", type=dropout_rate, default=None, help="dropout on M's input and LSTM output")
    parser.add_argument("--dream-dropout", action="store_true",
                        help="keep that dropout on while dreaming (Dropout's Dream Land)")
    parser.add_argument("--window", type=positive_int, default=None,
                        help="steps per training sequence (default: the preset's; the dream's horizon is the guide)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="sequences per step (default: the preset's)")
    parser.add_argument("--init-from", default="", metavar="RUN",
                        help="start from this `train mdnrnn` run's weights (fine-tuning), keeping its sizes")
    add_training_arguments(parser)


def run_train_mdnrnn(args: argparse.Namespace) -> None:
    from worldmodel.models.io import load_pretrained
    from worldmodel.train.mdnrnn import train_mdnrnn

    vae_dir = model_dir(args.vae)
    try:
        load_pretrained(vae_dir, expected="ConvVAE")  # a wrong directory fails here, before Ray starts
    except ValueError as err:
        raise CliError(f"--vae {args.vae}: {err}") from err
    options = {"predict_delta": args.predict_delta, "reward_from_next": args.reward_from_next,
               "dream_dropout": args.dream_dropout}
    if args.dropout is not None:
        options["dropout"] = args.dropout
    target = train_mdnrnn(
        args.store, vae_dir, launch_options(args), preset=args.preset, max_steps=args.max_steps, seed=args.seed,
        window=args.window, batch_size=args.batch_size, init_from=args.init_from, **options,
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
    parser.add_argument("--store-weights", default=None, metavar="W1,W2,...",
                        help="each --store's share of a batch, in their order (default: in proportion to their steps); "
                        "stores of different envs train one backbone, each env with its own embedding and head")
    parser.add_argument("--context-length", type=positive_int, default=None, help="L, frames the denoiser sees (default 4)")
    add_training_arguments(parser)


def run_train_diffusion(args: argparse.Namespace) -> None:
    from worldmodel.train.diffusion import train_diffusion

    weights = None
    if args.store_weights is not None:
        try:
            weights = [float(w) for w in args.store_weights.split(",")]
        except ValueError:
            raise CliError(f"--store-weights must be numbers separated by commas, got {args.store_weights!r}") from None
    target = train_diffusion(
        args.store, launch_options(args), preset=args.preset, max_steps=args.max_steps, seed=args.seed,
        context_length=args.context_length, store_weights=weights,
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
        help="evolve C with CMA-ES, in the dream (default) or in the real env (--in real)",
        description="CMA-ES evolves the controller C on V and M's features. --in dream: each generation is one "
        "batched dream of population x rollouts envs (latent observations). --in real: the paper's procedure for "
        "CarRacing: each candidate drives the bundle's REAL source env, rollouts run in Ray workers that each "
        "hold --envs-per-worker envs and V and M; --patience N ends a rollout after N steps without a positive "
        "reward (off by default). Reads: --bundle. Writes: --out (cmaes.csv, cmaes.png, controller/) and "
        "controller.safetensors into the bundle. Time: dream: tiny seconds, small a few minutes on 2 CPUs, paper "
        "hours; real: tiny seconds (CartPole), small about 30-45 minutes on 2 CPUs (CarRacing), paper: a cluster.",
    )
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--in", dest="where", default="dream", choices=("dream", "real"),
                        help="where candidates are judged (default: dream)")
    add_training_arguments(parser, CMAES_FLAGS)
    parser.add_argument("--population", type=positive_int, default=None, help="candidates per generation")
    parser.add_argument("--rollouts", type=positive_int, default=None, help="rollouts per candidate")
    parser.add_argument("--temperature", type=positive_float, default=None, help="tau while dreaming (paper: 1.15)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="steps per rollout")
    parser.add_argument("--envs-per-worker", type=positive_int, default=None, help="real envs a worker steps as a batch")
    parser.add_argument("--patience", type=non_negative_int, default=None,
                        help="--in real: end a rollout after this many steps without a positive reward (0: never)")
    parser.add_argument("--start", default=None, choices=("data", "zero", "controller"),
                        help="the first CMA-ES mean: zeros (the paper's; the dream presets'), the data's mean action "
                        "(the real presets'), or the bundle's C")


def run_train_controller(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from agents.cmaes import preset, train_controller

    chosen = {
        "generations": args.generations, "population": args.population, "rollouts": args.rollouts,
        "temperature": args.temperature, "max_steps": args.max_steps, "seed": args.seed, "workers": args.workers,
        "gpus_per_worker": args.gpus_per_worker, "envs_per_worker": args.envs_per_worker, "patience": args.patience,
        "start": args.start,
    }
    config = replace(preset(args.where, args.preset), **{k: v for k, v in chosen.items() if v is not None})
    try:
        result = train_controller(args.bundle, args.out, config, resume=args.resume)
    except FileExistsError as err:  # an earlier run in --out, and no --resume
        raise CliError(str(err)) from err
    print(f"best return in the {args.where}: {result[f'best_{args.where}_return']:.2f} "
          f"after {result['generations']} generations")
    print(f"controller saved into {args.bundle}; curve: {result['curve']}")


def add_train_loop(models: Subparsers) -> None:
    parser = add_command(
        models, "loop", run_train_loop,
        help="rounds of: collect with C -> fine-tune V and M -> evolve C in the dream -> judge in the real env",
        description="Dreams that transfer: each round collects real episodes with the current controller (plus "
        "exploration noise, and a share by the store's collection policy) into new parts of --store, fine-tunes V "
        "and M from their previous weights, evolves C in the new dream from the previous C, and judges it on "
        "held-out real episodes. Reads: --bundle (left as it is) and --store (grown). Writes: --out (round_<r>/, "
        "rounds.csv, rounds.png, bundle/: the last round's). Time: a few minutes a round on 2 CPUs at small.",
    )
    parser.add_argument("--store", required=True, help="the episode store the bundle was trained on (grown)")
    parser.add_argument("--bundle", required=True, help="the bundle to start from")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds to run (default: 3)")
    add_training_arguments(parser, LOOP_FLAGS)
    parser.add_argument("--episodes", type=positive_int, default=16, help="real episodes collected a round")
    parser.add_argument("--noise", type=non_negative_float, default=0.1, help="exploration noise on C's actions")
    parser.add_argument("--vae-steps", type=non_negative_int, default=300, help="V's fine-tuning steps a round (0: keep V)")
    parser.add_argument("--mdnrnn-steps", type=positive_int, default=600, help="M's fine-tuning steps a round")
    parser.add_argument("--judge-episodes", type=positive_int, default=5, help="held-out real episodes judging each round")


def run_train_loop(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from agents.loop import LoopConfig, run_loop

    base = LoopConfig()
    cmaes = replace(base.cmaes, generations=args.generations or base.cmaes.generations)
    config = LoopConfig(rounds=args.rounds, episodes=args.episodes, noise=args.noise, vae_steps=args.vae_steps,
                        mdnrnn_steps=args.mdnrnn_steps, preset=args.preset, cmaes=cmaes,
                        judge_episodes=args.judge_episodes, workers=args.workers, seed=args.seed)
    try:
        final = run_loop(args.store, args.bundle, args.out, config, resume=args.resume)
    except FileExistsError as err:
        raise CliError(str(err)) from err
    print(f"rounds: {os.path.join(args.out, 'rounds.csv')} ({os.path.join(args.out, 'rounds.png')})")
    print(f"bundle: {final}")


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
