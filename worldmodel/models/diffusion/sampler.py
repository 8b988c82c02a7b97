"""Sampling the next frame: few-step EDM Euler (Karras et al. 2022, Algorithm 1 with s_churn 0), as in
DIAMOND (3 steps), through diffusers' `EDMEulerScheduler`. diffusers is imported inside the function."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from worldmodel.models.diffusion.edm import frames_to_unit, unit_to_frames
from worldmodel.models.noise import Noise, draw_normal

if TYPE_CHECKING:
    from worldmodel.models.diffusion.network import DiffusionWorld


@torch.no_grad()
def sample_next_frame(
    world: DiffusionWorld,
    frames: Tensor,
    actions: Tensor,
    vectors: Tensor | None,
    generator: Noise = None,
    steps: int | None = None,
    noise_scale: float = 1.0,
    env: int = 0,
) -> Tensor:
    """Frames [B, L, H, W, C] uint8 and their actions [B, L(, A)] (the last: the action taken now) ->
    the next frame [B, H, W, C] uint8, by `steps` Euler steps (default: the config's sampling_steps).

    `generator`: per-row streams (each row's initial noise from its own), one torch.Generator, or None.
    `noise_scale` multiplies the initial noise (1: the trained model as is); `env`: which of the backbone's
    environments the actions belong to."""
    from diffusers import EDMEulerScheduler

    context = frames_to_unit(frames)
    b, _, c, h, w = context.shape
    condition = world.condition_embedding(actions, vectors, env)
    scheduler = EDMEulerScheduler.from_config(world.scheduler.config)  # its own step counter: re-entrant
    scheduler.set_timesteps(steps or world.config.sampling_steps, device=context.device)
    x = draw_normal((b, c, h, w), generator, context.device, context.dtype)
    x = x * scheduler.sigmas[0].to(context.device) * noise_scale
    scheduler.is_scale_input_called = True  # `network` applies c_in itself (precondition_inputs)
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(context.device)
        output = world.network(x, sigma.expand(b), context, condition)
        x = scheduler.step(output, t, x).prev_sample  # Euler, s_churn 0: draws no noise
    return unit_to_frames(x)


__all__ = ["sample_next_frame"]
