"""gymnasium's CarRacing-v3 with the same frames, drawn several times faster.

A profile of real CarRacing steps (agents/real_fitness.py, 8 envs a worker) put
94% of the time in `CarRacing._render_road`: every frame it rotates the ~400
grass squares and ~600 road polygons one point at a time with pygame vectors in
Python, only to find that ~100 of them are on screen. `FastCarRacing` keeps the
track's polygons as numpy arrays, transforms all of them in a few array ops and
draws only the visible ones, with the same pygame calls in the same order, so
the frames are pixel for pixel the stock env's (tests/test_sources.py checks it).
Physics, rewards, episode ends and every other method are CarRacing's own.
"""

from __future__ import annotations

import math

import numpy as np
from gymnasium.envs.box2d.car_racing import GRASS_DIM, MAX_SHAPE_DIM, PLAYFIELD, WINDOW_H, WINDOW_W, CarRacing

_VECTOR_EPSILON = 1e-6  # pygame.math.Vector2's default epsilon, used by rotate_rad's special cases
_HALF_PI, _TWO_PI = math.pi / 2, 2 * math.pi


def _grass_squares() -> np.ndarray:
    """The grass patches CarRacing draws, [400, 4, 2], in its order."""
    squares = [
        [(GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y), (GRASS_DIM * x, GRASS_DIM * y),
         (GRASS_DIM * x, GRASS_DIM * y + GRASS_DIM), (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + GRASS_DIM)]
        for x in range(-20, 20, 2) for y in range(-20, 20, 2)
    ]
    return np.asarray(squares, dtype=np.float64)


def _rotation(angle: float) -> tuple[float, float]:
    """(cos, sin) exactly as pygame's Vector2.rotate_rad computes them: the angle is first taken modulo
    2 pi, and multiples of pi/2 are exact (pygame special-cases them)."""
    angle = math.fmod(angle, _TWO_PI)
    if angle < 0:
        angle += _TWO_PI
    if math.fmod(angle + _VECTOR_EPSILON, _HALF_PI) < 2 * _VECTOR_EPSILON:
        quarter = int((angle + _VECTOR_EPSILON) / _HALF_PI) % 4
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[quarter]
    return math.cos(angle), math.sin(angle)


class FastCarRacing(CarRacing):
    """CarRacing whose `_render_road` transforms the track as arrays (see the module docstring)."""

    _GRASS = _grass_squares()
    _FIELD = np.asarray([[(PLAYFIELD, PLAYFIELD), (PLAYFIELD, -PLAYFIELD), (-PLAYFIELD, -PLAYFIELD),
                          (-PLAYFIELD, PLAYFIELD)]], dtype=np.float64)

    def _road_points(self) -> np.ndarray:
        """The road polygons' points [R, 4, 2], built once per track (reset makes a new road_poly list)."""
        cached = getattr(self, "_road_cache", None)
        if cached is None or cached[0] is not self.road_poly:
            points = np.asarray([[(p[0], p[1]) for p in poly] for poly, _ in self.road_poly], dtype=np.float64)
            cached = self._road_cache = (self.road_poly, points.reshape(-1, 4, 2))
        return cached[1]

    def _render_road(self, zoom, translation, angle):
        from pygame import gfxdraw

        cos, sin = _rotation(angle)
        groups = ((self._FIELD, None, False), (self._GRASS, None, True), (self._road_points(), self.road_poly, True))
        for group, (points, road, clip) in enumerate(groups):
            x, y = points[..., 0], points[..., 1]
            screen_x = (cos * x - sin * y) * zoom + translation[0]
            screen_y = (sin * x + cos * y) * zoom + translation[1]
            # CarRacing's test: a polygon is drawn when any point lies within the screen grown by MAX_SHAPE_DIM.
            inside = ((screen_x >= -MAX_SHAPE_DIM) & (screen_x <= WINDOW_W + MAX_SHAPE_DIM)
                      & (screen_y >= -MAX_SHAPE_DIM) & (screen_y <= WINDOW_H + MAX_SHAPE_DIM)).any(axis=1)
            for i in (np.flatnonzero(inside) if clip else range(len(points))):
                # Tile colours change in place when the car touches a tile: read them at draw time.
                color = self.bg_color if group == 0 else self.grass_color if group == 1 else road[i][1]
                polygon = list(zip(screen_x[i].tolist(), screen_y[i].tolist()))
                color = [int(c) for c in color] if group == 2 else color
                gfxdraw.aapolygon(self.surf, polygon, color)
                gfxdraw.filled_polygon(self.surf, polygon, color)


__all__ = ["FastCarRacing"]
