"""`worldmodel serve --ray`: the simulation service as a Ray Serve application behind Serve's gRPC proxy.

Each replica (`SimulatorReplica`) is the single-process service inside: the bundles, a SimulatorService
with its sessions and dynamic batchers, dm_env_rpc on the same sessions, idle eviction, the bearer token.
Serve's proxy carries worldmodel.v1.Simulator, dm_env_rpc.v1.Environment and grpc.health.v1.Health
(SERVICER_FUNCTIONS) to the replicas by method name; services/serve_routing.py sends every call that names
a session to the replica that owns it.

A call for a session of another replica (a client that sent no `session_id` metadata, a StepMany message
that mixes replicas, a call for a session whose replica died) is passed on to its owner through a
DeploymentHandle (`OwnerCall`); when the owner is gone, the replica the router picked instead answers
NOT_FOUND, "session ... was lost with its replica". Limits (sessions, envs) hold per replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2

from services.guard import TOKEN_REQUIRED, bearer_matches
from services.serve_routing import replica_key
from services.server import SERVICE_NAME, ServerConfig, SimulatorService, StepFailure
from services.sessions import load_served_model
from services.status import bounded, echo, status_code
from services.wire import OWNER_SEPARATOR, owner_of
from worldmodel.v1 import simulator_pb2 as pb

log = logging.getLogger("worldmodel.serve")

APP_NAME = "worldmodel"
DEPLOYMENT_NAME = "Simulator"
ROUTER_CLASS = "services.serve_routing.SessionOwnerRouter"
SERVICER_FUNCTIONS = [
    "worldmodel.v1.simulator_pb2_grpc.add_SimulatorServicer_to_server",
    "dm_env_rpc.v1.dm_env_rpc_pb2_grpc.add_EnvironmentServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
"""What Serve's gRPC proxy serves (gRPCOptions.grpc_servicer_functions); each method reaches the replica
method of its name."""
_METHODS = pb.DESCRIPTOR.services_by_name["Simulator"].methods_by_name
_REQUESTS = {name: GetMessageClass(method.input_type) for name, method in _METHODS.items()}
_REPLIES = {name: GetMessageClass(method.output_type) for name, method in _METHODS.items()}
NOT_HERE = -1
"""OwnerCall's answer when the replica it reached does not own the session."""
OWNER_RETRY_WAITS_S = (0.5, 1.0, 0.0)
"""Before a session is called lost: ask again after these waits (the last try answers)."""


@dataclass
class ReplicaOptions:
    """How many replicas and what each holds; the service inside each is ServerConfig."""

    replicas: int = 1
    max_replicas: int | None = None
    """Set: autoscale between `replicas` and this many on ongoing requests (TARGET_ONGOING_PER_REPLICA)."""
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0


SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
"""Serve's settings for this service's processes (an environment variable of the same name wins). Ray 2.60's
throughput-optimized mode runs replica code on the replica's own event loop and sends the proxy's calls to
the replicas over gRPC instead of Ray actor calls: measured with 64 latent agents on 1 replica, 0.77-0.83x of
the single-process server in three runs against 0.73x without it (benchmarks/service.py --ray). Direct ingress (replicas
listening for clients themselves) stays off: the proxy is the one door."""

TARGET_ONGOING_PER_REPLICA = 32
"""Autoscaling's target: ongoing calls (an open StepStream counts as one) per replica."""


def lost_message(session_id: str) -> str:
    return (f"session {echo(session_id)} was lost with its replica (replica {echo(owner_of(session_id))} is gone, "
            "or never existed): create a new session")


class _CallContext:
    """The part of a grpc.aio context SimulatorService uses, for calls that arrive through Serve."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise StepFailure(code, details)

    async def send_initial_metadata(self, metadata) -> None:
        return None  # Serve's proxy answers the client's headers itself


class SimulatorReplica:
    """One replica of the service: Serve calls the method named like the gRPC method it received."""

    def __init__(self, bundles: dict[str, str], config: ServerConfig):
        from ray import serve

        context = serve.get_replica_context()
        self.key = replica_key(context.replica_id)
        self.app_name = context.app_name
        models = {name: load_served_model(name, path, config.device, config.batcher) for name, path in bundles.items()}
        self.service = SimulatorService(models, config)
        self.service.registry.id_prefix = self.key + OWNER_SEPARATOR
        self.service.foreign_step = self._foreign_step
        self.environment = None
        if config.dm_env_rpc:
            from services.dm_environment import EnvironmentService

            self.environment = EnvironmentService(models, self.service.registry, self.service.check_message_size)
        self.health_names = {"", SERVICE_NAME, *(f"{SERVICE_NAME}/{name}" for name in models)}
        if self.environment is not None:
            from services.dm_environment import SERVICE_NAME as DM_SERVICE_NAME

            self.health_names.add(DM_SERVICE_NAME)
        self._expected = f"Bearer {config.token}".encode() if config.token else None
        self._peers = None
        self._evictor: asyncio.Task | None = None
        log.info("replica %s serving %s", self.key, ", ".join(models))

    # -- the Simulator service ----------------------------------------------------------------------
    async def ListModels(self, request, grpc_context=None):
        return await self._unary("ListModels", request, grpc_context, self.service.ListModels)

    async def CreateSession(self, request, grpc_context=None):
        return await self._unary("CreateSession", request, grpc_context, self.service.CreateSession)

    async def CloseSession(self, request, grpc_context=None):
        return await self._unary("CloseSession", request, grpc_context, self._owned(self.service.CloseSession))

    async def Reset(self, request, grpc_context=None):
        return await self._unary("Reset", request, grpc_context, self._owned(self.service.Reset))

    async def Step(self, request, grpc_context=None):
        return await self._unary("Step", request, grpc_context, self.service.Step)  # foreign steps: _foreign_step

    async def StepStream(self, request_stream, grpc_context=None):
        async for reply in self._stream(self.service.StepStream, request_stream, grpc_context):
            yield reply

    async def StepMany(self, request_stream, grpc_context=None):
        async for reply in self._stream(self.service.StepMany, request_stream, grpc_context):
            yield reply

    # -- dm_env_rpc and health ------------------------------------------------------------------------
    async def Process(self, request_stream, grpc_context=None):
        async for reply in self._stream(self._dm_env_rpc, request_stream, grpc_context):
            yield reply

    def _dm_env_rpc(self, request_stream, context):
        if self.environment is None:
            raise StepFailure(grpc.StatusCode.UNIMPLEMENTED, "dm_env_rpc is off on this server")
        return self.environment.Process(request_stream, context)

    async def Check(self, request, grpc_context=None):
        if request.service not in self.health_names:
            _set_status(grpc_context, grpc.StatusCode.NOT_FOUND, f"unknown service {echo(request.service)}")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Watch(self, request, grpc_context=None):
        known = request.service in self.health_names
        yield health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING if known else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        await asyncio.Event().wait()  # the status never changes while the replica lives; the client hangs up

    # -- a session of another replica ---------------------------------------------------------------
    async def OwnerCall(self, method: str, payload: bytes) -> tuple[int, str, bytes]:
        """`method` on a session of this replica, passed on by another replica: (status code, message, reply)."""
        request = _REQUESTS[method].FromString(payload)
        if not self.service.registry.owns(request.session_id):  # the router knows no owner: gone, or not yet listed
            return NOT_HERE, lost_message(request.session_id), b""
        self._start()
        try:
            reply = await getattr(self.service, method)(request, _CallContext())
        except StepFailure as failure:
            return failure.code.value[0], failure.message, b""
        return 0, "", reply.SerializeToString()

    async def _to_owner(self, method: str, request):
        """`method` on the replica that owns the request's session (StepFailure with its status if it fails)."""
        if not owner_of(request.session_id):  # no replica made this id
            raise StepFailure(grpc.StatusCode.NOT_FOUND, f"no session {echo(request.session_id)} (never created)")
        if self._peers is None:
            from ray import serve

            self._peers = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=self.app_name)
        for wait in OWNER_RETRY_WAITS_S:  # a replica started moments ago may not be in this router's list yet
            code, message, payload = await self._peers.options(
                method_name="OwnerCall", session_id=request.session_id).remote(method, request.SerializeToString())
            if code != NOT_HERE:
                break
            await asyncio.sleep(wait)
        if code == NOT_HERE:
            code = grpc.StatusCode.NOT_FOUND.value[0]
        if code:
            raise StepFailure(status_code(code), message)
        return _REPLIES[method].FromString(payload)

    async def _foreign_step(self, request: pb.StepRequest) -> pb.StepResponse:
        return await self._to_owner("Step", request)

    def _owned(self, method):
        async def call(request, context):
            if self.service.registry.owns(request.session_id):
                return await method(request, context)
            return await self._to_owner(method.__name__, request)
        return call

    # -- plumbing ---------------------------------------------------------------------------------------
    def _start(self) -> None:
        """Idle eviction runs on the loop Serve runs this replica's calls on, started with the first call."""
        if self._evictor is None:
            self._evictor = asyncio.get_running_loop().create_task(self.service.evict_forever(), name="evict-idle")

    def _check_token(self, grpc_context) -> None:
        if self._expected is None:
            return
        metadata = grpc_context.invocation_metadata() if grpc_context is not None else ()
        if not bearer_matches(metadata, self._expected):
            raise StepFailure(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REQUIRED)

    async def _unary(self, method: str, request, grpc_context, call):
        """A unary call; a failure is its status on the call (an empty reply travels with it)."""
        try:
            self._check_token(grpc_context)
            self._start()
            return await call(request, _CallContext())
        except StepFailure as failure:
            _set_status(grpc_context, failure.code, failure.message)
            return _REPLIES[method]()

    async def _stream(self, call, request_stream, grpc_context):
        """A streaming call: a failure ends it with its status (Serve's proxy reads it off the context)."""
        try:
            self._check_token(grpc_context)
            self._start()
            async for reply in call(request_stream, _CallContext()):
                yield reply
        except StepFailure as failure:
            _set_status(grpc_context, failure.code, failure.message)
            raise


def _set_status(grpc_context, code: grpc.StatusCode, message: str) -> None:
    if grpc_context is not None:
        grpc_context.set_code(code)
        grpc_context.set_details(bounded(message))


def simulator_app(bundles: dict[str, str | Path], config: ServerConfig, options: ReplicaOptions | None = None):
    """The Serve application: SimulatorReplica with the session-owner router, sized by `options`."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    options = options or ReplicaOptions()
    deployment = dict(
        name=DEPLOYMENT_NAME,
        ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica},
        # Every session's calls and every open stream are ongoing requests at once: the batcher needs them all.
        max_ongoing_requests=max(1024, 2 * config.max_sessions),
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_CLASS),
    )
    if options.max_replicas is not None:
        deployment["autoscaling_config"] = {
            "min_replicas": options.replicas, "max_replicas": options.max_replicas,
            "target_ongoing_requests": TARGET_ONGOING_PER_REPLICA,
        }
    else:
        deployment["num_replicas"] = options.replicas
    if options.gpus_per_replica > 0 and config.device == "cpu":
        config = replace(config, device="cuda")
    return serve.deployment(SimulatorReplica).options(**deployment).bind(
        {name: str(Path(path).resolve()) for name, path in bundles.items()}, config)


def serve_on_ray(bundles: dict[str, str | Path], config: ServerConfig, options: ReplicaOptions | None = None,
                 on_ready=None, stop=None) -> None:
    """Deploy the service on Ray Serve (embedded Ray, or the cluster of RAY_ADDRESS) and keep it up until
    SIGTERM or SIGINT (or until `stop`, a threading.Event, is set); then delete its application, and on an
    embedded Ray stop Serve and Ray.

    Serve's gRPC proxy listens on config.host:config.port (port 0: a free one); `on_ready(port)` is called
    once every replica is up.
    """
    import signal
    import threading

    from services.serve_routing import GRPC_HOST_ENV, LOCAL_ONLY_ENV
    from worldmodel.raycluster import free_loopback_port, init_ray

    embedded = not os.environ.get("RAY_ADDRESS")
    env_vars = {GRPC_HOST_ENV: config.host, LOCAL_ONLY_ENV: "1" if embedded else ""}
    env_vars.update({key: os.environ.get(key, value) for key, value in SERVE_ENV.items()})
    # Serve's own message limits: clients' messages at the proxy as on one server (Ray's default is 2 GiB), and
    # the proxy-replica hop (Ray's default 4 MiB) wide enough for the largest reply a session was admitted for.
    env_vars.update(RAY_SERVE_GRPC_MAX_MESSAGE_SIZE=str(config.max_message_bytes),
                    RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=str(config.max_message_bytes + (1 << 20)))
    runtime_env = {"env_vars": env_vars, "worker_process_setup_hook": "services.serve_routing.bind_grpc_proxy"}
    started = init_ray(runtime_env=runtime_env)
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    port = config.port or free_loopback_port()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(
            http_options=HTTPOptions(host="127.0.0.1", port=free_loopback_port()),  # unused; Serve starts it anyway
            grpc_options=gRPCOptions(port=port, grpc_servicer_functions=SERVICER_FUNCTIONS),
            proxy_location="HeadOnly",  # one door, at the address given
        )
        try:
            serve.run(simulator_app(bundles, config, options), name=APP_NAME, route_prefix=f"/{APP_NAME}",
                      blocking=False)
            wait_until_routed(config.host, port, stop=stop)
            if not stop.is_set():
                log.info("serving %s on %s:%d through Ray Serve", ", ".join(bundles), config.host, port)
                if on_ready is not None:
                    on_ready(port)
                stop.wait()
        finally:  # also when a replica failed to start or a signal came first: nothing stays deployed
            log.info("stopping: deleting the Serve application")
            serve.delete(APP_NAME)
    finally:
        if started and embedded:  # on a cluster Serve may hold other applications: only ours went
            serve.shutdown()
        if started:
            ray.shutdown()


def wait_until_routed(host: str, port: int, timeout: float = 120.0, stop=None) -> None:
    """Return once Serve's proxy passes calls to the application (after `serve.run` returns, the proxy
    answers NOT_FOUND "Application metadata not set" until it hears of the application)."""
    import time

    from grpc_health.v1 import health_pb2_grpc

    from services.server import grpc_address

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(grpc_address("127.0.0.1" if host in ("0.0.0.0", "::") else host, port)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while stop is None or not stop.is_set():
            try:
                stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                return
            except grpc.RpcError as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Ray Serve's gRPC proxy did not route to the service in {timeout:g} s: "
                                       f"{err.code().name} {err.details()}") from err
                time.sleep(0.2)


BUILD_ARGS = {
    "bundles": "{name: bundle directory} (required)", "token_env": "variable holding the bearer token",
    "device": "torch device of the models", "max_sessions": "sessions per replica", "max_envs": "envs per session",
    "idle_ttl": "seconds before an idle session is evicted", "batch_window_ms": "dynamic batching window",
    "max_message_mb": "largest reply a session may need", "dm_env_rpc": "also serve dm_env_rpc (true/false)",
}
"""What `args:` of services/serve.yaml may hold (`serve deploy`), as `worldmodel serve` takes it."""


def build_app(args: dict):
    """The application of services/serve.yaml's `import_path` (`serve deploy` / `serve run`): the deployment's
    replicas, CPUs and GPUs come from the config's `deployments:` section."""
    from services.batcher import BatcherConfig

    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise ValueError(f"unknown args {unknown}; the application takes: {BUILD_ARGS}")
    bundles = args.get("bundles")
    if not isinstance(bundles, dict) or not bundles:
        raise ValueError("args.bundles must map model names to bundle directories, e.g. {carracing: /data/bundle}")
    token = None
    if args.get("token_env"):
        token = os.environ.get(args["token_env"])
        if not token:
            raise ValueError(f"token_env {args['token_env']}: that variable is empty or unset where the app is built")
    config = ServerConfig(
        max_sessions=int(args.get("max_sessions", 1024)), max_envs_per_session=int(args.get("max_envs", 1024)),
        idle_ttl_s=float(args.get("idle_ttl", 600.0)), max_message_bytes=int(args.get("max_message_mb", 64)) << 20,
        token=token, device=str(args.get("device", "cpu")), dm_env_rpc=_flag(args.get("dm_env_rpc", True), "dm_env_rpc"),
        batcher=BatcherConfig(window_s=float(args.get("batch_window_ms", 2.0)) / 1000),
    )
    return simulator_app(bundles, config)


def _flag(value, name: str) -> bool:
    """A yes/no arg as YAML (a bool) or `serve run ... name=false` (a string) gives it."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")
