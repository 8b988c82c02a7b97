"""Sampling the next frame: few-step EDM Euler (Karras et al. 2022, Algorithm 1 with s_churn 0), as in
DIAMOND (3 steps), through diffusers' `EDMEulerScheduler`. diffusers is imported inside the function."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from worldmodel.models.diffusion.edm import frames_to_unit, unit_to_frames

if TYPE_CHECKING:
    from worldmodel.models.diffusion.network import DiffusionWorld


@torch.no_grad()
def sample_next_frame(
    world: DiffusionWorld,
    frames: Tensor,
    actions: Tensor,
    vectors: Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    steps: int | None = None,
    noise_scale: float = 1.0,
) -> Tensor:
    """Frames [B, L, H, W, C] uint8 and their actions [B, L(, A)] (the last: the action taken now) ->
    the next frame [B, H, W, C] uint8, by `steps` Euler steps (default: the config's sampling_steps).

    `generator`: one torch.Generator, or a list with one per row (each row's initial noise from its own).
    `noise_scale` multiplies the initial noise (1: the trained model as is)."""
    from diffusers import EDMEulerScheduler
    from diffusers.utils.torch_utils import randn_tensor

    context = frames_to_unit(frames)
    b, _, c, h, w = context.shape
    condition = world.condition_embedding(actions, vectors)
    scheduler = EDMEulerScheduler.from_config(world.scheduler.config)  # its own step counter: re-entrant
    scheduler.set_timesteps(steps or world.config.sampling_steps, device=context.device)
    if isinstance(generator, (list, tuple)) and len(generator) != b:
        raise ValueError(f"expected {b} generators (one per row), got {len(generator)}")
    x = randn_tensor((b, c, h, w), generator=generator, device=context.device, dtype=context.dtype)
    x = x * scheduler.sigmas[0].to(context.device) * noise_scale
    scheduler.is_scale_input_called = True  # `network` applies c_in itself (precondition_inputs)
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(context.device)
        output = world.network(x, sigma.expand(b), context, condition)
        x = scheduler.step(output, t, x).prev_sample  # Euler, s_churn 0: draws no noise
    return unit_to_frames(x)


__all__ = ["sample_next_frame"]
