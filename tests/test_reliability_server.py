"""`worldmodel serve` against hostile clients (issue 17, the server's side), on real servers on
loopback: one `worldmodel serve` subprocess with a token takes a fuzz of malformed, oversized and
hostile requests (its RSS is read from /proc), and in-process servers back each promise alone.

The margins are pre-registered in the issue: every hostile request gets its own status within
0.5 s; Health answers within 250 ms throughout; server RSS ends within 100 MB of where it began
once idle worlds are evicted. Model: the untrained Box-action bundle with 64 start contexts, as
real bundles have (a world then holds about 0.8 MB, the leak's unit)."""

from __future__ import annotations

import asyncio
import gc
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import weakref
from pathlib import Path

import grpc
import numpy as np
import pytest
from dm_env_rpc.v1 import connection, error
from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm
from grpc_health.v1 import health_pb2, health_pb2_grpc

from worldmodel.v1 import simulator_pb2 as pb
from worldmodel.v1 import simulator_pb2_grpc as pb_grpc

from reliability_probes import (
    AUTH, DM_METHOD, GARBAGE, HEALTH_METHOD, NATIVE_METHODS, TOKEN, Probe, broadcast, code_of, hostile_probes, pack,
    send_raw,
)

ROOT = Path(__file__).resolve().parent.parent
Code = grpc.StatusCode
REPLY_WITHIN_S = 0.5
HEALTH_WITHIN_S = 0.25
RSS_MARGIN_MB = 100
MESSAGE_CAP = 1000 + len("...")


def on_loop(loop, coroutine, timeout: float = 60):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


@pytest.fixture(scope="module")
def world_bundle(box_bundle) -> str:
    """conftest's untrained Box bundle re-bundled with 64 start contexts (the default of real bundles)."""
    from worldmodel.bundle import write_vmc_bundle

    root = Path(box_bundle).parent
    return str(write_vmc_bundle(root / "bundle64", root / "vae", root / "mdnrnn", [str(root / "store.zarr")], contexts=64))


@pytest.fixture
def start(loop, world_bundle):
    """An in-process server on 127.0.0.1 serving the bundle as "box" (`start(idle_ttl_s=0.3)`)."""
    from services.server import ServerConfig, start_server

    started = []

    def run(**options):
        running = on_loop(loop, start_server({"box": world_bundle}, ServerConfig(port=0, **options)))
        started.append(running)
        return running

    yield run
    for running in started:
        on_loop(loop, running.stop(0))


def target(running) -> str:
    return f"127.0.0.1:{running.port}"


def dm_fails(code: grpc.StatusCode, conn, request, within: float = REPLY_WITHIN_S) -> str:
    began = time.monotonic()
    with pytest.raises(error.DmEnvRpcError) as info:
        conn.send(request)
    assert info.value.code == code.value[0], info.value
    assert time.monotonic() - began < within
    return info.value.message


def rpc_fails(code: grpc.StatusCode, call, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value.details()


# -- 2. amplification: shapes are checked before anything is unpacked --------------------------
def test_dm_env_rpc_rejects_oversized_shapes_before_allocating(start):
    running = start()  # no token: the default
    with grpc.insecure_channel(target(running)) as channel, connection.Connection(channel) as conn:
        world = conn.send(dm.CreateWorldRequest()).world_name
        conn.send(dm.JoinWorldRequest(world_name=world))
        conn.send(dm.StepRequest())  # starts the sequence; the next steps need an action
        tracemalloc.start()
        try:
            for shape in ([8000, 8000], [10**6, 10**6], [3, 10**9], [-1, 8000]):
                assert "must have shape [3]" in dm_fails(Code.INVALID_ARGUMENT, conn, dm.StepRequest(actions={1: broadcast(shape)}))
            assert "not a scalar" in dm_fails(
                Code.INVALID_ARGUMENT, conn, dm.ResetRequest(settings={"seed": dm.Tensor(int64s=dm.Tensor.Int64Array(array=[1]), shape=[8000, 8000])}))
            with connection.Connection(channel) as other:
                assert "not a scalar" in dm_fails(
                    Code.INVALID_ARGUMENT, other, dm.CreateWorldRequest(settings={"temperature": broadcast([8000, 8000], 1.0)}))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, f"{peak / 2**20:.0f} MB allocated while refusing"  # [8000, 8000] alone is 256 MB
        assert conn.send(dm.StepRequest(actions={1: broadcast([3], 0.5)})).state in (dm.RUNNING, dm.TERMINATED)


# -- 3. one registry of record: eviction frees a world entirely ---------------------------------
def test_evicted_dm_env_rpc_world_is_gone_and_its_state_freed(start):
    running = start(idle_ttl_s=0.3)
    registry = running.service.registry
    with grpc.insecure_channel(target(running)) as channel, connection.Connection(channel) as conn:
        world = conn.send(dm.CreateWorldRequest()).world_name
        conn.send(dm.JoinWorldRequest(world_name=world))
        conn.send(dm.StepRequest())
        conn.send(dm.LeaveWorldRequest())
        dreams = weakref.ref(registry.sessions[world].dreams)
        assert registry.total_envs == 1
        deadline = time.monotonic() + 10
        while world in registry.sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        message = dm_fails(Code.NOT_FOUND, conn, dm.JoinWorldRequest(world_name=world))
        assert f"no world {world!r}" in message and "evicted after 0.3 s" in message
        gc.collect()
        assert dreams() is None, "an evicted world's dreams are still referenced"
        assert registry.total_envs == 0 and registry.evicted == 1


# -- 4. a total-envs limit, native and dm_env_rpc alike -----------------------------------------
def test_total_envs_limit_refuses_sessions_and_worlds_with_resource_exhausted(start):
    from services.client import SimulatorClient

    running = start(max_total_envs=5)
    with SimulatorClient(target(running), timeout=30) as client:
        four = client.create_session("box", num_envs=4, observation="latent").session_id
        message = rpc_fails(Code.RESOURCE_EXHAUSTED, client.create_session, "box", num_envs=2, observation="latent")
        assert "limit of 5 envs in all" in message
        with grpc.insecure_channel(target(running)) as channel, connection.Connection(channel) as conn:
            world = conn.send(dm.CreateWorldRequest()).world_name  # the fifth env
            assert "limit of 5 envs" in dm_fails(Code.RESOURCE_EXHAUSTED, conn, dm.CreateWorldRequest())
            rpc_fails(Code.RESOURCE_EXHAUSTED, client.create_session, "box")
            conn.send(dm.DestroyWorldRequest(world_name=world))
            client.close_session(four)
            assert running.service.registry.total_envs == 0
            client.create_session("box", num_envs=5, observation="latent")


def test_200_concurrent_sessions_are_served_and_the_1024_session_limit_holds(start):
    from concurrent.futures import ThreadPoolExecutor

    from services.client import SimulatorClient

    running = start()  # the defaults: 1,024 sessions at most
    barrier = threading.Barrier(200)

    def agent(index: int) -> list[int]:
        with SimulatorClient(target(running), timeout=60) as client:
            sid = client.create_session("box", seed=index, observation="latent").session_id
            barrier.wait(timeout=60)  # all 200 sessions exist before any steps
            return [client.step(sid, np.full((1, 3), 0.5, np.float32)).step for _ in range(2)]

    with ThreadPoolExecutor(200) as pool:
        assert list(pool.map(agent, range(200))) == [[1, 2]] * 200
    with SimulatorClient(target(running), timeout=60) as client, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.create_session("box", observation="latent"), range(1024 - 200)))
        assert "maximum of 1024 sessions" in rpc_fails(Code.RESOURCE_EXHAUSTED, client.create_session, "box")
        with grpc.insecure_channel(target(running)) as channel, connection.Connection(channel) as conn:
            assert "maximum of 1024 sessions" in dm_fails(Code.RESOURCE_EXHAUSTED, conn, dm.CreateWorldRequest())
    assert len(running.service.registry.sessions) == 1024


def test_default_total_envs_limit_is_a_quarter_of_memory_over_the_measured_per_env_state(start, capsys):
    from services.limits import PER_ENV_STATE_BYTES, default_max_total_envs, machine_memory_bytes
    from worldmodel.cli import main

    assert PER_ENV_STATE_BYTES == 128 << 10
    assert default_max_total_envs(64 << 30) == 131_072  # 16 GiB of state at 128 KiB an env
    assert start().service.registry.max_total_envs == machine_memory_bytes() // 4 // PER_ENV_STATE_BYTES
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "128 KiB per env" in text and f"{default_max_total_envs()} here" in text


# -- 5. status messages quote client input bounded ----------------------------------------------
def test_status_messages_quote_at_most_200_characters_of_client_input(start):
    from services.client import SimulatorClient
    from services.status import echo

    assert echo("x" * 500) == repr("x" * 500)[:200] + "..." and echo("short") == "'short'"
    running = start()
    huge = "x" * 200_000
    with SimulatorClient(target(running), timeout=30) as client:
        for call, args in ((client.step, (np.zeros((1, 3), np.float32),)), (client.close_session, ()), (client.reset, ())):
            message = rpc_fails(Code.NOT_FOUND, call, huge, *args)  # was RESOURCE_EXHAUSTED: the trailer overflowed
            assert len(message) <= MESSAGE_CAP and "x" * 150 in message and "..." in message
        assert len(rpc_fails(Code.NOT_FOUND, client.create_session, huge)) <= MESSAGE_CAP
        many = client.create_session("box", num_envs=1024, observation="latent").session_id
        bad = np.full((1024, 3), 5.0, np.float32)  # 1,024 out-of-bounds actions
        assert len(rpc_fails(Code.INVALID_ARGUMENT, client.step, many, bad)) <= MESSAGE_CAP
    with grpc.insecure_channel(target(running)) as channel, connection.Connection(channel) as conn:
        assert len(dm_fails(Code.NOT_FOUND, conn, dm.JoinWorldRequest(world_name=huge))) <= MESSAGE_CAP
        assert len(dm_fails(Code.INVALID_ARGUMENT, conn, dm.CreateWorldRequest(settings={huge: pack(1)}))) <= MESSAGE_CAP
        assert len(dm_fails(Code.NOT_FOUND, conn, dm.CreateWorldRequest(settings={"model": pack(huge)}))) <= MESSAGE_CAP


# -- 6. the token before any parsing; undecodable bytes are INVALID_ARGUMENT, one log line --------
def test_unauthenticated_calls_are_refused_before_parsing(start, caplog):
    running = start(token=TOKEN)
    with grpc.insecure_channel(target(running)) as channel:
        for method in (*NATIVE_METHODS, DM_METHOD):
            for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
                assert "bearer token" in rpc_fails(Code.UNAUTHENTICATED, send_raw, channel, method, GARBAGE[0], metadata)
        assert not [r for r in caplog.records if "undecodable" in r.getMessage()]  # never parsed
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # open without a token


def test_undecodable_requests_are_invalid_argument_with_one_log_line(start, caplog):
    running = start(token=TOKEN)
    caplog.set_level("INFO", logger="worldmodel")
    with grpc.insecure_channel(target(running)) as channel:
        for method in (*NATIVE_METHODS, DM_METHOD, HEALTH_METHOD):
            caplog.clear()
            message = rpc_fails(Code.INVALID_ARGUMENT, send_raw, channel, method, GARBAGE[2], AUTH)
            assert "not a valid" in message
            lines = [r for r in caplog.records if r.name.startswith("worldmodel.serve")]
            assert len(lines) == 1 and lines[0].levelname == "WARNING" and lines[0].exc_info is None, lines
            assert "undecodable request" in lines[0].getMessage() and "\n" not in lines[0].getMessage()


# -- 7. IPv6 loopback ---------------------------------------------------------------------------
def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_serve_binds_the_ipv6_loopback_in_brackets(start):
    from services.server import grpc_address

    assert grpc_address("::1", 5) == "[::1]:5" and grpc_address("127.0.0.1", 5) == "127.0.0.1:5"
    if not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    running = start(host="::1")
    with grpc.insecure_channel(f"[::1]:{running.port}") as channel:
        models = pb_grpc.SimulatorStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.name for m in models.models] == ["box"]


# -- 9. serve and play flags out of range -------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["serve", "b", "--port", "99999"], ["serve", "b", "--port", "-1"],
    ["serve", "b", "--max-message-mb", "0"], ["serve", "b", "--max-message-mb", "-1"],
    ["serve", "b", "--max-message-mb", "4096"], ["serve", "b", "--idle-ttl", "-1"], ["serve", "b", "--idle-ttl", "nan"],
    ["serve", "b", "--max-total-envs", "0"], ["serve", "b", "--max-sessions", "0"], ["serve", "b", "--max-envs", "-5"],
    ["serve", "b", "--batch-window-ms", "-1"], ["serve", "b", "--max-batch-envs", "0"],
    ["play", "--bundle", "b", "--fps", "-1"], ["play", "--bundle", "b", "--steps", "-1"],
    ["play", "--bundle", "b", "--seed", "-1"], ["play", "--bundle", "b", "--temperature", "inf"],
], ids=lambda argv: " ".join(argv[2:] if argv[0] == "serve" else argv[3:]))
def test_serve_and_play_flags_out_of_range_are_one_line_usage_errors(capsys, argv):
    from worldmodel.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"worldmodel {argv[0]}: error: argument {argv[-2]}"), err
    assert "Traceback" not in err


# -- the fuzz: a `worldmodel serve` subprocess with a token --------------------------------------
def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


_HEALTH_POLLER = """
import sys, threading, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
stop, worst, count = threading.Event(), 0.0, 0
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("polling", flush=True)
while not stop.is_set():
    began = time.monotonic()
    stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    worst, count = max(worst, time.monotonic() - began), count + 1
    stop.wait(0.01)
print(count, worst, flush=True)
"""


class HealthWatch:
    """Polls Health every 10 ms from a process of its own (a client thread here would share this
    process's GIL with the fuzz's serialisation of 10 MB requests, and time that instead);
    `worst` is the slowest answer and `checks` their number once the block ends."""

    def __init__(self, address: str):
        self._process = subprocess.Popen([sys.executable, "-c", _HEALTH_POLLER, address], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        self.checks, self.worst = 0, float("inf")

    def __enter__(self):
        assert self._process.stdout.readline() == "polling\n"
        return self

    def __exit__(self, *exc):
        out, _ = self._process.communicate("", timeout=30)
        count, worst = out.split()
        self.checks, self.worst = int(count), float(worst)


@pytest.fixture(scope="module")
def served(world_bundle):
    """`worldmodel serve` with a token and a 2 s idle TTL; yields (address, pid, RSS in MB after a warm-up)."""
    command = [sys.executable, "-m", "worldmodel.cli", "serve", f"box={world_bundle}", "--port", "0",
               "--idle-ttl", "2", "--token-env", "WM_FUZZ_TOKEN"]
    env = {**os.environ, "WM_FUZZ_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
        address = re.fullmatch(r"serving on (127\.0\.0\.1:\d+)\n", lines.get(timeout=90)).group(1)
        with grpc.insecure_channel(address) as channel, connection.Connection(channel, metadata=AUTH) as conn:
            ready = _rss_mb(process.pid)
            _warm_world(conn)  # the first world and step allocate what every later one reuses
            started = _rss_mb(process.pid)
        yield address, process.pid, {"ready": ready, "warm": started}
    finally:
        process.terminate()
        process.wait(timeout=30)


def _warm_world(conn, step: bool = True) -> str:
    world = conn.send(dm.CreateWorldRequest()).world_name
    conn.send(dm.JoinWorldRequest(world_name=world))
    conn.send(dm.StepRequest())  # starts a sequence: resets the dream (its start-context cache fills)
    if step:
        conn.send(dm.StepRequest(actions={1: broadcast([3], 0.5)}))
    conn.send(dm.LeaveWorldRequest())
    return world


def test_every_hostile_request_gets_its_own_status_fast_while_health_stays_fast(served):
    address, pid, _ = served
    with grpc.insecure_channel(address) as channel:
        probes: list[Probe] = hostile_probes(channel)
        outcomes = []
        with HealthWatch(address) as health:
            for probe in probes:
                for metadata in (AUTH, None):
                    began = time.monotonic()
                    code, message = code_of(probe.send, metadata)
                    outcomes.append((probe, metadata, code, message, time.monotonic() - began))
    wrong = [(p.name, bool(m), code, msg[:120]) for p, m, code, msg, _ in outcomes
             if code != (p.expected if m or not p.needs_token else Code.UNAUTHENTICATED)]
    slow = [(p.name, bool(m), round(s, 3)) for p, m, _, _, s in outcomes if s > REPLY_WITHIN_S]
    long = [(p.name, len(msg)) for p, _, _, msg, _ in outcomes if len(msg) > MESSAGE_CAP]
    print(f"\n{len(outcomes)} hostile requests, slowest {max(s for *_, s in outcomes) * 1000:.0f} ms; "
          f"Health: {health.checks} checks, worst {health.worst * 1000:.0f} ms")
    assert len(outcomes) >= 200
    assert not wrong, wrong
    assert not slow, slow
    assert not long, long
    assert health.worst < HEALTH_WITHIN_S, f"Health took {health.worst * 1000:.0f} ms"
    assert Path(f"/proc/{pid}").exists()  # never died


def test_server_memory_returns_after_idle_worlds_are_evicted(served):
    """200 worlds of about 0.8 MB each (160 MB, were they kept) are created, left and evicted."""
    address, pid, rss = served
    with grpc.insecure_channel(address) as channel, HealthWatch(address) as health:
        with connection.Connection(channel, metadata=AUTH) as conn:
            worlds = [_warm_world(conn, step=False) for _ in range(200)]
            peak = _rss_mb(pid)
            time.sleep(2 + 0.5 + 0.5)  # the TTL, an eviction period, and slack
            ended = _rss_mb(pid)
            for world in (worlds[0], worlds[-1]):
                assert "evicted" in dm_fails(Code.NOT_FOUND, conn, dm.JoinWorldRequest(world_name=world))
    print(f"\nserver RSS: {rss['ready']:.0f} MB ready, {rss['warm']:.0f} MB after a warm-up world, "
          f"{peak:.0f} MB after 200 worlds, {ended:.0f} MB after eviction; Health worst {health.worst * 1000:.0f} ms")
    assert ended - rss["warm"] < RSS_MARGIN_MB, (rss, peak, ended)
    assert health.worst < HEALTH_WITHIN_S
