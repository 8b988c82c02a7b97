"""Train V, the ConvVAE, on frames of one or more stores (Ray Train, DDP): stores of different envs too,
when their frames are alike (V is then a visual encoder shared by those envs' M)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worldmodel.train.config import TrainConfig
from worldmodel.train.launcher import LaunchOptions, common_spec, export_model, launch, starting_point, store_locations
from worldmodel.train.presets import get_preset, worker_episodes


def train_func(raw: dict[str, Any]) -> None:
    """One Ray Train worker: random single frames from this worker's episodes."""
    from worldmodel.data import WindowSampler
    from worldmodel.models import ConvVAE, VAEConfig, to_model_input
    from worldmodel.train.loop import seed_worker, train_loop

    config = TrainConfig.from_dict(raw)
    stores, mine = worker_episodes(config.stores)
    sampler = WindowSampler(stores, 1, keys=("image",), episodes=mine)
    seed_worker(config)
    model = ConvVAE(VAEConfig.from_dict(config.model))

    def next_batch(rng):
        return sampler.sample(config.batch_size, rng)

    def objective(vae, batch):
        return vae.loss(to_model_input(batch["image"][:, 0]))

    train_loop(config, model, next_batch, objective)


def train_vae(
    stores: list[str],
    options: LaunchOptions,
    *,
    preset: str = "small",
    max_steps: int | None = None,
    seed: int = 0,
    init_from: str = "",
) -> Path:
    """Train and write RUN/model (config.json + model.safetensors) and RUN/loss.png; returns RUN/model.
    `init_from`: a V model directory to start from (fine-tuning on new data)."""
    from worldmodel.models import VAEConfig

    spec = common_spec(stores, frames_only=True)
    chosen = get_preset("vae", preset)
    init_from, model_config = starting_point(init_from, "ConvVAE", VAEConfig.from_spec(spec, **chosen.model).to_dict())
    config = TrainConfig.from_preset(
        "vae", preset, stores=store_locations(stores), model=model_config, max_steps=max_steps, seed=seed,
        init_from=init_from,
    )
    launch(train_func, config, options)
    return export_model(options.out, "ConvVAE", config, spec)
