"""A bundle: a trained simulator on disk, complete and loadable without pickle.

    BUNDLE/config.json            format, version, EnvSpec, model configs, versions, provenance
    BUNDLE/vae.safetensors        V
    BUNDLE/mdnrnn.safetensors     M
    BUNDLE/contexts.safetensors   real start contexts from the training store:
                                  frames [K, L, H, W, C] uint8, actions [K, L(, A)], vectors [K, L, D]
    BUNDLE/controller.safetensors C, once one is trained (agents/)
    BUNDLE/diffusion/             the diffusion backbone's UNet, diffusers `save_pretrained`
                                  (UNet2DModel.from_pretrained(BUNDLE / "diffusion") loads it)
    BUNDLE/diffusion_head.safetensors  its condition MLP and each env's parts (embedding, encoders, head)
    BUNDLE/diffusion_env.safetensors   an adapted bundle (`worldmodel adapt`): the new env's parts ...
    BUNDLE/diffusion_lora/             ... and its LoRA adapter (peft format); the rest is its base bundle's

A dream starts from real observations, so a bundle carries K of them: with
the contexts, the bundle alone is a complete simulator.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.bundle_checks import (
    BACKENDS, BundleError, check_bundle_structure, check_model_fits_spec, read_diffusion_saved,
)
from worldmodel.models.world import Context
from worldmodel.spec import EnvSpec

BUNDLE_FORMAT = "worldmodel.bundle"
BUNDLE_VERSION = 1
CONFIG_FILE = "config.json"
CONTEXTS_FILE = "contexts.safetensors"
VMC_FILES = {"vae": "vae.safetensors", "mdnrnn": "mdnrnn.safetensors"}
CONTROLLER_FILE = "controller.safetensors"
DEFAULT_CONTEXT_LENGTH = 4  # DIAMOND's L; V-M-C warms its LSTM on the first L-1 steps
DEFAULT_CONTEXTS = 64


def sample_contexts(stores, count: int, length: int, seed: int = 0) -> Context:
    """The first `length` steps of `count` episodes drawn (with a seed) from the stores."""
    if count < 1 or length < 1:  # an empty context writes a bundle that fails at its first reset
        raise BundleError(f"start contexts need a count and a length >= 1, got {count} of length {length}")
    refs = [(store, ref) for store in stores for ref in store.episodes if ref.length >= length]
    if not refs:
        raise BundleError(f"no episode in the store is {length} steps long: cannot take start contexts")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(refs), size=count, replace=len(refs) < count)
    keys = ("image", "action") + (("vector",) if stores[0].spec.vector is not None else ())
    episodes = [store.read_episode(ref, keys, 0, length) for store, ref in (refs[int(i)] for i in picks)]
    stacked = {key: np.stack([e[key] for e in episodes]) for key in keys}
    return Context(stacked["image"], stacked["action"], stacked.get("vector"))


def _save_contexts(out: Path, start: Context) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {"frames": torch.from_numpy(start.frames), "actions": torch.from_numpy(start.actions)}
    if start.vectors is not None:
        tensors["vectors"] = torch.from_numpy(start.vectors)
    save_file(tensors, str(out / CONTEXTS_FILE))


def _action_mean(stores: list) -> list[float] | None:
    """The mean box action of the training data (None for discrete actions): where CMA-ES starts."""
    if stores[0].spec.action.is_discrete:
        return None
    return np.concatenate([s.read_column("action") for s in stores]).mean(axis=0).tolist()


def _open_stores(stores: list[str], spec: EnvSpec, what: str) -> list:
    from worldmodel.data import EpisodeStore

    opened = [EpisodeStore.open(s) for s in stores]
    for store in opened:
        if store.spec != spec:
            raise BundleError(f"{store.location} holds another spec than {what} trained on")
    return opened


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("worldmodel", "torch", "diffusers", "gymnasium", "ray", "zarr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_vmc_bundle(
    out: str | Path,
    vae_dir: str | Path,
    mdnrnn_dir: str | Path,
    stores: list[str],
    *,
    contexts: int = DEFAULT_CONTEXTS,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    seed: int = 0,
) -> Path:
    """Assemble a V-M-C bundle from two training runs' model directories and the training store(s)."""
    from worldmodel.models.io import WEIGHTS_FILE, load_pretrained, read_saved_config, saved_spec
    from worldmodel.models.vector_norm import VectorStats

    vae = load_pretrained(vae_dir, expected="ConvVAE")
    mdnrnn = load_pretrained(mdnrnn_dir, expected="MDNRNN")
    m_saved, v_saved = read_saved_config(mdnrnn_dir), read_saved_config(vae_dir)
    spec = saved_spec(mdnrnn_dir)
    check_model_fits_spec(spec, mdnrnn.config, f"M ({mdnrnn_dir})", out)
    if saved_spec(vae_dir).image != spec.image:  # V may have learned several envs' frames: only they must match
        raise BundleError(f"{vae_dir} and {mdnrnn_dir} were trained on frames of different sizes")
    if mdnrnn.config.latent_dim != vae.config.latent_dim:
        raise BundleError(f"M expects z of {mdnrnn.config.latent_dim} dims, V makes {vae.config.latent_dim}")
    try:
        vector_stats = VectorStats.load(mdnrnn_dir)
    except ValueError as err:
        raise BundleError(str(err)) from err
    opened = _open_stores(stores, spec, "the models were")
    start = sample_contexts(opened, contexts, context_length, seed)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, directory in (("vae", vae_dir), ("mdnrnn", mdnrnn_dir)):
        (out / VMC_FILES[name]).write_bytes(Path(directory, WEIGHTS_FILE).read_bytes())
    _save_contexts(out, start)
    config = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "spec": spec.to_dict(),
        "backends": ["vmc"],
        "context_length": context_length,
        "vmc": {
            "vae": vae.config.to_dict(),
            "mdnrnn": mdnrnn.config.to_dict(),
            "vector_norm": vector_stats.to_dict(),
        },
        "action_mean": _action_mean(opened),
        "versions": versions(),
        "provenance": {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stores": [s.location for s in opened],
            "vae": v_saved.get("training", {}),
            "mdnrnn": m_saved.get("training", {}),
        },
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out


def export_vmc_models(bundle: str | Path, out: str | Path) -> tuple[Path, Path]:
    """The bundle's V and M as model directories (out/vae, out/mdnrnn: config.json + model.safetensors, and
    M's vector_norm.json), as `train vae`/`train mdnrnn` write them: what fine-tuning starts from."""
    from worldmodel.models.io import CONFIG_FILE as MODEL_CONFIG, WEIGHTS_FILE
    from worldmodel.models.vector_norm import VectorStats

    config = read_bundle_config(bundle)
    if "vmc" not in config["backends"]:
        raise BundleError(f"bundle {bundle} has no vmc backend to export")
    directories = {}
    for name, class_name in (("vae", "ConvVAE"), ("mdnrnn", "MDNRNN")):
        directory = Path(out) / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / WEIGHTS_FILE).write_bytes(check_file(bundle, VMC_FILES[name]).read_bytes())
        saved = {"class": class_name, "config": config["vmc"][name], "spec": config["spec"].to_dict(),
                 "training": {"exported_from": str(bundle)}}
        (directory / MODEL_CONFIG).write_text(json.dumps(saved, indent=2))
        directories[name] = directory
    VectorStats.from_dict(config["vmc"].get("vector_norm")).save(directories["mdnrnn"])
    return directories["vae"], directories["mdnrnn"]


def add_diffusion_to_bundle(
    out: str | Path,
    diffusion_dir: str | Path,
    stores: list[str] | None,
    *,
    env: str | None = None,
    contexts: int = DEFAULT_CONTEXTS,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    seed: int = 0,
) -> Path:
    """Add the diffusion backbone (a `train diffusion` RUN/model directory) to the bundle at `out`,
    or make a diffusion-only bundle there when none exists. A backbone of several envs simulates `env`
    (default: its first); without `stores`, the start contexts come from that env's training stores."""
    from worldmodel.models.diffusion import HEAD_FILE, UNET_DIR
    from worldmodel.models.vector_norm import VectorStats

    diffusion_dir = Path(diffusion_dir)
    saved_path = diffusion_dir / "diffusion.json"
    if not saved_path.is_file() or not (diffusion_dir / UNET_DIR / CONFIG_FILE).is_file():
        raise BundleError(f"{diffusion_dir} is not a `train diffusion` model directory (diffusion.json, diffusion/)")
    saved, spec = read_diffusion_saved(saved_path)
    index, spec, run_stores, vector_norm = _simulated_env(saved, spec, env, diffusion_dir)
    if vector_norm is None:
        try:
            vector_norm = VectorStats.load(diffusion_dir).to_dict()
        except ValueError as err:
            raise BundleError(str(err)) from err
    length = saved["config"]["context_length"]
    raw = _bundle_base(out, spec, stores or run_stores, length, contexts=contexts, context_length=context_length, seed=seed)
    out = Path(out)
    _copy_tree(diffusion_dir / UNET_DIR, out / UNET_DIR)
    shutil.copyfile(diffusion_dir / HEAD_FILE, out / HEAD_FILE)
    raw["diffusion"] = {"config": saved["config"], "vector_norm": vector_norm, "env": index,
                        "pretrained_envs": [e["name"] for e in saved["config"]["envs"]]}
    raw.setdefault("provenance", {})["diffusion"] = saved.get("training", {})
    return _finish_diffusion_bundle(out, raw)


def _simulated_env(saved: dict[str, Any], spec: EnvSpec, env: str | None, where: Path):
    """(index, spec, training stores, vector norm or None) of the env a bundle of this backbone simulates."""
    records = saved.get("envs") or []
    names = [e.get("name") for e in saved["config"].get("envs", [])]
    if env is None:
        index = 0
    elif env in names:
        index = names.index(env)
    else:
        raise BundleError(f"{where} learned no env {env!r}; it learned {', '.join(map(str, names))}")
    if not records:
        return index, spec, [], None
    try:
        record = records[index]
        return index, EnvSpec.from_dict(record["spec"]), list(record["stores"]), record.get("vector_norm")
    except (IndexError, KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{where}/diffusion.json: key 'envs' is damaged: {err}") from err


def _bundle_base(out, spec: EnvSpec, stores: list[str], length: int, **contexts) -> dict[str, Any]:
    """config.json's contents so far: the bundle's own when one is at `out` (checked against `spec`), else a
    new diffusion-only bundle's with start contexts written from `stores`."""
    out = Path(out)
    if (out / CONFIG_FILE).is_file():
        config = read_bundle_config(out)
        if config["spec"] != spec:
            raise BundleError(f"the diffusion backbone was trained on another spec than bundle {out}")
        if config["context_length"] < length:
            raise BundleError(f"bundle {out} carries {config['context_length']}-step contexts; the model needs {length}")
        return json.loads((out / CONFIG_FILE).read_text())
    if not stores:
        raise BundleError("give --store: the start contexts come from the env's episodes")
    opened = _open_stores(stores, spec, "the model was")
    context_length = max(contexts["context_length"], length)
    start = sample_contexts(opened, contexts["contexts"], context_length, contexts["seed"])
    out.mkdir(parents=True, exist_ok=True)
    _save_contexts(out, start)
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "spec": spec.to_dict(), "backends": [],
        "context_length": context_length, "versions": versions(),
        "provenance": {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stores": [s.location for s in opened]},
    }


def _copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def _finish_diffusion_bundle(out: Path, raw: dict[str, Any]) -> Path:
    raw["backends"] = [b for b in raw.get("backends", []) if b != "diffusion"] + ["diffusion"]
    raw["versions"] = versions()
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2))
    return out


def write_adapted_bundle(
    out: str | Path,
    adapted_dir: str | Path,
    base: str | Path,
    stores: list[str],
    facts: dict[str, Any],
    training: dict[str, Any],
    *,
    contexts: int = DEFAULT_CONTEXTS,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    seed: int = 0,
) -> Path:
    """A bundle of a backbone adapted to a new env (`worldmodel adapt`): start contexts from the new env's
    `stores`; with --method lora or heads, only the new env's parts and the adapter, and a reference to
    the base bundle (its path, relative to this one when it can be, and the digest of its weights)."""
    import os

    from worldmodel.models.diffusion import HEAD_FILE, UNET_DIR
    from worldmodel.models.diffusion.adapter import ENV_FILE, LORA_DIR

    adapted_dir, base = Path(adapted_dir), Path(base).resolve()
    saved, spec = read_diffusion_saved(adapted_dir / "diffusion.json")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} is not empty: an adapted bundle is written to a new directory")
    raw = _bundle_base(out, spec, stores, saved["config"]["context_length"], contexts=contexts,
                       context_length=context_length, seed=seed)
    for name in (UNET_DIR, LORA_DIR):
        if (adapted_dir / name).is_dir():
            _copy_tree(adapted_dir / name, out / name)
    for name in (HEAD_FILE, ENV_FILE):
        if (adapted_dir / name).is_file():
            shutil.copyfile(adapted_dir / name, out / name)
    section: dict[str, Any] = {"config": saved["config"], "vector_norm": saved.get("vector_norm"),
                               "env": facts["env"], "adapter": {k: facts[k] for k in ("method", "rank") if k in facts},
                               "pretrained_envs": [e["name"] for e in saved["config"]["envs"][:-1]]}
    if facts["method"] != "full":
        section["base"] = {"bundle": os.path.relpath(base, out.resolve()), "absolute": str(base),
                           "digest": weights_digest(base)}
    raw["diffusion"] = section
    raw["provenance"]["diffusion"] = training
    return _finish_diffusion_bundle(out, raw)


def weights_digest(bundle: str | Path) -> str:
    """sha256 over a bundle's diffusion weights (UNet and head files): an adapter fits only these."""
    import hashlib

    from worldmodel.models.diffusion import HEAD_FILE, UNET_DIR

    digest = hashlib.sha256()
    for file in sorted(Path(bundle, UNET_DIR).glob("*.safetensors")) + [Path(bundle, HEAD_FILE)]:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_bundle_config(path: str | Path) -> dict[str, Any]:
    """config.json of a bundle, checked for format, version and the structure of what is read from it,
    with the spec parsed."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise BundleError(f"{path} is not a bundle: {CONFIG_FILE} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise BundleError(f"{path} is not a worldmodel bundle (format {found!r})")
    if config.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{path} is bundle version {config.get('version')}; this worldmodel reads {BUNDLE_VERSION}")
    check_bundle_structure(config, str(config_path))
    try:
        config["spec"] = EnvSpec.from_dict(config["spec"])
    except ValueError as err:
        raise BundleError(f"{config_path}: key 'spec': {err}") from err
    return config


def bundle_summary(path: str | Path) -> dict[str, Any]:
    """What `worldmodel info BUNDLE` shows: spec, backends, contexts, and what the diffusion backbone learned."""
    config = read_bundle_config(path)
    spec = config["spec"]
    summary: dict[str, Any] = {
        "bundle": str(path), "env_id": spec.env_id, "image": list(spec.image.shape),
        "action": f"{'discrete' if spec.action.is_discrete else 'box'}({spec.action.dim})",
        "vector": spec.vector.size if spec.vector is not None else 0, "backends": config["backends"],
        "context_length": config["context_length"], "controller": "controller" in config,
    }
    if "diffusion" in config["backends"]:
        section = config["diffusion"]
        names = [e["name"] for e in section["config"].get("envs", [])]
        env = int(section.get("env", 0))
        summary["diffusion"] = {
            "simulates": names[env] if env < len(names) else None,
            "pretrained_envs": section.get("pretrained_envs", names),
            "adapter": section.get("adapter"),
            "base": (section.get("base") or {}).get("absolute"),
        }
    return summary


def format_bundle_summary(summary: dict[str, Any]) -> str:
    lines = [f"bundle      {summary['bundle']}", f"env         {summary['env_id'] or '(unnamed)'}",
             f"image       {'x'.join(map(str, summary['image']))}", f"action      {summary['action']}",
             f"vector      {summary['vector'] or 'none'}", f"backends    {', '.join(summary['backends'])}",
             f"contexts    {summary['context_length']} frames each", f"controller  {'yes' if summary['controller'] else 'no'}"]
    diffusion = summary.get("diffusion")
    if diffusion:
        lines.append(f"diffusion   simulates {diffusion['simulates']}; pretrained on {', '.join(diffusion['pretrained_envs'])}")
        if diffusion["adapter"]:
            base = f" of {diffusion['base']}" if diffusion["base"] else ""
            lines.append(f"adapted     {diffusion['adapter'].get('method')}"
                         + (f" rank {diffusion['adapter']['rank']}" if "rank" in diffusion["adapter"] else "") + base)
    return "\n".join(lines)


def read_contexts(path: str | Path) -> Context:
    from worldmodel.models.io import read_safetensors

    file = Path(path) / CONTEXTS_FILE
    if not file.is_file():
        raise BundleError(f"{path} has no start contexts ({CONTEXTS_FILE} is missing)")
    tensors = read_safetensors(file, "np")
    missing = sorted({"frames", "actions"} - set(tensors))
    if missing:
        raise BundleError(f"{file} lacks {', '.join(missing)}: rebuild the bundle with `worldmodel bundle`")
    return Context(tensors["frames"], tensors["actions"], tensors.get("vectors"))


def check_file(path: str | Path, name: str) -> Path:
    file = Path(path) / name
    if not file.is_file():
        raise BundleError(f"bundle {path} is incomplete: {name} is missing")
    return file



def load_bundle(path: str | Path, backend: str = "vmc", *, device: str = "cpu", temperature: float = 1.0):
    """The WorldModel of a bundle, with its start contexts as `.contexts`. Nothing is unpickled."""
    from worldmodel.models import MDNRNN, ConvVAE, MDNRNNConfig, VAEConfig
    from worldmodel.models.io import load_weights
    from worldmodel.models.vmc import VMCWorldModel

    if backend not in BACKENDS:
        raise BundleError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"no bundle at {path}: not a directory")
    config = read_bundle_config(path)
    if backend not in config["backends"]:
        raise BundleError(f"bundle {path} has no {backend!r} backend; it has {', '.join(config['backends'])}")
    spec = config["spec"]
    if backend == "diffusion":
        return _load_diffusion(path, config, device=device, temperature=temperature)
    try:
        vae = ConvVAE(VAEConfig.from_dict(config["vmc"]["vae"]))
        mdnrnn = MDNRNN(MDNRNNConfig.from_dict(config["vmc"]["mdnrnn"]))
        load_weights(vae, check_file(path, VMC_FILES["vae"]))
        load_weights(mdnrnn, check_file(path, VMC_FILES["mdnrnn"]))
    except (KeyError, TypeError) as err:
        raise BundleError(f"bundle {path} has a malformed config: {err}") from err
    except ValueError as err:
        raise BundleError(f"bundle {path}: {err}") from err
    check_model_fits_spec(spec, mdnrnn.config, "M (mdnrnn.safetensors)", path)
    return VMCWorldModel(
        spec, vae, mdnrnn, contexts=read_contexts(path), vector_norm=config["vmc"].get("vector_norm"),
        temperature=temperature, device=device,
    )


def _load_diffusion(path: Path, config: dict[str, Any], *, device: str, temperature: float):
    """The diffusion backend: its world (`load_diffusion_world`) with the bundle's start contexts."""
    from worldmodel.models.diffusion import DiffusionWorldModel

    world, env = load_diffusion_world(path, config)
    section = config["diffusion"]
    options = section.get("options") or {}
    return DiffusionWorldModel(
        config["spec"], world, contexts=read_contexts(path), vector_norm=section.get("vector_norm"),
        temperature=temperature, sampling_steps=options.get("sampling_steps"), seed=options.get("seed"), device=device,
        env=env,
    )


def load_diffusion_world(path: str | Path, config: dict[str, Any] | None = None):
    """(DiffusionWorld, the env it simulates) of a bundle, without its start contexts: the UNet
    (UNet2DModel.from_pretrained(BUNDLE/diffusion)) plus the head, or for an adapted bundle its base
    bundle's backbone with the new env's parts and the adapter merged."""
    from worldmodel.models.diffusion import HEAD_FILE, UNET_DIR, DiffusionConfig, load_diffusion

    path = Path(path)
    config = read_bundle_config(path) if config is None else config
    if "diffusion" not in config["backends"]:
        raise BundleError(f"bundle {path} has no 'diffusion' backend; it has {', '.join(config['backends'])}")
    section = config["diffusion"]
    try:
        model_config = DiffusionConfig.from_dict(section["config"])
        env = int(section.get("env", 0))
        if "base" in section:
            world = _load_adapted(path, section)
        else:
            check_file(path, HEAD_FILE)
            check_file(path / UNET_DIR, CONFIG_FILE)
            world = load_diffusion(path, model_config)
        interface = model_config.envs[env]
    except (KeyError, TypeError, IndexError) as err:
        raise BundleError(f"bundle {path} has a malformed diffusion config: {err}") from err
    except (ValueError, OSError) as err:
        raise BundleError(f"bundle {path}: {err}") from err
    check_model_fits_spec(config["spec"], interface, "the diffusion backbone", path)
    return world, env


def _load_adapted(path: Path, section: dict[str, Any]):
    """An adapted bundle's world: its base bundle's (found beside it, or where it was), checked by digest."""
    from worldmodel.models.diffusion.adapter import ENV_FILE, load_adapted

    reference = section["base"]
    candidates = [path / reference["bundle"], Path(reference["absolute"])]
    base = next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)
    if base is None:
        raise BundleError(f"bundle {path} was adapted from {reference['absolute']}, which is gone: keep the base "
                          "bundle beside it (or where it was)")
    if weights_digest(base) != reference["digest"]:
        raise BundleError(f"bundle {path}: its base bundle {base} holds other weights than it was adapted from")
    check_file(path, ENV_FILE)
    return load_adapted(load_diffusion_world(base)[0], path, section)


def save_controller(path: str | Path, controller, info: dict[str, Any]) -> Path:
    """Write C into a bundle (controller.safetensors) and record its config and provenance."""
    from safetensors.torch import save_file

    from worldmodel.models.io import state_dict_for_saving

    read_bundle_config(path)  # a real bundle, of a version we write
    path = Path(path)
    save_file(state_dict_for_saving(controller), str(path / CONTROLLER_FILE))
    raw = json.loads((path / CONFIG_FILE).read_text())
    raw["controller"] = {"config": controller.config.to_dict(), **info}
    (path / CONFIG_FILE).write_text(json.dumps(raw, indent=2, default=float))
    return path / CONTROLLER_FILE


def load_controller(path: str | Path):
    """The controller stored in a bundle, or BundleError if none was trained."""
    from worldmodel.models import Controller, ControllerConfig
    from worldmodel.models.io import load_weights

    config = read_bundle_config(path)
    if "controller" not in config:
        raise BundleError(f"bundle {path} has no controller yet: run `worldmodel train controller --bundle {path}`")
    try:
        controller = Controller(ControllerConfig.from_dict(config["controller"]["config"]))
    except (ValueError, TypeError) as err:
        raise BundleError(f"bundle {path}: the controller's config: {err}") from err
    check_model_fits_spec(config["spec"], controller.config, "C (controller.safetensors)", path)
    load_weights(controller, check_file(path, CONTROLLER_FILE))
    return controller.eval()

