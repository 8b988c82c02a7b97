"""Benchmark of dm_env_rpc v1 on `worldmodel serve` (issue 9) vs the native StepStream, side by side.

One `worldmodel serve` subprocess serves one paper-size V-M-C bundle (as benchmarks/service.py
builds it) over both protocols. Measured in alternated rounds against it, best of --repeats:

1. N asyncio agents (1 agent, then --agents), each with its own channel and one env: the native
   StepStream (a 1-env session) vs dm_env_rpc's Process stream (a world, via dm-env-rpc's
   AsyncConnection), pixel observations, every reply decoded as an agent must. Steps/s and latency.
2. one blocking agent through dm-env-rpc's dm_env adaptor (`DmEnvAdaptor.step`) vs one blocking
   agent through services.client.SimulatorClient.step_stream: what a dm_env user sees.

Both protocols reach the same sessions and dynamic batcher, so a ratio below 1 is the cost of
dm_env_rpc's messages (a tensor per observation, requested by uid, inside a oneof envelope).
Figures count calls: Step round trips with their observations. A dm_env_rpc world ends its
sequence when the dream terminates and its next call restarts it without a model step, as the
protocol says, while the native agents here step on regardless; so the benchmark serves a copy of
the bundle whose dreams never terminate, and every call of either protocol is one model step
(the table prints the share of dm_env_rpc calls that started a sequence: it should be 0%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import shutil
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/dmrpc.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import (  # noqa: E402
    MODEL_NAME, ServeProcess, Window, add_bundle_arguments, benchmark_parser, best_of_rounds, build_bundle,
    random_actions, scratch_workdir, set_quiet_env,
)

set_quiet_env()

import numpy as np  # noqa: E402

from benchmarks.service import agents_load  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description=(
            "Steps/s and latency through dm_env_rpc v1 vs the native StepStream of the same `worldmodel serve`: "
            "1 and --agents concurrent asyncio agents (one env each), and one blocking agent through dm-env-rpc's "
            "dm_env adaptor vs SimulatorClient.step_stream. Prints a table of ratios, then one line of JSON."
        ),
        epilog=(
            "Reads: --bundle when given; otherwise builds the paper-size bundle of benchmarks/service.py first "
            "(about 2 minutes: CarRacing-v3 collection and a few training steps on an embedded Ray). Writes: only "
            "under --workdir (a temp dir by default, removed unless --keep): the bundle, a copy of it whose dreams "
            "never terminate (the one served) and serve.log; the server "
            "listens on 127.0.0.1 only. Takes: about --repeats x 6 x (--warmup + --seconds) s after the bundle "
            "(about 2.5 minutes with the defaults)."
        ),
    )
    add_bundle_arguments(parser)
    parser.add_argument("--agents", type=int, default=16, help="concurrent agents of the second figure")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per figure")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds; the best of each counts")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads in the server")
    args = parser.parse_args(argv)
    if args.agents < 1 or args.repeats < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--agents and --repeats must be >= 1, --seconds > 0, --warmup >= 0")
    args.observations = ["pixels"]
    return args


# -- dm_env_rpc load ----------------------------------------------------------------
def _dm_action(spec, rng: np.random.Generator):
    action = random_actions(spec, 1, rng)[0]
    return np.int64(action) if spec.action.is_discrete else action.astype(np.float32)


async def dm_agents_load(address: str, spec, agents: int, args) -> dict:
    """`agents` asyncio agents, each with its own channel, world and Process stream, stepping flat out."""
    import grpc
    from dm_env_rpc.v1 import async_connection, tensor_utils
    from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm

    channels = [grpc.aio.insecure_channel(address) for _ in range(agents)]
    connections = [async_connection.AsyncConnection(c) for c in channels]
    loop = asyncio.get_running_loop()
    window = Window(loop.time() + args.warmup, loop.time() + args.warmup + args.seconds)
    starts = 0

    async def agent(i: int, conn) -> None:
        nonlocal starts
        rng = np.random.default_rng(args.seed + 1000 + i)
        settings = {"model": tensor_utils.pack_tensor(MODEL_NAME), "seed": tensor_utils.pack_tensor(args.seed + i)}
        world = (await conn.send(dm.CreateWorldRequest(settings=settings))).world_name
        specs = (await conn.send(dm.JoinWorldRequest(world_name=world))).specs
        every = list(specs.observations)
        state = (await conn.send(dm.StepRequest(requested_observations=every))).state
        while True:
            action = tensor_utils.pack_tensor(_dm_action(spec, rng), dtype=specs.actions[1].dtype)
            sent = loop.time()
            reply = await conn.send(dm.StepRequest(actions={1: action}, requested_observations=every))
            for tensor in reply.observations.values():  # what an agent reads
                tensor_utils.unpack_tensor(tensor)
            done = loop.time()
            if window.count(sent, done):
                starts += state != dm.RUNNING  # this call started a sequence: a reset, no dream step
            state = reply.state
            if done >= window.end:
                break
        await conn.send(dm.LeaveWorldRequest())
        await conn.send(dm.DestroyWorldRequest(world_name=world))

    try:
        await asyncio.gather(*(agent(i, c) for i, c in enumerate(connections)))
    finally:
        for conn in connections:
            conn.close()
        await asyncio.gather(*(c.close() for c in channels))
    return {**window.summary(), "starts": starts / max(window.steps, 1)}


def adaptor_load(address: str, spec, args) -> dict:
    """One blocking agent through dm-env-rpc's DmEnvAdaptor (a dm_env.Environment)."""
    import grpc
    from dm_env_rpc.v1 import connection, dm_env_adaptor
    from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm

    rng = np.random.default_rng(args.seed)
    starts = 0
    with grpc.insecure_channel(address) as channel, connection.Connection(channel) as conn:
        env, world = dm_env_adaptor.create_and_join_world(
            conn, create_world_settings={"model": MODEL_NAME, "seed": args.seed}, join_world_settings={})
        env.reset()
        window = Window(time.perf_counter() + args.warmup, time.perf_counter() + args.warmup + args.seconds)
        while True:
            sent = time.perf_counter()
            timestep = env.step({"action": _dm_action(spec, rng)})  # after LAST the server starts the next sequence
            done = time.perf_counter()
            if window.count(sent, done):
                starts += timestep.first()
            if done >= window.end:
                break
        env.close()
        conn.send(dm.DestroyWorldRequest(world_name=world))
    return {**window.summary(), "starts": starts / max(window.steps, 1)}


def native_client_load(address: str, spec, args) -> dict:
    """One blocking agent through SimulatorClient.step_stream (a 1-env session), actions fed one at a time."""
    from services.client import SimulatorClient

    rng = np.random.default_rng(args.seed)
    actions: queue.Queue = queue.Queue()
    with SimulatorClient(address, timeout=120) as client:
        sid = client.create_session(MODEL_NAME, num_envs=1, seed=args.seed).session_id
        client.reset(sid)
        def fed():  # not iter(actions.get, None): that compares each array with None
            while (action := actions.get()) is not None:
                yield action

        replies = client.step_stream(sid, fed())
        window = Window(time.perf_counter() + args.warmup, time.perf_counter() + args.warmup + args.seconds)
        while True:
            sent = time.perf_counter()
            actions.put(random_actions(spec, 1, rng))
            next(replies)
            done = time.perf_counter()
            window.count(sent, done)
            if done >= window.end:
                break
        actions.put(None)
        for _ in replies:
            pass
        client.close_session(sid)
    return window.summary()


def without_endings(bundle: Path, workdir: Path) -> Path:
    """A copy of `bundle` whose dreams never terminate (M's termination logit biased to -30), so every call
    of either protocol steps the model: a dm_env_rpc world would otherwise spend calls restarting."""
    from safetensors.torch import load_file, save_file

    copy = workdir / "bundle-without-endings"
    shutil.copytree(bundle, copy, dirs_exist_ok=True)
    weights = load_file(copy / "mdnrnn.safetensors")
    weights["termination_head.bias"].fill_(-30.0)
    save_file(weights, copy / "mdnrnn.safetensors")
    return copy


# -- report -----------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    with scratch_workdir(args, "wm-bench-dmrpc-") as workdir:
        print(f"dm_env_rpc benchmark: workdir {workdir}", flush=True)
        bundle = without_endings(Path(args.bundle) if args.bundle else build_bundle(args, workdir), workdir)
        from worldmodel.bundle import read_bundle_config

        spec = read_bundle_config(bundle)["spec"]
        with ServeProcess({MODEL_NAME: bundle}, "--max-sessions", str(2 * args.agents + 8),
                          log=workdir / "serve.log", threads=args.torch_threads or None) as server:
            plan = [
                ("native_1", "native StepStream, 1 agent",
                 lambda: asyncio.run(agents_load(server.address, spec, 1, 1, "pixels", args, path="stream"))),
                ("dm_1", "dm_env_rpc, 1 agent", lambda: asyncio.run(dm_agents_load(server.address, spec, 1, args))),
                ("native_n", f"native StepStream, {args.agents} agents",
                 lambda: asyncio.run(agents_load(server.address, spec, args.agents, 1, "pixels", args, path="stream"))),
                ("dm_n", f"dm_env_rpc, {args.agents} agents",
                 lambda: asyncio.run(dm_agents_load(server.address, spec, args.agents, args))),
                ("client", "SimulatorClient.step_stream, 1 blocking agent",
                 lambda: native_client_load(server.address, spec, args)),
                ("adaptor", "dm_env adaptor, 1 blocking agent", lambda: adaptor_load(server.address, spec, args)),
            ]
            best = best_of_rounds(plan, args.repeats)
        rows = [
            ("1 agent, asyncio", "native_1", "dm_1"),
            (f"{args.agents} agents, asyncio", "native_n", "dm_n"),
            ("1 blocking agent: client / dm_env adaptor", "client", "adaptor"),
        ]
        wall = time.perf_counter() - wall_start
        print()
        print(f"dm_env_rpc vs native, {spec.env_id or 'bundle'} pixels (64x64x3 + vector), {os.cpu_count()} CPUs, "
              f"best of {args.repeats} alternated runs of {args.seconds:g} s, {wall:.0f} s in all")
        print(f"{'load':<44} {'native calls/s':>15} {'dm_env_rpc calls/s':>19} {'ratio':>6}  p50 ms native | dm"
              f"  dm calls that started a sequence")
        figures: dict = {"benchmark": "dm_env_rpc", "agents": args.agents, "wall_s": round(wall, 1)}
        for label, native, dm in rows:
            ratio = best[dm]["steps_per_s"] / max(best[native]["steps_per_s"], 1e-9)
            print(f"{label:<44} {best[native]['steps_per_s']:>15,.0f} {best[dm]['steps_per_s']:>19,.0f} {ratio:>5.2f}x  "
                  f"{best[native]['p50_ms']:.2f} | {best[dm]['p50_ms']:.2f}  {best[dm]['starts']:.0%}")
            figures[f"{dm}_over_{native}"] = round(ratio, 3)
        print("  a call is one Step round trip with its observations and one model step (the served copy of the "
              "bundle never ends a dream)")
        figures["runs"] = {k: {m: round(v, 3) for m, v in r.items()} for k, r in best.items()}
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
