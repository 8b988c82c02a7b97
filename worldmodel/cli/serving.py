"""`worldmodel serve` and `worldmodel play`: the simulator in use, over gRPC or under the keyboard."""

from __future__ import annotations

import argparse
import os
import socket

from worldmodel.cli.common import (
    CliError, Subparsers, add_command, bounded_number, non_negative_float, non_negative_int, positive_float,
    positive_int, seed_int,
)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
port_number = bounded_number(int, 0, maximum=65535)
message_megabytes = bounded_number(int, 1, maximum=2047)
"""gRPC takes message limits as a C int: 2 GiB - 1 at most."""


def _default_max_total_envs_help() -> str:
    from services.limits import PER_ENV_STATE_BYTES, STATE_SHARE_OF_MEMORY, default_max_total_envs, machine_memory_bytes

    return (f"envs in all sessions and worlds together (default: 1/{STATE_SHARE_OF_MEMORY} of this machine's "
            f"{machine_memory_bytes() / 2**30:.1f} GiB of memory over {PER_ENV_STATE_BYTES >> 10} KiB per env, the "
            f"measured state of one 64x64 env rounded up: {default_max_total_envs()} here)")


def add_serve_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "serve", run_serve,
        help="serve bundles over gRPC (worldmodel.v1.Simulator and dm_env_rpc.v1.Environment, health, reflection)",
        description="Reads: the bundles. Writes: nothing (logs to stderr). Runs until SIGTERM/SIGINT, then "
        "drains in-flight calls. Start-up: a few seconds per bundle (--ray: about 20 s more, for Ray and Serve).",
    )
    parser.add_argument("bundles", nargs="+", metavar="[NAME=]BUNDLE",
                        help="bundle directories (named after the directory by default)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=50051, help="0 picks a free port (printed)")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding beyond loopback")
    parser.add_argument("--max-sessions", type=positive_int, default=1024)
    parser.add_argument("--max-envs", type=positive_int, default=1024, help="envs per session at most")
    parser.add_argument("--max-total-envs", type=positive_int, default=None, help=_default_max_total_envs_help())
    parser.add_argument("--idle-ttl", type=positive_float, default=600.0, help="seconds before an idle session is evicted")
    parser.add_argument("--max-message-mb", type=message_megabytes, default=64)
    parser.add_argument("--batch-window-ms", type=non_negative_float, default=2.0, help="dynamic batching window")
    parser.add_argument("--max-batch-envs", type=positive_int, default=1024, help="a batch closes at this many envs")
    parser.add_argument("--no-batching", action="store_true", help="step every request alone (for comparison)")
    parser.add_argument("--no-dm-env-rpc", action="store_true",
                        help="do not also serve dm_env_rpc.v1.Environment on the same port")
    parser.add_argument("--token-env", default=None, help="name of an environment variable holding the bearer token")
    parser.add_argument("--tls-cert", default=None)
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--device", default="cpu")
    ray = parser.add_argument_group(
        "Ray Serve", "--ray serves the same service from replicas on Ray Serve behind its gRPC proxy (on --host:--port): "
        "embedded Ray here, or the cluster of RAY_ADDRESS (as under `ray job submit`). Each replica holds the "
        "bundles, its sessions and its batcher; a session's calls reach its replica only. The limits hold per replica.")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve (no TLS: Serve's gRPC proxy has none)")
    ray.add_argument("--replicas", type=replica_range, default=(1, None), metavar="N|MIN-MAX",
                     help="replicas (default 1); MIN-MAX autoscales on ongoing calls. Removing a replica loses its sessions")
    ray.add_argument("--cpus-per-replica", type=positive_float, default=1.0, help="CPUs Ray reserves per replica (torch uses as many threads)")
    ray.add_argument("--gpus-per-replica", type=non_negative_float, default=0.0,
                     help="GPUs per replica (fractions share one); > 0 puts the models on cuda")


def replica_range(text: str) -> tuple[int, int | None]:
    """"N" -> (N, None); "MIN-MAX" -> (MIN, MAX) for autoscaling."""
    low, dash, high = text.partition("-")
    try:
        bounds = (int(low), int(high) if dash else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    if bounds[0] < 1 or (bounds[1] is not None and bounds[1] < bounds[0]):
        raise argparse.ArgumentTypeError(f"expected N >= 1 or 1 <= MIN <= MAX, got {text!r}")
    return bounds


def run_serve(args: argparse.Namespace) -> None:
    import asyncio
    import logging

    from services.batcher import BatcherConfig
    from services.server import ServerConfig, grpc_address, parse_model_args, serve

    if args.host not in LOOPBACK_HOSTS and not args.allow_remote:
        raise CliError(f"refusing to bind {args.host}: pass --allow-remote to serve beyond this machine")
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise CliError(f"--token-env {args.token_env}: that variable is empty or unset")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("TLS needs both --tls-cert and --tls-key")
    if not args.ray and (args.replicas != (1, None) or args.cpus_per_replica != 1.0 or args.gpus_per_replica):
        raise CliError("--replicas, --cpus-per-replica and --gpus-per-replica need --ray")
    if args.ray and args.tls_cert:
        raise CliError("--ray has no TLS (Ray Serve's gRPC proxy serves plaintext): drop --tls-cert/--tls-key or --ray")
    check_device(args.device)
    check_port_free(args.host, args.port)
    try:
        bundles = parse_model_args(args.bundles)
    except ValueError as err:  # two bundles under one name
        raise CliError(str(err)) from err
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = ServerConfig(
        host=args.host, port=args.port, max_sessions=args.max_sessions, max_envs_per_session=args.max_envs,
        max_total_envs=args.max_total_envs,
        idle_ttl_s=args.idle_ttl, max_message_bytes=args.max_message_mb << 20, token=token,
        tls_cert=args.tls_cert, tls_key=args.tls_key, device=args.device,
        batcher=BatcherConfig(window_s=args.batch_window_ms / 1000, max_batch_envs=args.max_batch_envs,
                              enabled=not args.no_batching),
        dm_env_rpc=not args.no_dm_env_rpc,
    )

    if args.ray:
        from services.ray_serve import ReplicaOptions, serve_on_ray
        from worldmodel.bundle import read_bundle_config
        from worldmodel.errors import UserError

        for name, path in bundles.items():  # here, as one line: in a replica it would be Serve's traceback
            try:
                read_bundle_config(path)
            except (UserError, OSError, ValueError) as err:
                raise CliError(f"bundle {name}: {err}") from err
        if args.gpus_per_replica and not os.environ.get("RAY_ADDRESS"):
            check_device("cuda")  # an embedded Ray without GPUs would wait for one forever

        replicas, max_replicas = args.replicas
        options = ReplicaOptions(replicas=replicas, max_replicas=max_replicas, cpus_per_replica=args.cpus_per_replica,
                                 gpus_per_replica=args.gpus_per_replica)
        serve_on_ray(bundles, config, options,
                     on_ready=lambda port: print(f"serving on {grpc_address(args.host, port)}", flush=True))
        return

    def ready(running) -> None:
        print(f"serving on {grpc_address(args.host, running.port)}", flush=True)

    asyncio.run(serve(bundles, config, on_ready=ready))


def check_port_free(host: str, port: int) -> None:
    """CliError when HOST:PORT cannot be bound (in use, or not an address of this machine), before
    the bundles load; gRPC would say it later as a RuntimeError. Port 0 always binds."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise CliError(f"--host {host}: {err}") from err
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as err:
            raise CliError(f"cannot serve on {host}:{port}: {err.strerror}") from err


def check_device(name: str) -> None:
    """CliError unless `name` is a torch device this machine has."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CliError(f"--device {name}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: this machine has no CUDA device")


def add_play_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "play", run_play,
        help="drive a dream with the keyboard in a pygame window",
        description="Reads: --bundle. Writes: --record (a GIF of the ride) when given. Time: as long as you "
        "play: Esc quits, --steps N stops after N steps; each step is milliseconds (VMC). Keys: arrows steer, "
        "gas and brake (box actions, CarRacing-style), 0-9 choose a discrete action, R resets the dream. "
        "Headless (tests): SDL_VIDEODRIVER=dummy.",
    )
    parser.add_argument("--bundle", required=True, help="bundle directory (`worldmodel bundle`)")
    parser.add_argument("--backend", default="vmc", choices=("vmc", "diffusion"),
                        help="the bundle's world model to dream with (default: vmc)")
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature of the dream")
    parser.add_argument("--device", default="cpu", help="torch device of the model")
    parser.add_argument("--record", default=None, help="save the ride as this GIF")
    parser.add_argument("--steps", type=non_negative_int, default=None, help="stop after N steps (default: until Esc)")
    parser.add_argument("--fps", type=non_negative_int, default=15, help="steps per second (0: as fast as possible)")
    parser.add_argument("--seed", type=seed_int, default=None, help="seed of the first start context and the dream's sampling")


def run_play(args: argparse.Namespace) -> None:
    from envs.play import play

    check_device(args.device)
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


__all__ = ["add_play_command", "add_serve_command"]
