"""DiffusionConfig: the sizes and EDM constants of the diffusion backbone, as plain data."""

from __future__ import annotations

from dataclasses import dataclass

from worldmodel.models.config import ConfigMixin
from worldmodel.spec import EnvSpec


@dataclass(frozen=True)
class DiffusionConfig(ConfigMixin):
    """Sizes and EDM constants. Defaults are DIAMOND's (Alonso et al. 2024, Atari 100k)."""

    action_dim: int
    """Discrete: number of actions (one-hot). Box: the action's length."""
    discrete_actions: bool
    vector_dim: int = 0
    """Length of the vector observation (0: the spec has none)."""
    image_size: int = 64
    """Frames are image_size x image_size."""
    channels: int = 3
    context_length: int = 4
    """L: frames (and actions) the denoiser conditions on."""
    block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    """UNet channels per level (DIAMOND: [64, 64, 64, 64]); the noise/condition embedding is 4x the first."""
    layers_per_block: int = 2
    """Residual blocks per UNet level (DIAMOND: depths [2, 2, 2, 2])."""
    norm_num_groups: int = 32
    """GroupNorm groups in the UNet; must divide every entry of block_out_channels."""
    sigma_data: float = 0.5
    """EDM's sigma_data: the std of frames scaled to [-1, 1]."""
    sigma_loc: float = -0.4
    """Training: log sigma ~ N(sigma_loc, sigma_scale^2)."""
    sigma_scale: float = 1.2
    train_sigma_min: float = 2e-3
    train_sigma_max: float = 20.0
    sample_sigma_min: float = 2e-3
    """Sampling: Karras schedule from sample_sigma_max down to sample_sigma_min, then 0."""
    sample_sigma_max: float = 5.0
    rho: float = 7.0
    sampling_steps: int = 3
    """Euler steps per generated frame (DIAMOND: 3)."""
    head_channels: tuple[int, ...] = (32, 32, 32, 32)
    """Reward/termination head: stride-2 convolutions (DIAMOND's reward/end encoder channels)."""
    head_hidden: int = 512
    """Reward/termination head: LSTM width (DIAMOND: 512)."""

    def __post_init__(self) -> None:
        if self.context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {self.context_length}")
        if self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {self.sampling_steps}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide block_out_channels {self.block_out_channels}")
        if self.image_size % (2 ** len(self.head_channels)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{len(self.head_channels)} (head convolutions)")

    @classmethod
    def from_spec(cls, spec: EnvSpec, **overrides) -> DiffusionConfig:
        if spec.image.height != spec.image.width:
            raise ValueError(f"the diffusion backbone needs square frames, got {spec.image.shape}")
        return cls(
            action_dim=spec.action.dim,
            discrete_actions=spec.action.is_discrete,
            vector_dim=spec.vector.size if spec.vector is not None else 0,
            image_size=spec.image.height,
            channels=spec.image.channels,
            **overrides,
        )

    @property
    def embedding_dim(self) -> int:
        """Width of UNet2DModel's time embedding, which the condition embedding joins."""
        return self.block_out_channels[0] * 4

    def unet_kwargs(self) -> dict:
        """The `diffusers.UNet2DModel` keyword arguments of this config."""
        levels = len(self.block_out_channels)
        return {
            "sample_size": self.image_size,
            "in_channels": self.channels * (self.context_length + 1),
            "out_channels": self.channels,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "down_block_types": ("DownBlock2D",) * levels,
            "up_block_types": ("UpBlock2D",) * levels,
            "norm_num_groups": self.norm_num_groups,
            "class_embed_type": "identity",  # our condition embedding [B, 4 * C0] is added to the noise embedding
        }


__all__ = ["DiffusionConfig"]
