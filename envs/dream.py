"""Dream environments: a trained world model stepped as a gymnasium environment.

`DreamEnv` is one dream, `DreamVectorEnv` is N dreams stepped in one batched
forward. Both are thin shells around `worldmodel.session.DreamBatch`, the one
stepping core over the `WorldModel` interface that the gRPC service drives
too, so no dynamics, seeding or reset logic lives here (DreamEnv is a batch of
one). A backend is whatever `worldmodel.load_bundle(path, backend=...)`
returns: a `WorldModel` with start contexts, and, for `observation="latent"`,
a `LatentWorldModel` (worldmodel.models.world declares both).

Registered by `import worldmodel` as "worldmodel/Dream-v0"
(`gymnasium.make` -> DreamEnv, `gymnasium.make_vec` -> DreamVectorEnv).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldmodel.models.world import LatentWorldModel, WorldModel, has_latents
from worldmodel.session import OBSERVATION_MODES, DreamBatch

__all__ = ["DreamEnv", "DreamVectorEnv", "make_world_model", "upscale"]

RENDER_SCALE = 4  # 64x64 dreams are too small to watch; 4x nearest keeps pixels honest
RENDER_FPS = 30


def make_world_model(bundle: str | Path | None, model: WorldModel | None, backend: str | None, device: str) -> WorldModel:
    """The model a dream env runs: loaded from `bundle`, or `model` as given (checked, never changed; DreamBatch
    checks that it carries start contexts)."""
    if (bundle is None) == (model is None):
        got = "both" if bundle is not None else "neither"
        raise ValueError(f"a dream env needs exactly one of bundle=PATH (a bundle directory) or model=WorldModel; got {got}")
    if model is None:
        from worldmodel.bundle import load_bundle

        return load_bundle(bundle, backend or "vmc", device=device)
    if not isinstance(model, WorldModel):
        raise TypeError(f"model={type(model).__name__} is not a WorldModel: it lacks {_lacks(model, WorldModel)}")
    if backend is not None and backend != model.backend:
        raise ValueError(f"backend={backend!r} does not match the given model's backend {model.backend!r}")
    return model


def _lacks(model: object, protocol: type) -> list[str]:
    """The members of `protocol` (and the protocols it extends) that `model` does not have, for error messages."""
    members = {
        name for cls in protocol.__mro__ if getattr(cls, "_is_protocol", False) and cls is not Protocol
        for name in (*getattr(cls, "__annotations__", {}), *(k for k, v in vars(cls).items() if callable(v) and not k.startswith("_")))
    }
    return sorted(name for name in members if not hasattr(model, name))


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Frames [B, H, W, C] uint8 -> [B, H*scale, W*scale, C], nearest neighbour (torchvision)."""
    from torchvision.transforms.v2.functional import InterpolationMode, resize

    if scale == 1:
        return frames
    chw = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    h, w = chw.shape[-2:]
    out = resize(chw, [h * scale, w * scale], interpolation=InterpolationMode.NEAREST_EXACT)
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy())


def _row(obs: np.ndarray | dict[str, np.ndarray], i: int) -> np.ndarray | dict[str, np.ndarray]:
    return {key: value[i] for key, value in obs.items()} if isinstance(obs, dict) else obs[i]


def _numpy(observation: dict[str, torch.Tensor]) -> np.ndarray | dict[str, np.ndarray]:
    """A DreamBatch observation as gymnasium's spaces hold it: the latent Box, the image Box, or Dict(image, vector)."""
    if "latent" in observation:
        return observation["latent"].cpu().numpy()
    image = observation["image"].cpu().numpy()
    return {"image": image, "vector": observation["vector"].cpu().numpy()} if "vector" in observation else image


def _observation_space(model: WorldModel, observation: str) -> spaces.Space:
    if observation == "latent":
        if not has_latents(model):
            raise ValueError(
                f"the {model.backend!r} backend has no latent observation (it lacks {_lacks(model, LatentWorldModel)}); "
                "use observation='pixels'"
            )
        return spaces.Box(-np.inf, np.inf, (model.feature_dim,), np.float32)
    return model.spec.observation_space()


def _frames(dream: DreamBatch) -> np.ndarray:
    """The dreamed frames [B, H, W, C] uint8 (decoded on demand in latent mode)."""
    if "image" in dream.observation:
        return dream.observation["image"].cpu().numpy()
    return dream.model.observation_of(dream.state).image.cpu().numpy()


def _check_options(observation: str, max_episode_steps: int | None, render_mode: str | None, modes: list[str]) -> None:
    if observation not in OBSERVATION_MODES:
        raise ValueError(f"observation must be one of {', '.join(OBSERVATION_MODES)}; got {observation!r}")
    if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
        raise ValueError(f"max_episode_steps must be None or an int >= 1, got {max_episode_steps!r}")
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be None or one of {', '.join(modes)}; got {render_mode!r}")


class _DreamShell:
    """What DreamEnv and DreamVectorEnv set up alike: the model, its DreamBatch and the render options.

    `_open`'s keywords are the options both envs take, with their defaults (DreamEnv documents them).
    """

    metadata: dict[str, Any]

    def _open(
        self,
        num_envs: int,
        bundle: str | Path | None = None,
        *,
        model: WorldModel | None = None,
        backend: str | None = None,
        temperature: float | None = None,
        observation: str = "pixels",
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        device: str = "cpu",
        render_scale: int = RENDER_SCALE,
    ) -> tuple[spaces.Space, spaces.Space]:
        """Check the options, load the model and start a DreamBatch of `num_envs`; returns one env's
        observation and action spaces."""
        _check_options(observation, max_episode_steps, render_mode, self.metadata["render_modes"])
        self.model = make_world_model(bundle, model, backend, device)
        single_observation_space = _observation_space(self.model, observation)
        self._dream = DreamBatch(self.model, num_envs, observation=observation, max_episode_steps=max_episode_steps or 0,
                                 temperature=temperature)
        self.observation, self.max_episode_steps = observation, max_episode_steps
        self.render_mode, self.render_scale = render_mode, int(render_scale)
        return single_observation_space, self.model.spec.action_space()


class DreamEnv(_DreamShell, gym.Env):
    """
    ## Description

    A dream: the environment a trained world model imagines ("training in a
    dream", Ha & Schmidhuber 2018). Observations, rewards and episode ends all
    come from the model of a bundle (`worldmodel train` + `worldmodel bundle`);
    no real environment runs. Each episode starts from a real start context
    (the first frames of a recorded episode) carried by the bundle.

    ## Action Space

    Exactly the bundle's EnvSpec action space: `Box(low, high, (A,), float32)`
    (CarRacing: steer in [-1, 1], gas and brake in [0, 1]) or `Discrete(n)`.
    Actions of the wrong shape, out of bounds or with NaN raise ValueError.

    ## Observation Space

    | `observation` | space                                                  | what it is                          |
    |---------------|--------------------------------------------------------|-------------------------------------|
    | `"pixels"`    | `Box(0, 255, (H, W, C), uint8)`                        | the dreamed frame (decoded)          |
    | `"pixels"`    | `Dict(image=Box(uint8), vector=Box(-inf, inf, (D,)))`  | multimodal specs: frame and vector   |
    | `"latent"`    | `Box(-inf, inf, (Z + H,), float32)`                    | VMC only: [z, h], what C sees        |

    `"latent"` skips decoding, so it is the fast path for agents.

    ## Rewards

    The model's predicted reward for each step (the source env's scale).

    ## Starting State

    `reset(seed=s)` starts the dream's own stream, `np.random.default_rng(s)`
    (the generator gymnasium's `np_random` is seeded with), draws one of the
    bundle's start contexts from it and seeds the dream's sampler from it: the
    same seed and the same actions give the same trajectory. `reset()` without
    a seed goes on drawing from that stream.

    ## Episode End

    - Termination: drawn with the probability the model predicts (the sigmoid of
      its termination logit), from the env's seeded sampler.
    - Truncation: after `max_episode_steps` steps, when given (or through
      `gymnasium.make(..., max_episode_steps=N)`, which adds TimeLimit).

    ## Arguments

    ```python
    gym.make("worldmodel/Dream-v0", bundle="runs/carracing/bundle", backend="vmc",
             temperature=1.15, observation="pixels", max_episode_steps=1000,
             render_mode="rgb_array", device="cpu")
    ```
    `DreamEnv(bundle, **options)` takes the keywords shown (defaults: backend
    "vmc" for a bundle, temperature None, observation "pixels",
    max_episode_steps None, render_mode None, device "cpu", render_scale 4;
    an unknown keyword is a TypeError). `model=` takes an already loaded WorldModel instead of `bundle=` (it is
    never changed: `temperature` overrides its tau for this env only; None
    keeps the model's). `render()` gives the frame
    upscaled `render_scale` times (nearest); `"human"` shows it in a pygame window.

    ## Version History

    * v0: Initial version (VMC backend; diffusion plugs in through load_bundle).
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": RENDER_FPS}

    def __init__(self, bundle: str | Path | None = None, **options: Any):
        self.observation_space, self.action_space = self._open(1, bundle, **options)
        self._window = None  # pygame display surface, human mode
        self._clock = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)  # np_random, for users who read it; the dream draws from its own stream
        # The batch's one env is seeded with `seed` (None: its stream goes on), as sub-env i of a DreamVectorEnv.
        observation = self._dream.reset(seeds=[seed])
        if self.render_mode == "human":
            self.render()
        return _row(_numpy(observation), 0), {}

    def step(self, action: Any):
        if self._dream.state is None:
            raise gym.error.ResetNeeded("DreamEnv: call reset() before step()")
        try:
            checked = self.model.spec.check_action(action)  # within the bounds up to float rounding, clipped onto them
        except ValueError as err:
            raise ValueError(f"DreamEnv.step: {err}") from None
        result = self._dream.step(checked[None])
        if self.render_mode == "human":
            self.render()
        observation = _row(_numpy(result.observation), 0)
        return observation, float(result.reward[0]), bool(result.terminated[0]), bool(result.truncated[0]), {}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("DreamEnv.render() without a render_mode: make the env with render_mode='rgb_array'")
            return None
        if self._dream.state is None:
            raise gym.error.ResetNeeded("DreamEnv: call reset() before render()")
        frame = upscale(_frames(self._dream), self.render_scale)[0]
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def _show(self, frame: np.ndarray) -> None:
        import pygame

        if self._window is None:
            try:
                pygame.display.init()
                self._window = pygame.display.set_mode(frame.shape[1::-1])
            except pygame.error as err:
                raise RuntimeError(
                    f"render_mode='human' needs a display pygame can open ({err}); use render_mode='rgb_array'"
                ) from err
            pygame.display.set_caption("worldmodel dream")
            self._clock = pygame.time.Clock()
        self._window.blit(pygame.surfarray.make_surface(frame.swapaxes(0, 1)), (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.metadata["render_fps"])

    def close(self) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None


class DreamVectorEnv(_DreamShell, VectorEnv):
    """
    ## Description

    `num_envs` dreams of one world model stepped in ONE batched forward on the
    model's device (not a loop over DreamEnv). Spaces, rewards, episode ends
    and arguments are DreamEnv's (see its docstring); `single_observation_space`
    and `single_action_space` are one dream's, the batched spaces N of them.
    `DreamVectorEnv(num_envs, bundle, **options)` takes DreamEnv's keywords.

    ## Autoreset: NEXT_STEP

    `metadata["autoreset_mode"] = AutoresetMode.NEXT_STEP`: when a dream ends
    at step t, step t returns its true last observation like any other, and
    the next `step()` call resets that sub-env (its action is ignored, its
    reward is 0, terminated and truncated are False) and returns the first
    observation of the new episode. Chosen because it
    is gymnasium's default (SyncVectorEnv, CartPoleVectorEnv), because RLlib's
    env runner (PPO on dreams) reads episode starts exactly this way, and
    because the last observation stays an ordinary batched array instead of an
    object array in `info["final_obs"]` (SAME_STEP). The cost, one ignored step
    per episode, is noise against dreams hundreds of steps long.

    ## Seeding

    `reset(seed=s)` seeds sub-env i with `s + i` (as SyncVectorEnv does);
    `reset(seed=[s0, s1, ...])` with one seed each. Sub-env i then dreams
    exactly what `DreamEnv.reset(seed=s + i)` dreams under the same actions,
    autoresets included (they draw from the sub-env's own stream, like
    `DreamEnv.reset()` without a seed), up to float rounding of batched matmuls.

    ## Version History

    * v0: Initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": RENDER_FPS, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, bundle: str | Path | None = None, **options: Any):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = self._open(num_envs, bundle, **options)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._autoreset = np.zeros(num_envs, np.bool_)  # sub-envs that ended last step

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is None or isinstance(seed, (int, np.integer)):
            if seed is not None:
                super().reset(seed=int(seed))  # the vector env's own np_random, for users who read it
            observation = self._dream.reset(None if seed is None else int(seed))  # sub-env i: seed + i
        else:
            observation = self._dream.reset(seeds=list(seed))  # one each; None: that sub-env's stream goes on
        self._autoreset[:] = False
        return _numpy(observation), {}

    def step(self, actions: Any):
        if self._dream.state is None:
            raise gym.error.ResetNeeded("DreamVectorEnv: call reset() before step()")
        # NEXT_STEP: the sub-envs that ended last step are reset now; DreamBatch still steps them in
        # the one forward, then drops what that gave them (reward 0, not terminated, not truncated).
        try:
            result = self._dream.step(actions, reset_mask=self._autoreset if self._autoreset.any() else None)
        except ValueError as err:
            raise ValueError(f"DreamVectorEnv.step: {err}") from None
        self._autoreset = result.terminated | result.truncated
        return _numpy(result.observation), result.reward, result.terminated, result.truncated, {}

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One upscaled frame per sub-env, as SyncVectorEnv renders."""
        if self.render_mode is None:
            gym.logger.warn("DreamVectorEnv.render() without a render_mode: make it with render_mode='rgb_array'")
            return None
        if self._dream.state is None:
            raise gym.error.ResetNeeded("DreamVectorEnv: call reset() before render()")
        return tuple(upscale(_frames(self._dream), self.render_scale))
