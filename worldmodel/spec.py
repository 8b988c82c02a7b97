"""EnvSpec: what a world model simulates, as plain data.

An EnvSpec travels with every store, bundle and wire message, so it is plain
JSON-able data (no gymnasium objects inside). It converts to and from
gymnasium spaces for the environments on either side.

Observation: an image (H, W, C) uint8, plus an optional vector (D,) float32
with a name per dimension (the multimodal case). Action: a Box (shape, low,
high) or Discrete(n).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SPEC_VERSION = 1
OBSERVATION_MODES = ("pixels", "latent")
"""How a dream is observed, the one list every door checks against: "pixels" (image, plus the vector when
the spec has one) or "latent" (the model's features; LatentWorldModel backends only). Here, torch-free,
so the client and remote env can read it without importing torch."""
ACTION_TOLERANCE = 1e-6
"""How far past a box bound an action may lie and still be accepted (then clipped): float32
rounding of a bound, not a user's error."""


@dataclass(frozen=True)
class ImageSpec:
    """An image observation, uint8 in [0, 255], laid out HWC."""

    height: int
    width: int
    channels: int = 3

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def __post_init__(self) -> None:
        for name in ("height", "width", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ImageSpec.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class VectorSpec:
    """A flat float32 observation of D named dimensions."""

    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.names)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if not self.names:
            raise ValueError("VectorSpec needs at least one named dimension")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"VectorSpec names must be unique, got {self.names}")


@dataclass(frozen=True)
class ActionSpec:
    """A Box action (kind "box": shape, low, high) or a Discrete one (kind "discrete": n)."""

    kind: str
    shape: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    n: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        if self.kind == "box":
            size = math.prod(self.shape)
            if len(self.shape) != 1 or size <= 0:
                raise ValueError(f"a box action must be 1-D and non-empty, got shape {self.shape}")
            if len(self.low) != size or len(self.high) != size:
                raise ValueError(f"box low/high need {size} values, got {len(self.low)}/{len(self.high)}")
            if any(not (lo <= hi) for lo, hi in zip(self.low, self.high)):
                raise ValueError(f"box low must be <= high, got {self.low} / {self.high}")
        elif self.kind == "discrete":
            if self.n <= 0:
                raise ValueError(f"a discrete action needs n > 0, got {self.n}")
        else:
            raise ValueError(f"action kind must be 'box' or 'discrete', got {self.kind!r}")

    @classmethod
    def box(cls, low: Any, high: Any) -> ActionSpec:
        low_a, high_a = np.asarray(low, np.float32).ravel(), np.asarray(high, np.float32).ravel()
        return cls("box", shape=(low_a.size,), low=tuple(low_a.tolist()), high=tuple(high_a.tolist()))

    @classmethod
    def discrete(cls, n: int) -> ActionSpec:
        return cls("discrete", n=int(n))

    @property
    def is_discrete(self) -> bool:
        return self.kind == "discrete"

    @property
    def dim(self) -> int:
        """Width of the action as models see it: n one-hot slots, or the box size."""
        return self.n if self.is_discrete else self.shape[0]

    @property
    def store_shape(self) -> tuple[int, ...]:
        """Per-step shape in a store: () int64 for discrete, (A,) float32 for box."""
        return () if self.is_discrete else self.shape

    @property
    def store_dtype(self) -> np.dtype:
        return np.dtype(np.int64) if self.is_discrete else np.dtype(np.float32)

    def describe(self) -> str:
        """The space in gymnasium's words, for error messages."""
        if self.is_discrete:
            return f"Discrete({self.n})"
        return f"Box(low={list(self.low)}, high={list(self.high)}, shape={self.shape})"

    def check_batch(self, actions: Any, batch: int | None = None) -> np.ndarray:
        """Actions [B] int64 (discrete) or [B, A] float32 (box), checked, or ValueError saying what was
        expected. The one action check of every door (dream envs, the service, dm_env_rpc, the store).

        `batch`: the B required (None: any). Discrete: integers in [0, n). Box: finite, within the
        bounds up to ACTION_TOLERANCE (float32 rounding of a bound is not an error), then clipped
        onto them, so every consumer downstream sees actions inside the space. Takes numpy arrays,
        sequences or torch tensors.
        """
        array = np.asarray(_numpy(actions))
        want = (batch,) if batch is not None else ("B",)
        if self.is_discrete:
            if array.ndim != 1 or (batch is not None and array.shape[0] != batch):
                raise ValueError(f"expected {want[0]} discrete actions of {self.describe()}: integers of shape "
                                 f"({want[0]},), got shape {array.shape}")
            if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"discrete actions of {self.describe()} must be integers, got {array.dtype}")
            if array.size and (array.min() < 0 or array.max() >= self.n):
                raise ValueError(f"discrete actions must be in [0, {self.n}), got {array.tolist()}")
            return array.astype(np.int64, copy=False)
        if array.ndim != 2 or array.shape[1:] != self.shape or (batch is not None and array.shape[0] != batch):
            raise ValueError(f"expected box actions of {self.describe()}: shape ({want[0]}, {self.shape[0]}), "
                             f"got shape {array.shape}")
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"box actions must be numbers, got {array.dtype}")
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise ValueError("box actions contain NaN or infinite values")
        low, high = self._bounds()
        if ((array < low - ACTION_TOLERANCE) | (array > high + ACTION_TOLERANCE)).any():
            raise ValueError(f"box actions must lie in [{list(self.low)}, {list(self.high)}], got {array.tolist()}")
        return np.clip(array, low, high)

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        bounds = self.__dict__.get("_bounds_cache")
        if bounds is None:  # computed once: the check runs on every step of every door
            bounds = (np.asarray(self.low, np.float32), np.asarray(self.high, np.float32))
            object.__setattr__(self, "_bounds_cache", bounds)
        return bounds


@dataclass(frozen=True)
class EnvSpec:
    """Everything a world model needs to know about the environment it simulates."""

    image: ImageSpec
    action: ActionSpec
    vector: VectorSpec | None = None
    env_id: str = ""
    frame_skip: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.frame_skip, int) or self.frame_skip < 1:
            raise ValueError(f"frame_skip must be an int >= 1, got {self.frame_skip!r}")

    # -- JSON -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["version"] = SPEC_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvSpec:
        if not isinstance(data, dict):
            raise ValueError(f"an EnvSpec must be a JSON object, got {type(data).__name__}")
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ValueError(f"EnvSpec version {version} is not supported (this is {SPEC_VERSION})")
        try:
            vector = data.get("vector")
            return cls(
                image=ImageSpec(**data["image"]),
                action=ActionSpec(**data["action"]),
                vector=VectorSpec(**vector) if vector else None,
                env_id=str(data.get("env_id", "")),
                frame_skip=int(data.get("frame_skip", 1)),
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed EnvSpec: {err}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EnvSpec:
        return cls.from_dict(json.loads(text))

    # -- gymnasium --------------------------------------------------------
    def observation_space(self):
        """Box image, or Dict(image=Box, vector=Box) when the spec has a vector."""
        from gymnasium import spaces

        image = spaces.Box(0, 255, self.image.shape, np.uint8)
        if self.vector is None:
            return image
        vector = spaces.Box(-np.inf, np.inf, (self.vector.size,), np.float32)
        return spaces.Dict({"image": image, "vector": vector})

    def action_space(self):
        from gymnasium import spaces

        if self.action.is_discrete:
            return spaces.Discrete(self.action.n)
        return spaces.Box(
            np.asarray(self.action.low, np.float32),
            np.asarray(self.action.high, np.float32),
            self.action.shape,
            np.float32,
        )

    @classmethod
    def from_spaces(
        cls,
        observation_space,
        action_space,
        *,
        vector_names: tuple[str, ...] | None = None,
        env_id: str = "",
        frame_skip: int = 1,
    ) -> EnvSpec:
        """Build a spec from gymnasium spaces of the form `observation_space()` returns."""
        from gymnasium import spaces

        if isinstance(observation_space, spaces.Dict):
            image_space = observation_space["image"]
            vector_space = observation_space.spaces.get("vector")
        else:
            image_space, vector_space = observation_space, None
        if not (isinstance(image_space, spaces.Box) and image_space.dtype == np.uint8 and len(image_space.shape) == 3):
            raise ValueError(f"the image observation must be a uint8 HxWxC Box, got {image_space}")
        vector = None
        if vector_space is not None:
            size = int(np.prod(vector_space.shape))
            names = tuple(vector_names) if vector_names else tuple(f"v{i}" for i in range(size))
            if len(names) != size:
                raise ValueError(f"{len(names)} vector names for a vector of {size} dims")
            vector = VectorSpec(names)
        if isinstance(action_space, spaces.Discrete):
            if int(action_space.start) != 0:
                raise ValueError("Discrete action spaces must start at 0")
            action = ActionSpec.discrete(int(action_space.n))
        elif isinstance(action_space, spaces.Box):
            action = ActionSpec.box(action_space.low, action_space.high)
        else:
            raise ValueError(f"unsupported action space {action_space}: only Box and Discrete")
        h, w, c = (int(s) for s in image_space.shape)
        return cls(ImageSpec(h, w, c), action, vector, env_id=env_id, frame_skip=frame_skip)

    # -- checks -----------------------------------------------------------
    def check_action(self, action: Any) -> np.ndarray:
        """One action as stores and models keep it, or ValueError saying what was expected."""
        array = np.asarray(_numpy(action))
        if array.shape != self.action.store_shape:
            raise ValueError(f"expected one action of {self.action.describe()}: shape {self.action.store_shape}, "
                             f"got shape {array.shape}")
        return self.action.check_batch(array[None])[0]

    def check_actions(self, actions: Any, batch: int | None = None) -> np.ndarray:
        """A batch of actions as stores and models keep them, or ValueError; see ActionSpec.check_batch."""
        return self.action.check_batch(actions, batch)


def _numpy(values: Any) -> Any:
    """A torch tensor as a numpy array (zero-copy on the CPU); anything else as it is."""
    return values.detach().cpu().numpy() if hasattr(values, "detach") else values
