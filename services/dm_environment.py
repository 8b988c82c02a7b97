"""dm_env_rpc v1: the protocol's `Environment` service, over the native service's models, sessions and batcher.

dm-env-rpc's own client (`dm_env_rpc.v1.connection` + `dm_env_adaptor`) drives a dream
unchanged. A world is one dream (a registry session of one env), so the server's limits
and idle eviction apply to worlds too, and the steps of every world and every native
session on a model share its dynamic batcher.

World settings (CreateWorld; each a scalar tensor): model (string; required when more than
one model is served), backend (string), observation ("pixels" or "latent"), seed (int >= 0),
temperature (float > 0), max_episode_steps (int >= 0; 0 never interrupts). Reset and
ResetWorld take an optional seed. JoinWorld takes no settings; a world has one agent at a time.

As the protocol documents: the first Step after JoinWorld or Reset, and after a sequence
ends, starts a sequence (its actions are ignored) and answers RUNNING; a step the dream
ends answers TERMINATED, one cut by max_episode_steps INTERRUPTED. Rewards and discounts
are observations named `reward` and `discount` (1 while running or interrupted, 0 on
termination), as dm_env_adaptor expects. Errors come back in the stream as google.rpc.Status
with a gRPC code; the stream and the world go on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
import numpy as np
from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm
from dm_env_rpc.v1 import dm_env_rpc_pb2_grpc as dm_grpc
from dm_env_rpc.v1 import tensor_spec_utils, tensor_utils
from google.rpc import status_pb2

from services.sessions import LimitError, ServedModel, Session, SessionRegistry, UnknownError
from worldmodel.session import DreamBatch
from worldmodel.spec import EnvSpec

log = logging.getLogger("worldmodel.serve.dm_env_rpc")
SERVICE_NAME = dm.DESCRIPTOR.services_by_name["Environment"].full_name
ACTION_UID = 1
WORLD_SETTINGS = {
    "model": str, "backend": str, "observation": str, "seed": int, "temperature": float, "max_episode_steps": int,
}
RESET_SETTINGS = {"seed": int}
_RUNNING, _TERMINATED, _INTERRUPTED = dm.RUNNING, dm.TERMINATED, dm.INTERRUPTED


class ProtocolError(Exception):
    """A request the protocol or this server refuses; goes back in the stream as google.rpc.Status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, message)


# -- specs ------------------------------------------------------------------------
def _tensor_spec(name: str, dtype, shape, minimum=None, maximum=None) -> dm.TensorSpec:
    spec = dm.TensorSpec(name=name, dtype=tensor_utils.np_type_to_data_type(dtype), shape=list(shape))
    if minimum is not None or maximum is not None:
        # As the spec's dtype: dm-env-rpc checks integer bounds against integer limits only.
        tensor_spec_utils.set_bounds(spec, np.asarray(minimum, dtype), np.asarray(maximum, dtype))
    return spec


def world_specs(served: ServedModel, observation: str) -> dm.ActionObservationSpecs:
    """The action (uid 1) and observations of a world, from the model's EnvSpec; uids count from 1."""
    spec = served.spec
    if spec.action.is_discrete:
        action = _tensor_spec("action", np.int64, (), 0, spec.action.n - 1)
    else:
        action = _tensor_spec("action", np.float32, spec.action.shape, spec.action.low, spec.action.high)
    if observation == "latent":
        observed = [_tensor_spec("latent", np.float32, (served.latent_size(),))]
    else:
        observed = [_tensor_spec("image", np.uint8, spec.image.shape, 0, 255)]
        if spec.vector is not None:
            observed.append(_tensor_spec("vector", np.float32, (spec.vector.size,)))
    # dm_env's conventions: reward and discount are float64 scalars, the discount in [0, 1].
    observed += [_tensor_spec("reward", np.float64, ()), _tensor_spec("discount", np.float64, (), 0.0, 1.0)]
    return dm.ActionObservationSpecs(
        actions={ACTION_UID: action}, observations={uid: s for uid, s in enumerate(observed, start=1)}
    )


# -- settings and actions -------------------------------------------------------------
def parse_settings(settings, known: dict[str, type], request: str) -> dict:
    """Scalar settings of the known names and types, or INVALID_ARGUMENT saying which and why."""
    parsed = {}
    for name, tensor in settings.items():
        if name not in known:
            raise _invalid(f"{request}: unknown setting {name!r}; known: {sorted(known) or 'none'}")
        try:
            value = tensor_utils.unpack_tensor(tensor)
        except (TypeError, ValueError) as err:
            raise _invalid(f"{request}: setting {name!r} is not a scalar tensor ({err})") from None
        if np.ndim(value) != 0:
            raise _invalid(f"{request}: setting {name!r} is not a scalar tensor (shape {list(np.shape(value))})")
        want = known[name]
        if not _is_a(value, want):
            raise _invalid(f"{request}: setting {name!r} must be a scalar {want.__name__}, got {value!r}")
        parsed[name] = want(value)
    return parsed


def _is_a(value, want: type) -> bool:
    """Does an unpacked scalar fit a setting of type `want` (an int fits a float; a bool fits nothing)?"""
    if isinstance(value, (bool, np.bool_)):
        return False
    if want is str:
        return isinstance(value, str)
    if want is int:
        return isinstance(value, (int, np.integer))
    return isinstance(value, (int, float, np.integer, np.floating))


def reset_seed(settings, request: str) -> int | None:
    """The optional `seed` of Reset and ResetWorld."""
    seed = parse_settings(settings, RESET_SETTINGS, request).get("seed")
    if seed is not None and seed < 0:
        raise _invalid(f"{request}: seed must be >= 0, got {seed}")
    return seed


def unpack_action(actions, spec: dm.TensorSpec, env_spec: EnvSpec) -> np.ndarray:
    """The one action of a Step as a batch of one env: its uid, dtype and shape checked against the
    world's action spec here, its values by the EnvSpec's one checker (bounds, finiteness, clipping)."""
    unknown = sorted(set(actions) - {ACTION_UID})
    if unknown:
        raise _invalid(f"no action uid {unknown[0]}; this world's actions: {{{ACTION_UID}: {spec.name!r}}}")
    if ACTION_UID not in actions:
        raise _invalid(f"missing action {spec.name!r} (uid {ACTION_UID}): every step after a sequence's first needs one")
    tensor = actions[ACTION_UID]
    want = tensor_utils.data_type_to_np_type(spec.dtype)
    try:
        got = tensor_utils.get_tensor_type(tensor)
    except TypeError:
        raise _invalid(f"action {spec.name!r} has no payload; expected {want}") from None
    if got != want:
        raise _invalid(f"action {spec.name!r} must be {np.dtype(want)}, got {np.dtype(got)}")
    shape = list(tensor.shape)
    if shape.count(-1) > 1 or any(s < -1 for s in shape):
        raise _invalid(f"action {spec.name!r}: shape {shape} has more than one variable (-1) dimension or a negative one")
    try:
        value = np.array(tensor_utils.unpack_tensor(tensor))
    except ValueError as err:
        raise _invalid(f"action {spec.name!r}: {err}") from None
    if value.shape != tuple(spec.shape):
        raise _invalid(f"action {spec.name!r} must have shape {list(spec.shape)}, got {list(value.shape)}")
    try:
        return env_spec.check_actions(value[None], 1)
    except ValueError as err:
        raise _invalid(f"action {spec.name!r}: {err}") from None


def pack_observations(requested, specs: dm.ActionObservationSpecs, observation: dict, reward: float, discount: float):
    values = {"reward": np.float64(reward), "discount": np.float64(discount)}
    for name, tensor in observation.items():
        values[name] = tensor[0].detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor[0])
    out = {}
    for uid in requested:
        spec = specs.observations[uid]
        out[uid] = tensor_utils.pack_tensor(values[spec.name], dtype=tensor_utils.data_type_to_np_type(spec.dtype))
    return out


# -- worlds -------------------------------------------------------------------------
@dataclass
class World:
    session: Session
    specs: dm.ActionObservationSpecs
    joined: bool = False
    starting: bool = True
    """The next Step starts a sequence (after JoinWorld, Reset, ResetWorld, or a sequence's end)."""
    seed: int | None = None
    """A seed to reset with when the next sequence starts (Reset/ResetWorld settings)."""


class _Stream:
    """What one Process stream holds: the world it has joined."""

    world_name: str | None = None


class EnvironmentService(dm_grpc.EnvironmentServicer):
    def __init__(self, models: dict[str, ServedModel], registry: SessionRegistry, check_message_size):
        self.models = models
        self.registry = registry
        self.check_message_size = check_message_size
        self.worlds: dict[str, World] = {}

    async def Process(self, request_iterator, context):
        stream = _Stream()
        try:
            async for request in request_iterator:  # one at a time: a stream's requests apply in order
                yield await self._answer(request, stream)
        finally:  # the client went away: free its world for others
            if stream.world_name is not None:
                self._leave(stream)

    async def _answer(self, request: dm.EnvironmentRequest, stream: _Stream) -> dm.EnvironmentResponse:
        kind = request.WhichOneof("payload")
        handler = {
            "create_world": self._create_world, "join_world": self._join_world, "step": self._step,
            "reset": self._reset, "reset_world": self._reset_world, "leave_world": self._leave_world,
            "destroy_world": self._destroy_world,
        }.get(kind)
        try:
            if handler is None:
                raise ProtocolError(grpc.StatusCode.UNIMPLEMENTED, f"request {kind!r} is not supported by this server")
            return dm.EnvironmentResponse(**{kind: await handler(getattr(request, kind), stream)})
        except ProtocolError as err:
            return _error(err.code, err.message)
        except Exception as err:  # noqa: BLE001 - a bug answers INTERNAL; the stream goes on
            log.exception("dm_env_rpc %s failed", kind)
            return _error(grpc.StatusCode.INTERNAL, f"{kind}: {type(err).__name__}: {err}")

    # -- world lifecycle ----------------------------------------------------------
    async def _create_world(self, request: dm.CreateWorldRequest, stream) -> dm.CreateWorldResponse:
        settings = parse_settings(request.settings, WORLD_SETTINGS, "CreateWorld")
        name = settings.get("model")
        if name is None:
            if len(self.models) > 1:
                raise _invalid(f"CreateWorld: setting 'model' is required; served: {sorted(self.models)}")
            name = next(iter(self.models))
        served = self.models.get(name)
        if served is None:
            raise ProtocolError(grpc.StatusCode.NOT_FOUND, f"CreateWorld: no model {name!r}; served: {sorted(self.models)}")
        backend = settings.get("backend", served.backends[0])
        if backend not in served.models:
            raise ProtocolError(grpc.StatusCode.NOT_FOUND, f"CreateWorld: model {name!r} has no backend {backend!r}; it has {served.backends}")
        observation = settings.get("observation", "pixels")
        try:
            self.registry.check_capacity()
            dreams = DreamBatch(
                served.models[backend], 1, observation=observation, max_episode_steps=settings.get("max_episode_steps", 0),
                temperature=settings.get("temperature"), seed=settings.get("seed"),
            )
            self.check_message_size(served, 1, observation, False)
        except LimitError as err:
            raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"CreateWorld: {err}") from None
        except ValueError as err:
            raise _invalid(f"CreateWorld: {err}") from None
        session = self.registry.add(served, backend, dreams, png=False)
        self.worlds[session.id] = World(session, world_specs(served, observation))
        log.info("world %s: %s/%s, %s", session.id, name, backend, observation)
        return dm.CreateWorldResponse(world_name=session.id)

    def _world(self, world_name: str, request: str) -> World:
        world = self.worlds.get(world_name)
        if world is not None and world.session.id not in self.registry.sessions:  # evicted idle, or closed natively
            del self.worlds[world_name]
            world = None
        if world is None:
            raise ProtocolError(
                grpc.StatusCode.NOT_FOUND,
                f"{request}: no world {world_name!r} (destroyed, evicted after {self.registry.idle_ttl_s:g} s "
                "unjoined and idle, or never created)",
            )
        return world

    async def _join_world(self, request: dm.JoinWorldRequest, stream: _Stream) -> dm.JoinWorldResponse:
        if stream.world_name is not None:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"JoinWorld: this connection has joined world {stream.world_name!r}; LeaveWorld first")
        world = self._world(request.world_name, "JoinWorld")
        parse_settings(request.settings, {}, "JoinWorld")
        if world.joined:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"JoinWorld: world {request.world_name!r} has an agent already (one per world)")
        world.joined, world.starting = True, True
        world.session.busy += 1  # a joined world is never evicted as idle
        stream.world_name = request.world_name
        return dm.JoinWorldResponse(specs=world.specs)

    def _leave(self, stream: _Stream) -> None:
        world = self.worlds.get(stream.world_name)
        stream.world_name = None
        if world is not None and world.joined:
            world.joined = False
            world.session.busy -= 1
            world.session.touch()

    async def _leave_world(self, request, stream: _Stream) -> dm.LeaveWorldResponse:
        self._leave(stream)  # leaving when not joined is allowed (and does nothing)
        return dm.LeaveWorldResponse()

    async def _destroy_world(self, request: dm.DestroyWorldRequest, stream) -> dm.DestroyWorldResponse:
        world = self._world(request.world_name, "DestroyWorld")
        if world.joined:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"DestroyWorld: world {request.world_name!r} has an agent joined; it must LeaveWorld first")
        del self.worlds[request.world_name]
        try:
            self.registry.close(world.session.id)
        except UnknownError:
            pass  # evicted meanwhile: gone either way
        return dm.DestroyWorldResponse()

    async def _reset_world(self, request: dm.ResetWorldRequest, stream) -> dm.ResetWorldResponse:
        world = self._world(request.world_name, "ResetWorld")
        seed = reset_seed(request.settings, "ResetWorld")
        world.seed = seed if seed is not None else world.seed
        world.starting = True
        world.session.touch()
        return dm.ResetWorldResponse()

    # -- the joined world ---------------------------------------------------------
    def _joined(self, stream: _Stream, request: str) -> World:
        if stream.world_name is None:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION, f"{request}: join a world first (JoinWorld)")
        return self._world(stream.world_name, request)

    async def _reset(self, request: dm.ResetRequest, stream: _Stream) -> dm.ResetResponse:
        world = self._joined(stream, "Reset")
        seed = reset_seed(request.settings, "Reset")
        world.seed = seed if seed is not None else world.seed
        world.starting = True
        return dm.ResetResponse(specs=world.specs)

    async def _step(self, request: dm.StepRequest, stream: _Stream) -> dm.StepResponse:
        world = self._joined(stream, "Step")
        specs = world.specs
        requested = list(dict.fromkeys(request.requested_observations))  # duplicates are redundant
        unknown = [uid for uid in requested if uid not in specs.observations]
        if unknown:
            names = {uid: s.name for uid, s in specs.observations.items()}
            raise _invalid(f"Step: no observation uid {unknown[0]}; this world's observations: {names}")
        session = world.session
        dreams = session.dreams
        if world.starting:  # the protocol ignores a sequence's first actions
            async with session.lock:
                observation = await asyncio.to_thread(dreams.reset, world.seed)
            world.seed, world.starting = None, False
            state, reward, discount = _RUNNING, 0.0, 1.0
        else:
            action = unpack_action(request.actions, specs.actions[ACTION_UID], dreams.spec)
            session.busy += 1
            try:
                async with session.lock:
                    result = await session.model.batchers[session.backend].step(dreams, action)
            except ValueError as err:
                raise _invalid(f"Step: {err}") from None
            finally:
                session.busy -= 1
                session.touch()
            observation, reward = result.observation, float(result.reward[0])
            if result.terminated[0]:
                state, discount = _TERMINATED, 0.0
            elif result.truncated[0]:
                state, discount = _INTERRUPTED, 1.0
            else:
                state, discount = _RUNNING, 1.0
            world.starting = state != _RUNNING
        return dm.StepResponse(state=state, observations=pack_observations(requested, specs, observation, reward, discount))


def _error(code: grpc.StatusCode, message: str) -> dm.EnvironmentResponse:
    return dm.EnvironmentResponse(error=status_pb2.Status(code=code.value[0], message=message))
