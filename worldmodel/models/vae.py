"""V: the convolutional VAE of Ha & Schmidhuber 2018 ("World Models", appendix A.1).

Encoder: four conv layers (kernel 4, stride 2, ReLU) take a 64x64 frame down to
2x2 (64 -> 31 -> 14 -> 6 -> 2), flattened (256 * 2 * 2 = 1024) into the mean
and log-variance of a diagonal Gaussian over z (32 dims).
Decoder: a linear layer back to 1024, viewed as a 1024x1x1 map, then four
transposed convs (kernels 5, 5, 6, 6, stride 2; 1 -> 5 -> 13 -> 30 -> 64) with
a sigmoid on the last, giving a 64x64 frame in [0, 1].

The loss follows the original code (hardmaru/WorldModelsExperiments, vae.py):
squared error summed over pixels, plus the KL divergence per sample clamped
from below at `kl_tolerance * latent_dim` ("free bits"), both averaged over
the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from worldmodel.models.config import ConfigMixin

if TYPE_CHECKING:
    from worldmodel.spec import EnvSpec


def sample_latent(mu: Tensor | np.ndarray, logvar: Tensor | np.ndarray, noise: Tensor | np.ndarray):
    """The reparameterisation z = mu + exp(logvar / 2) * noise, noise ~ N(0, I) (Kingma & Welling 2014):
    the one home of V's posterior sample, for tensors or numpy arrays (training batches) of any shape."""
    sigma = (0.5 * logvar).exp() if isinstance(logvar, Tensor) else np.exp(0.5 * logvar)
    return mu + sigma * noise

# The paper's decoder kernels. They are not a config field because the decoder
# only works for this exact set: from 1x1, stride 2, they give 5, 13, 30, 64.
DECODER_KERNELS: tuple[int, ...] = (5, 5, 6, 6)
DECODER_IMAGE_SIZE = 64


@dataclass(frozen=True)
class VAEConfig(ConfigMixin):
    """Sizes of the ConvVAE; the defaults are the paper's."""

    image_size: int = 64
    """Height and width of the (square) input frame; the decoder produces 64 only."""
    channels: int = 3
    """Colour channels of the frame (3 for RGB)."""
    latent_dim: int = 32
    """Size of z, the code the MDN-RNN models."""
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256)
    """Output channels of the four encoder convs (kernel `kernel_size`, stride 2, ReLU)."""
    kernel_size: int = 4
    """Kernel size of the encoder convs."""
    decoder_channels: tuple[int, ...] = (128, 64, 32)
    """Output channels of the first three decoder deconvs; the last one outputs `channels`."""
    kl_tolerance: float = 0.5
    """Free bits: the per-sample KL is clamped from below at kl_tolerance * latent_dim."""

    def __post_init__(self) -> None:
        if self.image_size != DECODER_IMAGE_SIZE:
            raise ValueError(
                f"ConvVAE's decoder (deconv kernels {DECODER_KERNELS}, stride 2, from 1x1, as in "
                f"Ha & Schmidhuber 2018) makes {DECODER_IMAGE_SIZE}x{DECODER_IMAGE_SIZE} images only; "
                f"got image_size={self.image_size}. Resize frames to {DECODER_IMAGE_SIZE}x{DECODER_IMAGE_SIZE}."
            )
        for name in ("channels", "latent_dim", "kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"VAEConfig.{name} must be a positive int, got {value!r}")
        if len(self.encoder_channels) == 0 or any(c <= 0 for c in self.encoder_channels):
            raise ValueError(f"VAEConfig.encoder_channels must be positive ints, got {self.encoder_channels}")
        if len(self.decoder_channels) != len(DECODER_KERNELS) - 1 or any(c <= 0 for c in self.decoder_channels):
            raise ValueError(
                f"VAEConfig.decoder_channels needs {len(DECODER_KERNELS) - 1} positive ints "
                f"(one per deconv before the output one), got {self.decoder_channels}"
            )
        if not self.kl_tolerance >= 0:
            raise ValueError(f"VAEConfig.kl_tolerance must be >= 0, got {self.kl_tolerance}")

    @classmethod
    def from_spec(cls, spec: EnvSpec, **overrides: Any) -> VAEConfig:
        """The config for a spec's frames (square, 64x64), with other fields overridden."""
        if spec.image.height != spec.image.width:
            raise ValueError(f"ConvVAE needs square frames, the spec has {spec.image.height}x{spec.image.width}")
        return cls(image_size=spec.image.height, channels=spec.image.channels, **overrides)


class ConvVAE(nn.Module):
    """Frame x [B, C, 64, 64] in [0, 1] <-> latent z [B, latent_dim]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c, k = config.channels, config.kernel_size

        layers: list[nn.Module] = []
        in_ch = c
        for out_ch in config.encoder_channels:
            layers += [nn.Conv2d(in_ch, out_ch, k, stride=2), nn.ReLU()]
            in_ch = out_ch
        layers.append(nn.Flatten())
        self.encoder = nn.Sequential(*layers)

        # Size the linear layers from a dummy pass so any encoder_channels fit.
        with torch.no_grad():
            try:
                dummy = torch.zeros(1, c, config.image_size, config.image_size)
                flat_dim = self.encoder(dummy).shape[1]
            except RuntimeError as err:
                raise ValueError(f"the encoder convs do not fit a {config.image_size}px frame: {err}") from err
        self.flat_dim = flat_dim
        self.fc_mu = nn.Linear(flat_dim, config.latent_dim)
        self.fc_logvar = nn.Linear(flat_dim, config.latent_dim)

        self.fc_decode = nn.Linear(config.latent_dim, flat_dim)
        deconvs: list[nn.Module] = []
        in_ch = flat_dim
        out_channels = (*config.decoder_channels, c)
        for i, (out_ch, kernel) in enumerate(zip(out_channels, DECODER_KERNELS)):
            deconvs.append(nn.ConvTranspose2d(in_ch, out_ch, kernel, stride=2))
            deconvs.append(nn.ReLU() if i < len(DECODER_KERNELS) - 1 else nn.Sigmoid())
            in_ch = out_ch
        self.decoder = nn.Sequential(*deconvs)

    def _check_images(self, x: Tensor) -> None:
        cfg = self.config
        expected = (cfg.channels, cfg.image_size, cfg.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"ConvVAE expects float images [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"ConvVAE expects float images in [0, 1] (see to_model_input), got {x.dtype}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W] in [0, 1] -> (mu [B, Z], logvar [B, Z])."""
        self._check_images(x)
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(mu, exp(logvar)) drawn with `generator`; mu, logvar, z [B, Z]."""
        return sample_latent(mu, logvar, torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype))

    def decode(self, z: Tensor) -> Tensor:
        """z [B, Z] -> x [B, C, 64, 64] in [0, 1]."""
        b, _ = z.shape
        h = self.fc_decode(z).view(b, self.flat_dim, 1, 1)
        return self.decoder(h)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, C, H, W] -> (recon [B, C, H, W] from a sampled z, mu [B, Z], logvar [B, Z])."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The VAE loss of a batch x [B, C, H, W] in [0, 1], as the original code computes it.

        recon = mean_b sum_{c,h,w} (x - x_hat)^2
        kl    = mean_b max(KL(N(mu_b, sigma_b^2) || N(0, I)), kl_tolerance * Z)
        """
        recon, mu, logvar = self(x, generator)
        recon_loss = (recon - x).pow(2).sum(dim=(1, 2, 3)).mean()
        kl_per_sample = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
        # Free bits: no pressure on the KL below the tolerance, so z keeps some information.
        kl_floor = self.config.kl_tolerance * self.config.latent_dim
        kl_loss = kl_per_sample.clamp(min=kl_floor).mean()
        loss = recon_loss + kl_loss
        logs = {
            "loss/recon": recon_loss.detach(),
            "loss/kl": kl_loss.detach(),
            "stats/kl_unclamped": kl_per_sample.mean().detach(),
        }
        return loss, logs
