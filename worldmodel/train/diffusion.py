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

from worldmodel.train.config import TrainConfig
from worldmodel.train.launcher import LaunchOptions, common_spec, export_model, launch, store_locations
from worldmodel.train.presets import get_preset, worker_episodes


def train_func(raw: dict[str, Any]) -> None:
    """One Ray Train worker."""
    from worldmodel.data import WindowSampler
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld
    from worldmodel.models.vector_norm import VectorStats
    from worldmodel.train.loop import seed_worker, train_loop

    config = TrainConfig.from_dict(raw)
    stores, mine = worker_episodes(config.stores)
    model_config = DiffusionConfig.from_dict(config.model)
    has_vector = stores[0].spec.vector is not None
    frame_keys = ("image", "action") + (("vector",) if has_vector else ())
    denoiser_windows = WindowSampler(stores, model_config.context_length + 1, keys=frame_keys, episodes=mine)
    head_windows = WindowSampler(stores, config.window, keys=frame_keys + ("reward", "terminated"), episodes=mine)
    stats = VectorStats.from_dict(config.vector_norm)
    seed_worker(config)
    model = DiffusionWorld(model_config)

    def next_batch(rng):
        batch = {f"d_{k}": v for k, v in denoiser_windows.sample(config.batch_size, rng).items()}
        batch.update({f"h_{k}": v for k, v in head_windows.sample(config.batch_size, rng).items()})
        for key in ("d_vector", "h_vector"):
            if key in batch:
                batch[key] = stats.normalize_numpy(batch[key])
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
    config = TrainConfig.from_preset(
        "diffusion", preset, stores=store_locations(stores), model=model_config.to_dict(), max_steps=max_steps,
        seed=seed, vector_norm=vector_normalization(stores),
    )
    config = config.replace(window=max(config.window, model_config.context_length + 1))
    launch(train_func, config, options)
    return export_diffusion(options.out, config, spec)


def export_diffusion(out: str, config: TrainConfig, spec) -> Path:
    """RUN/model from the final checkpoint (diffusers format for the UNet), RUN/loss.png from RUN/metrics.csv."""
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld, save_diffusion

    return export_model(out, "diffusion", config, spec, save=save_diffusion,
                        build=lambda: DiffusionWorld(DiffusionConfig.from_dict(config.model)))
