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

A world lives on its registry session (`Session.world`): destroying, closing or evicting the
session frees the world with it. Client tensors are sized against the specs before anything is
unpacked (services/dm_tensors.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm
from dm_env_rpc.v1 import dm_env_rpc_pb2_grpc as dm_grpc
from google.rpc import status_pb2

from services.dm_tensors import (
    ACTION_UID, WORLD_SETTINGS, ProtocolError, invalid, pack_observations, parse_settings, reset_seed, unpack_action,
    world_specs,
)
from services.sessions import LimitError, ServedModel, Session, SessionRegistry
from services.status import bounded, echo
from worldmodel.session import DreamBatch

log = logging.getLogger("worldmodel.serve.dm_env_rpc")
SERVICE_NAME = dm.DESCRIPTOR.services_by_name["Environment"].full_name
MAX_REQUESTED_OBSERVATIONS = 64
"""A Step names each observation uid once (a world has at most four); more is refused before any copy."""
_RUNNING, _TERMINATED, _INTERRUPTED = dm.RUNNING, dm.TERMINATED, dm.INTERRUPTED


# -- worlds -------------------------------------------------------------------------
@dataclass
class World:
    """What a session that is a dm_env_rpc world holds beyond its dreams (as `Session.world`: the
    registry is the one record, so an evicted or closed session takes its world with it)."""

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
                raise invalid(f"CreateWorld: setting 'model' is required; served: {sorted(self.models)}")
            name = next(iter(self.models))
        served = self.models.get(name)
        if served is None:
            raise ProtocolError(grpc.StatusCode.NOT_FOUND, f"CreateWorld: no model {echo(name)}; served: {sorted(self.models)}")
        backend = settings.get("backend", served.backends[0])
        if backend not in served.models:
            raise ProtocolError(grpc.StatusCode.NOT_FOUND,
                                f"CreateWorld: model {name!r} has no backend {echo(backend)}; it has {served.backends}")
        observation = settings.get("observation", "pixels")
        try:
            self.registry.check_capacity(1)
            dreams = DreamBatch(
                served.models[backend], 1, observation=observation, max_episode_steps=settings.get("max_episode_steps", 0),
                temperature=settings.get("temperature"), seed=settings.get("seed"),
            )
            self.check_message_size(served, 1, observation, False)
            session = self.registry.add(served, backend, dreams, png=False)
        except LimitError as err:
            raise ProtocolError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"CreateWorld: {err}") from None
        except ValueError as err:
            raise invalid(f"CreateWorld: {err}") from None
        session.world = World(world_specs(served, observation))
        log.info("world %s: %s/%s, %s", session.id, name, backend, observation)
        return dm.CreateWorldResponse(world_name=session.id)

    def _world(self, world_name: str, request: str) -> tuple[Session, World]:
        """The session that is world `world_name`, and the world; NOT_FOUND once destroyed or evicted."""
        session = self.registry.sessions.get(world_name)
        if session is None and not self.registry.owns(world_name):  # on Ray Serve: another replica made it
            raise ProtocolError(
                grpc.StatusCode.NOT_FOUND,
                f"{request}: world {echo(world_name)} is not on the replica of this connection: it was lost with "
                "its replica, or lives on another (join a world on the connection that created it)",
            )
        if session is None or session.world is None:  # a native session is no world
            raise ProtocolError(
                grpc.StatusCode.NOT_FOUND,
                f"{request}: no world {echo(world_name)} (destroyed, evicted after {self.registry.idle_ttl_s:g} s "
                "unjoined and idle, or never created)",
            )
        return session, session.world

    async def _join_world(self, request: dm.JoinWorldRequest, stream: _Stream) -> dm.JoinWorldResponse:
        if stream.world_name is not None:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"JoinWorld: this connection has joined world {stream.world_name!r}; LeaveWorld first")
        session, world = self._world(request.world_name, "JoinWorld")
        parse_settings(request.settings, {}, "JoinWorld")
        if world.joined:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"JoinWorld: world {request.world_name!r} has an agent already (one per world)")
        world.joined, world.starting = True, True
        session.busy += 1  # a joined world is never evicted as idle
        stream.world_name = request.world_name
        return dm.JoinWorldResponse(specs=world.specs)

    def _leave(self, stream: _Stream) -> None:
        session = self.registry.sessions.get(stream.world_name)
        stream.world_name = None
        if session is not None and session.world is not None and session.world.joined:
            session.world.joined = False
            session.busy -= 1
            session.touch()

    async def _leave_world(self, request, stream: _Stream) -> dm.LeaveWorldResponse:
        self._leave(stream)  # leaving when not joined is allowed (and does nothing)
        return dm.LeaveWorldResponse()

    async def _destroy_world(self, request: dm.DestroyWorldRequest, stream) -> dm.DestroyWorldResponse:
        session, world = self._world(request.world_name, "DestroyWorld")
        if world.joined:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"DestroyWorld: world {request.world_name!r} has an agent joined; it must LeaveWorld first")
        self.registry.close(session.id)
        return dm.DestroyWorldResponse()

    async def _reset_world(self, request: dm.ResetWorldRequest, stream) -> dm.ResetWorldResponse:
        session, world = self._world(request.world_name, "ResetWorld")
        seed = reset_seed(request.settings, "ResetWorld")
        world.seed = seed if seed is not None else world.seed
        world.starting = True
        session.touch()
        return dm.ResetWorldResponse()

    # -- the joined world ---------------------------------------------------------
    def _joined(self, stream: _Stream, request: str) -> tuple[Session, World]:
        if stream.world_name is None:
            raise ProtocolError(grpc.StatusCode.FAILED_PRECONDITION, f"{request}: join a world first (JoinWorld)")
        return self._world(stream.world_name, request)

    async def _reset(self, request: dm.ResetRequest, stream: _Stream) -> dm.ResetResponse:
        _, world = self._joined(stream, "Reset")
        seed = reset_seed(request.settings, "Reset")
        world.seed = seed if seed is not None else world.seed
        world.starting = True
        return dm.ResetResponse(specs=world.specs)

    async def _step(self, request: dm.StepRequest, stream: _Stream) -> dm.StepResponse:
        session, world = self._joined(stream, "Step")
        specs = world.specs
        if len(request.requested_observations) > MAX_REQUESTED_OBSERVATIONS:  # counted before any copy
            raise invalid(f"Step: {len(request.requested_observations)} requested observations; "
                          f"name each of this world's {len(specs.observations)} at most once")
        requested = list(dict.fromkeys(request.requested_observations))  # duplicates are redundant
        unknown = [uid for uid in requested if uid not in specs.observations]
        if unknown:
            names = {uid: s.name for uid, s in specs.observations.items()}
            raise invalid(f"Step: no observation uid {unknown[0]}; this world's observations: {names}")
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
                raise invalid(f"Step: {err}") from None
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
    return dm.EnvironmentResponse(error=status_pb2.Status(code=code.value[0], message=bounded(message)))
