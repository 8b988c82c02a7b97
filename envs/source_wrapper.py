"""The source wrapper: a real env's observation turned into the EnvSpec form ``{"image", "vector"}``.

`envs/sources.py` makes sources (which env, which wrapper options); this module holds what every source
shares: the wrapper itself, the image resize the collector and the importers use, and the readers of a
vector (a flat Box observation, entries of a dict observation, CarRacing's car dynamics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldmodel.spec import EnvSpec

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

_IMAGE_FROM = ("observation", "render")
_VECTOR_FROM = (None, "observation", "car_racing")

# -- images -----------------------------------------------------------------
def resize_image(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to (size, size, 3) uint8 with torchvision.

    Bilinear with antialias on the uint8 CHW tensor (torchvision's fast uint8
    path), so 96x96 or 210x160 frames shrink without aliasing.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    h, w, _ = frame.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(frame)
    import torch  # only here: importing it takes seconds, and a source at the store's size never needs it
    from torchvision.transforms.v2 import functional as F

    if not frame.flags.writeable:  # torch.from_numpy warns on read-only arrays
        frame = frame.copy()
    chw = torch.from_numpy(frame).permute(2, 0, 1)
    out = F.resize(chw, [size, size], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())


def is_image_box(space: gym.Space) -> bool:
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[2] == 3
    )


def is_flat_box(space: gym.Space) -> bool:
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
        image_from: ``"observation"`` (the env's observation, or its entry
            ``image_key``, is the frame) or ``"render"`` (the frame is
            ``env.render()``; needs render_mode "rgb_array").
        vector_from: None, ``"observation"`` (the env's flat Box observation, or
            its ``vector_keys`` entries) or ``"car_racing"`` (speed, yaw rate,
            steering, wheel speeds).
        image_key: with a dict observation, the entry that is the frame.
        vector_keys: with a dict observation, the Box entries that make the
            vector, flattened and concatenated (names ``key`` or ``key_i``).
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
        image_key: str | None = None,
        vector_keys: tuple[str, ...] | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            image_from=image_from,
            vector_from=vector_from,
            image_size=image_size,
            vector_names=vector_names,
            source_id=source_id,
            frame_skip=frame_skip,
            image_key=image_key,
            vector_keys=vector_keys,
        )
        gym.Wrapper.__init__(self, env)
        if image_from not in _IMAGE_FROM:
            raise ValueError(f"image_from must be one of {_IMAGE_FROM}, got {image_from!r}")
        if vector_from not in _VECTOR_FROM:
            raise ValueError(f"vector_from must be one of {_VECTOR_FROM}, got {vector_from!r}")
        observation_space = env.observation_space
        frame_space = _dict_entry(observation_space, image_key, "image") if image_key else observation_space
        if image_key and image_from != "observation":
            raise ValueError(f"image_key={image_key!r} needs image_from='observation', got {image_from!r}")
        if image_from == "observation" and not is_image_box(frame_space):
            where = f"entry {image_key!r}" if image_key else "observation"
            raise ValueError(f"image_from='observation' needs an (H, W, 3) uint8 {where}, got {frame_space}")
        if image_from == "render" and env.render_mode != "rgb_array":
            raise ValueError(f"image_from='render' needs render_mode='rgb_array', got {env.render_mode!r}")
        if vector_keys and vector_from != "observation":
            raise ValueError(f"vector_keys needs vector_from='observation', got {vector_from!r}")
        if vector_from == "observation" and not vector_keys and not is_flat_box(observation_space):
            raise ValueError(f"vector_from='observation' needs a 1-D Box observation, got {observation_space}")
        self._image_from = image_from
        self._vector_from = vector_from
        self._image_size = int(image_size)
        self._image_key = image_key
        self._vector_keys = tuple(vector_keys or ())

        # The spec first, then the spaces from it: they are equal by construction.
        if vector_from == "car_racing":
            size = len(CAR_RACING_VECTOR_NAMES)
            vector_names = vector_names or CAR_RACING_VECTOR_NAMES
        elif vector_keys:
            key_names = _key_vector_names(observation_space, self._vector_keys)
            size, vector_names = len(key_names), vector_names or key_names
        elif vector_from == "observation":
            size = int(observation_space.shape[0])
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
        if image_key:  # only when set, so the specs of other sources stay as they were
            extra["image_key"] = image_key
        if image_from == "observation":
            # A list, not a tuple: extra must survive a JSON round trip unchanged.
            extra["source_image_shape"] = [int(s) for s in frame_space.shape]
        self.spec_data: EnvSpec = dataclasses.replace(spec, extra=extra)
        self.observation_space = self.spec_data.observation_space()
        self.action_space = self.spec_data.action_space()

    # -- observation ----------------------------------------------------------
    def _observation(self, obs: Any) -> np.ndarray | dict[str, np.ndarray]:
        if self._image_from == "render":
            frame = self.env.render()
        else:
            frame = obs[self._image_key] if self._image_key else obs
        if frame is None:
            raise RuntimeError(f"{self.env} returned no frame; is render_mode 'rgb_array'?")
        image = resize_image(np.asarray(frame), self._image_size)
        if self._vector_from is None:
            return image
        if self._vector_keys:
            vector = np.concatenate([np.asarray(obs[key], np.float32).reshape(-1) for key in self._vector_keys])
        elif self._vector_from == "observation":
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


def _dict_entry(space: gym.Space, key: str, role: str) -> gym.Space:
    """The entry `key` of a dict observation space, or a ValueError naming the keys there are."""
    if not isinstance(space, spaces.Dict):
        raise ValueError(f"{role} key {key!r} needs a dict observation, got {space}")
    if key not in space.spaces:
        raise ValueError(f"{role} key {key!r} is not in the observation; its keys: {', '.join(space.spaces)}")
    return space.spaces[key]


def _key_vector_names(space: gym.Space, keys: tuple[str, ...]) -> tuple[str, ...]:
    """Names of the vector made of these dict entries: ``key`` for a one-value entry, else ``key_0, key_1...``."""
    names: list[str] = []
    for key in keys:
        entry = _dict_entry(space, key, "vector")
        if not isinstance(entry, spaces.Box) or entry.shape is None or int(np.prod(entry.shape)) == 0:
            raise ValueError(f"vector key {key!r} must be a non-empty Box, got {entry}")
        size = int(np.prod(entry.shape))
        names += [key] if size == 1 else [f"{key}_{i}" for i in range(size)]
    if len(set(names)) != len(names):
        raise ValueError(f"vector keys {', '.join(keys)} give repeated names: {', '.join(names)}")
    return tuple(names)


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
