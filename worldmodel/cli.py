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


def _launch_options(args: argparse.Namespace):
    from worldmodel.train.launcher import LaunchOptions

    return LaunchOptions(out=args.out, workers=args.workers, gpus_per_worker=args.gpus_per_worker, resume=args.resume)


def cmd_train(args: argparse.Namespace) -> None:
    from worldmodel.train.launcher import TrainingError

    try:
        if args.model == "vae":
            from worldmodel.train.vae import train_vae

            target = train_vae(args.store, _launch_options(args), preset=args.preset, max_steps=args.max_steps, seed=args.seed)
        elif args.model == "mdnrnn":
            from worldmodel.train.mdnrnn import train_mdnrnn

            if not args.vae:
                raise CliError("train mdnrnn needs --vae RUN (a `train vae` output directory)")
            target = train_mdnrnn(
                args.store, _model_dir(args.vae), _launch_options(args),
                preset=args.preset, max_steps=args.max_steps, seed=args.seed, predict_delta=args.predict_delta,
            )
        elif args.model == "diffusion":
            from worldmodel.train.diffusion import train_diffusion

            target = train_diffusion(
                args.store, _launch_options(args), preset=args.preset, max_steps=args.max_steps, seed=args.seed,
                context_length=args.context_length,
            )
        elif args.model == "controller":
            _train_controller(args)
            return
        elif args.model == "rllib":
            from agents.rllib import train_rllib

            result = train_rllib(
                args.bundle, args.out, algo=args.algo, iterations=args.iterations, remote=args.remote,
                model_name=args.model_name, temperature=args.temperature, max_episode_steps=args.max_episode_steps,
                train_batch_size=args.train_batch_size, seed=args.seed,
            )
            last = result["iterations"][-1]
            print(f"{len(result['iterations'])} iterations; last episode return mean in the dream: "
                  f"{last['episode_return_mean']:.2f}\npolicy: {result['policy']}")
            return
        else:
            raise CliError(f"unknown model {args.model!r}")
    except TrainingError as err:
        raise CliError(str(err)) from err
    print(f"model: {target}\nloss curve: {os.path.join(args.out, 'loss.png')}\nmetrics: {os.path.join(args.out, 'metrics.csv')}")


def _train_controller(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from agents.cmaes import PRESETS, train_controller

    overrides = {
        k: v for k, v in {
            "generations": args.generations, "population": args.population, "rollouts": args.rollouts,
            "temperature": args.temperature, "max_steps": args.max_steps, "seed": args.seed, "workers": args.workers,
        }.items() if v is not None
    }
    config = replace(PRESETS[args.preset], **overrides)
    try:
        result = train_controller(args.bundle, args.out, config, resume=args.resume)
    except FileExistsError as err:
        raise CliError(str(err)) from err
    print(f"best return in the dream: {result['best_dream_return']:.2f} after {result['generations']} generations")
    print(f"controller saved into {args.bundle}; curve: {result['curve']}")


def cmd_eval(args: argparse.Namespace) -> None:
    from agents.evaluate import evaluate, format_results

    results = []
    for policy in dict.fromkeys([args.policy, "random"]):
        gif = os.path.join(args.out, "real_vs_dream.gif") if args.out and policy != "random" else None
        results.append(evaluate(args.bundle, args.env, args.episodes, policy, seed=args.seed, max_steps=args.max_steps,
                                gif=gif, rllib_run=args.rllib))
    env_id = args.env or "the bundle's env"
    print(format_results(results, env_id))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        summary = {r.policy: {"mean": r.mean, "std": r.std, "returns": r.returns, "seeds": r.seeds} for r in results}
        with open(os.path.join(args.out, "eval.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"written: {os.path.join(args.out, 'eval.json')}")


def _model_dir(run: str) -> str:
    """A run directory or its model/ directory, whichever holds the saved model."""
    candidate = os.path.join(run, "model")
    return candidate if os.path.isfile(os.path.join(candidate, "config.json")) else run


def cmd_bundle(args: argparse.Namespace) -> None:
    from worldmodel.bundle import add_diffusion_to_bundle, write_vmc_bundle

    if bool(args.vae) != bool(args.mdnrnn):
        raise CliError("give both --vae and --mdnrnn (the V-M-C backend), or neither")
    if not args.vae and not args.diffusion:
        raise CliError("nothing to bundle: give --vae and --mdnrnn, and/or --diffusion")
    path = args.out
    if args.vae:
        path = write_vmc_bundle(
            args.out, _model_dir(args.vae), _model_dir(args.mdnrnn), args.store,
            contexts=args.contexts, context_length=args.context_length, seed=args.seed,
        )
    if args.diffusion:
        run = args.diffusion
        model_dir = os.path.join(run, "model") if os.path.isfile(os.path.join(run, "model", "diffusion.json")) else run
        path = add_diffusion_to_bundle(
            args.out, model_dir, args.store,
            contexts=args.contexts, context_length=args.context_length, seed=args.seed,
        )
    print(f"bundle written to {path}")


def cmd_eval_model(args: argparse.Namespace) -> None:
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


def cmd_serve(args: argparse.Namespace) -> None:
    import asyncio
    import logging

    from services.batcher import BatcherConfig
    from services.server import ServerConfig, parse_model_args, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        raise CliError(f"refusing to bind {args.host}: pass --allow-remote to serve beyond this machine")
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise CliError(f"--token-env {args.token_env}: that variable is empty or unset")
    config = ServerConfig(
        host=args.host, port=args.port, max_sessions=args.max_sessions, max_envs_per_session=args.max_envs,
        idle_ttl_s=args.idle_ttl, max_message_bytes=args.max_message_mb << 20, token=token,
        tls_cert=args.tls_cert, tls_key=args.tls_key, device=args.device,
        batcher=BatcherConfig(window_s=args.batch_window_ms / 1000, max_batch_envs=args.max_batch_envs,
                              enabled=not args.no_batching),
        dm_env_rpc=not args.no_dm_env_rpc,
    )

    def ready(running) -> None:
        print(f"serving on {args.host}:{running.port}", flush=True)

    asyncio.run(serve(parse_model_args(args.bundles), config, on_ready=ready))


def cmd_play(args: argparse.Namespace) -> None:
    from envs.play import play

    try:
        result = play(
            args.bundle, backend=args.backend, temperature=args.temperature, device=args.device,
            record=args.record, steps=args.steps, fps=args.fps, seed=args.seed,
        )
    except RuntimeError as err:  # no display to open a window on
        raise CliError(str(err)) from err
    print(f"played {result.steps} steps, {result.episodes} episodes ended, total reward {result.total_reward:.2f}")
    if result.record:
        print(f"recording: {result.record}")


def cmd_demo(args: argparse.Namespace) -> None:
    from agents.demo import StageError, run_demo

    try:
        report = run_demo(args.out, tiny=args.tiny, resume=args.resume)
    except StageError as err:
        raise CliError(str(err)) from err
    print(f"\nreport: {report}\n        {report.with_suffix('.html')}")


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

    train = sub.add_parser(
        "train",
        help="train a model on Ray (vae | mdnrnn | diffusion | controller | rllib)",
        description="Train one model with Ray Train (embedded Ray on 127.0.0.1, or the cluster of "
        "`ray job submit`). Writes --out: metrics.csv, loss.png, model/ and Ray checkpoints.",
    )
    models = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    times = {
        "vae": "tiny about 20 s; small about 10 min on 2 CPUs (2,000 steps); paper: GPU hours",
        "mdnrnn": "tiny about 25 s; small about 5 min on 2 CPUs; paper: GPU hours",
        "diffusion": "tiny about 30-60 s on 2 idle CPUs (30 steps); small about 1-2 h (2,000 steps); paper (DIAMOND sizes): GPU days",
    }
    for name, what in (("vae", "V, the ConvVAE, on frames"), ("mdnrnn", "M, the MDN-RNN, on V's latents"),
                       ("diffusion", "the diffusion backbone (DIAMOND-style UNet denoiser + reward head) on frames")):
        p = models.add_parser(
            name,
            help=f"train {what}",
            description=f"Train {what}. Reads: --store (one or more){' and --vae' if name == 'mdnrnn' else ''}. "
            f"Writes: --out{' and STORE.latents.zarr beside each store (a cache)' if name == 'mdnrnn' else ''}. "
            f"Time: {times[name]} (plus 30 s Ray start-up).",
        )
        p.add_argument("--store", action="append", required=True, help="episode store (repeat for several)")
        if name == "mdnrnn":
            p.add_argument("--vae", required=True, help="the `train vae` run directory")
            p.add_argument("--predict-delta", action="store_true",
                           help="predict z(t+1) - z(t) rather than z(t+1) (not in the paper; see MDNRNNConfig)")
        if name == "diffusion":
            p.add_argument("--context-length", type=int, default=None, help="L, frames the denoiser sees (default 4)")
        p.add_argument("--out", required=True, help="run directory")
        p.add_argument("--preset", default="small", choices=["tiny", "small", "paper"])
        p.add_argument("--max-steps", type=int, default=None, help="training steps (default: the preset's)")
        p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
        p.add_argument("--gpus-per-worker", type=float, default=0.0)
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=cmd_train)

    p = models.add_parser(
        "controller",
        help="evolve C with CMA-ES inside the dream",
        description="CMA-ES evolves the controller in the bundle's dream; each generation is one batched dream "
        "of population x rollouts envs (latent observations). Reads: --bundle. Writes: --out (cmaes.csv, "
        "cmaes.png, controller/) and controller.safetensors into the bundle. Time: tiny seconds; small a few "
        "minutes on 2 CPUs; paper: hours (2,000 generations in the paper).",
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "paper"])
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--population", type=int, default=None)
    p.add_argument("--rollouts", type=int, default=None, help="dreams per candidate")
    p.add_argument("--temperature", type=float, default=None, help="tau while dreaming (paper: 1.15)")
    p.add_argument("--max-steps", type=int, default=None, help="steps per dream rollout")
    p.add_argument("--workers", type=int, default=None, help="Ray workers sharing each generation")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="(dreams run on the CPU here)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last generation in --out")
    p.set_defaults(func=cmd_train)

    p = models.add_parser(
        "rllib",
        help="train an RLlib policy (PPO) in the dream, in-process or through the gRPC service",
        description="RLlib's new API stack on `worldmodel/Dream-v0` (latent observations), or with --remote on "
        "the served model through `worldmodel/Remote-v0`. Reads: --bundle (and the server). Writes: --out "
        "(rllib.json, policy.safetensors, RLlib's checkpoint/). Time: about 5-15 s per 2,000-step iteration on 2 CPUs.",
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--algo", default="PPO", choices=["PPO"])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--remote", default=None, metavar="ADDRESS", help="train through `worldmodel serve` at ADDRESS")
    p.add_argument("--model-name", default=None, help="the served model's name (default: the bundle directory's)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-episode-steps", type=int, default=1000)
    p.add_argument("--train-batch-size", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="judge the bundle's controller (and random) in the REAL env",
        description="Runs the policy in the real env through the collection preprocessing (V encodes real "
        "frames, M's state follows the real episode), beside the random policy on the same seeds. Reads: "
        "--bundle. Writes: --out/eval.json and --out/real_vs_dream.gif when --out is given. Time: CarRacing "
        "about 15 s per 1,000-step episode.",
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--env", default=None, help="real env id (default: the bundle's)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--policy", default="controller", choices=["controller", "rllib", "random"])
    p.add_argument("--rllib", default=None, help="the `train rllib` output directory (with --policy rllib)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=10_000, help="first episode seed")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "bundle",
        help="assemble a simulator bundle from trained models",
        description="Reads: --vae and --mdnrnn run directories and/or --diffusion, --store (for start contexts). "
        "Writes: --out (config.json, safetensors, start contexts; diffusion/ in diffusers format). --diffusion "
        "alone adds that backend to the bundle at --out, or makes a diffusion-only bundle. Time: seconds.",
    )
    p.add_argument("--vae", default=None, help="the `train vae` run (with --mdnrnn: the V-M-C backend)")
    p.add_argument("--mdnrnn", default=None, help="the `train mdnrnn` run")
    p.add_argument("--diffusion", default=None, metavar="RUN",
                   help="the `train diffusion` run: added to the bundle at --out (made if absent)")
    p.add_argument("--store", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--contexts", type=int, default=64, help="real start contexts to carry")
    p.add_argument("--context-length", type=int, default=4, help="frames per start context (L)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser(
        "eval-model",
        help="score a bundle's models on held-out episodes against trivial baselines",
        description="Reads: --bundle and a held-out --store. Writes: --out/vae_reconstruction.gif and, for a "
        "bundle with the diffusion backend, --out/real_vmc_diffusion.gif when --out is given. Prints V and M "
        "against baselines and a frame-fidelity table (PSNR, SSIM via piq) at horizons 1, 4, 16 for diffusion, VMC "
        "and copy-last-frame. Time: V-M-C seconds; diffusion about a second per 64 frames at tiny size on 2 CPUs, "
        "far more at paper size.",
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--store", required=True, help="held-out episode store")
    p.add_argument("--episodes", type=int, default=100, help="evaluate at most this many episodes")
    p.add_argument("--out", default=None, help="directory for the GIFs (V reconstructions; real | VMC | diffusion dreams)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--fidelity", action="store_true",
                   help="frame fidelity table (PSNR/SSIM at horizons 1, 4, 16) even for a bundle without diffusion")
    p.add_argument("--fidelity-episodes", type=int, default=8, help="held-out episodes for the fidelity table")
    p.add_argument("--sampling-steps", type=int, default=None, help="Euler steps of the diffusion backbone (default: its config's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dreams' sampling")
    p.set_defaults(func=cmd_eval_model)

    p = sub.add_parser(
        "serve",
        help="serve bundles over gRPC (worldmodel.v1.Simulator and dm_env_rpc.v1.Environment, health, reflection)",
        description="Reads: the bundles. Writes: nothing (logs to stderr). Runs until SIGTERM/SIGINT, then "
        "drains in-flight calls. Start-up: a few seconds per bundle.",
    )
    p.add_argument("bundles", nargs="+", metavar="[NAME=]BUNDLE", help="bundle directories (named after the directory by default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (printed)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding beyond loopback")
    p.add_argument("--max-sessions", type=int, default=1024)
    p.add_argument("--max-envs", type=int, default=1024, help="envs per session at most")
    p.add_argument("--idle-ttl", type=float, default=600.0, help="seconds before an idle session is evicted")
    p.add_argument("--max-message-mb", type=int, default=64)
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="dynamic batching window")
    p.add_argument("--max-batch-envs", type=int, default=1024, help="a batch closes at this many envs")
    p.add_argument("--no-batching", action="store_true", help="step every request alone (for comparison)")
    p.add_argument("--no-dm-env-rpc", action="store_true",
                   help="do not also serve dm_env_rpc.v1.Environment on the same port")
    p.add_argument("--token-env", default=None, help="name of an environment variable holding the bearer token")
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "play",
        help="drive a dream with the keyboard in a pygame window",
        description="Reads: --bundle. Writes: --record (a GIF of the ride) when given. Time: as long as you "
        "play: Esc quits, --steps N stops after N steps; each step is milliseconds (VMC). Keys: arrows steer, "
        "gas and brake (box actions, CarRacing-style), 0-9 choose a discrete action, R resets the dream. "
        "Headless (tests): SDL_VIDEODRIVER=dummy.",
    )
    p.add_argument("--bundle", required=True, help="bundle directory (`worldmodel bundle`)")
    p.add_argument("--backend", default="vmc", help="the bundle's world model to dream with: vmc | diffusion")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the dream")
    p.add_argument("--device", default="cpu", help="torch device of the model")
    p.add_argument("--record", default=None, help="save the ride as this GIF")
    p.add_argument("--steps", type=int, default=None, help="stop after N steps (default: until Esc)")
    p.add_argument("--fps", type=int, default=15, help="steps per second (0: as fast as possible)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first start context and the dream's sampling")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser(
        "demo",
        help="the whole job end to end: collect, train, dream, judge, serve, report",
        description="On CarRacing-v3: collect with Ray workers, train V and M with Ray Train, evolve C with CMA-ES "
        "in the dream, judge C and random in the real env, serve the bundle over gRPC and drive a remote episode, "
        "and write --out/report.md and report.html. Reads: nothing. Writes: --out. Time: about 10-15 minutes on "
        "2 CPUs (--tiny: CartPole, tiny sizes, about 2 minutes).",
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--tiny", action="store_true", help="CartPole and tiny sizes (what the tests run)")
    p.add_argument("--resume", action="store_true", help="continue from the last finished stage")
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
