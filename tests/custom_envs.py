"""A user's own env and collection policies, as a user would write them, for tests/test_collect_custom.py.

Importing this module registers ``Grid-v0``, so ``gymnasium.make("custom_envs:Grid-v0")`` works in any process
that can import it (Ray workers only through the driver's sys.path, which is what the tests check).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CELL = 8
"""Pixels per grid cell: the frame is (size * CELL) square, so the size shows in the recorded image shape."""

LEFT, RIGHT, UP, DOWN = range(4)
MOVES = {LEFT: (0, -1), RIGHT: (0, 1), UP: (-1, 0), DOWN: (1, 0)}


class Grid(gym.Env):
    """An agent on a size x size grid; a dict observation of its picture and its (row, column) position.
    Reaching the top-left corner ends the episode with reward 1; every other step costs 0.01."""

    metadata = {"render_modes": []}

    def __init__(self, size: int = 3) -> None:
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        self.size = size
        side = size * CELL
        self.observation_space = spaces.Dict({
            "pixels": spaces.Box(0, 255, (side, side, 3), np.uint8),
            "position": spaces.Box(0, size - 1, (2,), np.float32),
        })
        self.action_space = spaces.Discrete(4)
        self.position = np.zeros(2, np.int64)

    def _observation(self) -> dict[str, np.ndarray]:
        pixels = np.zeros(self.observation_space["pixels"].shape, np.uint8)
        row, column = self.position * CELL
        pixels[row:row + CELL, column:column + CELL] = 255
        return {"pixels": pixels, "position": self.position.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.integers(0, self.size, 2)
        return self._observation(), {}

    def step(self, action):
        move = np.asarray(MOVES[int(action)])
        self.position = np.clip(self.position + move, 0, self.size - 1)
        done = bool((self.position == 0).all())
        return self._observation(), 1.0 if done else -0.01, done, False, {}


class RenderedGrid(Grid):
    """The grid with gymnasium's rendering too: its picture is also ``render()``'s rgb_array frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size: int = 3, render_mode: str | None = None) -> None:
        super().__init__(size)
        self.render_mode = render_mode

    def render(self) -> np.ndarray:
        return self._observation()["pixels"]


gym.register("Grid-v0", entry_point="custom_envs:Grid", max_episode_steps=100)
gym.register("RenderedGrid-v0", entry_point="custom_envs:RenderedGrid", max_episode_steps=100)


def always_left(observation, rng: np.random.Generator) -> int:
    """A user's policy: always step left."""
    return LEFT


def wander(observation, rng: np.random.Generator) -> int:
    """A user's random policy: all its randomness comes from the collector's generator."""
    return int(rng.integers(4))


def says_left(observation, rng: np.random.Generator) -> str:
    """A broken policy: its action is not in the action space."""
    return "left"


NOT_A_POLICY = 42


def leaves_the_grid(observation, rng: np.random.Generator) -> int:
    """A policy that fits at first and fails later: left until the left edge, then an action that is not one.
    The collector's probe (one action after a reset with seed 0, which puts the agent in column 5 of a size-8
    grid) sees a good action, so only a collecting worker meets the bad one."""
    return LEFT if observation["vector"][1] > 0 else len(MOVES)
