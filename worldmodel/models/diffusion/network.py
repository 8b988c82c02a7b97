"""DiffusionWorld: the trainable whole of the diffusion backbone, and its training objective.

A `diffusers.UNet2DModel` is EDM's network F: it sees the noisy next frame (scaled by c_in) with
the last L frames concatenated as channels, at the noise level c_noise; the L actions (one-hot when
discrete) and vector observations, encoded by their env's own encoders, and the env's embedding go
through a small MLP into the UNet's class embedding (`class_embed_type="identity"`), so they are added
to the noise-level embedding as DIAMOND adds its action embedding. One backbone can so learn several
environments of different action spaces, with or without vectors (`EnvParts`: what each env owns). The denoiser D = c_skip x + c_out F comes from diffusers' `EDMEulerScheduler`.

Not taken from DIAMOND: its offset noise (sigma_offset_noise 0.3) and its AdamW/warm-up schedule
(the shared loop uses Adam); its UNet is replaced by diffusers' UNet2DModel of the same widths and
depths (with diffusers' mid-block attention). diffusers is imported inside `__init__` only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodel.models.diffusion.config import DiffusionConfig, EnvInterface
from worldmodel.models.diffusion.edm import add_noise, edm_weighted_loss, frames_to_unit, sample_training_sigma
from worldmodel.models.diffusion.head import RewardHead
from worldmodel.models.diffusion.sampler import sample_next_frame
from worldmodel.models.noise import Noise


class EnvParts(nn.Module):
    """What one environment owns in a shared backbone: its embedding, the encoders of its actions and
    vectors to the widths the shared condition MLP reads, and its reward/termination head."""

    def __init__(self, config: DiffusionConfig, interface: EnvInterface):
        super().__init__()
        self.interface = interface
        self.embedding = nn.Parameter(torch.randn(config.env_embedding_dim) * 0.1)
        self.action = nn.Linear(interface.action_dim, config.action_embedding_dim)
        self.vector = nn.Linear(interface.vector_dim, config.vector_embedding_dim) if interface.vector_dim else None
        self.vector_embedding_dim = config.vector_embedding_dim
        self.head = RewardHead(config, interface)

    def action_features(self, actions: Tensor) -> Tensor:
        """actions [...] int64 (discrete) or [..., A] float -> [..., A] float."""
        if self.interface.discrete_actions:
            return F.one_hot(actions.long(), self.interface.action_dim).float()
        return actions.float()

    def condition_input(self, actions: Tensor, vectors: Tensor | None) -> Tensor:
        """The L actions [B, L(, A)] and normalized vectors [B, L, D] -> the condition MLP's input [B, ...]."""
        encoded = self.action(self.action_features(actions))
        if self.vector is not None:
            vector = self.vector(vectors.float())
        else:  # an env without vectors: zeros (its embedding tells the MLP so)
            vector = encoded.new_zeros(*encoded.shape[:-1], self.vector_embedding_dim)
        steps = torch.cat([encoded, vector], dim=-1).flatten(1)
        return torch.cat([steps, self.embedding.expand(steps.shape[0], -1)], dim=-1)


class DiffusionWorld(nn.Module):
    """The trainable whole: the UNet (denoiser network) and the condition MLP, shared by every env the
    backbone learns, and each env's parts (`envs[i]`, in the order of `config.envs`)."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        from diffusers import EDMEulerScheduler, UNet2DModel

        self.config = config
        self.unet = UNet2DModel(**config.unet_kwargs())
        self.condition = nn.Sequential(
            nn.Linear(config.condition_input_dim, config.embedding_dim), nn.SiLU(),
            nn.Linear(config.embedding_dim, config.embedding_dim),
        )
        self.envs = nn.ModuleList(EnvParts(config, interface) for interface in config.envs)
        # prediction_type "epsilon" is diffusers' name for EDM's F-parameterisation here:
        # D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with c_out > 0.
        self.scheduler = EDMEulerScheduler(
            sigma_min=config.sample_sigma_min, sigma_max=config.sample_sigma_max, sigma_data=config.sigma_data,
            rho=config.rho, prediction_type="epsilon", final_sigmas_type="zero",
        )

    def add_env(self, interface: EnvInterface) -> int:
        """A new environment's parts (adaptation), set so that the model starts as a zero-shot guess:
        the embedding is the mean of the known envs', the action and vector encoders are zero (the
        condition sees no action until they learn). Returns the new env's index."""
        parts = EnvParts(self.config, interface).to(next(self.parameters()).device)
        with torch.no_grad():
            parts.embedding.copy_(torch.stack([p.embedding for p in self.envs]).mean(0))
            for encoder in (parts.action, parts.vector):
                if encoder is not None:
                    encoder.weight.zero_(), encoder.bias.zero_()
        self.envs.append(parts)
        self.config = self.config.with_env(interface)
        return len(self.envs) - 1

    def action_features(self, actions: Tensor, env: int = 0) -> Tensor:
        return self.envs[env].action_features(actions)

    def condition_embedding(self, actions: Tensor, vectors: Tensor | None, env: int = 0) -> Tensor:
        """The L actions (and normalized vectors) [B, L, ...] of env `env` -> [B, 4 * C0], added to the noise embedding."""
        return self.condition(self.envs[env].condition_input(actions, vectors))

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
        self, frames: Tensor, actions: Tensor, vectors: Tensor | None, generator: torch.Generator | None = None,
        env: int = 0,
    ) -> Tensor:
        """frames [B, L + 1, H, W, C] uint8, actions [B, L(, A)], vectors [B, L, D] of env `env`: EDM loss on
        frame L. `generator` fixes sigma and n (to compare models on the same draw)."""
        return self._denoising_loss(frames, self.condition_embedding(actions, vectors, env), generator)

    def _denoising_loss(self, frames: Tensor, condition: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = frames_to_unit(frames)
        context, target = x[:, :-1], x[:, -1]
        sigma = sample_training_sigma(target.shape[0], self.config, target.device, generator)
        noise = torch.randn(target.shape, device=target.device, generator=generator)
        denoised = self.denoise(add_noise(target, sigma, noise), sigma, context, condition)
        return edm_weighted_loss(denoised, target, sigma, self.config.sigma_data)

    def head_loss(self, batch: dict[str, Tensor], env: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """Windows [B, T, ...] of env `env`: reward MSE + termination BCE (+ next-vector MSE where it has one)."""
        parts = self.envs[env]
        frames = frames_to_unit(batch["h_image"])
        vectors = batch.get("h_vector")
        reward, logit, next_vector, _ = parts.head(frames, parts.action_features(batch["h_action"]), vectors)
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
        """The training objective: denoising (d_* windows of L + 1) plus the head (h_* windows), over a
        batch of one or several envs (keys "ENV/d_image" ...: see `env_batch`). The UNet sees every
        env's windows in one call; each env's head loss counts in proportion to its rows."""
        groups = split_env_batch(batch)
        frames = torch.cat([group["d_image"] for group in groups.values()])
        condition = torch.cat([
            self.condition_embedding(group["d_action"][:, :-1], _context_vectors(group), env) for env, group in groups.items()
        ])
        denoising = self._denoising_loss(frames, condition)
        rows = {env: len(group["h_image"]) for env, group in groups.items()}
        head, logs = 0.0, {}
        for env, group in groups.items():
            env_loss, env_logs = self.head_loss(group, env)
            share = rows[env] / sum(rows.values())
            head = head + share * env_loss
            for key, value in env_logs.items():
                logs[key] = logs.get(key, 0.0) + share * value
        return denoising + head, {"loss/denoising": denoising.detach(), **logs}

    def sample_next(
        self, frames: Tensor, actions: Tensor, vectors: Tensor | None,
        generator: Noise = None,
        steps: int | None = None, noise_scale: float = 1.0, env: int = 0,
    ) -> Tensor:
        """The next frame [B, H, W, C] uint8 by EDM Euler sampling: see `sampler.sample_next_frame`."""
        return sample_next_frame(self, frames, actions, vectors, generator, steps, noise_scale, env)


def env_batch(env: int, batch: dict[str, object]) -> dict[str, object]:
    """One env's windows under the keys `DiffusionWorld.loss` reads ("ENV/d_image" ...)."""
    return {f"{env}/{key}": value for key, value in batch.items()}


def split_env_batch(batch: dict[str, Tensor]) -> dict[int, dict[str, Tensor]]:
    """{env: {key: tensor}} from `env_batch`'s keys, envs in order; plain keys are env 0's."""
    groups: dict[int, dict[str, Tensor]] = {}
    for key, value in batch.items():
        env, _, name = key.rpartition("/")
        groups.setdefault(int(env) if env else 0, {})[name] = value
    return dict(sorted(groups.items()))


def _context_vectors(batch: dict[str, Tensor]) -> Tensor | None:
    """The denoiser's context vectors: the d_vector window less its last step (the predicted frame's)."""
    vectors = batch.get("d_vector")
    return None if vectors is None else vectors[:, :-1]


def parameter_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


__all__ = ["DiffusionWorld", "EnvParts", "env_batch", "parameter_count", "split_env_batch"]
