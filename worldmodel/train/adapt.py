"""Adapt a pretrained diffusion backbone to a new environment from a few of its episodes (Ray Train).

The worker rebuilds the base bundle's backbone, adds the new env's parts (models/diffusion/network.py:
add_env), injects LoRA with peft (`--method lora`) and trains what the method trains
(models/diffusion/adapter.py), on windows of the new store only, through the shared loop. The
result is a bundle (bundle.write_adapted_bundle) that holds only what changed, beside a reference
to its base.

    RUN/metrics.csv, RUN/loss.png   as every training run
    RUN/adapted/                    the new env's parts and the LoRA adapter (peft format), or, with
                                    --method full, a whole backbone
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worldmodel.train.config import TrainConfig
from worldmodel.train.launcher import LaunchOptions, TrainingError, final_checkpoint_dir, launch, store_locations
from worldmodel.train.presets import get_preset, worker_episodes


LORA_LR_FACTOR = 30.0
"""LoRA's weights start at zero and reach the UNet only through a rank-r product: peft's and diffusers'
LoRA recipes train them at about 10x the rate of a full fine-tune; here, 300 steps of LoRA at K = 5 on
Breakout scored PSNR@4 23.4 / 24.9 / 25.7 dB at 1x / 10x / 33x the small preset's rate (benchmarks/adapt.py)."""


def build_adapted(config: TrainConfig):
    """(world, lora config or None, env index): the base backbone with the new env, ready to train."""
    from worldmodel.bundle import load_diffusion_world
    from worldmodel.models.diffusion import DiffusionConfig
    from worldmodel.models.diffusion.adapter import add_lora, set_trainable

    options = config.adapt
    world = load_diffusion_world(options["base"])[0].train()
    target = DiffusionConfig.from_dict(config.model)
    env = world.add_env(target.envs[-1])
    lora = add_lora(world, int(options["rank"])) if options["method"] == "lora" else None
    set_trainable(world, options["method"], env)
    return world, lora, env


def train_func(raw: dict[str, Any]) -> None:
    """One Ray Train worker."""
    from worldmodel.train.diffusion import mixed_batches
    from worldmodel.train.loop import seed_worker, train_loop

    config = TrainConfig.from_dict(raw)
    stores, mine = worker_episodes(config.stores, config.adapt.get("episodes", 0))
    seed_worker(config)
    world, _, env = build_adapted(config)
    # Every store is the new env's; its vector stats sit at its index (the base envs' are not read here).
    routed = config.replace(store_envs=(env,) * len(stores), env_vector_norms=({},) * env + (config.vector_norm,))
    next_batch = mixed_batches(stores, mine, routed, world.config.context_length)
    train_loop(config, world, next_batch, lambda model, batch: model.loss(batch))


def adapt_diffusion(
    base: str,
    stores: list[str],
    options: LaunchOptions,
    *,
    method: str = "lora",
    rank: int = 2,
    preset: str = "small",
    max_steps: int | None = None,
    seed: int = 0,
    episodes: int | None = None,
    lr: float | None = None,
) -> tuple[Path, TrainConfig, dict[str, Any]]:
    """Adapt and write RUN/adapted; returns (RUN/adapted, the run's config, facts: trainable parameters,
    LoRA share of the UNet). `episodes`: train on the first K episodes of the stores only. `lr`: default
    the preset's, times LORA_LR_FACTOR for lora."""
    from worldmodel.data import EpisodeStore
    from worldmodel.models.diffusion.adapter import METHODS
    from worldmodel.train.mdnrnn import vector_normalization

    if method not in METHODS:
        raise TrainingError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    base_config, spec = check_adaptable(base, stores)
    locations = store_locations(stores)
    model = base_config.with_env(_new_interface(base_config, spec))
    norm = vector_normalization(locations)
    config = TrainConfig.from_preset(
        "diffusion", preset, stores=locations, model=model.to_dict(), max_steps=max_steps, seed=seed,
        vector_norm=norm, env_vector_norms=(norm,),
        adapt={"base": str(Path(base).resolve()), "method": method, "rank": int(rank),
               "episodes": int(episodes) if episodes else 0},
    )
    chosen = get_preset("diffusion", preset)
    lr = float(lr) if lr is not None else chosen.lr * (LORA_LR_FACTOR if method == "lora" else 1.0)
    config = config.replace(window=max(chosen.window, model.context_length + 1), lr=lr)
    if episodes:
        kept = sum(len(EpisodeStore.open(s).episodes) for s in locations)
        if kept < episodes:
            raise TrainingError(f"--episodes {episodes}: the stores hold {kept}")
    launch(train_func, config, options)
    return export_adapted(options.out, config)


def _new_interface(base_config, spec):
    """The new env's interface, named apart from the base's envs."""
    from worldmodel.models.diffusion import EnvInterface

    interface = EnvInterface.from_spec(spec)
    names = {e.name for e in base_config.envs}
    if interface.name in names:
        interface = EnvInterface.from_spec(spec, next(f"{interface.name}#{k}" for k in range(2, 99)
                                                      if f"{interface.name}#{k}" not in names))
    return interface


def check_adaptable(base: str, stores: list[str]):
    """(the base backbone's DiffusionConfig, the new stores' spec), or one line saying why not: the base has
    no diffusion backend (V-M-C has no adapters), or its frames differ from the store's."""
    from worldmodel.bundle import read_bundle_config
    from worldmodel.data import EpisodeStore
    from worldmodel.models.diffusion import DiffusionConfig

    bundle = read_bundle_config(base)
    if "diffusion" not in bundle["backends"]:
        raise TrainingError(f"bundle {base} has no diffusion backend: adapt works on the diffusion backbone "
                            "(the vmc backend has no adapters; fine-tune it with `train vae/mdnrnn --init-from`)")
    if not stores:
        raise TrainingError("give the new env's --store")
    opened = [EpisodeStore.open(s) for s in stores]
    spec = opened[0].spec
    if any(s.spec != spec for s in opened[1:]):
        raise TrainingError("adapt learns one new env: its --store flags must hold one spec")
    if not sum(s.num_steps for s in opened):
        raise TrainingError(f"{', '.join(stores)} hold no episodes: collect some first")
    config = DiffusionConfig.from_dict(bundle["diffusion"]["config"])
    if spec.image.shape != (config.image_size, config.image_size, config.channels):
        raise TrainingError(f"{stores[0]} holds {spec.image.shape} frames; bundle {base} was pretrained on "
                            f"{(config.image_size, config.image_size, config.channels)}: collect the new env at that size")
    return config, spec


def export_adapted(out: str, config: TrainConfig) -> tuple[Path, TrainConfig, dict[str, Any]]:
    """RUN/adapted from the final checkpoint, RUN/loss.png; with facts for the bundle and the benchmark."""
    from worldmodel.data import EpisodeStore
    from worldmodel.models.diffusion.adapter import base_unet_parameter_count, lora_parameter_count, save_adapted
    from worldmodel.models.io import load_weights
    from worldmodel.train.loop import MODEL_FILE
    from worldmodel.train.metrics import plot_metrics

    run = Path(out).resolve()
    world, lora, env = build_adapted(config)
    load_weights(world, final_checkpoint_dir(run) / MODEL_FILE)
    facts = {
        "trainable_parameters": int(sum(p.numel() for p in world.parameters() if p.requires_grad)),
        "lora_parameters": lora_parameter_count(world.unet),
        "unet_parameters": base_unet_parameter_count(world.unet),
        "env": env,
    }
    extra = {"spec": EpisodeStore.open(config.stores[0]).spec.to_dict(), "vector_norm": config.vector_norm,
             "training": config.provenance()}
    facts.update(save_adapted(world, run / "adapted", config.adapt["method"], env, lora, extra))
    plot_metrics(run / "metrics.csv", run / "loss.png", f"adapt ({config.adapt['method']})")
    return run / "adapted", config, facts
