"""Adapting a pretrained diffusion backbone to a new environment, and the adapted model on disk.

The new env gets its own parts (network.EnvParts: embedding, action and vector encoders, reward and
termination head), which always train. What else trains is the method:

    lora    LoRA weights on the UNet's convolutions, attention and embedding projections (peft's
            `inject_adapter_in_model`); the UNet's base weights and the shared condition MLP stay frozen
    heads   nothing else
    full    everything: the UNet and the condition MLP too

An adapted model directory holds only what changed, beside a reference to its base bundle:

    DIR/diffusion_env.safetensors       the new env's parts
    DIR/diffusion_lora/                 peft's format: adapter_config.json, adapter_model.safetensors
    (full: DIR/diffusion/ and DIR/diffusion_head.safetensors, a whole backbone, as io.save_diffusion)

peft is imported inside the functions that need it (it imports transformers: seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from worldmodel.models.diffusion.network import DiffusionWorld

METHODS = ("lora", "heads", "full")
ENV_FILE = "diffusion_env.safetensors"
LORA_DIR = "diffusion_lora"
LORA_WEIGHTS = "adapter_model.safetensors"
LORA_TARGETS = ("conv1", "conv2", "to_q", "to_k", "to_v", "to_out.0", "time_emb_proj")
"""The UNet2DModel modules that take LoRA: each resnet's two 3x3 convolutions and its noise-embedding
projection, and the mid-block attention's projections."""


def add_lora(world: DiffusionWorld, rank: int, alpha: float | None = None) -> Any:
    """Inject LoRA layers of `rank` into the UNet (peft); returns the LoraConfig. B starts at zero: the
    adapted model starts as the base."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"--rank must be >= 1, got {rank}")
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha or rank), target_modules=list(LORA_TARGETS),
                        lora_dropout=0.0, bias="none")
    inject_adapter_in_model(config, world.unet)
    return config


def set_trainable(world: DiffusionWorld, method: str, env: int) -> None:
    """requires_grad by method: the env's parts always; LoRA weights (lora); everything (full)."""
    if method not in METHODS:
        raise ValueError(f"unknown adaptation method {method!r}; choose one of {', '.join(METHODS)}")
    for name, parameter in world.named_parameters():
        parameter.requires_grad_(method == "full" or (method == "lora" and "lora_" in name))
    for parameter in world.envs[env].parameters():
        parameter.requires_grad_(True)


def lora_parameter_count(module: nn.Module) -> int:
    return int(sum(p.numel() for name, p in module.named_parameters() if "lora_" in name))


def base_unet_parameter_count(unet: nn.Module) -> int:
    """The UNet's own parameters, without any LoRA weights injected into it."""
    return int(sum(p.numel() for name, p in unet.named_parameters() if "lora_" not in name))


def save_adapted(
    world: DiffusionWorld, directory: str | Path, method: str, env: int, lora_config: Any = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write what adaptation changed (module docstring) and diffusion.json (the config with the new env, and
    `extra`); returns {"method", "rank" (lora)}."""
    import json

    from safetensors.torch import save_file

    from worldmodel.models.diffusion.io import DIFFUSION_CONFIG_FILE, save_diffusion

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"method": method}
    if method == "full":
        save_diffusion(merged(world), directory, extra)
        return info
    parts = {f"envs.{env}.{k}": v.detach().cpu().contiguous() for k, v in world.envs[env].state_dict().items()}
    save_file(parts, str(directory / ENV_FILE))
    if method == "lora":
        from peft import get_peft_model_state_dict

        lora_dir = directory / LORA_DIR
        lora_dir.mkdir(exist_ok=True)
        lora_config.save_pretrained(str(lora_dir))
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(world.unet).items()}
        save_file(weights, str(lora_dir / LORA_WEIGHTS))
        info["rank"] = int(lora_config.r)
    saved = {"config": world.config.to_dict(), **(extra or {})}
    (directory / DIFFUSION_CONFIG_FILE).write_text(json.dumps(saved, indent=2))
    return info


def merged(world: DiffusionWorld) -> DiffusionWorld:
    """The world with any LoRA folded into the UNet's weights and the LoRA layers removed (a plain UNet)."""
    if not any("lora_" in name for name, _ in world.unet.named_parameters()):
        return world
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(world.unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent = world.unet.get_submodule(name.rpartition(".")[0]) if "." in name else world.unet
            setattr(parent, name.rpartition(".")[2], module.get_base_layer())
    return world


def load_adapted(base: DiffusionWorld, directory: str | Path, section: dict[str, Any]) -> DiffusionWorld:
    """The adapted world: `base` (the base bundle's backbone) with the new env's parts and, for LoRA,
    the adapter merged into the UNet (dreams then cost what the base's cost)."""
    from worldmodel.models.diffusion.config import DiffusionConfig
    from worldmodel.models.io import read_safetensors

    directory = Path(directory)
    config = DiffusionConfig.from_dict(section["config"])
    known = len(base.envs)
    if config.envs[:known] != base.config.envs:
        raise ValueError(f"{directory}: its base bundle's envs are not the ones it was adapted from")
    for interface in config.envs[known:]:
        base.add_env(interface)
    parts = read_safetensors(directory / ENV_FILE)
    own = {k: v for k, v in base.state_dict().items() if k.startswith(tuple(parts_prefixes(parts)))}
    if set(own) != set(parts):
        raise ValueError(f"{directory / ENV_FILE} does not fit the config: {sorted(set(own) ^ set(parts))[:4]}")
    base.load_state_dict(parts, strict=False)
    if section["adapter"]["method"] == "lora":
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

        lora_dir = directory / LORA_DIR
        lora_config = LoraConfig.from_pretrained(str(lora_dir))
        inject_adapter_in_model(lora_config, base.unet)
        result = set_peft_model_state_dict(base.unet, read_safetensors(lora_dir / LORA_WEIGHTS))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{lora_dir / LORA_WEIGHTS} does not fit the UNet: {unexpected[:4]}")
        merged(base)
    return base


def parts_prefixes(parts: dict[str, Any]) -> set[str]:
    """{"envs.3."}: the env parts a file holds, by their key prefixes."""
    return {".".join(key.split(".")[:2]) + "." for key in parts}


__all__ = [
    "ENV_FILE", "LORA_DIR", "LORA_TARGETS", "METHODS", "add_lora", "base_unet_parameter_count", "load_adapted",
    "lora_parameter_count", "merged", "save_adapted", "set_trainable",
]
