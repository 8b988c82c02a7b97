"""The gRPC simulation service: `worldmodel serve BUNDLE...` (grpc.aio).

Sessions hold world-model states; step calls of all sessions on one model are
fused by a dynamic batcher. The same port also speaks dm_env_rpc v1
(services/dm_environment.py) over the same sessions and batchers. Standard
health checking and reflection. Every bad request gets a status that says
what is wrong and harms no other session; every call passes services/guard.py
first (the token before any parsing), and status messages stay bounded
(services/status.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services import wire
from services.batcher import BatcherConfig
from services.guard import RequestGuard
from services.sessions import (
    LimitError, ServedModel, SessionRegistry, UnknownError, load_served_model, release_freed_memory,
)
from services.status import abort, bounded, echo
from worldmodel.session import OBSERVATION_MODES, DreamBatch
from worldmodel.v1 import simulator_pb2 as pb
from worldmodel.v1 import simulator_pb2_grpc as pb_grpc

log = logging.getLogger("worldmodel.serve")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Simulator"].full_name
_OBSERVATION_MODES = {
    pb.OBSERVATION_MODE_UNSPECIFIED: "pixels",  # unset: the proto's default
    **{wire.OBSERVATION_MODE_CODES[mode]: mode for mode in OBSERVATION_MODES},
}
_ENCODINGS = (pb.IMAGE_ENCODING_UNSPECIFIED, pb.IMAGE_ENCODING_RAW, pb.IMAGE_ENCODING_PNG)
_MESSAGE_OVERHEAD = 1024  # field tags, shapes and the step counter of a StepResponse, generously


class StepFailure(Exception):
    """A step that fails with `code`: its Step call's status, or its item's error in a StepMany reply."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def __reduce__(self):  # pickled whole: on Ray Serve a failure travels from the replica to the proxy
        return type(self), (self.code, self.message)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    """Bind address; only loopback unless asked otherwise."""
    port: int = 50051
    """0 picks a free port."""
    max_sessions: int = 1024
    max_envs_per_session: int = 1024
    max_total_envs: int | None = None
    """Envs in all sessions and worlds together; None: sized to this machine's memory
    (services.sessions.default_max_total_envs)."""
    idle_ttl_s: float = 600.0
    """Sessions idle this long are evicted."""
    max_message_bytes: int = 64 << 20
    token: str | None = None
    """Bearer token required on every Simulator call when set."""
    tls_cert: str | None = None
    tls_key: str | None = None
    device: str = "cpu"
    grace_s: float = 5.0
    """How long SIGTERM waits for in-flight calls."""
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    dm_env_rpc: bool = True
    """Also serve dm_env_rpc.v1.Environment (services/dm_environment.py) on the same port."""


class SimulatorService(pb_grpc.SimulatorServicer):
    def __init__(self, models: dict[str, ServedModel], config: ServerConfig):
        self.models = models
        self.config = config
        self.registry = SessionRegistry(
            config.max_sessions, config.max_envs_per_session, config.idle_ttl_s, config.max_total_envs
        )
        self.open_streams = 0
        """StepStream calls in progress (a client that goes away ends its stream and frees it)."""
        self.foreign_step = None
        """On Ray Serve: `async (StepRequest) -> StepResponse` for a step of a session another replica owns
        (raises StepFailure). None: this process owns every session (services/ray_serve.py sets it)."""

    # -- models and sessions ------------------------------------------------
    def _info(self, served: ServedModel) -> pb.ModelInfo:
        return pb.ModelInfo(
            name=served.name, spec=wire.spec_to_proto(served.spec), backends=served.backends,
            latent_size=served.latent_size(),
        )

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[self._info(m) for m in self.models.values()])

    async def CreateSession(self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext):
        served = self.models.get(request.model)
        if served is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no model {echo(request.model)}; served: {sorted(self.models)}")
        backend = request.backend or served.backends[0]
        if backend not in served.models:
            await abort(context, grpc.StatusCode.NOT_FOUND,
                        f"model {served.name!r} has no backend {echo(backend)}; it has {served.backends}")
        num_envs = request.num_envs or 1
        try:
            observation = _OBSERVATION_MODES.get(request.observation_mode)
            if observation is None:
                raise ValueError(f"unknown observation_mode {request.observation_mode}; use {list(pb.ObservationMode.keys())}")
            if request.image_encoding not in _ENCODINGS:
                raise ValueError(f"unknown image_encoding {request.image_encoding}; use {list(pb.ImageEncoding.keys())}")
            png = request.image_encoding == pb.IMAGE_ENCODING_PNG
            if num_envs < 0:
                raise ValueError(f"num_envs must be >= 1, got {num_envs}")
            self.registry.check_capacity(num_envs)
            self.check_message_size(served, num_envs, observation, png)
            # Off the event loop: a generator per env (about 50 ms for 1,024) and a forward (the start frames).
            dreams = await asyncio.to_thread(
                _started_dreams, served.models[backend], num_envs, observation=observation,
                max_episode_steps=request.max_episode_steps,
                temperature=request.temperature if request.HasField("temperature") else None,
                seed=request.seed if request.HasField("seed") else None,
            )
            session = self.registry.add(served, backend, dreams, png)
        except LimitError as err:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        except ValueError as err:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        log.info("session %s: %s/%s, %d envs, %s", session.id, served.name, backend, num_envs, observation)
        return pb.CreateSessionResponse(session_id=session.id, model=self._info(served), backend=backend, num_envs=num_envs)

    def check_message_size(self, served: ServedModel, num_envs: int, observation: str, png: bool) -> None:
        """A session whose step replies could not be sent is refused up front (PNG sizes vary: not checked)."""
        spec = served.spec
        per_env = 4 + 1 + 1  # reward, terminated, truncated
        if observation == "latent":
            per_env += 4 * served.latent_size()
            what = "latent observations"
        else:
            per_env += 4 * (spec.vector.size if spec.vector is not None else 0)
            per_env += 0 if png else spec.image.height * spec.image.width * spec.image.channels
            what = "observations" if png else "raw frames"
        size = num_envs * per_env + _MESSAGE_OVERHEAD
        if size > self.config.max_message_bytes:
            raise LimitError(
                f"the {what} of {num_envs} envs take about {size} bytes a step, over the "
                f"{self.config.max_message_bytes}-byte message limit: use fewer envs, PNG images or latent observations"
            )

    async def CloseSession(self, request, context):
        try:
            self.registry.close(request.session_id)
        except UnknownError as err:
            await abort(context, grpc.StatusCode.NOT_FOUND, err.args[0])
        return pb.CloseSessionResponse()

    # -- reset and step -----------------------------------------------------
    async def Reset(self, request: pb.ResetRequest, context):
        session = await self._session(request.session_id, context)
        num_envs = session.dreams.num_envs
        if len(request.env_indices) > num_envs or len(request.seeds) > num_envs:  # counted before any copy
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"{len(request.env_indices)} env indices and {len(request.seeds)} seeds for a session of "
                        f"{num_envs} envs: each may name every env at most once")
        session.busy += 1
        try:
            async with session.lock:  # DreamBatch.reset checks indices and seeds before it changes anything
                observation = await asyncio.to_thread(
                    session.dreams.reset,
                    request.seed if request.HasField("seed") else None,
                    list(request.env_indices) or None,
                    seeds=list(request.seeds) or None,
                )
        except ValueError as err:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        finally:
            session.busy -= 1
            session.touch()
        return pb.ResetResponse(observation=await _observation_message(observation, session.png))

    async def Step(self, request: pb.StepRequest, context):
        return await self._step(request, context)

    async def StepStream(self, request_iterator, context):
        self.open_streams += 1
        try:
            async for request in request_iterator:  # ends when the client closes or goes away (cancelled)
                yield await self._step(request, context)
        finally:
            self.open_streams -= 1

    async def StepMany(self, request_iterator, context):
        self.open_streams += 1
        try:
            # At once, before any request: a client waits for it before it sends (services/multiplex.py), so a
            # refused call reaches it as its status, never as a write that lost the race (INTERNAL).
            await context.send_initial_metadata(())
            async for request in request_iterator:
                yield await self._step_many(request)
        finally:
            self.open_streams -= 1

    async def _step(self, request: pb.StepRequest, context) -> pb.StepResponse:
        try:
            return await self._step_one(request)
        except StepFailure as failure:
            await abort(context, failure.code, failure.message)

    async def _step_many(self, request: pb.StepManyRequest) -> pb.StepManyResponse:
        """Every item as its own Step call, concurrently (so the batcher fuses them); failures per item."""
        ids = [step.session_id for step in request.steps]
        if len(set(ids)) != len(ids):  # two steps of one session in one message could not both be answered in order
            failure = StepFailure(grpc.StatusCode.INVALID_ARGUMENT, "StepMany: a request names a session twice")
            outcomes = [failure] * len(ids)
        else:
            outcomes = await asyncio.gather(*(self._step_one(step) for step in request.steps), return_exceptions=True)
        reply = pb.StepManyResponse()
        for outcome in outcomes:
            if isinstance(outcome, StepFailure):
                reply.steps.add()
                reply.errors.add(code=outcome.code.value[0], message=bounded(outcome.message))
            elif isinstance(outcome, BaseException):
                raise outcome  # a bug of ours: the guard answers INTERNAL
            else:
                reply.steps.append(outcome)
                reply.errors.add()
        return reply

    async def _step_one(self, request: pb.StepRequest) -> pb.StepResponse:
        """One step, or StepFailure with the status its Step call answers."""
        if self.foreign_step is not None and not self.registry.owns(request.session_id):
            return await self.foreign_step(request)
        try:
            session = self.registry.get(request.session_id)
        except UnknownError as err:
            raise StepFailure(grpc.StatusCode.NOT_FOUND, err.args[0]) from None
        dreams = session.dreams
        try:
            actions = wire.actions_from_proto(request.actions, dreams.spec, dreams.num_envs)  # dtype, shape, bounds, NaN
            mask = None
            if len(request.reset_mask):
                if len(request.reset_mask) != dreams.num_envs:  # counted before any copy
                    raise ValueError(f"reset_mask must have {dreams.num_envs} entries, got {len(request.reset_mask)}")
                mask = dreams.check_reset_mask(np.asarray(request.reset_mask, dtype=bool))
        except ValueError as err:
            raise StepFailure(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        session.busy += 1
        try:
            async with session.lock:  # one step at a time per session, in arrival order
                result = await session.model.batchers[session.backend].step(dreams, actions, mask)
                steps = dreams.steps_taken
        except ValueError as err:
            raise StepFailure(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        finally:
            session.busy -= 1
            session.touch()
        return pb.StepResponse(
            observation=await _observation_message(result.observation, session.png),
            reward=wire.to_tensor(result.reward),
            terminated=wire.to_tensor(result.terminated),
            truncated=wire.to_tensor(result.truncated),
            step=steps,
        )

    async def _session(self, session_id: str, context):
        try:
            return self.registry.get(session_id)
        except UnknownError as err:
            await abort(context, grpc.StatusCode.NOT_FOUND, err.args[0])

    async def evict_forever(self) -> None:
        period = max(0.05, min(self.config.idle_ttl_s / 4, 5.0))
        released = self.registry.freed
        while True:
            await asyncio.sleep(period)
            if evicted := self.registry.evict_idle():
                log.info("evicted %d idle sessions", evicted)
            if self.registry.freed != released:  # sessions closed or evicted since: their memory goes back
                released = self.registry.freed
                await asyncio.to_thread(release_freed_memory)  # it walks the heap: off the event loop


def _started_dreams(model, num_envs: int, **options) -> DreamBatch:
    dreams = DreamBatch(model, num_envs, **options)
    dreams.reset()
    return dreams


def _cpu(observation: dict) -> dict:
    return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in observation.items()}


async def _observation_message(observation: dict, png: bool) -> pb.Observation:
    """Raw tensors are one copy, done here; PNG encoding is CPU work, done off the event loop."""
    if png and "image" in observation:
        return await asyncio.to_thread(wire.observation_to_proto, _cpu(observation), True)
    return wire.observation_to_proto(_cpu(observation), False)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    service: SimulatorService
    health: health.aio.HealthServicer
    port: int
    tasks: list[asyncio.Task]

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for task in self.tasks:
            task.cancel()
        for served in self.service.models.values():
            for batcher in served.batchers.values():
                await batcher.close()


def grpc_address(host: str, port: int) -> str:
    """HOST:PORT as gRPC takes it: an IPv6 literal in brackets ("[::1]:50051")."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_model_args(args: list[str]) -> dict[str, Path]:
    """`NAME=PATH` or `PATH` (named after its directory) -> {name: path}."""
    models: dict[str, Path] = {}
    for arg in args:
        name, _, path = arg.rpartition("=") if "=" in arg else (Path(arg).resolve().name, "", arg)
        if name in models:
            raise ValueError(f"two models are named {name!r}; name them: NAME=PATH")
        models[name] = Path(path)
    return models


async def start_server(bundles: dict[str, str | Path], config: ServerConfig) -> RunningServer:
    """Load the bundles and start serving; returns once the port is bound."""
    models = {name: load_served_model(name, path, config.device, config.batcher) for name, path in bundles.items()}
    service = SimulatorService(models, config)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    # Every call: the token before any parsing, then undecodable bytes as INVALID_ARGUMENT (services/guard.py).
    server = grpc.aio.server(options=options, interceptors=[RequestGuard(config.token)])
    pb_grpc.add_SimulatorServicer_to_server(service, server)
    served_services = [SERVICE_NAME]
    if config.dm_env_rpc:
        from dm_env_rpc.v1 import dm_env_rpc_pb2_grpc

        from services.dm_environment import SERVICE_NAME as DM_SERVICE_NAME
        from services.dm_environment import EnvironmentService

        environment = EnvironmentService(models, service.registry, service.check_message_size)
        dm_env_rpc_pb2_grpc.add_EnvironmentServicer_to_server(environment, server)
        served_services.append(DM_SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*served_services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    address = grpc_address(config.host, config.port)
    if config.tls_cert or config.tls_key:
        if not (config.tls_cert and config.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        credentials = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in served_services:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    for name in models:
        await health_servicer.set(f"{SERVICE_NAME}/{name}", health_pb2.HealthCheckResponse.SERVING)
    tasks = [asyncio.create_task(service.evict_forever(), name="evict-idle-sessions")]
    log.info("serving %s on %s (%s)", ", ".join(models), grpc_address(config.host, port), ", ".join(served_services))
    return RunningServer(server, service, health_servicer, port, tasks)


async def serve(bundles: dict[str, str | Path], config: ServerConfig, on_ready=None) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight calls for config.grace_s and exit."""
    running = await start_server(bundles, config)
    if on_ready is not None:
        on_ready(running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining for up to %.1f s", config.grace_s)
    await running.stop(config.grace_s)
    log.info("stopped")
