"""EDM training math diffusers does not provide (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"), and the pixel scaling it assumes.

The preconditioning itself (c_in, c_noise, c_skip, c_out in D = c_skip x + c_out F) and the Euler
sampler come from diffusers' `EDMEulerScheduler`; diffusers has no EDM *training* helper, so the
noise-level draw, the noising and the weighted loss are written here, as DIAMOND (Alonso et al. 2024)
uses them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from worldmodel.models.diffusion.config import DiffusionConfig


def edm_c_out(sigma: Tensor, sigma_data: float) -> Tensor:
    """c_out(sigma) = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2) (Karras et al. 2022, Table 1).

    The same factor EDMEulerScheduler.precondition_outputs uses; the training loss divides by it
    (EDM's loss weight lambda(sigma) = 1 / c_out^2)."""
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def sample_training_sigma(
    batch: int, config: DiffusionConfig, device: torch.device | str, generator: torch.Generator | None = None
) -> Tensor:
    """sigma [B]: log sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1: sigma_loc, sigma_scale),
    clipped to [train_sigma_min, train_sigma_max] (DIAMOND)."""
    log_sigma = torch.randn(batch, device=device, generator=generator) * config.sigma_scale + config.sigma_loc
    return log_sigma.exp().clamp(config.train_sigma_min, config.train_sigma_max)


def add_noise(clean: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """x + sigma n: clean [B, C, H, W], sigma [B], noise n ~ N(0, I) [B, C, H, W] (Karras et al. 2022, eq. 2)."""
    b = clean.shape[0]
    return clean + sigma.reshape(b, 1, 1, 1) * noise


def edm_weighted_loss(denoised: Tensor, clean: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """E lambda(sigma) ||D(x + sigma n; sigma) - x||^2 with lambda = 1 / c_out^2 (Karras et al. 2022, eq. 8),
    i.e. E ||F - (x - c_skip (x + sigma n)) / c_out||^2: denoised and clean [B, C, H, W], sigma [B]."""
    b = clean.shape[0]
    c_out = edm_c_out(sigma, sigma_data).reshape(b, 1, 1, 1)
    return (((denoised - clean) / c_out) ** 2).mean()


def frames_to_unit(frames: Tensor) -> Tensor:
    """uint8 [..., H, W, C] -> float [..., C, H, W] in [-1, 1] (what sigma_data 0.5 assumes)."""
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def unit_to_frames(x: Tensor) -> Tensor:
    """float [..., C, H, W] in [-1, 1] -> uint8 [..., H, W, C], rounded."""
    return x.add(1.0).mul(127.5).clamp(0, 255).round().to(torch.uint8).movedim(-3, -1).contiguous()


__all__ = ["add_noise", "edm_c_out", "edm_weighted_loss", "frames_to_unit", "sample_training_sigma", "unit_to_frames"]
