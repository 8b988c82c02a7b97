"""DiffusionWorld: the trainable whole of the diffusion backbone, and its training objective.

A `diffusers.UNet2DModel` is EDM's network F: it sees the noisy next frame (scaled by c_in) with
the last L frames concatenated as channels, at the noise level c_noise; the L actions (one-hot when
discrete) and vector observations go through a small MLP into the UNet's class embedding
(`class_embed_type="identity"`), so they are added to the noise-level embedding as DIAMOND adds its
action embedding. The denoiser D = c_skip x + c_out F comes from diffusers' `EDMEulerScheduler`.

Not taken from DIAMOND: its offset noise (sigma_offset_noise 0.3) and its AdamW/warm-up schedule
(the shared loop uses Adam); its UNet is replaced by diffusers' UNet2DModel of the same widths and
depths (with diffusers' mid-block attention). diffusers is imported inside `__init__` only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodel.models.diffusion.config import DiffusionConfig
from worldmodel.models.diffusion.edm import add_noise, edm_weighted_loss, frames_to_unit, sample_training_sigma
from worldmodel.models.diffusion.head import RewardHead
from worldmodel.models.diffusion.sampler import sample_next_frame
from worldmodel.models.noise import Noise


class DiffusionWorld(nn.Module):
    """The trainable whole: the UNet (denoiser network), the condition embedding, the reward head."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        from diffusers import EDMEulerScheduler, UNet2DModel

        self.config = config
        self.unet = UNet2DModel(**config.unet_kwargs())
        width = config.context_length * (config.action_dim + config.vector_dim)
        self.condition = nn.Sequential(
            nn.Linear(width, config.embedding_dim), nn.SiLU(), nn.Linear(config.embedding_dim, config.embedding_dim)
        )
        self.head = RewardHead(config)
        # prediction_type "epsilon" is diffusers' name for EDM's F-parameterisation here:
        # D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with c_out > 0.
        self.scheduler = EDMEulerScheduler(
            sigma_min=config.sample_sigma_min, sigma_max=config.sample_sigma_max, sigma_data=config.sigma_data,
            rho=config.rho, prediction_type="epsilon", final_sigmas_type="zero",
        )

    def action_features(self, actions: Tensor) -> Tensor:
        """actions [...] int64 (discrete) or [..., A] float -> [..., A] float."""
        if self.config.discrete_actions:
            return F.one_hot(actions.long(), self.config.action_dim).float()
        return actions.float()

    def condition_embedding(self, actions: Tensor, vectors: Tensor | None) -> Tensor:
        """The L actions (and normalized vectors) [B, L, ...] -> [B, 4 * C0], added to the noise embedding."""
        parts = [self.action_features(actions)] + ([vectors.float()] if self.config.vector_dim else [])
        return self.condition(torch.cat(parts, dim=-1).flatten(1))

    def network(self, noisy: Tensor, sigma: Tensor, context: Tensor, condition: Tensor) -> Tensor:
        """F: noisy next frame [B, C, H, W], sigma [B], context frames [B, L, C, H, W] in [-1, 1]."""
        b, length, c, h, w = context.shape
        sigma4 = sigma.reshape(b, 1, 1, 1)
        # 1. EDM input and noise preconditioning (diffusers)
        scaled = self.scheduler.precondition_inputs(noisy, sigma4)
        c_noise = self.scheduler.precondition_noise(sigma)
        # 2. the context joins as channels, scaled to unit variance as in DIAMOND (obs / sigma_data)
        sample = torch.cat([scaled, context.reshape(b, length * c, h, w) / self.config.sigma_data], dim=1)
        # 3. the UNet, with the condition embedding added to the noise-level embedding
        return self.unet(sample, c_noise, class_labels=condition).sample

    def denoise(self, noisy: Tensor, sigma: Tensor, context: Tensor, condition: Tensor) -> Tensor:
        """D(x; sigma) = c_skip x + c_out F (diffusers' precondition_outputs)."""
        output = self.network(noisy, sigma, context, condition)
        return self.scheduler.precondition_outputs(noisy, output, sigma.reshape(-1, 1, 1, 1))

    def denoising_loss(
        self, frames: Tensor, actions: Tensor, vectors: Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """frames [B, L + 1, H, W, C] uint8, actions [B, L(, A)], vectors [B, L, D]: EDM loss on frame L.

        `generator` fixes sigma and n (to compare models on the same draw)."""
        x = frames_to_unit(frames)
        context, target = x[:, :-1], x[:, -1]
        sigma = sample_training_sigma(target.shape[0], self.config, target.device, generator)
        noise = torch.randn(target.shape, device=target.device, generator=generator)
        denoised = self.denoise(add_noise(target, sigma, noise), sigma, context, self.condition_embedding(actions, vectors))
        return edm_weighted_loss(denoised, target, sigma, self.config.sigma_data)

    def head_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Windows [B, T, ...]: reward MSE + termination BCE (+ next-vector MSE where it is in the window)."""
        frames = frames_to_unit(batch["h_image"])
        vectors = batch.get("h_vector")
        reward, logit, next_vector, _ = self.head(frames, self.action_features(batch["h_action"]), vectors)
        reward_loss = F.mse_loss(reward, batch["h_reward"].float())
        end_loss = F.binary_cross_entropy_with_logits(logit, batch["h_terminated"].float())
        logs = {"loss/reward": reward_loss.detach(), "loss/termination": end_loss.detach()}
        loss = reward_loss + end_loss
        if next_vector is not None:
            vector_loss = F.mse_loss(next_vector[:, :-1], vectors[:, 1:].float())
            logs["loss/vector"] = vector_loss.detach()
            loss = loss + vector_loss
        return loss, logs

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective: denoising (d_* windows of L + 1) plus the head (h_* windows)."""
        denoising = self.denoising_loss(batch["d_image"], batch["d_action"][:, :-1], _context_vectors(batch))
        head, logs = self.head_loss(batch)
        return denoising + head, {"loss/denoising": denoising.detach(), **logs}

    def sample_next(
        self, frames: Tensor, actions: Tensor, vectors: Tensor | None,
        generator: Noise = None,
        steps: int | None = None, noise_scale: float = 1.0,
    ) -> Tensor:
        """The next frame [B, H, W, C] uint8 by EDM Euler sampling: see `sampler.sample_next_frame`."""
        return sample_next_frame(self, frames, actions, vectors, generator, steps, noise_scale)


def _context_vectors(batch: dict[str, Tensor]) -> Tensor | None:
    """The denoiser's context vectors: the d_vector window less its last step (the predicted frame's)."""
    vectors = batch.get("d_vector")
    return None if vectors is None else vectors[:, :-1]


def parameter_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


__all__ = ["DiffusionWorld", "parameter_count"]
