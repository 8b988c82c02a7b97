"""`worldmodel`: the command line, the composition root of the project.

Subcommands import what they need (envs/, agents/, services/, ray, torch)
inside their own function, so `worldmodel --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def cmd_collect(args: argparse.Namespace) -> None:
    from envs.collect import collect

    summary = collect(
        args.env,
        args.out,
        episodes=args.episodes,
        max_steps=args.max_steps,
        workers=args.workers,
        policy=args.policy,
        seed=args.seed,
    )
    print(
        f"collected {summary.episodes} episodes, {summary.steps} steps in {summary.seconds:.1f} s "
        f"({summary.steps_per_second:.0f} steps/s, {len(summary.parts)} parts) into {summary.store}"
    )
    _print_info(args.out, as_json=False)


def cmd_info(args: argparse.Namespace) -> None:
    _print_info(args.store, as_json=args.json)


def _print_info(location: str, as_json: bool) -> None:
    from worldmodel.data import EpisodeStore
    from worldmodel.data.summary import format_summary, summarize

    summary = summarize(EpisodeStore.open(location))
    print(json.dumps(summary, indent=2, default=float) if as_json else format_summary(summary))


def cmd_demo(args: argparse.Namespace) -> None:
    # The full demo (train, dream, serve, report) builds on later stages;
    # for now it shows the foundation: real collection into a store.
    from envs.collect import collect

    out = os.path.join(args.out, "store.zarr")
    summary = collect("CarRacing-v3", out, episodes=args.episodes, max_steps=args.max_steps, workers=args.workers)
    print(f"collected {summary.steps} steps in {summary.seconds:.1f} s")
    _print_info(out, as_json=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldmodel",
        description="Learn simulators from recorded episodes and serve them to agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "collect",
        help="roll a real env out into an episode store",
        description=(
            "Run a collection policy in a real gymnasium env and append the episodes to a zarr "
            "episode store. Reads: nothing. Writes: --out (created, or appended to when its spec "
            "matches), one part per worker. Time: CarRacing-v3 runs about 60-80 steps/s per worker, "
            "CartPole about 1,000, ALE about 1,000 (frame skip 4); add 5-8 s to start Ray."
        ),
    )
    p.add_argument("--env", required=True, help="CarRacing-v3, CartPole-v1, ALE/<Game>-v5, or any env with rgb_array rendering")
    p.add_argument("--episodes", type=int, required=True, help="episodes to collect")
    p.add_argument("--max-steps", type=int, default=1000, help="steps per episode at most (truncated there)")
    p.add_argument("--workers", type=int, default=1, help="Ray tasks, one part each (0: in this process, no Ray)")
    p.add_argument("--policy", default="auto", help="random | random-walk | auto (random-walk for CarRacing)")
    p.add_argument("--seed", type=int, default=None, help="seed for the episode seeds (default: fresh entropy)")
    p.add_argument("--out", required=True, help="store path or fsspec URL")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser(
        "info",
        help="summarize an episode store",
        description="Reads: STORE. Writes: nothing. Prints episodes, steps, spec, bytes on disk, "
        "compression ratio and per-episode return statistics. Time: about a second.",
    )
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "demo",
        help="the system end to end on CarRacing-v3",
        description="Reads: nothing. Writes: --out. Currently collects CarRacing-v3 episodes "
        "with Ray workers and prints the store summary (about a minute).",
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from worldmodel.data import StoreError

    try:
        args.func(args)
    except (CliError, StoreError, ValueError, FileNotFoundError) as err:
        print(f"worldmodel {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
