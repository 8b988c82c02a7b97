"""`worldmodel play`: a person drives a dream with the keyboard, as DIAMOND's play tool does.

Keys (held keys act every step, like CarRacing's own keyboard demo):

| key          | box actions (CarRacing: steer, gas, brake)        | discrete actions      |
|--------------|---------------------------------------------------|-----------------------|
| left / right | action[0] to its low / high (steer)               |                       |
| up           | action[1] to its high (gas)                       |                       |
| down         | action[2] to 0.8 of its high (brake), else        |                       |
|              | action[1] to its low when there is no action[2]   |                       |
| 0-9          |                                                   | that action while held|
| R            | reset the dream                                   | reset the dream       |
| Esc          | quit                                              | quit                  |

Unpressed dimensions rest at 0 clipped into the box; with no number key held
the discrete action is 0 (Atari's NOOP). The loop reads its events from a
callable, so tests script them (headless with SDL_VIDEODRIVER=dummy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worldmodel.spec import EnvSpec

if TYPE_CHECKING:  # torch loads with the dream, not with this module
    from worldmodel.models.world import WorldModel

BRAKE = 0.8  # CarRacing's keyboard demo brakes at 0.8: 1.0 locks the wheels
DEFAULT_FPS = 15  # DIAMOND plays its dreams at 15 fps; CarRacing's 50 is too fast to steer by hand


@dataclass
class PlayResult:
    """What a ride was: steps dreamed, episodes ended (by the model or R), summed reward, the GIF."""

    steps: int
    episodes: int
    total_reward: float
    record: Path | None


def action_for(spec: EnvSpec, held: list[int]) -> np.ndarray | int:
    """The action the held keys (pygame key codes, oldest first) ask for."""
    import pygame

    if spec.action.is_discrete:
        digits = [key - pygame.K_0 for key in held if pygame.K_0 <= key <= pygame.K_9]
        digits = [d for d in digits if d < spec.action.n]
        return digits[-1] if digits else 0
    low, high = np.asarray(spec.action.low, np.float32), np.asarray(spec.action.high, np.float32)
    action = np.zeros(spec.action.shape, np.float32)
    if pygame.K_LEFT in held:
        action[0] = low[0]
    if pygame.K_RIGHT in held:
        action[0] = high[0]
    if len(action) > 1 and pygame.K_UP in held:
        action[1] = high[1]
    if pygame.K_DOWN in held:
        if len(action) > 2:
            action[2] = BRAKE * high[2]
        elif len(action) > 1:
            action[1] = low[1]
    return np.clip(action, low, high)


def play(
    bundle: str | Path | None = None,
    *,
    model: WorldModel | None = None,
    backend: str | None = None,
    temperature: float | None = None,
    device: str = "cpu",
    record: str | Path | None = None,
    steps: int | None = None,
    fps: int = DEFAULT_FPS,
    seed: int | None = None,
    scale: int = 6,
    events: Callable[[], Iterable[Any]] | None = None,
) -> PlayResult:
    """Open a window and let the keyboard drive a dream until Esc (or `steps` steps).

    `events` returns the pygame events of one frame (default `pygame.event.get`);
    `fps=0` runs as fast as it can. `record` saves every shown frame as a GIF.
    """
    import pygame

    from envs.dream import DreamEnv
    from worldmodel.media import save_gif

    if steps is not None and steps < 0:
        raise ValueError(f"--steps must be >= 0, got {steps}")
    if fps < 0:
        raise ValueError(f"--fps must be >= 0, got {fps}")
    env = DreamEnv(bundle, model=model, backend=backend, temperature=temperature, device=device,
                   render_mode="rgb_array", render_scale=scale)
    env.reset(seed=seed)
    frame = env.render()
    try:
        pygame.display.init()
        screen = pygame.display.set_mode(frame.shape[1::-1])
    except pygame.error as err:
        raise RuntimeError(f"play needs a window ({err}); headless, set SDL_VIDEODRIVER=dummy") from err
    events = events or pygame.event.get
    clock = pygame.time.Clock()
    held: list[int] = []
    frames = [frame]
    done_steps, episodes, total, episode_return = 0, 0, 0.0, 0.0
    try:
        while steps is None or done_steps < steps:
            quit_now, reset_now = False, False
            for event in events():
                if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                    quit_now = True
                elif event.type == pygame.KEYDOWN and event.key == pygame.K_r:
                    reset_now = True
                elif event.type == pygame.KEYDOWN and event.key not in held:
                    held.append(event.key)
                elif event.type == pygame.KEYUP and event.key in held:
                    held.remove(event.key)
            if quit_now:
                break
            if reset_now:
                env.reset()
                episodes, episode_return = episodes + 1, 0.0
            else:
                _, reward, terminated, truncated, _ = env.step(action_for(env.model.spec, held))
                done_steps, total, episode_return = done_steps + 1, total + reward, episode_return + reward
                if terminated or truncated:
                    env.reset()  # the ended dream's last frame was shown; start the next one
                    episodes, episode_return = episodes + 1, 0.0
            frame = env.render()
            frames.append(frame)
            screen.blit(pygame.surfarray.make_surface(frame.swapaxes(0, 1)), (0, 0))
            pygame.display.set_caption(f"dream: step {done_steps}  return {episode_return:.2f}  (R resets, Esc quits)")
            pygame.display.flip()
            clock.tick(fps)
    finally:
        pygame.display.quit()
        env.close()
    path = save_gif(record, np.stack(frames), fps=fps or DEFAULT_FPS) if record else None
    return PlayResult(done_steps, episodes, total, path)
