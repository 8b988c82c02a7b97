"""`worldmodel collect` and `worldmodel info`: episode stores."""

from __future__ import annotations

import argparse
import json
import os
import sys

from worldmodel.cli.common import (
    CliError, Subparsers, add_command, check_env_id, non_negative_int, positive_int, seed_int,
)


def add_collect_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "collect", run_collect,
        help="roll a real env out into an episode store",
        description=(
            "Run a collection policy in a real gymnasium env and append the episodes to a zarr "
            "episode store. Reads: nothing. Writes: --out (created, or appended to when its spec "
            "matches), one part per worker. Any gymnasium env works, your own too: --env mypkg.envs:MyEnv-v0 "
            "imports mypkg.envs (from the working directory or PYTHONPATH; Ray workers get the same path) and "
            "makes MyEnv-v0 with --env-kwargs; a dict observation needs --image-key and/or --vector-keys. "
            "All flags are checked, by making the env once, before Ray starts or anything is written. "
            "Time: CarRacing-v3 runs about 60-80 steps/s per worker, CartPole about 1,000, ALE about 1,000 "
            "(frame skip 4); add 5-8 s to start Ray."
        ),
    )
    parser.add_argument("--env", required=True,
                        help="CarRacing-v3, CartPole-v1, ALE/<Game>-v5, any env with an image observation or "
                        "rgb_array rendering, or your own as module:EnvId")
    parser.add_argument("--env-kwargs", default=None, metavar="JSON",
                        help="a JSON object of keyword arguments for gymnasium.make (your env's constructor), "
                        "e.g. '{\"size\": 5}'; recorded in each part's attrs")
    parser.add_argument("--image-key", default=None, metavar="KEY",
                        help="dict observations: the entry that is the image, (H, W, 3) uint8, resized to 64x64 "
                        "(default: the env's rgb_array render)")
    parser.add_argument("--vector-keys", default=None, metavar="KEY[,KEY...]",
                        help="dict observations: the Box entries that make the vector, comma-separated, flattened "
                        "and concatenated as float32 (named KEY, or KEY_0, KEY_1, ...)")
    parser.add_argument("--episodes", type=positive_int, required=True, help="episodes to collect")
    parser.add_argument("--max-steps", type=positive_int, default=1000, help="steps per episode at most (truncated there)")
    parser.add_argument("--workers", type=non_negative_int, default=1, help="Ray tasks, one part each (0: in this process, no Ray)")
    parser.add_argument("--policy", default="auto",
                        help="random | random-walk | auto (random-walk for CarRacing) | module:callable, your own: "
                        "called as callable(observation, rng) with the recorded observation and a numpy Generator "
                        "seeded from each episode's seed, it returns the action")
    parser.add_argument("--seed", type=seed_int, default=None, help="seed for the episode seeds (default: fresh entropy)")
    parser.add_argument("--out", required=True, help="store path or fsspec URL")


def run_collect(args: argparse.Namespace) -> None:
    from envs.collect import collect

    # As `python -m` does: `--env mymodule:MyEnv-v0` and `--policy mymodule:act` find ./mymodule.py.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    options = source_options(args)
    check_policy(args.policy)
    check_env_id(args.env, options=options)
    summary = collect(
        args.env, args.out, episodes=args.episodes, max_steps=args.max_steps, workers=args.workers,
        policy=args.policy, seed=args.seed, source_options=options,
    )
    print(
        f"collected {summary.episodes} episodes, {summary.steps} steps in {summary.seconds:.1f} s "
        f"({summary.steps_per_second:.0f} steps/s, {len(summary.parts)} parts) into {summary.store}"
    )
    print_store_summary(args.out, as_json=False)


def source_options(args: argparse.Namespace):
    """--env-kwargs, --image-key and --vector-keys as envs.sources.SourceOptions, or a CliError."""
    from envs.sources import SourceOptions

    env_kwargs = {}
    if args.env_kwargs is not None:
        try:
            env_kwargs = json.loads(args.env_kwargs)
        except json.JSONDecodeError as err:
            raise CliError(f"--env-kwargs is not JSON ({err}): {args.env_kwargs!r}") from None
        if not isinstance(env_kwargs, dict):
            raise CliError(f"--env-kwargs must be a JSON object of keyword arguments, got {args.env_kwargs!r}")
    vector_keys = tuple(key.strip() for key in (args.vector_keys or "").split(",") if key.strip())
    if args.vector_keys is not None and not vector_keys:
        raise CliError(f"--vector-keys names no key: {args.vector_keys!r}")
    if args.image_key is not None and not args.image_key.strip():
        raise CliError("--image-key is empty")
    return SourceOptions(env_kwargs=env_kwargs, image_key=args.image_key, vector_keys=vector_keys)


def check_policy(policy: str) -> None:
    """CliError unless --policy is a built-in policy's name or a user's module:callable that imports."""
    from envs.policies import POLICY_NAMES, load_policy_callable

    if ":" in policy:
        load_policy_callable(policy)  # its UserError names the policy and what is wrong with it
    elif policy not in POLICY_NAMES:
        raise CliError(f"unknown --policy {policy!r}; choose one of {', '.join(POLICY_NAMES)}, or module:callable")


def add_info_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "info", run_info,
        help="summarize an episode store or a bundle",
        description="Reads: STORE or BUNDLE. Writes: nothing. A store: episodes, steps, spec, bytes on disk, "
        "compression ratio and per-episode return statistics. A bundle: its spec, backends, start contexts, the "
        "envs its diffusion backbone was pretrained on and, for an adapted one, its base and method. "
        "Time: about a second.",
    )
    parser.add_argument("store", metavar="STORE|BUNDLE", help="store path or fsspec URL, or a bundle directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_info(args: argparse.Namespace) -> None:
    from worldmodel.bundle import CONFIG_FILE, bundle_summary, format_bundle_summary

    if "://" not in args.store and os.path.isfile(os.path.join(args.store, CONFIG_FILE)):
        summary = bundle_summary(args.store)
        print(json.dumps(summary, indent=2) if args.json else format_bundle_summary(summary))
        return
    print_store_summary(args.store, as_json=args.json)


def print_store_summary(location: str, as_json: bool) -> None:
    from worldmodel.data import EpisodeStore
    from worldmodel.data.summary import format_summary, summarize

    summary = summarize(EpisodeStore.open(location))
    print(json.dumps(summary, indent=2, default=float) if as_json else format_summary(summary))


__all__ = ["add_collect_command", "add_info_command"]
