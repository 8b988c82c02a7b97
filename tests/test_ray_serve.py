"""`worldmodel serve --ray`: the service on Ray Serve with 2 replicas, through Serve's gRPC proxy.

One real `worldmodel serve --ray --replicas 2` subprocess (its own embedded Ray) serves the module; the
last test stops it with SIGTERM. Clients are the project's unchanged ones (SimulatorClient, Remote-v0,
the StepMany multiplexer, dm_env_rpc's own client).
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import gymnasium
import numpy as np
import psutil
import pytest
from dm_env_rpc.v1 import connection, dm_env_adaptor, error
from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm
from grpc_health.v1 import health_pb2, health_pb2_grpc

import worldmodel
from services.client import SimulatorClient
from services.wire import owner_of
from worldmodel.session import DreamBatch

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "serve-on-ray-test-token"
Code = grpc.StatusCode
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


@pytest.fixture(scope="module")
def served(box_bundle, tmp_path_factory):
    """`worldmodel serve --ray box=BUNDLE --replicas 2 --token-env ...`, up; yields (process, address)."""
    log = tmp_path_factory.mktemp("serve-ray") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(WM_TEST_TOKEN=TOKEN, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "worldmodel.cli", "serve", f"box={box_bundle}", "--ray", "--replicas", "2",
               "--port", "0", "--token-env", "WM_TEST_TOKEN", "--idle-ttl", "300"]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                   start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=240)
    except queue.Empty:
        process.kill()
        pytest.fail(f"serve --ray did not start in 240 s: {log.read_text()[-3000:]}")
    match = re.fullmatch(r"serving on 127\.0\.0\.1:(\d+)\n", line)
    assert match, (line, log.read_text()[-3000:])
    yield process, f"127.0.0.1:{match.group(1)}", log
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def client(address: str, **options) -> SimulatorClient:
    return SimulatorClient(address, token=TOKEN, timeout=60, **options)


def fails(code: Code, call, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def test_sessions_spread_over_both_replicas_and_dream_as_in_process(served, box_bundle):
    _, address, _ = served
    model = worldmodel.load_bundle(box_bundle)
    rng = np.random.default_rng(0)
    with client(address) as c:
        sessions = [c.create_session("box", seed=40 + i).session_id for i in range(4)]
        owners = [owner_of(s) for s in sessions]
        assert len(set(owners)) == 2 and owners[0] != owners[1]  # new sessions alternate between replicas
        for seed, sid in zip((40, 41), sessions[:2]):  # one session on each replica
            local = DreamBatch(model, 1, seed=seed)
            local.reset()  # as the server does when it creates the session
            expected = local.reset()
            np.testing.assert_array_equal(c.reset(sid)["image"], expected["image"].numpy())
            for _ in range(4):
                actions = rng.uniform([-1, 0, 0], [1, 1, 1], (1, 3)).astype(np.float32)
                remote, mine = c.step(sid, actions), local.step(actions)
                np.testing.assert_array_equal(remote.observation["image"], mine.observation["image"].numpy())
                np.testing.assert_array_equal(remote.reward, mine.reward)
        with c.open_step_stream(sessions[2]) as stream:  # a StepStream reaches its session's replica
            assert [stream.step(np.zeros((1, 3), np.float32)).step for _ in range(3)] == [1, 2, 3]
        big = c.create_session("box", num_envs=400).session_id  # replies of 4.9 MB: past Serve's 4 MiB default
        assert c.step(big, np.zeros((400, 3), np.float32)).observation["image"].shape == (400, 64, 64, 3)
        c.close_session(big)
        for sid in sessions:
            c.close_session(sid)
        fails(Code.NOT_FOUND, c.step, sessions[0], np.zeros((1, 3), np.float32))


def test_remote_env_step_many_and_dm_env_rpc_work_unchanged(served):
    from services.multiplex import StepMultiplexer

    _, address, _ = served
    env = gymnasium.make("worldmodel/Remote-v0", address=address, model="box", token=TOKEN)
    observation, _ = env.reset(seed=3)
    assert observation.shape == (64, 64, 3)
    for _ in range(3):
        observation, reward, *_ = env.step(env.action_space.sample())
    env.close()

    async def multiplexed() -> list[int]:  # one StepMany multiplexer, sessions on both replicas
        with client(address) as c:
            sessions = [c.create_session("box", seed=i).session_id for i in range(4)]
        assert len({owner_of(s) for s in sessions}) == 2
        async with grpc.aio.insecure_channel(address) as channel:
            mux = StepMultiplexer(channel, token=TOKEN)
            for _ in range(2):
                replies = await asyncio.gather(*(mux.step(s, np.zeros((1, 3), np.float32)) for s in sessions))
            await mux.close()
        return [reply.step for reply in replies]

    assert asyncio.run(multiplexed()) == [2, 2, 2, 2]

    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(address) as channel, connection.Connection(channel, metadata=metadata) as conn:
        dm_env, world = dm_env_adaptor.create_and_join_world(conn, create_world_settings={"seed": 1}, join_world_settings={})
        assert dm_env.reset().first() and owner_of(world)
        assert dm_env.step({"action": np.zeros(3, np.float32)}).observation["image"].shape == (64, 64, 3)
        refusals = []
        for _ in range(2):  # new connections alternate between the replicas: one reaches the other replica
            with grpc.insecure_channel(address) as other_channel, \
                    connection.Connection(other_channel, metadata=metadata) as other:
                with pytest.raises(error.DmEnvRpcError) as caught:
                    other.send(dm.JoinWorldRequest(world_name=world))
                refusals.append(str(caught.value))
        assert any("not on the replica of this connection" in message for message in refusals), refusals
        dm_env.close()


def test_auth_health_and_loopback(served):
    process, address, _ = served
    with SimulatorClient(address, timeout=30) as anonymous:
        fails(Code.UNAUTHENTICATED, anonymous.list_models)
        fails(Code.UNAUTHENTICATED, anonymous.create_session, "box")
        with client(address) as c:
            sid = c.create_session("box").session_id
        fails(Code.UNAUTHENTICATED, anonymous.step, sid, np.zeros((1, 3), np.float32))
        with pytest.raises(grpc.RpcError) as caught:
            anonymous.open_step_stream(sid).step(np.zeros((1, 3), np.float32))
        assert caught.value.code() == Code.UNAUTHENTICATED
    with SimulatorClient(address, token="wrong", timeout=30) as impostor:
        fails(Code.UNAUTHENTICATED, impostor.reset, sid)
    with grpc.insecure_channel(address) as channel:  # health needs no token, as on the single server
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="worldmodel.v1.Simulator/box"), timeout=30).status \
            == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=30)
        assert caught.value.code() == Code.NOT_FOUND
    # Every socket the service's processes listen on is on loopback (Serve binds "[::]" unless told).
    session = os.getsid(process.pid)
    listening = []
    for connection_ in psutil.net_connections(kind="tcp"):
        if connection_.status != psutil.CONN_LISTEN or connection_.pid is None:
            continue
        try:
            if os.getsid(connection_.pid) == session:
                listening.append(connection_.laddr)
        except ProcessLookupError:
            continue
    assert listening and all(laddr.ip in LOOPBACK for laddr in listening), listening
    assert int(address.rpartition(":")[2]) in {laddr.port for laddr in listening}


def replica_pids(process) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if os.getsid(p.pid) == os.getsid(process.pid) and "ServeReplica" in " ".join(p.info["cmdline"] or [])]


def test_a_killed_replica_loses_only_its_own_sessions(served):
    process, address, _ = served
    action = np.zeros((1, 3), np.float32)
    with client(address) as c:
        sessions = [c.create_session("box", seed=i).session_id for i in range(6)]
        envs = [gymnasium.make("worldmodel/Remote-v0", address=address, model="box", token=TOKEN) for _ in range(2)]
        for env in envs:
            env.reset(seed=0)
            env.step(env.action_space.sample())
        env_owners = [owner_of(env.unwrapped.session_id) for env in envs]
        assert len(set(env_owners)) == 2
        for sid in sessions:
            c.reset(sid)
            c.step(sid, action)
        pids = replica_pids(process)
        assert len(pids) == 2, pids
        os.kill(pids[0], signal.SIGKILL)
        started = time.monotonic()
        lost, alive = set(), set()
        for sid in sessions:
            try:
                assert c.step(sid, action).step == 2
                alive.add(sid)
            except grpc.RpcError as err:
                assert err.code() in (Code.NOT_FOUND, Code.UNAVAILABLE) and "lost" in err.details(), err.details()
                lost.add(sid)
        assert time.monotonic() - started < 30
        assert lost and alive
        assert len({owner_of(s) for s in lost}) == 1 and not {owner_of(s) for s in lost} & {owner_of(s) for s in alive}
        dead = owner_of(next(iter(lost)))
        for sid in alive:  # the other replica's sessions carry on
            assert c.step(sid, action).step == 3
        victim, survivor = (envs[0], envs[1]) if env_owners[0] == dead else (envs[1], envs[0])
        with pytest.raises(ValueError, match="lost"):  # its StepStream broke: the env says why
            victim.step(victim.action_space.sample())
        victim.reset(seed=1)  # a new session, on a live replica
        assert owner_of(victim.unwrapped.session_id) != dead
        victim.step(victim.action_space.sample())
        survivor.step(survivor.action_space.sample())
        for env in envs:
            env.close()


def test_sigterm_stops_the_service_cleanly(served):
    process, address, log = served
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
    time.sleep(1)
    with SimulatorClient(address, token=TOKEN, timeout=5) as c:
        fails(Code.UNAVAILABLE, c.list_models)


@pytest.mark.slow  # its own Serve start (about 30 s): make test stays under 15 minutes; eviction itself is the
def test_idle_sessions_are_evicted_on_a_replica(box_bundle, tmp_path):  # single server's code, tested fast there
    command = [sys.executable, "-m", "worldmodel.cli", "serve", f"box={box_bundle}", "--ray", "--port", "0",
               "--idle-ttl", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with (tmp_path / "serve.log").open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                   start_new_session=True)
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"serving on 127\.0\.0\.1:(\d+)\n", line)
        assert match, (line, (tmp_path / "serve.log").read_text()[-3000:])
        with SimulatorClient(f"127.0.0.1:{match.group(1)}", timeout=30) as c:
            kept, idle = (c.create_session("box").session_id for _ in range(2))
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:  # one session stays busy, the other idles past the TTL
                c.step(kept, np.zeros((1, 3), np.float32))
                time.sleep(0.2)
            assert "evicted after 1 s idle" in fails(Code.NOT_FOUND, c.step, idle, np.zeros((1, 3), np.float32))
            c.step(kept, np.zeros((1, 3), np.float32))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_serve_config_file_is_a_valid_deployment_of_the_service(box_bundle, monkeypatch):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from services.ray_serve import SERVICER_FUNCTIONS, build_app

    config = yaml.safe_load((ROOT / "services" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.grpc_options.grpc_servicer_functions == SERVICER_FUNCTIONS
    (app,) = config["applications"]
    assert app["import_path"] == "services.ray_serve:build_app" and app["deployments"][0]["name"] == "Simulator"
    monkeypatch.setenv("WM_TEST_TOKEN", TOKEN)
    application = build_app({**app["args"], "bundles": {"box": box_bundle}, "token_env": "WM_TEST_TOKEN"})
    assert application._bound_deployment.name == "Simulator"
    from services.ray_serve import ReplicaOptions, simulator_app
    from services.server import ServerConfig

    autoscaled = simulator_app({"box": box_bundle}, ServerConfig(), ReplicaOptions(replicas=1, max_replicas=3))
    scaling = autoscaled._bound_deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 3)
    on_gpus = simulator_app({"box": box_bundle}, ServerConfig(), ReplicaOptions(gpus_per_replica=0.5))._bound_deployment
    assert on_gpus.ray_actor_options["num_gpus"] == 0.5 and on_gpus.init_args[1].device == "cuda"
    with pytest.raises(ValueError, match="unknown args"):
        build_app({"bundles": {"box": box_bundle}, "replicas": 2})
    with pytest.raises(ValueError, match="bundles"):
        build_app({})
    monkeypatch.delenv("WM_TEST_TOKEN")
    with pytest.raises(ValueError, match="WM_TEST_TOKEN"):
        build_app({"bundles": {"box": box_bundle}, "token_env": "WM_TEST_TOKEN"})


@pytest.mark.parametrize("flags, message", [
    (["--replicas", "2"], "need --ray"),
    (["--ray", "--tls-cert", "c", "--tls-key", "k"], "no TLS"),
    (["--ray", "--replicas", "3-2"], "MIN <= MAX"),
    (["--ray", "--gpus-per-replica", "1"], "no CUDA device"),
    (["broken=/nonexistent/bundle", "--ray"], "bundle broken"),
])
@pytest.mark.timeout(60)
def test_ray_flags_that_cannot_work_are_one_line(box_bundle, flags, message, capsys):
    from worldmodel.cli import main

    try:  # in this process: each is refused before Ray or Serve starts
        code = main(["serve", box_bundle, *flags])
    except SystemExit as refused:
        code = refused.code
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr, stderr
    if "usage:" not in stderr:  # argparse's refusals come with the usage line
        assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.slow  # a Ray head, a job and Serve's start: about 90 s
@pytest.mark.timeout(420)
def test_serve_ray_runs_under_ray_job_submit(box_bundle):
    import shutil

    from test_train_ray import _free_port, _stop_head, _wait_for, start_ray_head

    ray_bin, env, head, address, temp_dir = start_ray_head()
    port = _free_port()
    try:
        submit = [ray_bin, "job", "submit", "--address", address, "--no-wait", "--", "worldmodel", "serve",
                  f"box={box_bundle}", "--ray", "--port", str(port)]
        deadline = time.monotonic() + 120
        while (submitted := subprocess.run(submit, env=env, capture_output=True, text=True)).returncode != 0:
            assert time.monotonic() < deadline, submitted.stderr[-2000:]
            time.sleep(3)
        job_id = next(line.split("'")[1] for line in submitted.stdout.splitlines() if "submitted successfully" in line)

        def answers() -> bool:
            try:
                with SimulatorClient(f"127.0.0.1:{port}", timeout=5) as c:
                    return [m.name for m in c.list_models()] == ["box"]
            except grpc.RpcError:
                return False

        _wait_for(answers, 240, "the service under the job", head)
        with SimulatorClient(f"127.0.0.1:{port}", timeout=60) as c:
            sid = c.create_session("box", seed=0).session_id
            assert owner_of(sid) and c.step(sid, np.zeros((1, 3), np.float32)).step == 1
        subprocess.run([ray_bin, "job", "stop", "--address", address, job_id], env=env, capture_output=True, timeout=120)
        _wait_for(lambda: not answers(), 120, "the service to go with its job")
        logs = subprocess.run([ray_bin, "job", "logs", "--address", address, job_id], env=env,
                              capture_output=True, text=True).stdout
        assert "Started a local Ray instance" not in logs  # it joined the cluster
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
