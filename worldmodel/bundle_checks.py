"""What a bundle's files must hold before anything is built from them: the structure of config.json
(each key named when missing or of the wrong type), the diffusion model's diffusion.json, and the spec
against the models' action and vector sizes. A damaged or mismatched bundle is then one line saying
which key or which numbers, not a KeyError at load or a shape error at the first step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worldmodel.errors import UserError
from worldmodel.models.config import json_key
from worldmodel.spec import EnvSpec

BACKENDS = ("vmc", "diffusion")


class BundleError(UserError):
    """A bundle that is missing files or does not fit together."""


# What each backend's section of config.json must hold: key -> (JSON type, required).
BACKEND_KEYS = {
    "vmc": {"vae": (dict, True), "mdnrnn": (dict, True), "vector_norm": ((dict, type(None)), False)},
    "diffusion": {"config": (dict, True), "vector_norm": ((dict, type(None)), False), "options": (dict, False),
                  "env": (int, False), "base": (dict, False), "adapter": (dict, False)},
}


def check_bundle_structure(config: dict[str, Any], where: str) -> None:
    """BundleError naming the first key of a bundle's config.json that is missing or of the wrong type."""
    try:
        json_key(config, "spec", dict, where)
        backends = json_key(config, "backends", list, where)
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or len(set(backends)) != len(backends):
            raise BundleError(f"{where}: key 'backends' must list distinct names among {', '.join(BACKENDS)}, "
                              f"got {backends!r}")
        if json_key(config, "context_length", int, where) < 1:
            raise BundleError(f"{where}: key 'context_length' must be >= 1, got {config['context_length']}")
        for backend in backends:
            section = json_key(config, backend, dict, where)
            for key, (kind, required) in BACKEND_KEYS[backend].items():
                json_key(section, key, kind, f"{where} [{backend!r}]", required=required)
        if json_key(config, "controller", dict, where, required=False) is not None:
            json_key(config["controller"], "config", dict, f"{where} ['controller']")
        json_key(config, "action_mean", (list, type(None)), where, required=False)
    except BundleError:
        raise
    except UserError as err:
        raise BundleError(str(err)) from err


def read_diffusion_saved(saved_path: Path) -> tuple[dict[str, Any], EnvSpec]:
    """A `train diffusion` model's diffusion.json, its structure checked, and its spec."""
    where = str(saved_path)
    try:
        saved = json.loads(saved_path.read_text())
        json_key(json_key(saved, "config", dict, where), "context_length", int, f"{where} ['config']")
        json_key(saved, "training", dict, where, required=False)
        return saved, EnvSpec.from_dict(json_key(saved, "spec", dict, where))
    except UserError as err:
        raise BundleError(str(err)) from err
    except ValueError as err:  # not JSON, or not a spec
        raise BundleError(f"{where} is damaged: {err}") from err


def check_model_fits_spec(spec: EnvSpec, model_config, what: str, path: str | Path) -> None:
    """BundleError unless a model takes the spec's actions and vector observation. load_weights has matched
    the weights to the model's config; this matches the config to the spec, which else fails at the first step."""
    def kind(discrete: bool) -> str:
        return "discrete" if discrete else "box"

    if (model_config.action_dim, model_config.discrete_actions) != (spec.action.dim, spec.action.is_discrete):
        raise BundleError(
            f"bundle {path}: its spec has {spec.action.dim} {kind(spec.action.is_discrete)} actions, but {what} was "
            f"trained with {model_config.action_dim} {kind(model_config.discrete_actions)} actions: the spec and the "
            "weights come from different runs; rebuild the bundle with `worldmodel bundle`")
    vector = spec.vector.size if spec.vector is not None else 0
    if getattr(model_config, "vector_dim", vector) != vector:
        raise BundleError(f"bundle {path}: its spec has a vector of {vector} values, but {what} was trained with "
                          f"{model_config.vector_dim}; rebuild the bundle with `worldmodel bundle`")


__all__ = ["BACKENDS", "BundleError", "check_bundle_structure", "check_model_fits_spec", "read_diffusion_saved"]
