"""A model on disk as diffusers keeps one: a directory of config.json + model.safetensors.

Loading never unpickles: the config is JSON and the weights are safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from worldmodel.models.controller import Controller, ControllerConfig
from worldmodel.models.mdnrnn import MDNRNN, MDNRNNConfig
from worldmodel.models.vae import ConvVAE, VAEConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_CLASSES: dict[str, tuple[type[torch.nn.Module], type]] = {
    "ConvVAE": (ConvVAE, VAEConfig),
    "MDNRNN": (MDNRNN, MDNRNNConfig),
    "Controller": (Controller, ControllerConfig),
}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP (or similar) wrapper."""
    return getattr(model, "module", model)


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def save_pretrained(model: torch.nn.Module, directory: str | Path, extra: dict | None = None) -> Path:
    """Write `directory/config.json` and `directory/model.safetensors`."""
    model = unwrap(model)
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise ValueError(f"no saved form for {name}; known: {sorted(MODEL_CLASSES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_saving(model), str(directory / WEIGHTS_FILE))
    config = {"class": name, "config": model.config.to_dict(), **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return directory


def load_pretrained(directory: str | Path, expected: str | None = None, device: str | torch.device = "cpu"):
    """Load a model saved by `save_pretrained`; `expected` names the class it must be."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved model: {path.name} is missing")
    try:
        saved = json.loads(config_path.read_text())
        name = saved["class"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{config_path} is not a model config: {err}") from err
    if expected is not None and name != expected:
        raise ValueError(f"{directory} holds a {name}, expected a {expected}")
    if name not in MODEL_CLASSES:
        raise ValueError(f"{directory} holds an unknown model class {name!r}")
    model_cls, config_cls = MODEL_CLASSES[name]
    model = model_cls(config_cls.from_dict(saved["config"]))
    load_weights(model, weights_path)
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights, with an error that names what does not match."""
    state = load_file(str(path))
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(f"{path} does not match {type(model).__name__}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for key, value in model.state_dict().items():
        if value.shape != state[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model needs {tuple(value.shape)}")
    model.load_state_dict(state)
