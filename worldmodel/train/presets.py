"""`--preset tiny|small|paper`: model sizes and training lengths per model.

tiny: seconds on a CPU (tests). small: the CPU demo. paper: the published
sizes (Ha & Schmidhuber 2018; DIAMOND, Alonso et al. 2024, for the
diffusion backbone), meant for GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worldmodel.errors import choose

PRESET_NAMES = ("tiny", "small", "paper")


@dataclass(frozen=True)
class Schedule:
    """How a run trains, whatever it trains: what a preset sets and TrainConfig carries."""

    batch_size: int = 32
    """Samples (frames or windows) per step and worker."""
    lr: float = 1e-3
    """Adam's learning rate."""
    max_steps: int = 1000
    """Optimizer steps in all (a resumed or fine-tuned run counts from its own start)."""
    checkpoint_every: int = 200
    """Steps between checkpoints (resume and worker restarts start from the newest)."""
    log_every: int = 10
    """Steps between rows of metrics.csv."""
    window: int = 1
    """Steps per training sample (1 for frame models, a sequence for M and the reward head)."""
    grad_clip: float | None = None
    """Gradient-norm clip, or None."""


@dataclass(frozen=True)
class TrainPreset(Schedule):
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the model config's defaults (the defaults are the paper's)."""


PRESETS: dict[str, dict[str, TrainPreset]] = {
    "vae": {
        "tiny": TrainPreset(
            model={"latent_dim": 8, "encoder_channels": (4, 8, 8, 16), "decoder_channels": (16, 8, 4)},
            batch_size=8, max_steps=30, checkpoint_every=10, log_every=5,
        ),
        "small": TrainPreset(
            model={"latent_dim": 32, "encoder_channels": (16, 32, 64, 128), "decoder_channels": (64, 32, 16)},
            batch_size=32, max_steps=2000, checkpoint_every=500, log_every=25,
        ),
        "paper": TrainPreset(batch_size=100, lr=1e-4, max_steps=100_000, checkpoint_every=2000, log_every=100),
    },
    "mdnrnn": {
        "tiny": TrainPreset(
            model={"hidden_size": 16, "num_mixtures": 2},
            batch_size=4, max_steps=30, checkpoint_every=10, log_every=5, window=8, grad_clip=1.0,
        ),
        "small": TrainPreset(
            model={"hidden_size": 128, "num_mixtures": 5},
            batch_size=16, max_steps=2000, checkpoint_every=500, log_every=25, window=32, grad_clip=1.0,
        ),
        "paper": TrainPreset(
            batch_size=100, lr=1e-3, max_steps=20_000, checkpoint_every=1000, log_every=100, window=100, grad_clip=1.0
        ),
    },
    "diffusion": {
        # window: the reward head's training sequence (the denoiser always sees L + 1 steps).
        "tiny": TrainPreset(
            model={"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
                   "head_channels": (4, 8), "head_hidden": 16},
            batch_size=4, lr=1e-3, max_steps=30, checkpoint_every=10, log_every=5, window=6, grad_clip=1.0,
        ),
        "small": TrainPreset(
            model={"block_out_channels": (32, 64, 64), "layers_per_block": 1, "norm_num_groups": 16,
                   "head_channels": (16, 32, 32), "head_hidden": 128},
            batch_size=16, lr=3e-4, max_steps=2000, checkpoint_every=500, log_every=25, window=12, grad_clip=1.0,
        ),
        # DIAMOND (Alonso et al. 2024): batch 32, lr 1e-4 (they use AdamW; the shared loop's Adam here).
        "paper": TrainPreset(
            batch_size=32, lr=1e-4, max_steps=100_000, checkpoint_every=2000, log_every=100, window=20, grad_clip=1.0
        ),
    },
}


def get_preset(model: str, name: str) -> TrainPreset:
    return choose(choose(PRESETS, model, "model with presets"), name, f"preset for {model}")


def shard(items: list, rank: int, world: int) -> list:
    """This worker's share of whole episodes (all of them when there are fewer than workers)."""
    mine = items[rank::world]
    return mine if mine else list(items)


def worker_episodes(stores: tuple[str, ...], limit: int = 0) -> tuple[list, list]:
    """In a Ray Train worker: the opened stores and this rank's share of their episodes (of the first
    `limit` when it is not 0), as (store index, EpisodeRef) pairs for the WindowSampler."""
    import ray.train

    from worldmodel.data import EpisodeStore

    context = ray.train.get_context()
    opened = [EpisodeStore.open(location) for location in stores]
    episodes = [(i, ref) for i, store in enumerate(opened) for ref in store.episodes]
    episodes = episodes[:limit] if limit else episodes
    return opened, shard(episodes, context.get_world_rank(), context.get_world_size())
