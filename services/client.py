"""A small typed Python client of the simulation service (blocking, grpc channel underneath).

    client = SimulatorClient("127.0.0.1:50051")
    session = client.create_session("carracing", num_envs=8, seed=0)
    observation = client.reset(session.session_id)
    step = client.step(session.session_id, actions)          # StepReply of numpy arrays
    for step in client.step_stream(session.session_id, action_iterator): ...
    with client.open_step_stream(session.session_id) as stream:  # one StepStream kept open, stepped call by call
        step = stream.step(actions)
"""

from __future__ import annotations

import queue
import threading
import time
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

    def _call(self, method, request, session_id: str | None = None):
        return method(request, timeout=self.timeout, metadata=self._metadata(session_id))

    def _metadata(self, session_id: str | None) -> tuple:
        """The token, and the session a call is for (Ray Serve's proxy routes on it; one server ignores it)."""
        return self.metadata if session_id is None else (*self.metadata, *wire.routing_metadata(session_id))

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
        return wire.observation_from_proto(self._call(self.stub.Reset, request, session_id).observation)

    def step(self, session_id: str, actions, reset_mask=None) -> StepReply:
        return _reply(self._call(self.stub.Step, step_request(session_id, actions, reset_mask), session_id))

    def step_stream(self, session_id: str, actions: Iterable) -> Iterator[StepReply]:
        """One reply per action batch, over one bidirectional stream."""
        requests = (step_request(session_id, a) for a in actions)
        for reply in self.stub.StepStream(requests, metadata=self._metadata(session_id)):
            yield _reply(reply)

    def open_step_stream(self, session_id: str) -> StepStream:
        """A StepStream kept open for `session_id`, stepped one call at a time (`StepStream.step`)."""
        return StepStream(self.stub, session_id, self._metadata(session_id), self.timeout)

    def close_session(self, session_id: str) -> None:
        self._call(self.stub.CloseSession, pb.CloseSessionRequest(session_id=session_id), session_id)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StepStream:
    """One StepStream call kept open for a session; `step()` sends one request and waits for its reply.

    The blocking twin of unary `step` for tight loops: the server sets up no call per step. Errors surface
    as the unary call's would (grpc.RpcError with the server's status; a reply later than `timeout` seconds
    as DEADLINE_EXCEEDED), and end the stream: open another to go on.
    """

    def __init__(self, stub, session_id: str, metadata, timeout: float | None):
        self.session_id, self.timeout = session_id, timeout
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._call = stub.StepStream(iter(self._requests.get, _END), metadata=metadata)  # no deadline: per step below
        self._watchdog = _Watchdog(self._call.cancel) if timeout is not None else None
        self.closed = False

    def step(self, actions, reset_mask=None) -> StepReply:
        if self.closed:
            raise RuntimeError("this StepStream is closed (after an error, open another)")
        request = step_request(self.session_id, actions, reset_mask)
        if self._watchdog is not None:
            self._watchdog.arm(self.timeout)
        self._requests.put(request)
        try:
            reply = next(self._call)
        except grpc.RpcError as err:
            self.close(cancel=True)
            if self._watchdog is not None and self._watchdog.fired:
                raise StepError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no StepStream reply within {self.timeout:g} s") from err
            raise
        except StopIteration:  # the server ended the stream without a status: not something it does
            self.close(cancel=True)
            raise RuntimeError("the server closed the StepStream") from None
        finally:
            if self._watchdog is not None:
                self._watchdog.disarm()
        return _reply(reply)

    def close(self, cancel: bool = False) -> None:
        """End the stream: half-close (the server ends it with OK), or `cancel` it."""
        if self.closed:
            return
        self.closed = True
        self._requests.put(_END)  # ends gRPC's request thread, and the stream
        if cancel:
            self._call.cancel()
        if self._watchdog is not None:
            self._watchdog.close()

    def __enter__(self) -> StepStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_END = object()


class StepError(grpc.RpcError):
    """A step's failure as the client reports it when no gRPC call carries its status: a StepStream step
    past the client's timeout (DEADLINE_EXCEEDED), or one failed item of a StepMany reply."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _Watchdog:
    """Calls `on_expiry` when a step armed with `arm(seconds)` is not disarmed in time. One thread, which
    sleeps through the steps (arming takes a lock, no wake-up) and wakes about once per `seconds`."""

    def __init__(self, on_expiry):
        self._on_expiry = on_expiry
        self._cond = threading.Condition()
        self._deadline = 0.0
        self._armed = False
        self._idle = False
        self._closed = False
        self.fired = False
        threading.Thread(target=self._run, name="step-stream-watchdog", daemon=True).start()

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._deadline, self._armed = time.monotonic() + seconds, True
            if self._idle:
                self._cond.notify()

    def disarm(self) -> None:
        self._armed = False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._armed:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self.fired, self._armed = True, False
                self._on_expiry()


def _wire_actions(actions) -> np.ndarray:
    """Integers travel as int64 and floats as float32, the wire's action dtypes; the server checks the rest."""
    array = np.asarray(actions)
    if array.dtype.kind in "iu":
        return array.astype(np.int64, copy=False)
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    return array


def step_request(session_id: str, actions, reset_mask=None) -> pb.StepRequest:
    request = pb.StepRequest(session_id=session_id, actions=wire.to_tensor(_wire_actions(actions)))
    if reset_mask is not None:
        request.reset_mask.extend(np.asarray(reset_mask, dtype=bool).ravel().tolist())
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
