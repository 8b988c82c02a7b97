"""Benchmark of the simulation service (issue 6): gRPC sessions with dynamic batching vs in-process dreams.

Measured side by side in one run, on one paper-size V-M-C bundle (V: 32-dim z,
channels 32-64-128-256; M: LSTM of 256 units, 5 mixtures), for each
observation mode (pixels: every step decodes and sends a 64x64 frame per env;
latent: [z, h] only), printed as a table against the floors (issue 15's, for
latent mode), then as one line of JSON:

1. aggregate steps/s of 64 concurrent agents, each an asyncio gRPC client
   (its own channel) with a session of 1 env, against a `worldmodel serve`
   subprocess with dynamic batching on, vs the same model stepped in this
   process as one DreamBatch of 64 (no gRPC).        floor (latent) >= 0.25x
   Measured three ways: unary Step calls, one StepStream per agent (the
   streaming RPC for tight agent loops: no per-call setup), and all agents
   over one StepMany stream (services/multiplex.py: the steps the agents ask
   for in one event-loop turn travel in one message); the best counts.
2. the same 64 agents against a server started with --no-batching (each
   request one forward of batch 1): batching on / off.      target >= 10x
3. p50 / p99 latency of one Step call as the agents see it (batching on and off).
4. one session of 256 envs (one agent, 256 actions per Step) vs an in-process
   DreamBatch of 256.
5. one session of 256 envs through `Remote-v0`'s vector env
   (`gymnasium.make_vec("worldmodel/Remote-v0")`, what RLlib's env runners
   use) vs the in-process `DreamVectorEnv` of 256.      floor (latent) >= 0.8x

--ray (benchmarks/service_ray.py, issue 14) measures instead `worldmodel serve --ray` with 1 and 2 replicas
beside the single-process server: 64 agents, both modes, CPU by part, its own floors.

Agents pick random valid actions and decode every reply (as an agent must).
Each figure is counted over --seconds after --warmup seconds of the same load;
the runs alternate and the best of --repeats counts (other load on the machine
only ever slows a run). Server and agents share this machine's CPUs; the
in-process runs have them alone (the idle servers wait in epoll). torch runs
--torch-threads intra-op threads everywhere (default 1: on 2 shared CPUs a
second OpenMP thread only waits at barriers; measured here, a batch-64 latent
step took 206 ms with 2 threads under load vs 2.5 ms with 1). --device puts the
in-process models and the servers' (`worldmodel serve --device`) on that device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/service.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import (  # noqa: E402
    MODEL_NAME, ServeProcess, Window, add_bundle_arguments, add_device_argument, benchmark_parser, best_of_rounds,
    build_bundle, device_report, random_actions, rounded, scratch_workdir, set_quiet_env, synchronize,
)

set_quiet_env()

import numpy as np  # noqa: E402

# Issue 15's floors (they replace issue 6's 0.8x for the 64 agents), checked in latent mode; never lowered.
FLOOR_VECTOR_VS_IN_PROCESS = 0.8
"""One latent session of --big-session envs through Remote-v0's vector env / the in-process DreamVectorEnv."""
FLOOR_AGENTS_VS_IN_PROCESS = 0.25
"""--agents one-env latent agents (the best of unary and StepStream) / one in-process DreamBatch of --agents."""
FLOOR_MODE = "latent"
TARGET_BATCHING = 10.0
QUICK = {"seconds": 1.0, "warmup": 0.5, "repeats": 1}
"""--quick: a smoke run of every figure (not a measurement)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description=(
            "Measure the gRPC simulation service side by side in one run: 64 concurrent agents (1-env "
            "sessions) through a `worldmodel serve` subprocess vs the same model stepped in-process at "
            "batch 64; dynamic batching on vs off; p50/p99 Step latency; one session of 256 envs. "
            "Prints a table with targets and PASS/MISS, then one line of JSON; exits 0 whatever the figures."
        ),
        epilog=(
            "Reads: --bundle when given. Otherwise builds a paper-size V-M-C bundle first: collects "
            "--episodes x --episode-steps of CarRacing-v3 in this process, trains V and M with the paper "
            "preset for --train-steps steps each on an embedded Ray (127.0.0.1), bundles them (speed depends "
            "on size, not training). Writes: only under --workdir (a temp dir by default, removed unless "
            "--keep), plus Ray's own session files; servers listen on 127.0.0.1 only. Takes: about 2 minutes "
            "to build the bundle, then --repeats x 9 x (--warmup + --seconds) s per observation mode plus ~10 s "
            "of server starts (about 7 minutes with the defaults, both modes; --quick: about 1 minute)."
        ),
    )
    add_bundle_arguments(parser)
    parser.add_argument("--agents", type=int, default=64, help="concurrent agents, a 1-env session each")
    parser.add_argument("--big-session", type=int, default=256, help="envs of the one big session (0: skip)")
    parser.add_argument("--observations", default="pixels,latent", help="observation modes to measure, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per figure")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every measurement, alternated; the best counts")
    parser.add_argument("--batch-window-ms", type=float, default=2.0, help="the batching server's window")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(f'--{k} {v:g}' for k, v in QUICK.items())} (figures not meant to be read)")
    add_device_argument(parser)
    parser.add_argument("--ray", action="store_true",
                        help="measure only `worldmodel serve --ray` with 1 and 2 replicas beside the single-process "
                             "server (benchmarks/service_ray.py; about 4 minutes after the bundle)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads, in this process and in the servers alike (with agents and a "
                             "server sharing 2 CPUs, more threads only contend; 0: torch's default)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, type(getattr(args, key))(value))
    from services.wire import OBSERVATION_MODE_CODES as modes

    args.observations = [m.strip() for m in args.observations.split(",") if m.strip()]
    if not args.observations or any(m not in modes for m in args.observations):
        parser.error(f"--observations takes {' and/or '.join(modes)}")
    if args.agents < 1 or args.repeats < 1 or args.seconds <= 0 or args.warmup < 0 or args.big_session < 0:
        parser.error("--agents and --repeats must be >= 1, --seconds > 0, --warmup and --big-session >= 0")
    return args


# -- load -----------------------------------------------------------------------
def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of this process, or of process `pid` (Linux /proc)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


AGENT_PATHS = ("unary", "stream", "mux")
"""How the agents step: unary Step calls, one StepStream each (both: a channel each), or all over one
StepMany stream (services/multiplex.py: one channel, the steps of one loop turn in one message)."""


async def agents_load(address: str, spec, agents: int, num_envs: int, observation: str, args,
                      server_pid: int | None = None, path: str = "unary", cpu_probe=None) -> dict:
    """`agents` asyncio clients, each with a session of `num_envs` envs, stepping flat out over `path`
    (AGENT_PATHS); every reply decoded. `cpu_probe() -> {part: CPU seconds}` counts the server's CPU by part
    (default: process `server_pid` as "server")."""
    import grpc

    from services import wire
    from services.multiplex import StepMultiplexer
    from worldmodel.v1 import simulator_pb2 as pb
    from worldmodel.v1 import simulator_pb2_grpc as pb_grpc

    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(1 if path == "mux" else agents)]
    stubs = [pb_grpc.SimulatorStub(channels[i % len(channels)]) for i in range(agents)]
    mux = StepMultiplexer(channels[0], timeout=120) if path == "mux" else None
    mode = wire.OBSERVATION_MODE_CODES[observation]
    created = await asyncio.gather(*(
        stub.CreateSession(pb.CreateSessionRequest(model=MODEL_NAME, num_envs=num_envs, seed=args.seed + i,
                                                   observation_mode=mode), timeout=60)
        for i, stub in enumerate(stubs)
    ))
    loop = asyncio.get_running_loop()
    window = Window(loop.time() + args.warmup, loop.time() + args.warmup + args.seconds)

    async def agent(i: int, stub, session_id: str) -> None:
        rng = np.random.default_rng(args.seed + 1000 + i)
        routed = wire.routing_metadata(session_id)  # Ray Serve's proxy routes on it; one server has none
        await stub.Reset(pb.ResetRequest(session_id=session_id), timeout=60, metadata=routed)
        call = stub.StepStream(metadata=routed) if path == "stream" else None
        while True:
            actions = random_actions(spec, num_envs, rng)
            sent = loop.time()
            if mux is not None:
                reply = await mux.step(session_id, actions)
            elif call is None:
                reply = await stub.Step(pb.StepRequest(session_id=session_id, actions=wire.to_tensor(actions)), timeout=120,
                                        metadata=routed)
            else:
                await call.write(pb.StepRequest(session_id=session_id, actions=wire.to_tensor(actions)))
                reply = await call.read()
            wire.observation_from_proto(reply.observation)  # what an agent reads
            wire.from_tensor(reply.reward)
            done = loop.time()
            window.count(sent, done, num_envs)
            if done >= window.end:
                break
        if call is not None:
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF

    cpu: dict[str, float] = {}

    def server_cpu() -> dict[str, float]:
        if cpu_probe is not None:
            return cpu_probe()
        return {"server": cpu_seconds(server_pid)} if server_pid else {}

    async def meter() -> None:  # CPU used over the measured window, by the agents and by the server
        await asyncio.sleep(max(0.0, window.begin - loop.time()))
        start = {"agents": cpu_seconds(), **server_cpu()}
        await asyncio.sleep(max(0.0, window.end - loop.time()))
        end = {"agents": cpu_seconds(), **server_cpu()}
        cpu.update({part: used - start.get(part, 0.0) for part, used in end.items()})

    try:
        await asyncio.gather(meter(), *(agent(i, stub, c.session_id) for i, (stub, c) in enumerate(zip(stubs, created))))
        await asyncio.gather(*(stub.CloseSession(pb.CloseSessionRequest(session_id=c.session_id), timeout=60)
                               for stub, c in zip(stubs, created)))
    finally:
        if mux is not None:
            await mux.close()
        await asyncio.gather(*(c.close() for c in channels))
    return window.summary(cpu)


def in_process_load(model, num_envs: int, observation: str, args) -> dict:
    """One DreamBatch of `num_envs` stepped in this process (the same random actions and decoding)."""
    import torch

    from worldmodel.session import DreamBatch

    dreams = DreamBatch(model, num_envs, observation=observation, seed=args.seed)
    dreams.reset()
    rng = np.random.default_rng(args.seed)
    window = Window(time.perf_counter() + args.warmup, time.perf_counter() + args.warmup + args.seconds)
    cpu_start = None
    with torch.inference_mode():
        while True:
            if cpu_start is None and time.perf_counter() >= window.begin:
                cpu_start = cpu_seconds()
            sent = time.perf_counter()
            result = dreams.step(random_actions(model.spec, num_envs, rng))
            {key: value.cpu().numpy() for key, value in result.observation.items()}  # the same hand-over to numpy
            synchronize(args.device)
            done = time.perf_counter()
            window.count(sent, done, num_envs)
            if done >= window.end:
                break
    used = cpu_seconds() - cpu_start if cpu_start is not None else float("nan")  # nan: one call spanned the window
    return window.summary({"process": used})


def vector_load(make_env, spec, num_envs: int, args, server_pid: int | None = None) -> dict:
    """A gymnasium vector env of `num_envs` (made by `make_env`) stepped flat out with random actions, as an
    RLlib env runner steps it: its observations arrive as numpy arrays, decoded."""
    env = make_env()
    try:
        env.reset(seed=args.seed)
        rng = np.random.default_rng(args.seed)
        window = Window(time.perf_counter() + args.warmup, time.perf_counter() + args.warmup + args.seconds)
        start: dict[str, float] | None = None
        while True:
            if start is None and time.perf_counter() >= window.begin:
                start = {"process": cpu_seconds(), "server": cpu_seconds(server_pid) if server_pid else 0.0}
            sent = time.perf_counter()
            env.step(random_actions(spec, num_envs, rng))
            synchronize(args.device)
            done = time.perf_counter()
            window.count(sent, done, num_envs)
            if done >= window.end:
                break
    finally:
        env.close()
    cpu = {"process": cpu_seconds() - start["process"]} if start else {"process": float("nan")}
    if server_pid and start:
        cpu["server"] = cpu_seconds(server_pid) - start["server"]
    return window.summary(cpu)


def in_process_vector(model, num_envs: int, mode: str):
    from envs.dream import DreamVectorEnv

    return lambda: DreamVectorEnv(num_envs, model=model, observation=mode)


def remote_vector(address: str, num_envs: int, mode: str):
    import gymnasium

    import worldmodel  # registers worldmodel/Remote-v0

    return lambda: gymnasium.make_vec(worldmodel.REMOTE_ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                      address=address, model=MODEL_NAME, observation=mode)


# -- report -------------------------------------------------------------------
def verdict(value: float, target: float) -> str:
    return "PASS" if value >= target else "MISS"


def _floor(mode: str, value: float, floor: float) -> tuple[str, str]:
    """(target, result) columns: the floor holds in FLOOR_MODE only."""
    return (f">= {floor:g}x", verdict(value, floor)) if mode == FLOOR_MODE else ("", "")


def mode_rows(args, mode: str, f: dict) -> list[tuple[str, str, str, str]]:
    n, big = args.agents, args.big_session
    rows = [
        (f"[{mode}] in-process DreamBatch of {n} (steps/s)", f"{f['local']['steps_per_s']:,.0f}", "", ""),
        (f"[{mode}] gRPC, {n} agents, batching on (steps/s)", f"{f['batched']['steps_per_s']:,.0f}", "", ""),
        (f"[{mode}] gRPC batched / in-process", f"{f['vs_in_process']:.3f}x", "", ""),
        (f"[{mode}] gRPC StepStream, {n} agents, batching on (steps/s)", f"{f['streamed']['steps_per_s']:,.0f}", "", ""),
        (f"[{mode}] gRPC StepStream batched / in-process", f"{f['stream_vs_in_process']:.3f}x", "", ""),
        (f"[{mode}] gRPC StepMany, {n} agents on one stream (steps/s)", f"{f['muxed']['steps_per_s']:,.0f}", "", ""),
        (f"[{mode}] gRPC StepMany / in-process", f"{f['mux_vs_in_process']:.3f}x", "", ""),
        (f"[{mode}] {n} one-env agents, best path / in-process", f"{f['agents_vs_in_process']:.3f}x",
         *_floor(mode, f["agents_vs_in_process"], FLOOR_AGENTS_VS_IN_PROCESS)),
        (f"[{mode}] gRPC, {n} agents, batching off (steps/s)", f"{f['unbatched']['steps_per_s']:,.0f}", "", ""),
        (f"[{mode}] batching on / off", f"{f['batching_gain']:.1f}x", f">= {TARGET_BATCHING:g}x",
         verdict(f["batching_gain"], TARGET_BATCHING)),
        (f"[{mode}] Step latency, batching on, p50 / p99 (ms)",
         f"{f['batched']['p50_ms']:.1f} / {f['batched']['p99_ms']:.1f}", "", ""),
        (f"[{mode}] StepStream latency, batching on, p50 / p99 (ms)",
         f"{f['streamed']['p50_ms']:.1f} / {f['streamed']['p99_ms']:.1f}", "", ""),
        (f"[{mode}] StepMany latency, batching on, p50 / p99 (ms); CPUs busy: server+agents",
         f"{f['muxed']['p50_ms']:.1f} / {f['muxed']['p99_ms']:.1f}; "
         f"{f['muxed']['cpu_server']:.1f}+{f['muxed']['cpu_agents']:.1f}", "", ""),
        (f"[{mode}] Step latency, batching off, p50 / p99 (ms)",
         f"{f['unbatched']['p50_ms']:.1f} / {f['unbatched']['p99_ms']:.1f}", "", ""),
        (f"[{mode}] CPUs busy: in-process | server+agents on | off",
         f"{f['local']['cpu_process']:.1f} | {f['batched']['cpu_server']:.1f}+{f['batched']['cpu_agents']:.1f} | "
         f"{f['unbatched']['cpu_server']:.1f}+{f['unbatched']['cpu_agents']:.1f}", "", ""),
    ]
    if big:
        rows += [
            (f"[{mode}] in-process DreamBatch of {big} (steps/s)", f"{f['local_big']['steps_per_s']:,.0f}", "", ""),
            (f"[{mode}] gRPC, 1 session of {big} envs (steps/s)", f"{f['big']['steps_per_s']:,.0f}", "", ""),
            (f"[{mode}] 1 session of {big}: gRPC / in-process", f"{f['big_vs_in_process']:.2f}x", "", ""),
            (f"[{mode}] Step latency, {big} envs, p50 / p99 (ms)",
             f"{f['big']['p50_ms']:.1f} / {f['big']['p99_ms']:.1f}", "", ""),
            (f"[{mode}] in-process DreamVectorEnv of {big} (steps/s)", f"{f['local_vec']['steps_per_s']:,.0f}", "", ""),
            (f"[{mode}] Remote-v0 vector env of {big} (steps/s)", f"{f['remote_vec']['steps_per_s']:,.0f}", "", ""),
            (f"[{mode}] Remote-v0 vector / DreamVectorEnv", f"{f['vector_vs_in_process']:.2f}x",
             *_floor(mode, f["vector_vs_in_process"], FLOOR_VECTOR_VS_IN_PROCESS)),
            (f"[{mode}] Remote-v0 step, p50 / p99 (ms); CPUs busy: server+env | in-process",
             f"{f['remote_vec']['p50_ms']:.1f} / {f['remote_vec']['p99_ms']:.1f}; "
             f"{f['remote_vec']['cpu_server']:.1f}+{f['remote_vec']['cpu_process']:.1f} | "
             f"{f['local_vec']['cpu_process']:.1f}", "", ""),
        ]
    return rows


def print_table(args, figures: dict, wall: float) -> None:
    rows = [row for mode in args.observations for row in mode_rows(args, mode, figures[mode])]
    print()
    print(f"service benchmark: {figures['model']}, {figures['device_name']} ({figures['device']}), best of "
          f"{args.repeats} alternated runs of {args.seconds:g} s after {args.warmup:g} s warm-up, batch window "
          f"{args.batch_window_ms:g} ms, {wall:.0f} s in all{' (--quick: a smoke run)' if args.quick else ''}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'figure':>13}  {'floor':>7}  result")
    for name, figure, target, result in rows:
        print(f"{name:<{width}}  {figure:>13}  {target:>7}  {result}")
    print(f"  agents: asyncio gRPC clients in this process, one channel each, random actions, every reply decoded; "
          f"servers: `worldmodel serve` subprocesses; load average {figures['load_avg']:.1f} before measuring, "
          f"{figures['load_avg_after']:.1f} after")


def measure_mode(args, model, bundle: Path, workdir: Path, mode: str, serve_flags: list[str]) -> dict:
    """Every figure of one observation mode: a batching server and one with --no-batching, loads alternated."""
    threads = args.torch_threads or None
    on_flags = [*serve_flags, "--batch-window-ms", str(args.batch_window_ms)]
    with ServeProcess({MODEL_NAME: bundle}, *on_flags, log=workdir / f"serve-{mode}-batched.log", threads=threads) as on, \
            ServeProcess({MODEL_NAME: bundle}, *serve_flags, "--no-batching",
                         log=workdir / f"serve-{mode}-unbatched.log", threads=threads) as off:
        plan = [
            ("local", f"in-process DreamBatch of {args.agents}", lambda: in_process_load(model, args.agents, mode, args)),
            ("batched", f"gRPC, {args.agents} agents, batching on",
             lambda: asyncio.run(agents_load(on.address, model.spec, args.agents, 1, mode, args, on.pid))),
            ("streamed", f"gRPC StepStream, {args.agents} agents, batching on",
             lambda: asyncio.run(agents_load(on.address, model.spec, args.agents, 1, mode, args, on.pid, path="stream"))),
            ("muxed", f"gRPC StepMany, {args.agents} agents on one stream, batching on",
             lambda: asyncio.run(agents_load(on.address, model.spec, args.agents, 1, mode, args, on.pid, path="mux"))),
            ("unbatched", f"gRPC, {args.agents} agents, batching off",
             lambda: asyncio.run(agents_load(off.address, model.spec, args.agents, 1, mode, args, off.pid))),
        ]
        if args.big_session:
            big = args.big_session
            plan += [
                ("local_big", f"in-process DreamBatch of {big}", lambda: in_process_load(model, big, mode, args)),
                ("big", f"gRPC, 1 session of {big} envs",
                 lambda: asyncio.run(agents_load(on.address, model.spec, 1, big, mode, args, on.pid))),
                ("local_vec", f"in-process DreamVectorEnv of {big}",
                 lambda: vector_load(in_process_vector(model, big, mode), model.spec, big, args)),
                ("remote_vec", f"Remote-v0 vector env of {big}",
                 lambda: vector_load(remote_vector(on.address, big, mode), model.spec, big, args, on.pid)),
            ]
        f = best_of_rounds(plan, args.repeats, tag=f"[{mode}] ")
    f["vs_in_process"] = f["batched"]["steps_per_s"] / max(f["local"]["steps_per_s"], 1e-9)
    f["stream_vs_in_process"] = f["streamed"]["steps_per_s"] / max(f["local"]["steps_per_s"], 1e-9)
    f["mux_vs_in_process"] = f["muxed"]["steps_per_s"] / max(f["local"]["steps_per_s"], 1e-9)
    f["agents_vs_in_process"] = max(f["vs_in_process"], f["stream_vs_in_process"], f["mux_vs_in_process"])
    f["batching_gain"] = f["batched"]["steps_per_s"] / max(f["unbatched"]["steps_per_s"], 1e-9)
    if args.big_session:
        f["big_vs_in_process"] = f["big"]["steps_per_s"] / max(f["local_big"]["steps_per_s"], 1e-9)
        f["vector_vs_in_process"] = f["remote_vec"]["steps_per_s"] / max(f["local_vec"]["steps_per_s"], 1e-9)
    return f


def floor_results(args, figures: dict) -> dict:
    """{figure: PASS/MISS} for issue 15's floors, when FLOOR_MODE was measured."""
    if FLOOR_MODE not in figures:
        return {}
    f = figures[FLOOR_MODE]
    results = {"agents_vs_in_process": verdict(f["agents_vs_in_process"], FLOOR_AGENTS_VS_IN_PROCESS)}
    if args.big_session:
        results["vector_vs_in_process"] = verdict(f["vector_vs_in_process"], FLOOR_VECTOR_VS_IN_PROCESS)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    figures: dict = {}
    with scratch_workdir(args, "wm-bench-service-") as workdir:
        print(f"service benchmark: workdir {workdir}", flush=True)
        bundle = Path(args.bundle) if args.bundle else build_bundle(args, workdir)
        import torch

        import worldmodel

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        figures.update(device_report(args.device))
        model = worldmodel.load_bundle(bundle, device=args.device)
        params = sum(p.numel() for p in model.vae.parameters()) + sum(p.numel() for p in model.mdnrnn.parameters())
        figures["model"] = (f"V z={model.latent_dim}, M h={model.mdnrnn.config.hidden_size}, {params / 1e6:.1f} M params, "
                            f"{model.spec.env_id or 'bundle'}, torch {torch.get_num_threads()} threads")
        figures["load_avg"] = os.getloadavg()[0]
        serve_flags = ["--max-sessions", str(args.agents + 16), "--max-envs", str(max(args.big_session, 1)),
                       "--max-message-mb", "256", "--device", args.device]
        if args.ray:
            from benchmarks import service_ray

            figures["ray"] = service_ray.measure(args, model.spec, bundle, workdir, serve_flags)
            figures["wall_s"] = time.perf_counter() - wall_start
            service_ray.print_table(args, figures["ray"])
            print(json.dumps({"benchmark": "service-ray", **rounded(figures)}))
            return 0
        for mode in args.observations:
            figures[mode] = measure_mode(args, model, bundle, workdir, mode, serve_flags)
        figures["load_avg_after"] = os.getloadavg()[0]
        wall = time.perf_counter() - wall_start
        figures["wall_s"] = wall
        figures["floors"] = {"agents_vs_in_process": FLOOR_AGENTS_VS_IN_PROCESS,
                             "vector_vs_in_process": FLOOR_VECTOR_VS_IN_PROCESS, "mode": FLOOR_MODE}
        figures["floor_results"] = floor_results(args, figures)
        figures["quick"] = args.quick
        print_table(args, figures, wall)
        print(json.dumps({"benchmark": "service", **rounded(figures)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
