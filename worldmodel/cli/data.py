"""`worldmodel collect` and `worldmodel info`: episode stores."""

from __future__ import annotations

import argparse
import json

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
            "matches), one part per worker. Time: CarRacing-v3 runs about 60-80 steps/s per worker, "
            "CartPole about 1,000, ALE about 1,000 (frame skip 4); add 5-8 s to start Ray."
        ),
    )
    parser.add_argument("--env", required=True, help="CarRacing-v3, CartPole-v1, ALE/<Game>-v5, or any env with rgb_array rendering")
    parser.add_argument("--episodes", type=positive_int, required=True, help="episodes to collect")
    parser.add_argument("--max-steps", type=positive_int, default=1000, help="steps per episode at most (truncated there)")
    parser.add_argument("--workers", type=non_negative_int, default=1, help="Ray tasks, one part each (0: in this process, no Ray)")
    parser.add_argument("--policy", default="auto", help="random | random-walk | auto (random-walk for CarRacing)")
    parser.add_argument("--seed", type=seed_int, default=None, help="seed for the episode seeds (default: fresh entropy)")
    parser.add_argument("--out", required=True, help="store path or fsspec URL")


def run_collect(args: argparse.Namespace) -> None:
    from envs.collect import collect
    from envs.policies import POLICY_NAMES

    if args.policy not in POLICY_NAMES:
        raise CliError(f"unknown --policy {args.policy!r}; choose one of {', '.join(POLICY_NAMES)}")
    check_env_id(args.env)
    summary = collect(
        args.env, args.out, episodes=args.episodes, max_steps=args.max_steps, workers=args.workers,
        policy=args.policy, seed=args.seed,
    )
    print(
        f"collected {summary.episodes} episodes, {summary.steps} steps in {summary.seconds:.1f} s "
        f"({summary.steps_per_second:.0f} steps/s, {len(summary.parts)} parts) into {summary.store}"
    )
    print_store_summary(args.out, as_json=False)


def add_info_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "info", run_info,
        help="summarize an episode store",
        description="Reads: STORE. Writes: nothing. Prints episodes, steps, spec, bytes on disk, "
        "compression ratio and per-episode return statistics. Time: about a second.",
    )
    parser.add_argument("store", help="store path or fsspec URL")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run_info(args: argparse.Namespace) -> None:
    print_store_summary(args.store, as_json=args.json)


def print_store_summary(location: str, as_json: bool) -> None:
    from worldmodel.data import EpisodeStore
    from worldmodel.data.summary import format_summary, summarize

    summary = summarize(EpisodeStore.open(location))
    print(json.dumps(summary, indent=2, default=float) if as_json else format_summary(summary))


__all__ = ["add_collect_command", "add_info_command"]
