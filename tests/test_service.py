"""The gRPC simulation service against real servers on 127.0.0.1 (free ports).

Servers run in this process on a background asyncio loop (fast), except the
SIGTERM test, which runs `worldmodel serve` as a subprocess. Models: the tiny
V-M-C bundle trained on CartPole (`vmc_runs`, discrete actions and a vector
observation) and an untrained bundle with a Box action space (the checks for
bounds and NaN need a box).
"""

from __future__ import annotations

import datetime
import ipaddress
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

import worldmodel
from services import wire
from services.batcher import BatcherConfig
from services.client import SimulatorClient
from services.server import SERVICE_NAME
from worldmodel.session import DreamBatch
from worldmodel.v1 import simulator_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
Code = grpc.StatusCode


# -- servers ------------------------------------------------------------------
def address(running) -> str:
    return f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def client(server):
    with SimulatorClient(address(server), timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def cartpole(vmc_runs):
    """The same bundle loaded in this process, to step the reference dreams."""
    return worldmodel.load_bundle(vmc_runs["bundle"])


def fails(code: grpc.StatusCode, call, *args, **kwargs) -> str:
    """Run a call that must fail with `code`; returns the server's message."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value.details()


def same(remote: dict[str, np.ndarray], local: dict[str, torch.Tensor]) -> None:
    assert set(remote) == set(local)
    for key, value in local.items():
        expected = value.cpu().numpy()
        assert remote[key].dtype == expected.dtype and remote[key].shape == expected.shape, key
        np.testing.assert_array_equal(remote[key], expected, err_msg=key)


def step_request(session_id: str, array: np.ndarray) -> pb.StepRequest:
    return pb.StepRequest(session_id=session_id, actions=wire.to_tensor(array))


# -- every RPC ----------------------------------------------------------------
def test_list_models(client, cartpole):
    models = {m.name: m for m in client.list_models()}
    assert sorted(models) == ["box", "cartpole"]
    served = models["cartpole"]
    assert served.backends == ["vmc"] and served.latent_size == cartpole.feature_dim
    spec = served.spec
    assert (spec.image, spec.action, spec.vector, spec.env_id) == (
        cartpole.spec.image, cartpole.spec.action, cartpole.spec.vector, "CartPole-v1",
    )
    assert models["box"].spec.action_space().shape == (3,)


def test_round_trip_of_every_rpc(client):
    info = client.create_session("cartpole", num_envs=3, seed=1, max_episode_steps=50)
    assert info.num_envs == 3 and info.backend == "vmc" and info.model.name == "cartpole" and len(info.session_id) >= 16
    sid = info.session_id
    first = client.reset(sid)
    assert first["image"].shape == (3, 64, 64, 3) and first["image"].dtype == np.uint8
    assert first["vector"].shape == (3, 4) and first["vector"].dtype == np.float32
    again = client.reset(sid, seed=1)
    partly = client.reset(sid, seed=99, env_indices=[1])
    np.testing.assert_array_equal(partly["vector"][[0, 2]], again["vector"][[0, 2]])  # only env 1 was reset

    reply = client.step(sid, np.array([0, 1, 1]))
    assert reply.step == 1 and reply.reward.shape == (3,) and reply.reward.dtype == np.float32
    assert reply.terminated.dtype == bool and reply.truncated.dtype == bool
    assert reply.observation["image"].shape == (3, 64, 64, 3)

    replies = list(client.step_stream(sid, [np.array([t % 2, 1, 0]) for t in range(5)]))
    assert [r.step for r in replies] == [2, 3, 4, 5, 6]
    assert all(r.observation["image"].shape == (3, 64, 64, 3) for r in replies)

    client.close_session(sid)
    fails(Code.NOT_FOUND, client.close_session, sid)
    fails(Code.NOT_FOUND, client.step, sid, np.array([0, 1, 1]))


def test_steps_agree_exactly_with_an_in_process_dream_batch(client, cartpole):
    """Same seed, same actions, same resets: the same dreams, bit for bit (a session alone is not fused)."""
    sid = client.create_session("cartpole", num_envs=4, seed=7, max_episode_steps=3).session_id
    local = DreamBatch(cartpole, 4, seed=7, max_episode_steps=3)
    local.reset()
    same(client.reset(sid), local.reset())
    rng = np.random.default_rng(0)
    truncations = 0
    for t in range(7):
        actions = rng.integers(0, 2, size=4)
        mask = np.array([False, t == 3, False, t in (3, 5)])  # NEXT_STEP autoreset of some envs
        if t == 4:
            same(client.reset(sid, seed=3, env_indices=[2, 0]), local.reset(seed=3, indices=[2, 0]))
        remote, mine = client.step(sid, actions, reset_mask=mask), local.step(actions, reset_mask=mask)
        same(remote.observation, mine.observation)
        for field in ("reward", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(remote, field), getattr(mine, field), err_msg=field)
        assert remote.step == t + 1
        truncations += int(remote.truncated.sum())
    assert truncations > 0  # max_episode_steps is honoured
    client.close_session(sid)


def test_png_images_decode_to_the_raw_pixels(client):
    raw = client.create_session("cartpole", num_envs=3, seed=11).session_id
    png = client.create_session("cartpole", num_envs=3, seed=11, png=True).session_id
    message = client.stub.Reset(pb.ResetRequest(session_id=png), timeout=30).observation
    assert not message.HasField("image") and len(message.image_png) == 3
    assert all(blob.startswith(b"\x89PNG\r\n\x1a\n") for blob in message.image_png)
    pairs = [(client.reset(raw, seed=5), client.reset(png, seed=5))]
    for t in range(3):
        actions = np.array([t % 2, 1, 0])
        pairs.append((client.step(raw, actions).observation, client.step(png, actions).observation))
    for a, b in pairs:
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["vector"], b["vector"])
    client.close_session(raw)
    client.close_session(png)


def test_latent_observations(client, cartpole):
    info = client.create_session("cartpole", num_envs=2, seed=5, observation="latent")
    local = DreamBatch(cartpole, 2, seed=5, observation="latent")
    local.reset()
    observation = client.reset(info.session_id)
    assert set(observation) == {"latent"}
    assert observation["latent"].shape == (2, info.model.latent_size) and observation["latent"].dtype == np.float32
    same(observation, local.reset())
    for t in range(4):
        actions = np.array([t % 2, 1])
        remote, mine = client.step(info.session_id, actions), local.step(actions)
        same(remote.observation, mine.observation)
        np.testing.assert_array_equal(remote.reward, mine.reward)
    client.close_session(info.session_id)


# -- many agents at once ------------------------------------------------------
def test_64_concurrent_clients_get_their_own_dreams_and_are_batched(server, cartpole):
    agents, steps = 64, 4
    batcher = server.service.models["cartpole"].batchers["vmc"]
    forwards, envs = batcher.forwards, batcher.envs_stepped
    sessions = len(server.service.registry.sessions)
    barrier = threading.Barrier(agents)
    results: dict[int, tuple[list, list]] = {}
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        try:
            with SimulatorClient(address(server), timeout=60) as c:
                sid = c.create_session("cartpole", seed=1000 + i).session_id
                actions = [np.array([(i + t) % 2]) for t in range(steps)]
                barrier.wait(timeout=60)
                replies = [c.step(sid, a) for a in actions]
                c.close_session(sid)
            results[i] = (actions, replies)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    assert len(results) == agents

    requests = agents * steps
    assert batcher.envs_stepped - envs == requests
    assert batcher.forwards - forwards < requests / 2, (batcher.forwards - forwards, requests)  # fused

    # Each agent got ITS dream: the one-env dream of its seed (a fused batch rounds floats a little differently).
    for i, (actions, replies) in results.items():
        local = DreamBatch(cartpole, 1, seed=1000 + i)
        local.reset()
        for t, (action, reply) in enumerate(zip(actions, replies)):
            mine = local.step(action)
            assert reply.step == t + 1
            np.testing.assert_allclose(reply.reward, mine.reward, atol=1e-4)
            np.testing.assert_allclose(reply.observation["vector"], mine.observation["vector"].numpy(), atol=1e-4)
            np.testing.assert_array_equal(reply.terminated, mine.terminated)
            image = mine.observation["image"].numpy().astype(int)
            assert np.abs(reply.observation["image"].astype(int) - image).max() <= 2
    assert len(server.service.registry.sessions) == sessions  # all closed again


# -- bad requests -------------------------------------------------------------
def test_step_many_carries_many_agents_in_one_message_and_fails_items_alone(server, client, cartpole, serve):
    """services/multiplex.py over StepMany: 8 agents' steps share messages; each dreams its seed's one-env dream
    (as unary Step calls do); a bad action, a lost session and a session named twice fail their items alone."""
    import asyncio

    from services.client import StepError
    from services.multiplex import StepMultiplexer

    agents, steps = 8, 3
    sessions = [client.create_session("cartpole", seed=300 + i).session_id for i in range(agents)]
    lost = client.create_session("cartpole", seed=0).session_id
    client.close_session(lost)

    async def run(target: str, token: str | None = None):
        async with grpc.aio.insecure_channel(target) as channel:
            mux = StepMultiplexer(channel, token=token, timeout=30)

            async def agent(i: int):
                replies = [await mux.step(sessions[i], np.array([(i + t) % 2])) for t in range(steps)]
                return [wire.observation_from_proto(r.observation) for r in replies], replies

            results = await asyncio.gather(*(agent(i) for i in range(agents)))
            outcomes = await asyncio.gather(
                mux.step(sessions[0], np.array([2])), mux.step(sessions[1], np.array([0])),
                mux.step(lost, np.array([0])), return_exceptions=True)
            twice = await asyncio.gather(mux.step(sessions[2], np.array([0])), mux.step(sessions[2], np.array([1])),
                                         return_exceptions=True)
            await mux.close()
            return results, outcomes, twice, mux.messages

    results, outcomes, twice, messages = asyncio.run(run(address(server)))
    assert messages < agents * steps / 2, messages  # shared messages, not one per step
    for i, (observations, replies) in enumerate(results):
        local = DreamBatch(cartpole, 1, seed=300 + i)
        local.reset()
        for t, (observation, reply) in enumerate(zip(observations, replies)):
            mine = local.step(np.array([(i + t) % 2]))
            assert reply.step == t + 1
            np.testing.assert_allclose(observation["vector"], mine.observation["vector"].numpy(), atol=1e-4)
            np.testing.assert_allclose(wire.from_tensor(reply.reward), mine.reward, atol=1e-4)
    bad, fine, gone = outcomes
    assert isinstance(bad, StepError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "[0, 2)" in bad.details()
    assert fine.step == steps + 1  # its batch-mate's bad action did not touch it
    assert isinstance(gone, StepError) and gone.code() == grpc.StatusCode.NOT_FOUND and "no session" in gone.details()
    assert all(isinstance(e, StepError) and e.code() == grpc.StatusCode.INVALID_ARGUMENT for e in twice)
    assert client.step(sessions[2], np.array([0])).step == steps + 1  # neither of the twice-named steps was applied

    running = serve(token="s3cret")  # auth: the stream without the token is refused before anything is parsed
    with SimulatorClient(address(running), token="s3cret", timeout=30) as authed:
        sessions[0] = authed.create_session("cartpole", seed=0).session_id
    with pytest.raises(grpc.RpcError) as info:  # the stream's status, as a Step call's
        asyncio.run(run(address(running), token="wrong"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_model_backend_and_session_are_not_found(client):
    assert "cartpole" in fails(Code.NOT_FOUND, client.create_session, "no-such-model")
    assert "vmc" in fails(Code.NOT_FOUND, client.create_session, "cartpole", backend="diffusion")
    for call, args in (
        (client.reset, ()),
        (client.step, (np.array([0]),)),
        (client.step_stream, ([np.array([0])],)),
        (client.close_session, ()),
    ):
        assert "no session" in fails(Code.NOT_FOUND, call, "not-a-session", *args)


@pytest.mark.parametrize(
    "actions, expected",
    [
        (np.array([0, 1, 0]), r"expected DTYPE_INT64 of shape \(2,\) \(one action of Discrete\(2\) per env\), got DTYPE_INT64 of shape \(3,\)"),
        (np.array([[0], [1]]), r"of shape \(2,\).*got DTYPE_INT64 of shape \(2, 1\)"),
        (np.array([0.0, 1.0]), r"expected DTYPE_INT64.*got DTYPE_FLOAT32"),
        (np.array([True, False]), r"expected DTYPE_INT64.*got DTYPE_BOOL"),
        (np.array([0, 2]), r"in \[0, 2\), got \[0, 2\]"),
        (np.array([-1, 0]), r"in \[0, 2\)"),
    ],
    ids=["shape", "rank", "float", "bool", "above", "below"],
)
def test_bad_discrete_actions_are_invalid_argument(client, actions, expected):
    sid = client.create_session("cartpole", num_envs=2, seed=0).session_id
    other = client.create_session("cartpole", num_envs=1, seed=0).session_id
    assert re.search(expected, fails(Code.INVALID_ARGUMENT, client.step, sid, actions))
    assert re.search(expected, fails(Code.INVALID_ARGUMENT, client.step_stream, sid, [actions]))
    assert client.step(sid, np.array([1, 0])).step == 1  # the bad requests changed nothing
    assert client.step(other, np.array([1])).step == 1
    client.close_session(sid)
    client.close_session(other)


@pytest.mark.parametrize(
    "actions, expected",
    [
        (np.array([[np.nan, 0, 0], [0, 0, 0]], np.float32), "NaN"),
        (np.array([[0, 0, 0], [0, np.inf, 0]], np.float32), "NaN or infinite"),
        (np.array([[2, 0, 0], [0, 0, 0]], np.float32), r"must lie in \[\[-1.0, 0.0, 0.0\], \[1.0, 1.0, 1.0\]\]"),
        (np.array([[0, -0.5, 0], [0, 0, 0]], np.float32), r"must lie in"),
        (np.zeros((2, 2), np.float32), r"expected DTYPE_FLOAT32 of shape \(2, 3\) \(one action of Box\(.*got DTYPE_FLOAT32 of shape \(2, 2\)"),
        (np.zeros((2, 3), np.int64), r"expected DTYPE_FLOAT32.*got DTYPE_INT64"),
    ],
    ids=["nan", "inf", "above", "below", "shape", "dtype"],
)
def test_bad_box_actions_are_invalid_argument(client, actions, expected):
    sid = client.create_session("box", num_envs=2, seed=0).session_id
    assert re.search(expected, fails(Code.INVALID_ARGUMENT, client.step, sid, actions))
    assert client.step(sid, np.array([[1, 1, 1], [-1, 0, 0]], np.float32)).step == 1  # bounds are inclusive
    hair = np.array([[1 + 5e-7, 1, 1], [-1 - 5e-7, 0, 0]], np.float32)  # float rounding of a bound: the spec's tolerance
    assert client.step(sid, hair).step == 2
    client.close_session(sid)


def test_the_wire_codes_every_observation_mode():
    from worldmodel.session import OBSERVATION_MODES

    assert tuple(wire.OBSERVATION_MODE_CODES) == OBSERVATION_MODES


def test_other_malformed_requests_are_invalid_argument(client):
    sid = client.create_session("cartpole", num_envs=2, seed=0).session_id
    call = client.stub.Step
    assert "got DTYPE_UNSPECIFIED of shape ()" in fails(Code.INVALID_ARGUMENT, call, pb.StepRequest(session_id=sid), timeout=30)
    short = pb.StepRequest(session_id=sid, actions=pb.Tensor(dtype=pb.DTYPE_INT64, shape=[2], data=b"\0" * 9))
    assert "needs 16 bytes, got 9" in fails(Code.INVALID_ARGUMENT, call, short, timeout=30)
    assert "reset_mask must have 2 entries" in fails(Code.INVALID_ARGUMENT, client.step, sid, np.array([0, 1]), [True])
    assert "env indices must be in [0, 2)" in fails(Code.INVALID_ARGUMENT, client.reset, sid, env_indices=[2])
    assert re.search(r"seeds? must be >= 0", fails(Code.INVALID_ARGUMENT, client.reset, sid, seed=-1))
    assert "1 seeds for 2 envs" in fails(Code.INVALID_ARGUMENT, client.reset, sid, seeds=[1])
    assert "seeds must be >= 0" in fails(Code.INVALID_ARGUMENT, client.reset, sid, seeds=[1, -2])
    assert "not both" in fails(Code.INVALID_ARGUMENT, client.reset, sid, seed=1, seeds=[1, 2])
    for options, expected in (
        ({"num_envs": -1}, "num_envs must be >= 1"),
        ({"temperature": float("nan")}, "temperature must be a finite number > 0"),
        ({"seed": -3}, "seed must be >= 0"),
        ({"max_episode_steps": -1}, "max_episode_steps must be >= 0"),
    ):
        assert expected in fails(Code.INVALID_ARGUMENT, client.create_session, "cartpole", **options)
    odd = pb.CreateSessionRequest(model="cartpole", observation_mode=9)
    assert "unknown observation_mode 9" in fails(Code.INVALID_ARGUMENT, client.stub.CreateSession, odd, timeout=30)
    assert client.step(sid, np.array([0, 1])).step == 1
    client.close_session(sid)


def test_limits_are_resource_exhausted(serve):
    running = serve(max_sessions=2, max_envs_per_session=4, max_message_bytes=40_000)
    with SimulatorClient(address(running), timeout=30) as c:
        assert "limit of 4 per session" in fails(Code.RESOURCE_EXHAUSTED, c.create_session, "cartpole", num_envs=5)
        # 4 raw frames of 64x64x3 (49 kB) do not fit a 40 kB reply; PNG or latent observations do.
        assert "PNG images or latent" in fails(Code.RESOURCE_EXHAUSTED, c.create_session, "cartpole", num_envs=4)
        a = c.create_session("cartpole", num_envs=2, seed=0).session_id
        b = c.create_session("cartpole", num_envs=4, observation="latent").session_id
        assert "maximum of 2 sessions" in fails(Code.RESOURCE_EXHAUSTED, c.create_session, "cartpole")
        c.close_session(b)
        b = c.create_session("cartpole", num_envs=4, png=True).session_id
        assert "larger than max" in fails(Code.RESOURCE_EXHAUSTED, c.step, a, np.zeros(10_000, np.int64))  # 80 kB
        assert c.step(a, np.array([0, 1])).step == 1 and c.step(b, np.array([0, 1, 1, 0])).step == 1
        assert running.service.registry.sessions.keys() == {a, b}


# -- auth, TLS, health, reflection --------------------------------------------
def test_bearer_token_auth(serve):
    running = serve(token="s3cret")
    for token in (None, "wrong"):
        with SimulatorClient(address(running), token=token, timeout=30) as c:
            assert "bearer token" in fails(Code.UNAUTHENTICATED, c.list_models)
            fails(Code.UNAUTHENTICATED, c.create_session, "cartpole")
            fails(Code.UNAUTHENTICATED, c.step_stream, "any", [np.array([0])])
    with SimulatorClient(address(running), token="s3cret", timeout=30) as c:
        sid = c.create_session("cartpole", seed=0).session_id
        assert [r.step for r in c.step_stream(sid, [np.array([0]), np.array([1])])] == [1, 2]
        c.close_session(sid)
    with grpc.insecure_channel(address(running)) as channel:  # health needs no token
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key (the `cryptography` package, else the openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available to make a test certificate")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return cert, key


def test_tls(serve, tmp_path):
    cert, key = _self_signed_certificate(tmp_path)
    running = serve(tls_cert=str(cert), tls_key=str(key), token="s3cret")
    with SimulatorClient(address(running), root_certificates=cert.read_bytes(), token="s3cret", timeout=30) as c:
        sid = c.create_session("cartpole", seed=0).session_id
        assert c.step(sid, np.array([1])).step == 1
    with SimulatorClient(address(running), token="s3cret", timeout=5) as plain:  # no TLS: no connection
        fails(Code.UNAVAILABLE, plain.list_models)


def test_health_overall_and_per_model(server):
    with grpc.insecure_channel(address(server)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME, f"{SERVICE_NAME}/cartpole", f"{SERVICE_NAME}/box"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        fails(Code.NOT_FOUND, stub.Check, health_pb2.HealthCheckRequest(service=f"{SERVICE_NAME}/nope"), timeout=10)


def test_reflection_lists_and_calls_the_service_without_generated_stubs(server):
    """A generic client: every class comes from the server's reflection descriptors."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(address(server)) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"worldmodel.v1.Simulator", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("worldmodel.v1.Simulator")
        assert {m.name for m in service.methods} == {"ListModels", "CreateSession", "Reset", "Step", "StepStream", "StepMany",
                                                     "CloseSession"}

        def call(name: str, **fields):
            method = service.methods_by_name[name]
            request_class = message_factory.GetMessageClass(method.input_type)
            reply_class = message_factory.GetMessageClass(method.output_type)
            rpc = channel.unary_unary(
                f"/{service.full_name}/{name}",
                request_serializer=request_class.SerializeToString,
                response_deserializer=reply_class.FromString,
            )
            return rpc(request_class(**fields), timeout=30)

        models = call("ListModels")
        assert type(models) is not pb.ListModelsResponse
        assert sorted(m.name for m in models.models) == ["box", "cartpole"]
        created = call("CreateSession", model="cartpole", num_envs=2, seed=3)
        int64 = pool.FindEnumTypeByName("worldmodel.v1.DType").values_by_name["DTYPE_INT64"].number
        actions = {"dtype": int64, "shape": [2], "data": np.array([0, 1], "<i8").tobytes()}
        reply = call("Step", session_id=created.session_id, actions=actions)
        assert reply.step == 1 and list(reply.reward.shape) == [2]
        assert np.frombuffer(reply.reward.data, "<f4").shape == (2,)
        call("CloseSession", session_id=created.session_id)


# -- time: deadlines, eviction; disconnects; shutdown -------------------------
def test_deadlines_are_honoured(serve):
    """A step that waits in a long batch window past its deadline fails, and is never applied."""
    running = serve(batcher=BatcherConfig(window_s=0.6))
    with SimulatorClient(address(running), timeout=30) as c:
        sid = c.create_session("cartpole", num_envs=2, seed=0).session_id
        other = c.create_session("cartpole", seed=1).session_id
        c.step(other, np.array([0]))  # the batcher now expects `other` in the next round: it waits the window for it
        started = time.monotonic()
        fails(Code.DEADLINE_EXCEEDED, c.stub.Step, step_request(sid, np.array([0, 1])), timeout=0.05)
        assert time.monotonic() - started < 0.5
        assert c.step(sid, np.array([0, 1])).step == 1  # the expired step was dropped from its batch


def test_a_lone_session_never_waits_for_the_batch_window(serve):
    """Once the batcher knows who steps, a round closes when all of them are in: alone, no window is waited."""
    running = serve(batcher=BatcherConfig(window_s=0.6))
    with SimulatorClient(address(running), timeout=30) as c:
        sid = c.create_session("cartpole", num_envs=2, seed=0).session_id
        c.step(sid, np.array([0, 1]))
        started = time.monotonic()
        for t in range(3):
            c.step(sid, np.array([t % 2, 1]))
        assert time.monotonic() - started < 0.6  # one window of 0.6 s would already be over


def test_idle_sessions_are_evicted(serve):
    running = serve(idle_ttl_s=0.4)
    with SimulatorClient(address(running), timeout=30) as c:
        idle = c.create_session("cartpole", seed=0).session_id
        busy = c.create_session("cartpole", seed=1).session_id
        for _ in range(10):  # 1 s: two and a half TTLs
            c.step(busy, np.array([0]))
            time.sleep(0.1)
        assert "evicted after 0.4 s idle" in fails(Code.NOT_FOUND, c.step, idle, np.array([0]))
        assert c.step(busy, np.array([1])).step == 11
        assert running.service.registry.evicted == 1


def test_client_disconnect_mid_stream_frees_the_stream(server, client):
    sid = client.create_session("cartpole", seed=0).session_id
    requests: queue.Queue = queue.Queue()

    def pending():  # a stream whose client never closes it
        while (item := requests.get()) is not None:
            yield item

    call = client.stub.StepStream(pending())
    requests.put(step_request(sid, np.array([1])))
    assert next(call).step == 1
    assert server.service.open_streams == 1
    call.cancel()  # the client goes away mid-stream
    deadline = time.monotonic() + 10
    while server.service.open_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    requests.put(None)
    assert server.service.open_streams == 0
    assert client.step(sid, np.array([0])).step == 2  # the session, and the server, carry on
    assert [r.step for r in client.step_stream(sid, [np.array([0])])] == [3]
    client.close_session(sid)


def test_sigterm_drains_in_flight_calls_and_exits_cleanly(vmc_runs, tmp_path):
    log = tmp_path / "serve.log"
    command = [
        sys.executable, "-m", "worldmodel.cli", "serve", f"cartpole={vmc_runs['bundle']}",
        "--host", "127.0.0.1", "--port", "0", "--batch-window-ms", "700",
    ]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
        line = lines.get(timeout=90)
        port = int(re.fullmatch(r"serving on 127\.0\.0\.1:(\d+)\n", line).group(1))
        with SimulatorClient(f"127.0.0.1:{port}", timeout=30) as c:
            sid = c.create_session("cartpole", seed=0).session_id
            reply: dict = {}
            in_flight = threading.Thread(target=lambda: reply.setdefault("step", c.step(sid, np.array([1]))))
            in_flight.start()
            time.sleep(0.3)  # the step now waits in the 700 ms batch window
            process.send_signal(signal.SIGTERM)
            in_flight.join(timeout=30)
            assert reply["step"].step == 1  # drained, not dropped
            assert process.wait(timeout=30) == 0
        text = log.read_text()
        assert "draining" in text and "stopped" in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
