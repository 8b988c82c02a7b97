"""Train the diffusion backbone (DIAMOND-style denoiser + reward/termination head) on Ray Train.

Each step draws two batches from this worker's episodes: windows of L + 1
steps for the denoiser (L context frames and actions -> frame L) and windows
of `window` steps for the reward head (a short sequence through its LSTM).
The shared loop (train/loop.py) does the rest: DDP, checkpoints, resume,
metrics, progress; the launcher writes the loss plot.

    RUN/model/diffusion/                 the UNet (diffusers save_pretrained:
                                         UNet2DModel.from_pretrained works on it)
    RUN/model/diffusion_head.safetensors condition embedding + reward head
    RUN/model/diffusion.json             config, spec, vector normalization, provenance
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worldmodel.train.launcher import LaunchOptions, common_spec, final_checkpoint_dir, launch, store_locations
from worldmodel.train.presets import get_preset, loop_config, shard


def train_func(config: dict[str, Any]) -> None:
    """One Ray Train worker."""
    import numpy as np
    import ray.train

    from worldmodel.data import EpisodeStore, WindowSampler
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld
    from worldmodel.train.loop import seed_worker, train_loop

    context = ray.train.get_context()
    stores = [EpisodeStore.open(location) for location in config["stores"]]
    episodes = [(i, ref) for i, store in enumerate(stores) for ref in store.episodes]
    mine = shard(episodes, context.get_world_rank(), context.get_world_size())
    model_config = DiffusionConfig.from_dict(config["model"])
    has_vector = stores[0].spec.vector is not None
    frame_keys = ("image", "action") + (("vector",) if has_vector else ())
    denoiser_windows = WindowSampler(stores, model_config.context_length + 1, keys=frame_keys, episodes=mine)
    head_windows = WindowSampler(stores, config["window"], keys=frame_keys + ("reward", "terminated"), episodes=mine)
    mean, std = (np.asarray(config["vector_norm"][k], np.float32) for k in ("mean", "std"))
    seed_worker(config)
    model = DiffusionWorld(model_config)

    def next_batch(rng):
        batch = {f"d_{k}": v for k, v in denoiser_windows.sample(config["batch_size"], rng).items()}
        batch.update({f"h_{k}": v for k, v in head_windows.sample(config["batch_size"], rng).items()})
        for key in ("d_vector", "h_vector"):
            if key in batch:
                batch[key] = ((batch[key] - mean) / std).astype(np.float32)
        return batch

    def objective(world, batch):
        return world.loss(batch)

    train_loop(config, model, next_batch, objective)


def train_diffusion(
    stores: list[str],
    options: LaunchOptions,
    *,
    preset: str = "small",
    max_steps: int | None = None,
    seed: int = 0,
    context_length: int | None = None,
) -> Path:
    """Train and write RUN/model (UNet in diffusers format + head + config) and RUN/loss.png; returns RUN/model."""
    from worldmodel.models.diffusion import DiffusionConfig
    from worldmodel.train.mdnrnn import vector_normalization

    spec = common_spec(stores)
    chosen = get_preset("diffusion", preset)
    overrides = dict(chosen.model)
    if context_length is not None:
        overrides["context_length"] = int(context_length)
    model_config = DiffusionConfig.from_spec(spec, **overrides)
    window = max(chosen.window, model_config.context_length + 1)
    config = {
        **loop_config(chosen, max_steps, seed),
        "window": window,
        "stores": store_locations(stores),
        "vector_norm": vector_normalization(stores),
        "model": model_config.to_dict(),
        "preset": preset,
    }
    launch("diffusion", train_func, config, options)
    return export_diffusion(options.out, config, spec)


def export_diffusion(out: str, config: dict[str, Any], spec) -> Path:
    """RUN/model from the final checkpoint (diffusers format for the UNet), RUN/loss.png from RUN/metrics.csv."""
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld, save_diffusion
    from worldmodel.models.io import load_weights
    from worldmodel.train.loop import MODEL_FILE
    from worldmodel.train.metrics import plot_metrics

    run = Path(out).resolve()
    world = DiffusionWorld(DiffusionConfig.from_dict(config["model"]))
    load_weights(world, final_checkpoint_dir(run) / MODEL_FILE)
    provenance = {k: v for k, v in config.items() if k not in ("model", "out", "vector_norm")}
    target = save_diffusion(
        world, run / "model",
        extra={"spec": spec.to_dict(), "vector_norm": config["vector_norm"], "training": provenance},
    )
    plot_metrics(run / "metrics.csv", run / "loss.png", f"diffusion ({config.get('preset')})")
    return target
