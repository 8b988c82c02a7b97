"""The diffusion backbone on disk, in a model directory or a bundle:

    DIR/diffusion/                  the UNet (diffusers `save_pretrained`; UNet2DModel.from_pretrained reads it)
    DIR/diffusion_head.safetensors  the condition embedding and the reward head
    DIR/diffusion.json              {"config": DiffusionConfig, ...extra}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from worldmodel.errors import UserError
from worldmodel.models.diffusion.config import DiffusionConfig
from worldmodel.models.diffusion.network import DiffusionWorld

UNET_DIR = "diffusion"
"""Where the UNet lies (diffusers `save_pretrained` format) in a model directory or a bundle."""
HEAD_FILE = "diffusion_head.safetensors"
"""The action/vector conditioning MLP and the reward/termination head, beside the UNet."""
DIFFUSION_CONFIG_FILE = "diffusion.json"
"""The DiffusionConfig (and what the trainer adds: spec, vector normalization, provenance)."""


def save_diffusion(world: DiffusionWorld, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """directory/diffusion/ (the UNet, diffusers `save_pretrained`), directory/diffusion_head.safetensors
    (condition embedding + head) and directory/diffusion.json (config and `extra`)."""
    from safetensors.torch import save_file

    from worldmodel.models.io import unwrap

    world = unwrap(world)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    world.unet.save_pretrained(directory / UNET_DIR, safe_serialization=True)
    rest = {k: v.detach().cpu().contiguous() for k, v in world.state_dict().items() if not k.startswith("unet.")}
    save_file(rest, str(directory / HEAD_FILE))
    (directory / DIFFUSION_CONFIG_FILE).write_text(json.dumps({"config": world.config.to_dict(), **(extra or {})}, indent=2))
    return directory


def load_diffusion(
    directory: str | Path, config: DiffusionConfig | None = None, device: str | torch.device = "cpu"
) -> DiffusionWorld:
    """The DiffusionWorld saved by `save_diffusion` (the UNet through `UNet2DModel.from_pretrained`)."""
    from diffusers import UNet2DModel

    from worldmodel.models.io import read_safetensors

    directory = Path(directory)
    if config is None:
        config = DiffusionConfig.from_dict(json.loads((directory / DIFFUSION_CONFIG_FILE).read_text())["config"])
    world = DiffusionWorld(config)
    try:
        unet = UNet2DModel.from_pretrained(directory / UNET_DIR, low_cpu_mem_usage=False)  # no `accelerate` needed
    except (OSError, ValueError) as err:  # diffusers' words for a truncated, empty or foreign file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{directory / UNET_DIR} holds a damaged or unreadable UNet ({first_line}): write it again "
                        "from its training run (`worldmodel bundle --diffusion RUN`)") from err
    expected = config.unet_kwargs()
    for key in ("in_channels", "out_channels", "sample_size"):
        if unet.config[key] != expected[key]:
            raise ValueError(f"{directory / UNET_DIR}: UNet {key} is {unet.config[key]}, the config needs {expected[key]}")
    world.unet = unet
    rest = read_safetensors(directory / HEAD_FILE)
    own = {k: v for k, v in world.state_dict().items() if not k.startswith("unet.")}
    missing, unexpected = set(own) - set(rest), set(rest) - set(own)
    if missing or unexpected:
        raise ValueError(f"{directory / HEAD_FILE} does not match: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    try:
        world.load_state_dict({**{f"unet.{k}": v for k, v in unet.state_dict().items()}, **rest})
    except RuntimeError as err:  # a tensor of another shape than the config makes
        raise UserError(f"{directory}: the weights do not fit the config: {' '.join(str(err).split())[:300]}") from err
    return world.to(device).eval()


__all__ = ["DIFFUSION_CONFIG_FILE", "HEAD_FILE", "UNET_DIR", "load_diffusion", "save_diffusion"]
