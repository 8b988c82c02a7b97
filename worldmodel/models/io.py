"""A model on disk as diffusers keeps one: a directory of config.json + model.safetensors.

Loading never unpickles: the config is JSON and the weights are safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from worldmodel.errors import UserError
from worldmodel.models.config import json_key
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


def read_saved_config(directory: str | Path) -> dict:
    """config.json of a model saved by `save_pretrained`, its structure checked: "class" (a string), "config"
    (an object), and, where present, "spec" and "training" (objects). A UserError names the key at fault."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} is not a saved model: {CONFIG_FILE} is missing")
    try:
        saved = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{config_path} is not a model config: {err}") from err
    where = str(config_path)
    json_key(saved, "class", str, where)
    json_key(saved, "config", dict, where)
    for optional in ("spec", "training"):
        json_key(saved, optional, dict, where, required=False)
    return saved


def saved_spec(directory: str | Path):
    """The EnvSpec a saved model was trained on (its config.json's "spec"), or a UserError naming the file."""
    from worldmodel.spec import EnvSpec

    where = str(Path(directory) / CONFIG_FILE)
    try:
        return EnvSpec.from_dict(json_key(read_saved_config(directory), "spec", dict, where))
    except UserError:
        raise
    except ValueError as err:
        raise UserError(f"{where}: key 'spec': {err}") from err


def load_pretrained(directory: str | Path, expected: str | None = None, device: str | torch.device = "cpu"):
    """Load a model saved by `save_pretrained`; `expected` names the class it must be."""
    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a saved model: {WEIGHTS_FILE} is missing")
    saved = read_saved_config(directory)
    name = saved["class"]
    if expected is not None and name != expected:
        raise UserError(f"{directory} holds a {name}, expected a {expected}")
    if name not in MODEL_CLASSES:
        raise UserError(f"{directory} holds an unknown model class {name!r}")
    model_cls, config_cls = MODEL_CLASSES[name]
    try:
        model = model_cls(config_cls.from_dict(saved["config"]))
    except (ValueError, TypeError) as err:
        raise UserError(f"{directory / CONFIG_FILE}: key 'config': {err}") from err
    load_weights(model, directory / WEIGHTS_FILE)
    return model.to(device).eval()


def read_safetensors(path: str | Path, framework: str = "pt") -> dict:
    """The tensors of a safetensors file ("pt": torch, "np": numpy), or a UserError naming the file when
    it is truncated, empty or not safetensors at all (a pickle, say): nothing here ever unpickles."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    try:
        return (load_numpy if framework == "np" else load_torch)(str(path))
    except SafetensorError as err:
        raise UserError(f"{path} is damaged or not a safetensors file ({err}): write it again from its source "
                        "(the training run or `worldmodel bundle`)") from err


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights, with an error that names what does not match."""
    state = read_safetensors(path)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise UserError(f"{path} does not match {type(model).__name__}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for key, value in model.state_dict().items():
        if value.shape != state[key].shape:
            raise UserError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model needs {tuple(value.shape)}")
    model.load_state_dict(state)
