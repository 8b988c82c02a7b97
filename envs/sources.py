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
a dict observation        ``obs[image_key]``,    ``obs[k]`` for k in vector_keys,  as is    1
(any id, with             else ``render()``      flattened and concatenated
``SourceOptions`` keys)                          (named ``k`` or ``k_i``)
========================  =====================  ================================  =======  ==========

Any id gymnasium can make works, a user's own too: ``"mypkg.envs:MyEnv-v0"``
imports ``mypkg.envs`` (which registers ``MyEnv-v0``) first. ``SourceOptions``
carries what such an env needs: constructor kwargs for ``gymnasium.make`` and,
for a dict observation, which entry is the image and which make the vector.

Rewards, ``terminated``, ``truncated`` and ``info`` pass through unchanged;
``render()`` returns the wrapped environment's own frame (full resolution).
The spec of a source is ``source_spec(env)``. The wrapper itself, the image
resize and the vector readers are in ``envs/source_wrapper.py``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from envs.source_wrapper import (
    CAR_RACING_VECTOR_NAMES,
    SourceWrapper,
    is_flat_box,
    is_image_box,
    resize_image,
)
from worldmodel.spec import EnvSpec

__all__ = [
    "CAR_RACING_VECTOR_NAMES",
    "SourceOptions",
    "SourceWrapper",
    "make_source",
    "resize_image",
    "source_spec",
]

#: Names of the state dimensions of classic-control envs, from their docstrings;
#: keyed by the id without namespace and version. Other envs get obs_0, obs_1, ...
KNOWN_VECTOR_NAMES: dict[str, tuple[str, ...]] = {
    "CartPole": ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"),
    "MountainCar": ("position", "velocity"),
    "MountainCarContinuous": ("position", "velocity"),
    "Pendulum": ("cos_theta", "sin_theta", "angular_velocity"),
    "Acrobot": ("cos_theta1", "sin_theta1", "cos_theta2", "sin_theta2", "theta1_dot", "theta2_dot"),
}

#: Atari frame skip as in DIAMOND's Atari 100k setting.
ATARI_FRAME_SKIP = 4


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """How to make and read an env beyond its id (plain data: it travels to Ray workers).

    Attributes:
        env_kwargs: keyword arguments for ``gymnasium.make`` (so for the env's constructor).
        image_key: a dict observation's entry that is the image ((H, W, 3) uint8; resized
            to the source's size); None: the image is ``render()``.
        vector_keys: a dict observation's Box entries that make the vector, in this order.
    """

    env_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    image_key: str | None = None
    vector_keys: tuple[str, ...] = ()

    @property
    def picks_keys(self) -> bool:
        return self.image_key is not None or bool(self.vector_keys)

    def to_attrs(self) -> dict[str, Any]:
        """The options that are set, as JSON-ready attrs (what a store part records)."""
        attrs: dict[str, Any] = {}
        if self.env_kwargs:
            attrs["env_kwargs"] = dict(self.env_kwargs)
        if self.image_key is not None:
            attrs["image_key"] = self.image_key
        if self.vector_keys:
            attrs["vector_keys"] = list(self.vector_keys)
        return attrs


# -- construction -------------------------------------------------------------
def make_source(
    env_id: str,
    *,
    image_size: int = 64,
    render_mode: str | None = None,
    options: SourceOptions | None = None,
    **env_kwargs: Any,
) -> gym.Env:
    """Make the real environment ``env_id`` as a source in EnvSpec form.

    Args:
        env_id: a gymnasium id: ``CarRacing-v3``, ``ALE/<Game>-v5``,
            ``CartPole-v1``, or any env with an image observation or an
            ``rgb_array`` render mode, a ``"module:EnvId"`` of a user's own too.
        image_size: side of the square uint8 image (64 by default).
        render_mode: passed to the env where its observation is the image
            (CarRacing, ALE: None, "rgb_array", "human"); envs whose image is
            rendered are always made with "rgb_array", and any other value is
            a ValueError.
        options: env kwargs, and the image and vector keys of a dict
            observation (see SourceOptions).
        **env_kwargs: passed to ``gymnasium.make`` (over ``options.env_kwargs``).
            For ``ALE/*``, ``frameskip`` sets the wrapper's frame skip
            (default 4) and ``repeat_action_probability`` defaults to 0.0.

    Returns:
        The wrapped env; its spec is ``source_spec(env)``.

    Raises:
        ValueError: unsupported observation or action spaces, a render mode
            that cannot give frames, or keys the observation does not have.
        TypeError: kwargs the env's constructor rejects (from gymnasium.make).
    """
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    options = options or SourceOptions()
    env_kwargs = {**options.env_kwargs, **env_kwargs}
    if options.picks_keys:
        return _make_dict_source(env_id, image_size, render_mode, env_kwargs, options)
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
    if not is_image_box(env.observation_space):
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
    env = _make_rendering(env_id, env_kwargs)
    try:
        if is_image_box(env.observation_space):
            return SourceWrapper(env, image_from="observation", image_size=image_size, source_id=env_id)
        if isinstance(env.observation_space, spaces.Dict):
            raise ValueError(
                f"{env_id}: a dict observation (keys: {', '.join(env.observation_space.spaces)}) needs an "
                "image_key and/or vector_keys (--image-key, --vector-keys) saying which entries to record"
            )
        if not is_flat_box(env.observation_space):
            raise ValueError(
                f"{env_id}: unsupported observation space {env.observation_space}; a source needs an "
                "(H, W, 3) uint8 image observation or a 1-D Box observation plus rgb_array rendering"
            )
        if "rgb_array" not in env.metadata.get("render_modes", ()):
            modes = env.metadata.get("render_modes")
            raise ValueError(f"{env_id}: needs the 'rgb_array' render mode for its image, has {modes}")
        base = env_id.split("/")[-1].split("-v")[0]
        names = KNOWN_VECTOR_NAMES.get(base)
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


def _make_dict_source(
    env_id: str, image_size: int, render_mode: str | None, env_kwargs: dict[str, Any], options: SourceOptions
) -> gym.Env:
    """Any env with a dict observation: the image from ``obs[image_key]`` (else ``render()``), the vector from
    ``obs[k]`` for ``k`` in ``vector_keys``."""
    _quiet_pygame()
    if options.image_key is None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"{env_id}: the image comes from render(), so render_mode must be None or "
                             f"'rgb_array', got {render_mode!r}")
        env = _make_rendering(env_id, env_kwargs)
    else:  # render_mode only when there is one: an env whose frames are in its observation need not take it
        env = gym.make(env_id, **env_kwargs, **({"render_mode": render_mode} if render_mode else {}))
    try:
        if options.image_key is None and "rgb_array" not in env.metadata.get("render_modes", ()):
            modes = env.metadata.get("render_modes")
            raise ValueError(f"{env_id}: needs the 'rgb_array' render mode for its image (or an image_key), "
                             f"has {modes}")
        return SourceWrapper(
            env,
            image_from="observation" if options.image_key else "render",
            vector_from="observation" if options.vector_keys else None,
            image_size=image_size,
            source_id=env_id,
            image_key=options.image_key,
            vector_keys=options.vector_keys or None,
        )
    except Exception:
        env.close()
        raise


def _make_rendering(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    """``gymnasium.make`` with render_mode "rgb_array"; an env whose constructor takes no render_mode (a
    user's own, say) is a ValueError that says so, not the TypeError gymnasium raises."""
    try:
        with warnings.catch_warnings():  # a mode the env does not list: the callers below say so in their error
            warnings.filterwarnings("ignore", message=".*not in the possible render_modes")
            return gym.make(env_id, render_mode="rgb_array", **env_kwargs)
    except TypeError as err:
        if "unexpected keyword argument 'render_mode'" not in str(err):
            raise
    env = gym.make(env_id, **env_kwargs)  # only to name the observation's keys, where it has some
    space = env.observation_space
    env.close()
    keys = f" (its observation's keys: {', '.join(space.spaces)})" if isinstance(space, spaces.Dict) else ""
    raise ValueError(f"{env_id} takes no render_mode, so it cannot render frames: record an image from its "
                     f"observation instead{keys} (image_key, --image-key)")


def _quiet_pygame() -> None:
    """Keep pygame's audio init from spamming ALSA errors on headless machines.

    Box2D and classic-control envs call ``pygame.init()`` to draw frames, which
    also opens an audio device; sources never play sound. ``setdefault`` so a
    user's own SDL setting wins.
    """
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
