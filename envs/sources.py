"""Real environment sources: gymnasium envs turned into the EnvSpec form.

A *source* is a real gymnasium environment wrapped so that its observations
are what a world model is trained on: an ``image`` (H, W, 3) uint8, 64x64 by
default, plus, when the environment has one, a named float32 ``vector`` (the
multimodal case). The wrapped env's ``observation_space`` equals
``spec.observation_space()`` and its ``action_space`` equals
``spec.action_space()``, so recorded stores, bundles and dream environments
all agree on one :class:`~worldmodel.spec.EnvSpec`.

Sources (``make_source(env_id)``):

========================  =====================  ================================  =======  ==========
env_id                    image from             vector                            action   frame_skip
========================  =====================  ================================  =======  ==========
``CarRacing-v3``          the 96x96 observation  7 car dynamics values (below)     Box(3)   1
``ALE/<Game>-v5``         the 210x160 frame,     none                              Discrete 4
                          max of the last two
``CartPole-v1``           ``render()`` 400x600   the 4-dim state                   Discrete 1
any other id              ``render()``           the observation, if a 1-D Box     as is    1
                          (or the observation    (an image observation: none)
                          if it is an image)
========================  =====================  ================================  =======  ==========

Rewards, ``terminated``, ``truncated`` and ``info`` pass through unchanged;
``render()`` returns the wrapped environment's own frame (full resolution).
The spec of a source is ``source_spec(env)``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldmodel.spec import EnvSpec, ImageSpec

__all__ = [
    "CAR_RACING_VECTOR_NAMES",
    "SourceWrapper",
    "make_source",
    "resize_image",
    "source_spec",
]

#: CarRacing's vector observation, read from ``env.unwrapped.car`` (Box2D units).
#: Wheels in car_dynamics.WHEELPOS order: front-left, front-right, rear-left, rear-right.
CAR_RACING_VECTOR_NAMES: tuple[str, ...] = (
    "speed",  # norm of the hull's linear velocity (what the env's own speed bar shows)
    "angular_velocity",  # hull angular velocity
    "steering",  # front-left wheel joint angle
    "wheel_omega_fl",
    "wheel_omega_fr",
    "wheel_omega_rl",
    "wheel_omega_rr",
)

#: Names of the state dimensions of classic-control envs, from their docstrings;
#: keyed by the id without namespace and version. Other envs get obs_0, obs_1, ...
_KNOWN_VECTOR_NAMES: dict[str, tuple[str, ...]] = {
    "CartPole": ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"),
    "MountainCar": ("position", "velocity"),
    "MountainCarContinuous": ("position", "velocity"),
    "Pendulum": ("cos_theta", "sin_theta", "angular_velocity"),
    "Acrobot": ("cos_theta1", "sin_theta1", "cos_theta2", "sin_theta2", "theta1_dot", "theta2_dot"),
}

#: Atari frame skip as in DIAMOND's Atari 100k setting.
ATARI_FRAME_SKIP = 4

_IMAGE_FROM = ("observation", "render")
_VECTOR_FROM = (None, "observation", "car_racing")


# -- images -----------------------------------------------------------------
def resize_image(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to (size, size, 3) uint8 with torchvision.

    Bilinear with antialias on the uint8 CHW tensor (torchvision's fast uint8
    path), so 96x96 or 210x160 frames shrink without aliasing.
    """
    import torch
    from torchvision.transforms.v2 import functional as F

    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    h, w, _ = frame.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(frame)
    if not frame.flags.writeable:  # torch.from_numpy warns on read-only arrays
        frame = frame.copy()
    chw = torch.from_numpy(frame).permute(2, 0, 1)
    out = F.resize(chw, [size, size], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())


def _is_image_box(space: gym.Space) -> bool:
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[2] == 3
    )


def _is_flat_box(space: gym.Space) -> bool:
    return isinstance(space, spaces.Box) and len(space.shape) == 1 and space.shape[0] > 0


# -- the wrapper --------------------------------------------------------------
class SourceWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Turn an env's observation into ``{"image": (S, S, 3) uint8, "vector": (D,) float32}``
    (or the image alone when there is no vector), as its :class:`EnvSpec` says.

    Constructor arguments are plain data (no callables) so that gymnasium
    records this wrapper in ``env.spec`` and ``gymnasium.make(env.spec)``
    rebuilds the whole source.

    Args:
        env: the environment to wrap (already frame-skipped where needed).
        image_from: ``"observation"`` (the env's observation is the frame) or
            ``"render"`` (the frame is ``env.render()``; needs render_mode "rgb_array").
        vector_from: None, ``"observation"`` (the env's flat Box observation)
            or ``"car_racing"`` (speed, yaw rate, steering, wheel speeds).
        image_size: side S of the square image.
        vector_names: names of the vector dims (default ``obs_0 ...``).
        source_id: the id recorded as ``spec.env_id``.
        frame_skip: env frames per step, recorded in the spec (the skipping
            itself is done by the wrapped env).
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        image_from: str = "observation",
        vector_from: str | None = None,
        image_size: int = 64,
        vector_names: tuple[str, ...] | None = None,
        source_id: str = "",
        frame_skip: int = 1,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            image_from=image_from,
            vector_from=vector_from,
            image_size=image_size,
            vector_names=vector_names,
            source_id=source_id,
            frame_skip=frame_skip,
        )
        gym.Wrapper.__init__(self, env)
        if image_from not in _IMAGE_FROM:
            raise ValueError(f"image_from must be one of {_IMAGE_FROM}, got {image_from!r}")
        if vector_from not in _VECTOR_FROM:
            raise ValueError(f"vector_from must be one of {_VECTOR_FROM}, got {vector_from!r}")
        if image_from == "observation" and not _is_image_box(env.observation_space):
            raise ValueError(
                f"image_from='observation' needs an (H, W, 3) uint8 observation, got {env.observation_space}"
            )
        if image_from == "render" and env.render_mode != "rgb_array":
            raise ValueError(f"image_from='render' needs render_mode='rgb_array', got {env.render_mode!r}")
        if vector_from == "observation" and not _is_flat_box(env.observation_space):
            raise ValueError(
                f"vector_from='observation' needs a 1-D Box observation, got {env.observation_space}"
            )
        self._image_from = image_from
        self._vector_from = vector_from
        self._image_size = int(image_size)

        # The spec first, then the spaces from it: they are equal by construction.
        if vector_from == "car_racing":
            size = len(CAR_RACING_VECTOR_NAMES)
            vector_names = vector_names or CAR_RACING_VECTOR_NAMES
        elif vector_from == "observation":
            size = int(env.observation_space.shape[0])
            vector_names = vector_names or tuple(f"obs_{i}" for i in range(size))
        else:
            size, vector_names = 0, None
        image_space = spaces.Box(0, 255, (self._image_size, self._image_size, 3), np.uint8)
        target = (
            spaces.Dict({"image": image_space, "vector": spaces.Box(-np.inf, np.inf, (size,), np.float32)})
            if vector_names
            else image_space
        )
        spec = EnvSpec.from_spaces(
            target,
            env.action_space,
            vector_names=vector_names,
            env_id=source_id,
            frame_skip=int(frame_skip),
        )
        extra: dict[str, Any] = {"image_from": image_from}
        if image_from == "observation":
            # A list, not a tuple: extra must survive a JSON round trip unchanged.
            extra["source_image_shape"] = [int(s) for s in env.observation_space.shape]
        self.spec_data: EnvSpec = dataclasses.replace(spec, extra=extra)
        self.observation_space = self.spec_data.observation_space()
        self.action_space = self.spec_data.action_space()

    # -- observation ----------------------------------------------------------
    def _observation(self, obs: Any) -> np.ndarray | dict[str, np.ndarray]:
        frame = obs if self._image_from == "observation" else self.env.render()
        if frame is None:
            raise RuntimeError(f"{self.env} returned no frame; is render_mode 'rgb_array'?")
        image = resize_image(np.asarray(frame), self._image_size)
        if self._vector_from is None:
            return image
        if self._vector_from == "observation":
            vector = np.asarray(obs, dtype=np.float32).reshape(-1)
        else:
            vector = _car_racing_vector(self.env.unwrapped)
        return {"image": image, "vector": vector}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observation(obs), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observation(obs), reward, terminated, truncated, info


def _car_racing_vector(car_racing: gym.Env) -> np.ndarray:
    """The 7 values of CAR_RACING_VECTOR_NAMES, read from CarRacing's Box2D car."""
    car = car_racing.car  # type: ignore[attr-defined]
    if car is None:  # only before the first reset or after close()
        return np.zeros(len(CAR_RACING_VECTOR_NAMES), np.float32)
    velocity = car.hull.linearVelocity
    values = [
        float(np.hypot(velocity[0], velocity[1])),
        float(car.hull.angularVelocity),
        float(car.wheels[0].joint.angle),
        *(float(wheel.omega) for wheel in car.wheels),
    ]
    return np.asarray(values, dtype=np.float32)


# -- construction -------------------------------------------------------------
def make_source(
    env_id: str, *, image_size: int = 64, render_mode: str | None = None, **env_kwargs: Any
) -> gym.Env:
    """Make the real environment ``env_id`` as a source in EnvSpec form.

    Args:
        env_id: a gymnasium id: ``CarRacing-v3``, ``ALE/<Game>-v5``,
            ``CartPole-v1``, or any env with an image observation or an
            ``rgb_array`` render mode.
        image_size: side of the square uint8 image (64 by default).
        render_mode: passed to the env where its observation is the image
            (CarRacing, ALE: None, "rgb_array", "human"); envs whose image is
            rendered are always made with "rgb_array", and any other value is
            a ValueError.
        **env_kwargs: passed to ``gymnasium.make``. For ``ALE/*``,
            ``frameskip`` sets the wrapper's frame skip (default 4) and
            ``repeat_action_probability`` defaults to 0.0.

    Returns:
        The wrapped env; its spec is ``source_spec(env)``.

    Raises:
        ValueError: unsupported observation or action spaces, or a render
            mode that cannot give frames.
    """
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if env_id.startswith("CarRacing"):
        return _make_car_racing(env_id, image_size, render_mode, env_kwargs)
    if env_id.startswith("ALE/"):
        return _make_atari(env_id, image_size, render_mode, env_kwargs)
    return _make_generic(env_id, image_size, render_mode, env_kwargs)


def source_spec(env: gym.Env) -> EnvSpec:
    """The EnvSpec of a source made by `make_source` (found through outer wrappers too)."""
    try:
        spec = env.get_wrapper_attr("spec_data")
    except AttributeError:
        spec = None
    if not isinstance(spec, EnvSpec):
        raise ValueError(f"{env} is not a source made by envs.sources.make_source (no spec_data)")
    return spec


def _make_car_racing(
    env_id: str, image_size: int, render_mode: str | None, env_kwargs: dict[str, Any]
) -> gym.Env:
    # The first ~50 frames of every episode are CarRacing's zoom-in animation
    # (the camera zooms while the car may already move); they are recorded as
    # they are, like any other frame.
    _quiet_pygame()
    spec = gym.spec(env_id)
    if spec.entry_point == "gymnasium.envs.box2d.car_racing:CarRacing":
        # The same env, registration and wrappers, with frames drawn ~3x faster (envs/car_racing.py).
        spec = dataclasses.replace(spec, entry_point="envs.car_racing:FastCarRacing")
    env = gym.make(spec, render_mode=render_mode, **env_kwargs)
    return SourceWrapper(
        env,
        image_from="observation",
        vector_from="car_racing",
        image_size=image_size,
        source_id=env_id,
        frame_skip=1,
    )


def _make_atari(
    env_id: str, image_size: int, render_mode: str | None, env_kwargs: dict[str, Any]
) -> gym.Env:
    import ale_py

    gym.register_envs(ale_py)
    kwargs = dict(env_kwargs)
    frame_skip = int(kwargs.pop("frameskip", ATARI_FRAME_SKIP))
    # DIAMOND's Atari 100k setting: no sticky actions (repeat_action_probability
    # 0, where v5 defaults to 0.25) and a deterministic frame skip of 4 with a
    # max over the last two frames (Atari sprites flicker between frames). ALE
    # itself runs every frame (frameskip=1) so the wrapper can take that max.
    kwargs.setdefault("repeat_action_probability", 0.0)
    env = gym.make(env_id, frameskip=1, render_mode=render_mode, **kwargs)
    if not _is_image_box(env.observation_space):
        env.close()
        raise ValueError(f"{env_id}: a source needs RGB frames (obs_type='rgb'), got {env.observation_space}")
    if frame_skip > 1:
        env = gym.wrappers.MaxAndSkipObservation(env, skip=frame_skip)
    return SourceWrapper(
        env,
        image_from="observation",
        vector_from=None,
        image_size=image_size,
        source_id=env_id,
        frame_skip=frame_skip,
    )


def _make_generic(
    env_id: str, image_size: int, render_mode: str | None, env_kwargs: dict[str, Any]
) -> gym.Env:
    """CartPole and any other env: the image is the observation when it is an
    image, else the rendered rgb_array frame with the flat observation as the vector."""
    _quiet_pygame()
    if render_mode not in (None, "rgb_array"):
        # Rendered frames are the observation here; "human" would give none.
        raise ValueError(
            f"{env_id}: the image comes from render(), so render_mode must be None or 'rgb_array', "
            f"got {render_mode!r}"
        )
    env = gym.make(env_id, render_mode="rgb_array", **env_kwargs)
    try:
        if _is_image_box(env.observation_space):
            return SourceWrapper(env, image_from="observation", image_size=image_size, source_id=env_id)
        if not _is_flat_box(env.observation_space):
            raise ValueError(
                f"{env_id}: unsupported observation space {env.observation_space}; a source needs an "
                "(H, W, 3) uint8 image observation or a 1-D Box observation plus rgb_array rendering"
            )
        if "rgb_array" not in env.metadata.get("render_modes", ()):
            modes = env.metadata.get("render_modes")
            raise ValueError(f"{env_id}: needs the 'rgb_array' render mode for its image, has {modes}")
        base = env_id.split("/")[-1].split("-v")[0]
        names = _KNOWN_VECTOR_NAMES.get(base)
        if names is not None and len(names) != env.observation_space.shape[0]:
            names = None  # a variant with another state size: fall back to obs_i
        return SourceWrapper(
            env,
            image_from="render",
            vector_from="observation",
            image_size=image_size,
            vector_names=names,
            source_id=env_id,
        )
    except Exception:
        env.close()
        raise


def _quiet_pygame() -> None:
    """Keep pygame's audio init from spamming ALSA errors on headless machines.

    Box2D and classic-control envs call ``pygame.init()`` to draw frames, which
    also opens an audio device; sources never play sound. ``setdefault`` so a
    user's own SDL setting wins.
    """
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
