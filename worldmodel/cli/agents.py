"""`worldmodel eval` and `worldmodel demo`: agents judged in the real env, and the whole job end to end."""

from __future__ import annotations

import argparse
import json
import os

from worldmodel.cli.common import CliError, Subparsers, add_command, check_env_id, positive_int, seed_int

DEMO_PRESETS = ("tiny", "small")


def add_eval_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "eval", run_eval,
        help="judge the bundle's controller (and random) in the REAL env",
        description="Runs the policy in the real env through the collection preprocessing (V encodes real "
        "frames, M's state follows the real episode), beside the random policy on the same seeds. Reads: "
        "--bundle (and --rllib). Writes: --out/eval.json and --out/real_vs_dream.gif when --out is given. "
        "Time: CarRacing about 15 s per 1,000-step episode.",
    )
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--env", default=None, help="real env id (default: the bundle's)")
    parser.add_argument("--episodes", type=positive_int, default=10)
    parser.add_argument("--policy", default="controller", choices=["controller", "rllib", "random"])
    parser.add_argument("--rllib", default=None, help="the `train rllib` output directory (with --policy rllib)")
    parser.add_argument("--max-steps", type=positive_int, default=1000)
    parser.add_argument("--seed", type=seed_int, default=10_000, help="first episode seed")
    parser.add_argument("--out", default=None)


def run_eval(args: argparse.Namespace) -> None:
    from agents.evaluate import evaluate, format_results
    from worldmodel.bundle import read_bundle_config

    if args.policy == "rllib" and args.rllib is None:
        raise CliError("--policy rllib needs --rllib RUN (a `train rllib` output directory)")
    env_source = "--env"
    if args.env is None:  # the bundle's own env must be real, too: one recorded from an import or a test is not
        args.env, env_source = read_bundle_config(args.bundle)["spec"].env_id, "the bundle's env"
        if not args.env:
            raise CliError(f"bundle {args.bundle} names no env: give --env")
    check_env_id(args.env, env_source)
    results = []
    for policy in dict.fromkeys([args.policy, "random"]):
        gif = os.path.join(args.out, "real_vs_dream.gif") if args.out and policy != "random" else None
        results.append(evaluate(args.bundle, args.env, args.episodes, policy, seed=args.seed, max_steps=args.max_steps,
                                gif=gif, rllib_run=args.rllib))
    print(format_results(results, args.env))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        summary = {r.policy: {"mean": r.mean, "std": r.std, "returns": r.returns, "seeds": r.seeds} for r in results}
        with open(os.path.join(args.out, "eval.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"written: {os.path.join(args.out, 'eval.json')}")


def add_demo_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "demo", run_demo_command,
        help="the whole job end to end: collect, train, dream, judge, serve, report",
        description="On CarRacing-v3: collect with Ray workers, train V and M with Ray Train, evolve C with CMA-ES "
        "in the dream, judge C and random in the real env, serve the bundle over gRPC and drive a remote episode, "
        "and write --out/report.md and report.html. Reads: nothing. Writes: --out. Time: --preset small about "
        "10-15 minutes on 2 CPUs; --preset tiny (CartPole, tiny sizes, what the tests run) about 2 minutes.",
    )
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--preset", default="small", choices=DEMO_PRESETS,
                        help="small: CarRacing-v3 at CPU sizes (default); tiny: CartPole and tiny sizes")
    parser.add_argument("--tiny", dest="preset", action="store_const", const="tiny",
                        help=argparse.SUPPRESS)  # the old spelling of --preset tiny, kept for one release
    parser.add_argument("--resume", action="store_true", help="continue from the last finished stage")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of every stage (default: 0)")


def run_demo_command(args: argparse.Namespace) -> None:
    from agents.demo import StageError, run_demo

    try:
        report = run_demo(args.out, preset=args.preset, resume=args.resume, seed=args.seed)
    except StageError as err:  # says which stage failed and how to resume: one line, by design of the demo
        raise CliError(str(err)) from err
    print(f"\nreport: {report}\n        {report.with_suffix('.html')}")


__all__ = ["add_demo_command", "add_eval_command"]
