"""A small typed Python client of the simulation service (blocking, grpc channel underneath).

    client = SimulatorClient("127.0.0.1:50051")
    session = client.create_session("carracing", num_envs=8, seed=0)
    observation = client.reset(session.session_id)
    step = client.step(session.session_id, actions)          # StepReply of numpy arrays
    for step in client.step_stream(session.session_id, action_iterator): ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from services import wire
from worldmodel.spec import EnvSpec
from worldmodel.v1 import simulator_pb2 as pb
from worldmodel.v1 import simulator_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE = 64 << 20


@dataclass
class ModelDescription:
    name: str
    spec: EnvSpec
    backends: list[str]
    latent_size: int


@dataclass
class SessionInfo:
    session_id: str
    model: ModelDescription
    backend: str
    num_envs: int


@dataclass
class StepReply:
    observation: dict[str, np.ndarray]
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    step: int


class SimulatorClient:
    """Blocking client; errors surface as grpc.RpcError with the server's status and message."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        timeout: float | None = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    ):
        options = [("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes)]
        if root_certificates is not None:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self.stub = pb_grpc.SimulatorStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def _call(self, method, request):
        return method(request, timeout=self.timeout, metadata=self.metadata)

    def list_models(self) -> list[ModelDescription]:
        return [_model(m) for m in self._call(self.stub.ListModels, pb.ListModelsRequest()).models]

    def create_session(
        self,
        model: str,
        *,
        backend: str = "",
        num_envs: int = 1,
        seed: int | None = None,
        temperature: float | None = None,
        max_episode_steps: int = 0,
        observation: str = "pixels",
        png: bool = False,
    ) -> SessionInfo:
        observation_mode = wire.OBSERVATION_MODE_CODES.get(observation)
        if observation_mode is None:
            raise ValueError(f"observation must be one of {', '.join(wire.OBSERVATION_MODE_CODES)}; got {observation!r}")
        request = pb.CreateSessionRequest(
            model=model, backend=backend, num_envs=num_envs, max_episode_steps=max_episode_steps,
            observation_mode=observation_mode,
            image_encoding=pb.IMAGE_ENCODING_PNG if png else pb.IMAGE_ENCODING_RAW,
        )
        if seed is not None:
            request.seed = seed
        if temperature is not None:
            request.temperature = temperature
        reply = self._call(self.stub.CreateSession, request)
        return SessionInfo(reply.session_id, _model(reply.model), reply.backend, reply.num_envs)

    def reset(
        self, session_id: str, seed: int | None = None, env_indices: Iterable[int] = (), seeds: Iterable[int] = (),
    ) -> dict[str, np.ndarray]:
        """Reset the session's envs (all, or `env_indices`); `seed` seeds env i with seed + i, `seeds` gives one
        seed per env reset instead. Returns the observations of all envs."""
        request = pb.ResetRequest(session_id=session_id, env_indices=list(env_indices), seeds=[int(s) for s in seeds])
        if seed is not None:
            request.seed = seed
        return wire.observation_from_proto(self._call(self.stub.Reset, request).observation)

    def step(self, session_id: str, actions, reset_mask=None) -> StepReply:
        return _reply(self._call(self.stub.Step, _step_request(session_id, actions, reset_mask)))

    def step_stream(self, session_id: str, actions: Iterable) -> Iterator[StepReply]:
        """One reply per action batch, over one bidirectional stream."""
        requests = (_step_request(session_id, a) for a in actions)
        for reply in self.stub.StepStream(requests, metadata=self.metadata):
            yield _reply(reply)

    def close_session(self, session_id: str) -> None:
        self._call(self.stub.CloseSession, pb.CloseSessionRequest(session_id=session_id))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wire_actions(actions) -> np.ndarray:
    """Integers travel as int64 and floats as float32, the wire's action dtypes; the server checks the rest."""
    array = np.asarray(actions)
    if array.dtype.kind in "iu":
        return array.astype(np.int64, copy=False)
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    return array


def _step_request(session_id: str, actions, reset_mask=None) -> pb.StepRequest:
    request = pb.StepRequest(session_id=session_id, actions=wire.to_tensor(_wire_actions(actions)))
    if reset_mask is not None:
        request.reset_mask.extend(bool(m) for m in np.asarray(reset_mask).ravel())
    return request


def _model(message: pb.ModelInfo) -> ModelDescription:
    return ModelDescription(message.name, wire.spec_from_proto(message.spec), list(message.backends), message.latent_size)


def _reply(message: pb.StepResponse) -> StepReply:
    return StepReply(
        wire.observation_from_proto(message.observation),
        wire.from_tensor(message.reward, "reward"),
        wire.from_tensor(message.terminated, "terminated"),
        wire.from_tensor(message.truncated, "truncated"),
        message.step,
    )
