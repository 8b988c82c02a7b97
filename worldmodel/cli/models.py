"""`worldmodel bundle` and `worldmodel eval-model`: trained models become a bundle, and are scored."""

from __future__ import annotations

import argparse
import json

from worldmodel.cli.common import CliError, Subparsers, add_command, model_dir, positive_int, seed_int


def add_bundle_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "bundle", run_bundle,
        help="assemble a simulator bundle from trained models",
        description="Reads: --vae and --mdnrnn run directories and/or --diffusion, --store (for start contexts). "
        "Writes: --out (config.json, safetensors, start contexts; diffusion/ in diffusers format). --diffusion "
        "alone adds that backend to the bundle at --out, or makes a diffusion-only bundle; a backbone trained on "
        "several envs simulates --env (default: its first), and without --store its start contexts come from that "
        "env's training stores. Time: seconds.",
    )
    parser.add_argument("--vae", default=None, help="the `train vae` run (with --mdnrnn: the V-M-C backend)")
    parser.add_argument("--mdnrnn", default=None, help="the `train mdnrnn` run")
    parser.add_argument("--diffusion", default=None, metavar="RUN",
                        help="the `train diffusion` run: added to the bundle at --out (made if absent)")
    parser.add_argument("--store", action="append", default=None,
                        help="episodes for the start contexts (optional with --diffusion alone)")
    parser.add_argument("--env", default=None, help="--diffusion of several envs: the env the bundle simulates")
    parser.add_argument("--out", required=True)
    parser.add_argument("--contexts", type=positive_int, default=64, help="real start contexts to carry")
    parser.add_argument("--context-length", type=positive_int, default=4, help="frames per start context (L)")
    parser.add_argument("--seed", type=seed_int, default=0)


def run_bundle(args: argparse.Namespace) -> None:
    from worldmodel.bundle import add_diffusion_to_bundle, write_vmc_bundle
    from worldmodel.models.diffusion import DIFFUSION_CONFIG_FILE

    if bool(args.vae) != bool(args.mdnrnn):
        raise CliError("give both --vae and --mdnrnn (the V-M-C backend), or neither")
    if not args.vae and not args.diffusion:
        raise CliError("nothing to bundle: give --vae and --mdnrnn, and/or --diffusion")
    if args.vae and not args.store:
        raise CliError("--vae and --mdnrnn need --store: the start contexts come from its episodes")
    if args.env is not None and not args.diffusion:
        raise CliError("--env chooses among a diffusion backbone's envs: give --diffusion")
    contexts = {"contexts": args.contexts, "context_length": args.context_length, "seed": args.seed}
    path = args.out
    if args.vae:
        path = write_vmc_bundle(args.out, model_dir(args.vae), model_dir(args.mdnrnn), args.store, **contexts)
    if args.diffusion:
        diffusion_dir = model_dir(args.diffusion, marker=DIFFUSION_CONFIG_FILE)
        path = add_diffusion_to_bundle(args.out, diffusion_dir, args.store, env=args.env, **contexts)
    print(f"bundle written to {path}")


def add_eval_model_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "eval-model", run_eval_model,
        help="score a bundle's models on held-out episodes against trivial baselines",
        description="Reads: --bundle and a held-out --store. Writes: --out/vae_reconstruction.gif and, for a "
        "bundle with the diffusion backend, --out/real_vmc_diffusion.gif when --out is given. Prints V and M "
        "against baselines and a frame-fidelity table (PSNR, SSIM via piq) at horizons 1, 4, 16 for diffusion, VMC "
        "and copy-last-frame. Time: V-M-C seconds; diffusion about a second per 64 frames at tiny size on 2 CPUs, "
        "far more at paper size.",
    )
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--store", required=True, help="held-out episode store")
    parser.add_argument("--episodes", type=positive_int, default=100, help="evaluate at most this many episodes")
    parser.add_argument("--out", default=None, help="directory for the GIFs (V reconstructions; real | VMC | diffusion dreams)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--fidelity", action="store_true",
                        help="frame fidelity table (PSNR/SSIM at horizons 1, 4, 16) even for a bundle without diffusion")
    parser.add_argument("--fidelity-episodes", type=positive_int, default=8, help="held-out episodes for the fidelity table")
    parser.add_argument("--sampling-steps", type=positive_int, default=None,
                        help="Euler steps of the diffusion backbone (default: its config's)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the dreams' sampling")


def run_eval_model(args: argparse.Namespace) -> None:
    from worldmodel.bundle import read_bundle_config
    from worldmodel.evaluate import evaluate_fidelity, evaluate_vmc, format_fidelity_table, format_vmc_report

    backends = read_bundle_config(args.bundle)["backends"]
    result = evaluate_vmc(args.bundle, args.store, max_episodes=args.episodes, out=args.out) if "vmc" in backends else {}
    if "diffusion" in backends or args.fidelity:
        result["fidelity"] = evaluate_fidelity(
            args.bundle, args.store, max_episodes=args.fidelity_episodes, out=args.out,
            sampling_steps=args.sampling_steps, seed=args.seed,
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    parts = [format_vmc_report(result)] if "vmc" in backends else []
    if "fidelity" in result:
        parts.append(format_fidelity_table(result["fidelity"]))
    print("\n\n".join(parts))


__all__ = ["add_bundle_command", "add_eval_model_command"]
