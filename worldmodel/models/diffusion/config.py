"""DiffusionConfig: the sizes and EDM constants of the diffusion backbone, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, replace

from worldmodel.models.config import ConfigMixin
from worldmodel.spec import EnvSpec


@dataclass(frozen=True)
class EnvInterface(ConfigMixin):
    """What the backbone must know of one environment it learned: its name and the sizes of its inputs."""

    name: str
    """The env's id (the store's spec.env_id), or a name given when it has none."""
    action_dim: int
    """Discrete: number of actions (one-hot). Box: the action's length."""
    discrete_actions: bool
    vector_dim: int = 0
    """Length of the vector observation (0: the env has none)."""

    @classmethod
    def from_spec(cls, spec: EnvSpec, name: str | None = None) -> EnvInterface:
        return cls(name=name or spec.env_id or "env", action_dim=spec.action.dim,
                   discrete_actions=spec.action.is_discrete, vector_dim=spec.vector.size if spec.vector is not None else 0)


@dataclass(frozen=True)
class DiffusionConfig(ConfigMixin):
    """Sizes and EDM constants. Defaults are DIAMOND's (Alonso et al. 2024, Atari 100k).

    One backbone can learn several environments (`envs`): they share the UNet and the condition MLP; each
    has its own embedding, action and vector encoders and reward/termination head (network.EnvParts)."""

    envs: tuple[EnvInterface, ...]
    """The environments, in the order of their parts (index 0 first)."""
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
    action_embedding_dim: int = 16
    """Each env's actions (one-hot or Box) are encoded to this width before the shared condition MLP."""
    vector_embedding_dim: int = 16
    """Likewise its vector observations (zeros for an env without one)."""
    env_embedding_dim: int = 16
    """Each env's learned embedding, which joins the condition MLP's input."""

    def __post_init__(self) -> None:
        envs = tuple(EnvInterface.from_dict(e) if isinstance(e, dict) else e for e in self.envs)
        object.__setattr__(self, "envs", envs)
        if not envs or not all(isinstance(e, EnvInterface) for e in envs):
            raise ValueError("a DiffusionConfig needs at least one EnvInterface in envs")
        if len({e.name for e in envs}) != len(envs):
            raise ValueError(f"env names must differ: {[e.name for e in envs]}")
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
        return cls.from_specs([spec], **overrides)

    @classmethod
    def from_specs(cls, specs: list[EnvSpec], names: list[str] | None = None, **overrides) -> DiffusionConfig:
        """One env per spec (their frames must be alike: one UNet sees them all)."""
        first = specs[0]
        for spec in specs:
            if spec.image.height != spec.image.width:
                raise ValueError(f"the diffusion backbone needs square frames, got {spec.image.shape}")
            if spec.image.shape != first.image.shape:
                raise ValueError(f"one backbone needs frames of one size: {spec.env_id or 'an env'} has "
                                 f"{spec.image.shape}, {first.env_id or 'the first'} {first.image.shape}")
        names = names or [None] * len(specs)
        envs = tuple(EnvInterface.from_spec(spec, name) for spec, name in zip(specs, names, strict=True))
        return cls(envs=envs, image_size=first.image.height, channels=first.image.channels, **overrides)

    def env_index(self, name: str) -> int:
        names = [e.name for e in self.envs]
        if name not in names:
            raise ValueError(f"this backbone knows no env {name!r}; it learned {', '.join(names)}")
        return names.index(name)

    def with_env(self, interface: EnvInterface) -> DiffusionConfig:
        """This config with one more env (adaptation to a new environment)."""
        return replace(self, envs=(*self.envs, interface))

    @property
    def condition_input_dim(self) -> int:
        return self.context_length * (self.action_embedding_dim + self.vector_embedding_dim) + self.env_embedding_dim

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


__all__ = ["DiffusionConfig", "EnvInterface"]
