"""Collection policies: the behaviour that explores a real env while it is recorded.

A world model only learns the dynamics its data shows, so the collection
policy decides what the model can know. World Models (Ha & Schmidhuber 2018)
collected CarRacing with random actions; uniform noise at every step, though,
barely moves a car (gas and brake cancel out, steering averages to zero), so
for continuous actions there is a temporally correlated random walk, with an
optional per-environment bias that pushes it somewhere interesting.

``make_policy(name, spec, seed)``:

- ``"random"``: uniform over the action space (a Box dim with an infinite
  bound samples a standard normal, clipped to the bound).
- ``"random-walk"``: temporally correlated. Box: an Ornstein-Uhlenbeck
  process per dimension, ``x <- x + theta * (mu - x) + sigma * N(0, 1)``, in
  units of the half-range of each dim, emitted clipped to the bounds.
  Discrete: repeat the previous action with probability ``repeat_prob``,
  else draw uniformly.
- ``"auto"``: ``"random-walk"`` for envs with a registered walk bias (see
  ``WALK_BIASES``; today CarRacing), ``"random"`` otherwise.
- ``"module:callable"``: a user's own policy, ``callable(observation, rng)``
  returning an action, where ``observation`` is the recorded one (``{"image",
  "vector"}``, or the image alone) and ``rng`` the policy's Generator. It is
  imported by name, so it travels to Ray workers as this string; they import
  the module themselves.

Biases (``WALK_BIASES``) are keyed by an ``env_id`` prefix and set the OU mean
``mu`` (and, where given, the noise) per box dim. Means outside the bounds are
the point: the walk state is not clipped, only the emitted action is.
CarRacing's: steering mean 0; gas mean +0.5, so the gas is on about 98% of the
time and the car leaves the start line; brake mean -1.0 with a wide noise (0.8
half-ranges), so the car brakes now and then while it drives: measured over
40,000 steps, 10% brake, 7.6% above 0.1 and 2.5% above 0.5. The walk once
braked on 0.1% of steps and never above 0.1, and a controller evolved in the
dream of a model trained on that exploited the unseen brake (full brake with
gas: the dream's car drove on, the real one stood still).

All randomness comes from one ``numpy.random.Generator`` seeded by ``seed``:
the same seed gives the same actions. ``reset(seed)`` reseeds;
``reset()`` without a seed keeps the random stream going and only restarts
the temporal state (walk position, previous action), as at an episode start.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from worldmodel.errors import UserError
from worldmodel.spec import EnvSpec

__all__ = [
    "POLICY_NAMES",
    "WALK_BIASES",
    "CallablePolicy",
    "Policy",
    "RandomPolicy",
    "RandomWalkPolicy",
    "WalkBias",
    "load_policy_callable",
    "make_policy",
    "walk_bias_for",
]

POLICY_NAMES: tuple[str, ...] = ("random", "random-walk", "auto")


@runtime_checkable
class Policy(Protocol):
    """What a collector steps: ``reset`` at each episode start, then call it on each observation."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> None: ...

    def __call__(self, observation: Any) -> Any: ...


@dataclass(frozen=True)
class WalkBias:
    """Where a box random walk is pulled to, per action dim.

    Attributes:
        mean: OU mean ``mu`` per dim, in action units. It may lie outside the
            bounds: the emitted action is then mostly the nearest bound.
        start: initial walk state per dim (default: ``mean`` clipped to the bounds).
    """

    mean: tuple[float, ...]
    start: tuple[float, ...] | None = None
    sigma: tuple[float, ...] | None = None
    """OU noise per dim in half-ranges (default: the policy's one sigma for every dim)."""


#: Walk biases keyed by env_id prefix; the first matching prefix wins.
WALK_BIASES: dict[str, WalkBias] = {
    # (steering, gas, brake): go forward, steer both ways, brake rarely.
    "CarRacing": WalkBias(mean=(0.0, 0.5, -1.0), start=(0.0, 0.5, 0.0), sigma=(0.2, 0.2, 0.8)),
}


def walk_bias_for(spec: EnvSpec) -> WalkBias | None:
    """The registered bias for ``spec.env_id``, if any and if it fits the action."""
    for prefix, bias in WALK_BIASES.items():
        if spec.env_id.startswith(prefix):
            if spec.action.is_discrete or len(bias.mean) != spec.action.shape[0]:
                return None  # e.g. CarRacing with continuous=False: no box to bias
            return bias
    return None


class _SeededPolicy:
    """Shared seeding: one numpy Generator, reseeded by ``reset(seed)``."""

    def __init__(self, spec: EnvSpec, seed: int | None) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._reset_state()

    def _reset_state(self) -> None:
        """Restart any temporal state (nothing for memoryless policies)."""

    def _uniform_box(self) -> np.ndarray:
        low = np.asarray(self.spec.action.low, np.float64)
        high = np.asarray(self.spec.action.high, np.float64)
        finite = np.isfinite(low) & np.isfinite(high)
        # uniform() cannot draw on an infinite range: a standard normal, clipped, there.
        sample = np.where(finite, self.rng.uniform(np.where(finite, low, 0.0), np.where(finite, high, 1.0)),
                          self.rng.standard_normal(low.shape))
        return np.clip(sample, low, high).astype(np.float32)

    def _uniform_discrete(self) -> int:
        return int(self.rng.integers(self.spec.action.n))


class RandomPolicy(_SeededPolicy):
    """Uniform random actions, independent at every step."""

    def __call__(self, observation: Any = None) -> np.ndarray | int:
        if self.spec.action.is_discrete:
            return self._uniform_discrete()
        return self._uniform_box()


class RandomWalkPolicy(_SeededPolicy):
    """Temporally correlated random actions (see the module docstring).

    Args:
        spec: the env's spec.
        seed: seed of the numpy Generator.
        theta: OU mean reversion per step (correlation time about 1/theta steps).
        sigma: OU noise per step, in half-ranges of each box dim.
        repeat_prob: discrete actions: probability of repeating the previous one.
        bias: box mean/start; default: ``walk_bias_for(spec)``, else the
            centre of each dim.
    """

    def __init__(
        self,
        spec: EnvSpec,
        seed: int | None,
        *,
        theta: float = 0.15,
        sigma: float = 0.2,
        repeat_prob: float = 0.8,
        bias: WalkBias | None = None,
    ) -> None:
        if not 0.0 < theta <= 1.0:
            raise ValueError(f"theta must be in (0, 1], got {theta}")
        if sigma < 0.0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if not 0.0 <= repeat_prob <= 1.0:
            raise ValueError(f"repeat_prob must be in [0, 1], got {repeat_prob}")
        self.theta, self.sigma, self.repeat_prob = theta, sigma, repeat_prob
        self.bias = bias if bias is not None else walk_bias_for(spec)
        if not spec.action.is_discrete:
            low = np.asarray(spec.action.low, np.float64)
            high = np.asarray(spec.action.high, np.float64)
            finite = np.isfinite(low) & np.isfinite(high)
            self._low, self._high = low, high
            # Work in half-ranges so one sigma fits dims of any width; 1 where unbounded.
            self._scale = np.where(finite, (high - low) / 2.0, 1.0)
            # Centre of bounded dims; 0 (clipped into the bounds) where a bound is infinite.
            centre = np.where(finite, (np.where(finite, low, 0.0) + np.where(finite, high, 0.0)) / 2.0,
                              np.clip(0.0, low, high))
            if self.bias is not None:
                if len(self.bias.mean) != low.size:
                    raise ValueError(f"bias has {len(self.bias.mean)} dims, the action {low.size}")
                self._mean = np.asarray(self.bias.mean, np.float64)
                if self.bias.sigma is not None:
                    self.sigma = np.asarray(self.bias.sigma, np.float64)
                start = self.bias.start if self.bias.start is not None else self._mean
                self._start = np.clip(np.asarray(start, np.float64), low, high)
            else:
                self._mean, self._start = centre, centre
        self._state: np.ndarray | None = None
        self._previous: int | None = None
        super().__init__(spec, seed)

    def _reset_state(self) -> None:
        self._previous = None
        if not self.spec.action.is_discrete:
            self._state = self._start.copy()

    def __call__(self, observation: Any = None) -> np.ndarray | int:
        if self.spec.action.is_discrete:
            if self._previous is None or self.rng.random() >= self.repeat_prob:
                self._previous = self._uniform_discrete()
            return self._previous
        assert self._state is not None
        # Ornstein-Uhlenbeck step; the state itself is not clipped (see the module docstring).
        noise = self.rng.standard_normal(self._state.shape)
        self._state = self._state + self.theta * (self._mean - self._state) + self.sigma * self._scale * noise
        return np.clip(self._state, self._low, self._high).astype(np.float32)


class CallablePolicy(_SeededPolicy):
    """A user's own policy ``module:callable``: ``callable(observation, rng) -> action``, with the
    Generator seeded like every policy's (so ``reset(episode_seed)`` replays an episode's actions)."""

    def __init__(self, name: str, spec: EnvSpec, seed: int | None) -> None:
        self.name = name
        self.function = load_policy_callable(name)
        super().__init__(spec, seed)

    def __call__(self, observation: Any) -> Any:
        return self.function(observation, self.rng)


def load_policy_callable(name: str) -> Callable[[Any, np.random.Generator], Any]:
    """The callable named ``module:attribute`` (``attribute`` may be dotted), or a UserError saying why not."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise UserError(f"policy {name!r}: a user's policy is named module:callable")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may fail in any way while it imports
        raise UserError(f"policy {name!r}: cannot import {module_name}: {type(err).__name__}: {err}") from err
    try:
        function = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise UserError(f"policy {name!r}: {module_name} has no {attribute}") from None
    if not callable(function):
        raise UserError(f"policy {name!r}: {attribute} is a {type(function).__name__}, not a callable")
    return function


def make_policy(name: str, spec: EnvSpec, seed: int | None) -> Policy:
    """A collection policy by name: one of ``POLICY_NAMES``, or a user's ``module:callable``."""
    if ":" in name:
        return CallablePolicy(name, spec, seed)
    if name == "auto":
        walk = any(spec.env_id.startswith(prefix) for prefix in WALK_BIASES)
        name = "random-walk" if walk else "random"
    if name == "random":
        return RandomPolicy(spec, seed)
    elif name == "random-walk":
        return RandomWalkPolicy(spec, seed)
    else:
        raise UserError(f"unknown policy {name!r}; valid names: {', '.join(POLICY_NAMES)}, or a module:callable")
