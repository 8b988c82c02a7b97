"""Remote environments: a world model served by `worldmodel serve`, stepped as a gymnasium environment.

`RemoteEnv` is a session of one env, `RemoteVectorEnv` one session of N envs
(one round trip steps all N, batched on the server). Steps travel over one
StepStream kept open per session (no call set up per step); `stream=False`
makes unary Step calls instead. Both speak to the server
through services/client.py, the one module of services/ that envs/ may import
(the dependency direction of DESIGN.md); the dreams themselves run on the
server, so this module needs neither torch nor a bundle.

Registered as "worldmodel/Remote-v0" (`gymnasium.make` -> RemoteEnv,
`gymnasium.make_vec` -> RemoteVectorEnv).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from services.client import SimulatorClient, StepStream
from worldmodel.spec import EnvSpec

__all__ = ["RemoteEnv", "RemoteSession", "RemoteVectorEnv"]

DEFAULT_ADDRESS = "127.0.0.1:50051"


class RemoteSession:
    """One session of `num_envs` envs on a served model, and what both envs derive from it.

    Spaces come from the EnvSpec the server sends: the spec's image (+ vector)
    for "pixels", `Box(-inf, inf, (latent_size,), float32)` for "latent".
    Server errors about a request (INVALID_ARGUMENT, NOT_FOUND) surface as
    ValueError with the server's message; others as grpc.RpcError.
    """

    def __init__(
        self,
        num_envs: int,
        address: str,
        model: str | None,
        *,
        backend: str | None,
        token: str | None,
        temperature: float | None,
        max_episode_steps: int | None,
        observation: str,
        png: bool,
        root_certificates: bytes | None,
        timeout: float | None,
        stream: bool = True,
    ):
        if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
            raise ValueError(f"max_episode_steps must be None or an int >= 1, got {max_episode_steps!r}")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.address, self.num_envs, self.observation = address, num_envs, observation
        self.client = SimulatorClient(address, token=token, root_certificates=root_certificates, timeout=timeout)
        try:
            if model is None:
                served = [m.name for m in self.client.list_models()]
                if len(served) != 1:
                    raise ValueError(f"the server at {address} hosts {sorted(served)}: choose one with model=NAME")
                model = served[0]
            self._creation = dict(model=model, backend=backend or "", num_envs=num_envs, temperature=temperature,
                                  max_episode_steps=max_episode_steps or 0, observation=observation, png=png)
            with _as_value_error(f"the server at {address}"):  # the client checks `observation` against the wire's modes
                self.info = self.client.create_session(**self._creation)
        except BaseException:
            self.client.close()
            raise
        self.session_id = self.info.session_id
        self.spec: EnvSpec = self.info.model.spec
        self.single_action_space = self.spec.action_space()
        if observation == "latent":
            self.single_observation_space = spaces.Box(-np.inf, np.inf, (self.info.model.latent_size,), np.float32)
        else:
            self.single_observation_space = self.spec.observation_space()
        self.frames: np.ndarray | None = None  # the last images [N, H, W, C] (pixels mode)
        self.stream = stream
        self._steps: StepStream | None = None  # opened on the first step, again after an error ended it
        self.closed = False

    def reset(
        self, seed: int | None = None, env_indices: Sequence[int] = (), seeds: Sequence[int] = (),
    ) -> np.ndarray | dict[str, np.ndarray]:
        with _as_value_error("reset"):
            try:
                reply = self.client.reset(self.session_id, seed=seed, env_indices=env_indices, seeds=seeds)
            except grpc.RpcError as err:
                if not _lost(err):
                    raise
                self._recreate()  # its Ray Serve replica died: a new session (on a live replica) starts over
                reply = self.client.reset(self.session_id, seed=seed, env_indices=env_indices, seeds=seeds)
        return self._observations(reply)

    def _recreate(self) -> None:
        if self._steps is not None:
            self._steps.close(cancel=True)
            self._steps = None
        info = self.client.create_session(**self._creation)
        if info.model.spec != self.spec:
            self.client.close_session(info.session_id)
            raise RuntimeError(f"the model {info.model.name!r} changed its spec since this env was made")
        self.info, self.session_id = info, info.session_id

    def step(self, actions: np.ndarray, reset_mask: np.ndarray | None = None):
        with _as_value_error("step"):
            if not self.stream:
                reply = self.client.step(self.session_id, actions, reset_mask)
            else:
                if self._steps is None or self._steps.closed:
                    self._steps = self.client.open_step_stream(self.session_id)
                try:
                    reply = self._steps.step(actions, reset_mask)
                except grpc.RpcError as err:
                    if err.code() in _BROKEN_STREAM:
                        self._probe_session()
                    raise
        return self._observations(reply.observation), reply.reward, reply.terminated, reply.truncated

    def _probe_session(self) -> None:
        """After a StepStream broke under a step (on Ray Serve: its replica died, or the proxy), raise the
        session's NOT_FOUND "lost" if that is what happened. The probe changes nothing: a reset of an env
        index past the session's, which the server refuses before it touches any env."""
        try:
            self.client.reset(self.session_id, env_indices=[self.num_envs])
        except grpc.RpcError as probe:
            if _lost(probe):
                raise probe from None

    def _observations(self, observation: dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        if self.observation == "latent":
            return observation["latent"]
        self.frames = observation["image"]
        if self.spec.vector is None:
            return observation["image"]
        return {"image": observation["image"], "vector": observation["vector"]}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._steps is not None:
            self._steps.close()
        try:
            self.client.close_session(self.session_id)
        except grpc.RpcError:
            pass  # already evicted, or the server is gone: nothing left to free
        finally:
            self.client.close()


_BROKEN_STREAM = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)
"""How a stream ends when what carries it fails, not the step (the server's verdicts have their own codes)."""


def _lost(error: grpc.RpcError) -> bool:
    """The server's word that a session went with its Ray Serve replica (services/ray_serve.py)."""
    return error.code() == grpc.StatusCode.NOT_FOUND and "lost" in (error.details() or "")


class _as_value_error:
    """Turn the server's verdict on a bad request into the ValueError a gymnasium env raises."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, grpc.RpcError) and error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            raise ValueError(f"{self.what}: {error.details()}") from None


class _RemoteShell:
    """What RemoteEnv and RemoteVectorEnv set up alike: a session of `num_envs` envs and the render mode.

    `_connect`'s keywords are the options both envs take, with their defaults (RemoteEnv documents them).
    """

    metadata: dict[str, Any]

    def _connect(
        self,
        num_envs: int,
        address: str = DEFAULT_ADDRESS,
        model: str | None = None,
        *,
        backend: str | None = None,
        token: str | None = None,
        temperature: float | None = None,
        max_episode_steps: int | None = None,
        observation: str = "pixels",
        png: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = 60.0,
        render_mode: str | None = None,
        stream: bool = True,
    ) -> RemoteSession:
        """Check the render mode and open the session (ValueError before any call for a bad render mode)."""
        _check_render_mode(render_mode, observation, self.metadata["render_modes"])
        self._session = RemoteSession(
            num_envs, address, model, backend=backend, token=token, temperature=temperature,
            max_episode_steps=max_episode_steps, observation=observation, png=png,
            root_certificates=root_certificates, timeout=timeout, stream=stream,
        )
        self.render_mode = render_mode
        self._needs_reset = True
        return self._session

    @property
    def session_id(self) -> str:
        return self._session.session_id


def _row(observation: np.ndarray | dict[str, np.ndarray], i: int):
    if isinstance(observation, dict):
        return {key: value[i] for key, value in observation.items()}
    return observation[i]


class RemoteEnv(_RemoteShell, gym.Env):
    """
    ## Description

    A dream served over gRPC: the model runs in a `worldmodel serve` process
    (this machine or another), this env holds one session of one env on it.
    Steps of many agents' sessions on one model are fused on the server by
    its dynamic batcher. Behaves like `worldmodel/Dream-v0` on the same
    bundle: the same seed and actions give the same dream.

    ## Action Space

    The served model's EnvSpec action space: `Box(low, high, (A,), float32)` or
    `Discrete(n)`. Actions outside it raise ValueError (checked here, and again
    by the server).

    ## Observation Space

    | `observation` | space                                                  |
    |---------------|--------------------------------------------------------|
    | `"pixels"`    | `Box(0, 255, (H, W, C), uint8)`, or `Dict(image=..., vector=Box(-inf, inf, (D,)))` when the spec has a vector |
    | `"latent"`    | `Box(-inf, inf, (latent_size,), float32)`: the model's features ([z, h] for V-M-C); no frames travel |

    `png=True` sends frames PNG-encoded (smaller on slow links, costs CPU on both ends).

    ## Rewards, Starting State, Episode End

    As the dream env: the model's reward; `reset(seed=s)` draws a start
    context and the sampler's seed from `s` (on the server); termination when
    the model predicts it, truncation after `max_episode_steps` when given.

    ## Arguments

    ```python
    gym.make("worldmodel/Remote-v0", address="127.0.0.1:50051", model="carracing", backend="vmc",
             token=None, temperature=1.15, max_episode_steps=1000, observation="pixels", png=False,
             root_certificates=None, timeout=60.0, render_mode="rgb_array", stream=True)
    ```
    `RemoteEnv(address, model, **options)` takes the keywords shown (defaults:
    backend and temperature the server's, max_episode_steps None, observation
    "pixels", png False, token and root_certificates None, timeout 60 s,
    render_mode None, stream True; an unknown keyword is a TypeError). `stream`
    steps over one StepStream kept open (False: a unary Step call per step;
    the same results, more per-step cost on both ends); `timeout` bounds each
    step either way. `model` may be left
    out when the server hosts one model. `token` is the
    bearer token of a server started with `--token-env`; `root_certificates`
    (PEM bytes) turns on TLS. `close()` closes the session on the server
    (sessions left open are evicted after the server's idle TTL).

    ## Version History

    * v0: Initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, address: str = DEFAULT_ADDRESS, model: str | None = None, **options: Any):
        session = self._connect(1, address, model, **options)
        self.observation_space = session.single_observation_space
        self.action_space = session.single_action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        observation = self._session.reset(seed=seed)
        self._needs_reset = False
        return _row(observation, 0), {}

    def step(self, action: Any):
        if self._needs_reset:
            raise gym.error.ResetNeeded("RemoteEnv: call reset() before step()")
        try:
            action = self._session.spec.check_action(action)
            observation, reward, terminated, truncated = self._session.step(action[None])
        except ValueError as err:
            raise ValueError(f"RemoteEnv.step: {err}") from None
        return _row(observation, 0), float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> np.ndarray | None:
        """The last frame [H, W, C] uint8, as the server sent it."""
        if self.render_mode is None:
            gym.logger.warn("RemoteEnv.render() without a render_mode: make the env with render_mode='rgb_array'")
            return None
        if self._session.frames is None:
            raise gym.error.ResetNeeded("RemoteEnv: call reset() before render()")
        return self._session.frames[0]

    def close(self) -> None:
        self._session.close()


class RemoteVectorEnv(_RemoteShell, VectorEnv):
    """
    ## Description

    One session of `num_envs` envs on a served model: each `step()` is one
    round trip carrying all N actions, stepped on the server as one batch.
    Spaces, rewards, episode ends and arguments are RemoteEnv's
    (`RemoteVectorEnv(num_envs, address, model, **options)`);
    `single_observation_space` / `single_action_space` are one env's.

    ## Autoreset: NEXT_STEP

    `metadata["autoreset_mode"] = AutoresetMode.NEXT_STEP`, as DreamVectorEnv:
    an env that ends at step t returns its true last observation, and the next
    `step()` resets it on the server (its action is ignored, its reward is 0,
    terminated and truncated are False) and returns the new episode's first
    observation. The reset rides in the same round trip (`StepRequest.reset_mask`).

    ## Seeding

    `reset(seed=s)` seeds env i with `s + i`, so env i dreams what
    `RemoteEnv`/`DreamEnv` reset with `s + i` dream; `reset(seed=[s0, s1, ...])`
    gives one seed each, in one round trip (`ResetRequest.seeds`); a None keeps
    that env's stream going (a second round trip resets those envs).

    ## Version History

    * v0: Initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, address: str = DEFAULT_ADDRESS, model: str | None = None, **options: Any):
        session = self._connect(num_envs, address, model, **options)
        self.num_envs = num_envs
        self.single_observation_space = session.single_observation_space
        self.single_action_space = session.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, np.bool_)  # envs that ended last step

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is None or isinstance(seed, (int, np.integer)):
            if seed is not None:
                super().reset(seed=int(seed))  # the vector env's own np_random, for users who read it
            observation = self._session.reset(seed=None if seed is None else int(seed))
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset(seed=) got {len(seeds)} seeds for {self.num_envs} envs")
            # One round trip for the seeded envs, one more only when some keep their streams (the wire has no None).
            unseeded = [i for i, s in enumerate(seeds) if s is None]
            seeded = [i for i, s in enumerate(seeds) if s is not None]
            observation = self._session.reset(env_indices=unseeded) if unseeded else None
            if seeded:
                observation = self._session.reset(env_indices=seeded, seeds=[int(seeds[i]) for i in seeded])
        self._autoreset[:] = False
        self._needs_reset = False
        return observation, {}

    def step(self, actions: Any):
        if self._needs_reset:
            raise gym.error.ResetNeeded("RemoteVectorEnv: call reset() before step()")
        mask = self._autoreset if self._autoreset.any() else None
        try:
            observation, reward, terminated, truncated = self._session.step(np.asarray(actions), mask)
        except ValueError as err:
            raise ValueError(f"RemoteVectorEnv.step: {err}") from None
        self._autoreset = terminated | truncated
        return observation, reward, terminated, truncated, {}

    def render(self) -> tuple[np.ndarray, ...] | None:
        """The last frame of each env, as SyncVectorEnv renders."""
        if self.render_mode is None:
            gym.logger.warn("RemoteVectorEnv.render() without a render_mode: make it with render_mode='rgb_array'")
            return None
        if self._session.frames is None:
            raise gym.error.ResetNeeded("RemoteVectorEnv: call reset() before render()")
        return tuple(self._session.frames)

    def close_extras(self, **kwargs: Any) -> None:
        self._session.close()


def _check_render_mode(render_mode: str | None, observation: str, modes: list[str]) -> None:
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be None or one of {', '.join(modes)}; got {render_mode!r}")
    if render_mode is not None and observation == "latent":
        raise ValueError("render_mode needs observation='pixels': latent sessions send no frames")

