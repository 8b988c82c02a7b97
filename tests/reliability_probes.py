"""The hostile requests of the server's fuzz (tests/test_reliability_server.py): each a Probe that sends one
malformed, oversized or hostile request, native or dm_env_rpc, with the token or without, and names the
status it must get. Kept apart so the test file reads as its promises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np
import pytest
from dm_env_rpc.v1 import connection, error, tensor_utils
from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm
from grpc_health.v1 import health_pb2

from worldmodel.v1 import simulator_pb2 as pb
from worldmodel.v1 import simulator_pb2_grpc as pb_grpc

Code = grpc.StatusCode
TOKEN = "fuzz-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
NATIVE_METHODS = tuple(f"/worldmodel.v1.Simulator/{name}" for name in
                       ("ListModels", "CreateSession", "Reset", "Step", "StepStream", "StepMany", "CloseSession"))
DM_METHOD = "/dm_env_rpc.v1.Environment/Process"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
GARBAGE = (
    b"\x00",  # field number 0
    b"\x0f",  # wire type 7
    b"\x0a\x64abc",  # a 100-byte field with 3 bytes
    b"\xff" * 11,  # a varint longer than 10 bytes
    b"\x08",  # a varint field without its value
)
"""Bytes that parse as no request of any of the methods above (checked in `hostile_probes`)."""
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def pack(value, dtype=None) -> dm.Tensor:
    return tensor_utils.pack_tensor(value, dtype=dtype)


def broadcast(shape, value=0.0) -> dm.Tensor:
    """A tensor of one float declared as `shape`: unpack_tensor would np.full it to that shape."""
    return dm.Tensor(floats=dm.Tensor.FloatArray(array=[value]), shape=list(shape))


def send_raw(channel, method: str, payload: bytes, metadata=None):
    if method in (DM_METHOD, "/worldmodel.v1.Simulator/StepStream", "/worldmodel.v1.Simulator/StepMany"):
        return list(channel.stream_stream(method)(iter([payload]), metadata=metadata, timeout=10))
    return channel.unary_unary(method)(payload, metadata=metadata, timeout=10)


@dataclass
class Probe:
    name: str
    send: Callable[[list | None], object]
    """Sends the request with this metadata (AUTH, or None: no token)."""
    expected: grpc.StatusCode
    """The status with the token; without one every guarded method must answer UNAUTHENTICATED."""
    needs_token: bool = True


def code_of(send, metadata) -> tuple[grpc.StatusCode, str]:
    try:
        send(metadata)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    except error.DmEnvRpcError as err:
        return _CODES[err.code], err.message
    return Code.OK, ""


def _tensor(array: np.ndarray, **override) -> pb.Tensor:
    codes = {"f": pb.DTYPE_FLOAT32, "i": pb.DTYPE_INT64}
    fields = {"dtype": codes[array.dtype.kind], "shape": list(array.shape), "data": array.tobytes(), **override}
    return pb.Tensor(**fields)


def _garbage_probes(channel) -> list[Probe]:
    request_types = {"ListModels": pb.ListModelsRequest, "CreateSession": pb.CreateSessionRequest,
                     "Reset": pb.ResetRequest, "Step": pb.StepRequest, "StepStream": pb.StepRequest,
                     "StepMany": pb.StepManyRequest, "CloseSession": pb.CloseSessionRequest, "Process": dm.EnvironmentRequest,
                     "Check": health_pb2.HealthCheckRequest}
    probes = []
    for method in (*NATIVE_METHODS, DM_METHOD, HEALTH_METHOD):
        for index, payload in enumerate(GARBAGE):
            with pytest.raises(Exception):  # the bytes really are garbage to this method
                request_types[method.rsplit("/", 1)[1]].FromString(payload)
            probes.append(Probe(f"garbage {index} to {method}", lambda md, m=method, b=payload: send_raw(channel, m, b, md),
                                Code.INVALID_ARGUMENT, needs_token=method != HEALTH_METHOD))
    return probes


def _native_probes(channel) -> list[Probe]:
    stub = pb_grpc.SimulatorStub(channel)
    create = lambda **fields: stub.CreateSession(pb.CreateSessionRequest(**fields), metadata=AUTH, timeout=30).session_id
    many, one = create(model="box", num_envs=1024, observation_mode=pb.OBSERVATION_MODE_LATENT), create(model="box")
    huge = "x" * 200_000

    def call(method: str, request, expected, name: str) -> Probe:
        if method == "StepStream":
            return Probe(name, lambda md: list(stub.StepStream(iter([request]), metadata=md, timeout=10)), expected)
        return Probe(name, lambda md: getattr(stub, method)(request, metadata=md, timeout=10), expected)

    def step(name: str, expected=Code.INVALID_ARGUMENT, session=one, **fields) -> Probe:
        return call("Step", pb.StepRequest(session_id=session, **fields), expected, f"Step: {name}")

    def session(name: str, expected, **fields) -> Probe:
        return call("CreateSession", pb.CreateSessionRequest(**{"model": "box", **fields}), expected, f"CreateSession: {name}")

    box = np.zeros((1, 3), np.float32)
    invalid = Code.INVALID_ARGUMENT
    return [
        step("1,024 out-of-bounds actions", session=many, actions=_tensor(np.full((1024, 3), 9, np.float32))),
        step("1,024 NaN actions", session=many, actions=_tensor(np.full((1024, 3), np.nan, np.float32))),
        step("huge session id", Code.NOT_FOUND, session=huge, actions=_tensor(box)),
        step("empty session id", Code.NOT_FOUND, session="", actions=_tensor(box)),
        step("NaN action", actions=_tensor(np.full((1, 3), np.nan, np.float32))),
        step("infinite action", actions=_tensor(np.full((1, 3), np.inf, np.float32))),
        step("action out of bounds", actions=_tensor(np.full((1, 3), 7, np.float32))),
        step("int64 actions", actions=_tensor(np.zeros((1, 3), np.int64))),
        step("1,024 actions for 1 env", actions=_tensor(np.zeros((1024, 3), np.float32))),
        step("declared [8000, 8000], no data", actions=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[8000, 8000])),
        step("100,000 dimensions", actions=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1] * 100_000)),
        step("10 million dimensions (10 MB)", actions=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[1] * 10_000_000)),
        step("negative dimension", actions=_tensor(box, shape=[1, -3])),
        step("short data", actions=_tensor(box, data=b"\0" * 5)),
        step("unknown dtype", actions=_tensor(box, dtype=99)),
        step("no actions"),
        step("100,000-entry reset mask", actions=_tensor(box), reset_mask=[True] * 100_000),
        session("wrong model", Code.NOT_FOUND, model="nope"),
        session("100 KB model name", Code.NOT_FOUND, model="m" * 100_000),
        session("odd unicode model name", Code.NOT_FOUND, model="\u0000\uffff\U0001f600" * 10),
        session("wrong backend", Code.NOT_FOUND, backend="diffusion"),
        session("negative env count", invalid, num_envs=-1),
        session("most negative env count", invalid, num_envs=-2**31),
        session("a million envs", Code.RESOURCE_EXHAUSTED, num_envs=10**6),
        session("1,025 envs", Code.RESOURCE_EXHAUSTED, num_envs=1025),
        session("NaN temperature", invalid, temperature=float("nan")),
        session("negative temperature", invalid, temperature=-1.0),
        session("infinite temperature", invalid, temperature=float("inf")),
        session("negative seed", invalid, seed=-3),
        session("negative max_episode_steps", invalid, max_episode_steps=-1),
        session("unknown observation mode", invalid, observation_mode=99),
        session("unknown image encoding", invalid, image_encoding=99),
        call("Reset", pb.ResetRequest(session_id=huge), Code.NOT_FOUND, "Reset: huge session id"),
        call("Reset", pb.ResetRequest(session_id=one, env_indices=[0] * 100_000), invalid, "Reset: 100,000 indices"),
        call("Reset", pb.ResetRequest(session_id=one, env_indices=[5]), invalid, "Reset: index out of range"),
        call("Reset", pb.ResetRequest(session_id=one, seeds=[-1]), invalid, "Reset: negative seeds"),
        call("Reset", pb.ResetRequest(session_id=one, seed=-1), invalid, "Reset: negative seed"),
        call("CloseSession", pb.CloseSessionRequest(session_id=huge), Code.NOT_FOUND, "CloseSession: huge id"),
        call("StepStream", pb.StepRequest(session_id=one, actions=_tensor(np.full((1, 3), np.nan, np.float32))),
             invalid, "StepStream: NaN action"),
        call("StepStream", pb.StepRequest(session_id=huge), Code.NOT_FOUND, "StepStream: huge session id"),
    ]


def _environment_probes(channel) -> list[Probe]:
    joined, free = (connection.Connection(channel, metadata=AUTH) for _ in range(2))
    world = joined.send(dm.CreateWorldRequest()).world_name
    joined.send(dm.JoinWorldRequest(world_name=world))
    joined.send(dm.StepRequest())  # starts the sequence: later steps need a valid action

    def probe(name: str, conn, request, expected=Code.INVALID_ARGUMENT) -> Probe:
        def send(metadata):
            if metadata:
                return conn.send(request)
            with connection.Connection(channel) as bare:  # no token: a fresh stream each time
                return bare.send(request)
        return Probe(f"dm_env_rpc {name}", send, expected)

    def step(name: str, action=None, **fields) -> Probe:
        actions = {} if action is None else {1: action}
        return probe(f"Step: {name}", joined, dm.StepRequest(actions=actions, **fields))

    def create(name: str, expected=Code.INVALID_ARGUMENT, **settings) -> Probe:
        return probe(f"CreateWorld: {name}", free, dm.CreateWorldRequest(settings=settings), expected)

    floats = lambda values, shape: dm.Tensor(floats=dm.Tensor.FloatArray(array=values), shape=shape)
    return [
        step("[8000, 8000] from one float", broadcast([8000, 8000])),
        step("[1e6, 1e6] from one float", broadcast([10**6, 10**6])),
        step("[3, 1e9] from one float", broadcast([3, 10**9])),
        step("two variable dimensions", broadcast([-1, -1])),
        step("[-1] over 7 floats", floats([0.0] * 7, [-1])),
        step("50,000 dimensions", broadcast([1] * 50_000)),
        step("a million floats", floats(np.zeros(10**6, np.float32), [3])),
        step("NaN action", pack(np.full(3, np.nan, np.float32))),
        step("infinite action", pack(np.full(3, -np.inf, np.float32))),
        step("action out of bounds", pack(np.full(3, 4.0, np.float32))),
        step("int64 action", pack(np.zeros(3, np.int64))),
        step("no payload", dm.Tensor(shape=[3])),
        step("missing action"),
        probe("Step: unknown action uid", joined, dm.StepRequest(actions={1: pack(np.zeros(3, np.float32)), 99: pack(1)})),
        step("100,000 requested observations", pack(np.zeros(3, np.float32)), requested_observations=[1] * 100_000),
        step("5 million requested observations", pack(np.zeros(3, np.float32)), requested_observations=[1] * 5_000_000),
        step("unknown observation uid", pack(np.zeros(3, np.float32)), requested_observations=[99]),
        probe("Reset: seed declared [1e6]", joined,
              dm.ResetRequest(settings={"seed": dm.Tensor(int64s=dm.Tensor.Int64Array(array=[1]), shape=[10**6])})),
        probe("Reset: 100 KB setting name", joined, dm.ResetRequest(settings={"s" * 100_000: pack(1)})),
        create("wrong model", Code.NOT_FOUND, model=pack("nope")),
        create("100 KB model name", Code.NOT_FOUND, model=pack("m" * 100_000)),
        create("seed declared [8000, 8000]", seed=dm.Tensor(int64s=dm.Tensor.Int64Array(array=[1]), shape=[8000, 8000])),
        create("seed as text", seed=pack("zero")),
        create("NaN temperature", temperature=pack(float("nan"))),
        create("negative max_episode_steps", max_episode_steps=pack(-5)),
        create("100 KB setting name", **{"y" * 100_000: pack(1)}),
        create("unknown observation", observation=pack("voxels")),
        probe("JoinWorld: huge world name", free, dm.JoinWorldRequest(world_name="z" * 200_000), Code.NOT_FOUND),
        probe("DestroyWorld: unknown world", free, dm.DestroyWorldRequest(world_name="nope"), Code.NOT_FOUND),
        probe("ResetWorld: unknown world", free, dm.ResetWorldRequest(world_name="nope"), Code.NOT_FOUND),
        probe("Step before JoinWorld", free, dm.StepRequest(), Code.FAILED_PRECONDITION),
        probe("DestroyWorld: a joined world", free, dm.DestroyWorldRequest(world_name=world), Code.FAILED_PRECONDITION),
    ]


def hostile_probes(channel) -> list[Probe]:
    return _native_probes(channel) + _environment_probes(channel) + _garbage_probes(channel)
