"""dm_env_rpc v1 on `worldmodel serve`: dm-env-rpc's own client and compliance suite against a real
server on 127.0.0.1 (in this process, on the background loop), serving the tiny CartPole V-M-C
bundle (discrete actions, a vector observation) and the untrained Box-action bundle."""

from __future__ import annotations

import threading
import time

import dm_env
import grpc
import numpy as np
import pytest
from dm_env_rpc.v1 import compliance, connection, dm_env_adaptor, error, tensor_utils
from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm
from google.protobuf import any_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

import worldmodel
from services.batcher import BatcherConfig
from services.client import SimulatorClient
from services.dm_environment import SERVICE_NAME as DM_SERVICE
from worldmodel.session import DreamBatch

Code = grpc.StatusCode


def address(running) -> str:
    return f"127.0.0.1:{running.port}"


def pack(value, dtype=None) -> dm.Tensor:
    return tensor_utils.pack_tensor(value, dtype=dtype)


def fails(code: grpc.StatusCode, conn, request) -> str:
    """Send a request that must come back as an in-stream error with `code`; returns its message."""
    with pytest.raises(error.DmEnvRpcError) as info:
        conn.send(request)
    assert info.value.code == code.value[0], info.value
    return info.value.message


# -- the protocol's compliance suite -------------------------------------------------------
@pytest.fixture(scope="class")
def compliance_server(request, server):
    request.cls.address = address(server)


class _OnOurServer:
    """A fresh connection per test; `world_settings` pick the model (two are served, so `model` is required)."""

    address: str
    world_settings: dict = {"model": pack("cartpole")}

    def setUp(self):
        super().setUp()
        self._channel = grpc.insecure_channel(self.address)
        self._connection = connection.Connection(self._channel)
        self._world = None

    def tearDown(self):
        try:
            super().tearDown()
            if self._world is not None:
                self._connection.send(dm.LeaveWorldRequest())
                self._connection.send(dm.DestroyWorldRequest(world_name=self._world))
        finally:
            self._connection.close()
            self._channel.close()

    @property
    def connection(self):
        return self._connection

    def _create(self) -> str:
        self._world = self._connection.send(dm.CreateWorldRequest(settings=self.world_settings)).world_name
        return self._world


@pytest.mark.usefixtures("compliance_server")
class TestCreateDestroyWorld(_OnOurServer, compliance.CreateDestroyWorld):
    required_world_settings = property(lambda self: dict(self.world_settings))
    has_multiple_world_support = property(lambda self: True)
    invalid_world_settings = property(lambda self: {
        "observation": pack("voxels"), "seed": pack("zero"), "temperature": pack(-1.0),
        "max_episode_steps": pack(-3), "backend": pack("nope"), "colour": pack("blue"),
    })


@pytest.mark.usefixtures("compliance_server")
class TestJoinLeaveWorld(_OnOurServer, compliance.JoinLeaveWorld):
    invalid_join_settings = property(lambda self: {"seed": pack(1)})

    def setUp(self):
        super().setUp()
        self._create()

    world_name = property(lambda self: self._world)


@pytest.mark.usefixtures("compliance_server")
class TestReset(_OnOurServer, compliance.Reset):
    def setUp(self):
        super().setUp()
        self._create()

    def join_world(self):
        return self._connection.send(dm.JoinWorldRequest(world_name=self._world)).specs


@pytest.mark.usefixtures("compliance_server")
class TestResetWorld(_OnOurServer, compliance.ResetWorld):
    def setUp(self):
        super().setUp()
        self._create()

    world_name = property(lambda self: self._world)


class _Joined(_OnOurServer):
    action = pack(np.int64(0))

    def setUp(self):
        super().setUp()
        self._specs = self._connection.send(dm.JoinWorldRequest(world_name=self._create())).specs

    specs = property(lambda self: self._specs)
    required_actions = property(lambda self: {1: self.action})


@pytest.mark.usefixtures("compliance_server")
class TestStepDiscretePixels(_Joined, compliance.Step):
    pass


@pytest.mark.usefixtures("compliance_server")
class TestStepDiscreteLatent(_Joined, compliance.Step):
    world_settings = {"model": pack("cartpole"), "observation": pack("latent")}


@pytest.mark.usefixtures("compliance_server")
class TestStepBoxPixels(_Joined, compliance.Step):
    world_settings = {"model": pack("box")}
    action = pack(np.zeros(3, np.float32))


# -- dm-env-rpc's dm_env adaptor drives the dream -------------------------------------------
def test_dm_env_adaptor_steps_the_same_dream_as_an_in_process_batch(server, vmc_runs):
    """Same seed, same actions: the dm_env Environment shows what a local DreamBatch dreams, and maps
    a dream's end onto LAST with the protocol's discount (0 terminated, 1 interrupted)."""
    local_model = worldmodel.load_bundle(vmc_runs["bundle"])
    local = DreamBatch(local_model, 1, seed=7, max_episode_steps=6)
    rng = np.random.default_rng(0)
    with grpc.insecure_channel(address(server)) as channel, connection.Connection(channel) as conn:
        env, world = dm_env_adaptor.create_and_join_world(
            conn, create_world_settings={"model": "cartpole", "seed": 7, "max_episode_steps": 6}, join_world_settings={},
        )
        assert isinstance(env, dm_env.Environment)
        spec = env.action_spec()["action"]
        assert (spec.dtype, spec.shape, spec.minimum, spec.maximum) == (np.int64, (), 0, 1)
        assert set(env.observation_spec()) == {"image", "vector"}
        assert env.observation_spec()["image"].shape == (64, 64, 3)
        assert env.reward_spec().dtype == np.float64 and env.discount_spec().maximum == 1.0

        timestep, expected = env.reset(), local.reset()
        assert timestep.first() and timestep.reward is None
        endings = {"terminated": 0, "interrupted": 0}
        for _ in range(20):
            np.testing.assert_array_equal(timestep.observation["image"], expected["image"][0].numpy())
            np.testing.assert_allclose(timestep.observation["vector"], expected["vector"][0].numpy(), rtol=1e-6)
            if timestep.last():
                timestep, expected = env.reset(), local.reset()
                assert timestep.first()
                continue
            action = int(rng.integers(2))
            timestep, result = env.step({"action": np.int64(action)}), local.step(np.array([action]))
            expected = result.observation
            assert timestep.reward == pytest.approx(float(result.reward[0]), rel=1e-6)
            if result.terminated[0]:
                assert timestep.last() and timestep.discount == 0.0
                endings["terminated"] += 1
            elif result.truncated[0]:
                assert timestep.last() and timestep.discount == 1.0
                endings["interrupted"] += 1
            else:
                assert timestep.mid() and timestep.discount == 1.0
        assert sum(endings.values()) >= 2, endings  # max_episode_steps=6 over 20 steps: at least two sequences end
        env.close()
        conn.send(dm.DestroyWorldRequest(world_name=world))


def test_step_after_a_sequence_ends_starts_the_next_one_and_ignores_its_actions(server):
    with grpc.insecure_channel(address(server)) as channel, connection.Connection(channel) as conn:
        world = conn.send(dm.CreateWorldRequest(settings={"model": pack("box"), "max_episode_steps": pack(2), "seed": pack(3)})).world_name
        specs = conn.send(dm.JoinWorldRequest(world_name=world)).specs
        uids = {s.name: uid for uid, s in specs.observations.items()}
        act = {1: pack(np.zeros(3, np.float32))}
        starts, taken = 0, None  # action steps taken in the current sequence (None: the next step starts one)
        for _ in range(9):
            reply = conn.send(dm.StepRequest(actions=act, requested_observations=[uids["discount"], uids["reward"]]))
            reward, discount = (tensor_utils.unpack_tensor(reply.observations[uids[k]]) for k in ("reward", "discount"))
            if taken is None:
                assert (reply.state, reward, discount) == (dm.RUNNING, 0.0, 1.0)
                starts, taken = starts + 1, 0
                continue
            taken += 1
            # The untrained model may end a dream any step (TERMINATED, discount 0); the limit cuts it at 2.
            allowed = {dm.RUNNING: 1.0, dm.TERMINATED: 0.0} if taken < 2 else {dm.INTERRUPTED: 1.0, dm.TERMINATED: 0.0}
            assert reply.state in allowed and discount == allowed[reply.state], (taken, reply.state, discount)
            if reply.state != dm.RUNNING:
                taken = None
        assert starts >= 3
        bogus = {1: pack(np.full(3, 9.0, np.float32)), 77: pack(1)}  # out of bounds and unknown: ignored at a start
        assert conn.send(dm.StepRequest(actions=bogus)).state == dm.RUNNING
        conn.send(dm.LeaveWorldRequest())
        conn.send(dm.DestroyWorldRequest(world_name=world))


def test_seeds_make_worlds_reproducible(server):
    def first_image(settings, reset_seed=None):
        with grpc.insecure_channel(address(server)) as channel, connection.Connection(channel) as conn:
            world = conn.send(dm.CreateWorldRequest(settings=settings)).world_name
            conn.send(dm.JoinWorldRequest(world_name=world))
            if reset_seed is not None:
                conn.send(dm.ResetRequest(settings={"seed": pack(reset_seed)}))
            image = tensor_utils.unpack_tensor(conn.send(dm.StepRequest(requested_observations=[1])).observations[1])
            conn.send(dm.LeaveWorldRequest())
            conn.send(dm.DestroyWorldRequest(world_name=world))
            return image

    base = {"model": pack("box")}
    a, b = first_image({**base, "seed": pack(5)}), first_image({**base, "seed": pack(5)})
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first_image({**base, "seed": pack(1)}, reset_seed=5), a)
    assert any(not np.array_equal(first_image({**base, "seed": pack(s)}), a) for s in (6, 7, 8))


# -- errors come back in the stream; stream and server survive them -----------------------------
def test_protocol_errors_have_the_right_codes_and_the_stream_goes_on(server):
    with grpc.insecure_channel(address(server)) as channel, connection.Connection(channel) as conn:
        assert "join a world first" in fails(Code.FAILED_PRECONDITION, conn, dm.StepRequest())
        fails(Code.FAILED_PRECONDITION, conn, dm.ResetRequest())
        fails(Code.NOT_FOUND, conn, dm.JoinWorldRequest(world_name="no-such-world"))
        fails(Code.NOT_FOUND, conn, dm.DestroyWorldRequest(world_name="no-such-world"))
        fails(Code.NOT_FOUND, conn, dm.ResetWorldRequest(world_name="no-such-world"))
        assert "'model' is required" in fails(Code.INVALID_ARGUMENT, conn, dm.CreateWorldRequest())
        assert "served" in fails(Code.NOT_FOUND, conn, dm.CreateWorldRequest(settings={"model": pack("nope")}))
        assert "must be a scalar int" in fails(
            Code.INVALID_ARGUMENT, conn, dm.CreateWorldRequest(settings={"model": pack("cartpole"), "seed": pack(1.5)}))
        assert "not a scalar" in fails(
            Code.INVALID_ARGUMENT, conn, dm.CreateWorldRequest(settings={"model": pack("cartpole"), "seed": pack([1, 2])}))
        assert "unknown setting 'colour'" in fails(
            Code.INVALID_ARGUMENT, conn, dm.CreateWorldRequest(settings={"model": pack("cartpole"), "colour": pack("red")}))

        world = conn.send(dm.CreateWorldRequest(settings={"model": pack("cartpole")})).world_name
        conn.send(dm.JoinWorldRequest(world_name=world))
        fails(Code.FAILED_PRECONDITION, conn, dm.JoinWorldRequest(world_name=world))
        assert "seed must be >= 0" in fails(Code.INVALID_ARGUMENT, conn, dm.ResetRequest(settings={"seed": pack(-1)}))
        assert "seed must be >= 0" in fails(
            Code.INVALID_ARGUMENT, conn, dm.ResetWorldRequest(world_name=world, settings={"seed": pack(-2)}))
        assert "must be a scalar int" in fails(Code.INVALID_ARGUMENT, conn, dm.ResetRequest(settings={"seed": pack(True)}))
        conn.send(dm.StepRequest())  # starts the sequence
        assert "int64" in fails(Code.INVALID_ARGUMENT, conn, dm.StepRequest(actions={1: pack(1.0)}))
        assert "missing action" in fails(Code.INVALID_ARGUMENT, conn, dm.StepRequest())
        assert "no action uid 4" in fails(Code.INVALID_ARGUMENT, conn, dm.StepRequest(actions={1: pack(np.int64(0)), 4: pack(1)}))
        assert "[0, 2)" in fails(Code.INVALID_ARGUMENT, conn, dm.StepRequest(actions={1: pack(np.int64(2))}))
        assert "shape" in fails(Code.INVALID_ARGUMENT, conn, dm.StepRequest(actions={1: pack(np.zeros(2, np.int64))}))
        assert "99" in fails(Code.INVALID_ARGUMENT, conn, dm.StepRequest(actions={1: pack(np.int64(0))}, requested_observations=[99]))
        assert "LeaveWorld first" in fails(Code.FAILED_PRECONDITION, conn, dm.DestroyWorldRequest(world_name=world))
        reply = conn.send(dm.StepRequest(actions={1: pack(np.int64(1))}, requested_observations=[2]))  # still fine
        assert reply.state in (dm.RUNNING, dm.TERMINATED) and list(reply.observations) == [2]
        conn.send(dm.LeaveWorldRequest())
        conn.send(dm.DestroyWorldRequest(world_name=world))
        fails(Code.NOT_FOUND, conn, dm.JoinWorldRequest(world_name=world))

        # An extension this server does not know (Connection.send passes a packed Any as one): UNIMPLEMENTED.
        fails(Code.UNIMPLEMENTED, conn, any_pb2.Any(type_url="type.googleapis.com/some.Extension"))
        assert conn.send(dm.CreateWorldRequest(settings={"model": pack("box")})).world_name  # and on it goes

    with grpc.insecure_channel(address(server)) as channel:  # the server is unharmed
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=DM_SERVICE), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_limits_apply_to_worlds(serve):
    running = serve(max_sessions=1)
    with grpc.insecure_channel(address(running)) as channel, connection.Connection(channel) as conn:
        world = conn.send(dm.CreateWorldRequest(settings={"model": pack("cartpole")})).world_name
        assert "maximum of 1 sessions" in fails(Code.RESOURCE_EXHAUSTED, conn, dm.CreateWorldRequest(settings={"model": pack("box")}))
        with SimulatorClient(address(running), timeout=30) as native:
            with pytest.raises(grpc.RpcError) as info:
                native.create_session("cartpole")
            assert info.value.code() == Code.RESOURCE_EXHAUSTED
        conn.send(dm.DestroyWorldRequest(world_name=world))
        conn.send(dm.CreateWorldRequest(settings={"model": pack("box")}))


def test_idle_unjoined_worlds_are_evicted_but_joined_ones_stay(serve):
    running = serve(idle_ttl_s=0.3)
    with grpc.insecure_channel(address(running)) as channel:
        with connection.Connection(channel) as idle, connection.Connection(channel) as agent:
            lonely = idle.send(dm.CreateWorldRequest(settings={"model": pack("cartpole")})).world_name
            joined = agent.send(dm.CreateWorldRequest(settings={"model": pack("cartpole")})).world_name
            agent.send(dm.JoinWorldRequest(world_name=joined))
            time.sleep(1.5)
            assert "evicted" in fails(Code.NOT_FOUND, idle, dm.JoinWorldRequest(world_name=lonely))
            assert agent.send(dm.StepRequest()).state == dm.RUNNING


def test_a_world_is_freed_when_its_agent_disconnects(server):
    with grpc.insecure_channel(address(server)) as channel, connection.Connection(channel) as owner:
        world = owner.send(dm.CreateWorldRequest(settings={"model": pack("cartpole")})).world_name
        first = grpc.insecure_channel(address(server))
        agent = connection.Connection(first)
        agent.send(dm.JoinWorldRequest(world_name=world))
        assert "has an agent" in fails(Code.FAILED_PRECONDITION, owner, dm.JoinWorldRequest(world_name=world))
        agent.close()
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the server learns of the disconnect asynchronously
            try:
                owner.send(dm.JoinWorldRequest(world_name=world))
                break
            except error.DmEnvRpcError:
                assert time.monotonic() < deadline, "the world stayed joined after its agent went away"
                time.sleep(0.05)
        owner.send(dm.LeaveWorldRequest())
        owner.send(dm.DestroyWorldRequest(world_name=world))


def test_bearer_token_guards_dm_env_rpc_too(serve):
    running = serve(token="s3cret")
    with grpc.insecure_channel(address(running)) as channel:
        with pytest.raises(grpc.RpcError) as info:
            with connection.Connection(channel) as conn:
                conn.send(dm.CreateWorldRequest(settings={"model": pack("cartpole")}))
        assert info.value.code() == Code.UNAUTHENTICATED
        with connection.Connection(channel, metadata=[("authorization", "Bearer s3cret")]) as conn:
            assert conn.send(dm.CreateWorldRequest(settings={"model": pack("cartpole")})).world_name


def test_worlds_share_the_native_dynamic_batcher(serve):
    """dm_env_rpc worlds and native sessions on one model step through its one batcher, fused."""
    running = serve(batcher=BatcherConfig(window_s=0.05))
    batcher = running.service.models["cartpole"].batchers["vmc"]
    steps, agents = 10, 4
    errors, batched = [], []

    def agent(index: int) -> None:
        try:
            with grpc.insecure_channel(address(running)) as channel, connection.Connection(channel) as conn:
                world = conn.send(dm.CreateWorldRequest(settings={"model": pack("cartpole"), "seed": pack(index)})).world_name
                conn.send(dm.JoinWorldRequest(world_name=world))
                state = conn.send(dm.StepRequest()).state
                for t in range(steps):
                    batched.append(state == dm.RUNNING)  # else this step starts a sequence: no forward
                    state = conn.send(dm.StepRequest(actions={1: pack(np.int64(t % 2))})).state
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def native() -> None:
        with SimulatorClient(address(running), timeout=30) as client:
            sid = client.create_session("cartpole", num_envs=2, seed=0).session_id
            list(client.step_stream(sid, [np.array([0, 1])] * steps))

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(agents)] + [threading.Thread(target=native)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    requests = sum(batched) + steps
    assert batcher.envs_stepped == sum(batched) + 2 * steps
    assert batcher.forwards < requests, (batcher.forwards, requests)  # some were fused


def test_reflection_and_health_list_the_environment_service(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(address(server)) as channel:
        assert DM_SERVICE in set(ProtoReflectionDescriptorDatabase(channel).get_services())
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=DM_SERVICE), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_dm_env_rpc_can_be_turned_off(serve):
    running = serve(dm_env_rpc=False)
    with grpc.insecure_channel(address(running)) as channel:
        with pytest.raises(grpc.RpcError) as info:
            with connection.Connection(channel) as conn:
                conn.send(dm.CreateWorldRequest())
        assert info.value.code() == Code.UNIMPLEMENTED
