"""Train M, the MDN-RNN, on V's latents of one or more stores (Ray Train, DDP).

Latents are encoded once per V and cached beside each store
(train/latents.py). Each worker holds its share of whole episodes in RAM
(latents, actions, rewards, ends: small next to frames) and samples windows
of T steps; an episode shorter than T becomes one window padded and masked.
As the paper, z is sampled afresh from N(mu, sigma) each time it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.models.vae import sample_latent
from worldmodel.train.config import TrainConfig
from worldmodel.train.launcher import (
    LaunchOptions, TrainingError, common_spec, export_model, launch, starting_point, store_locations,
)
from worldmodel.train.presets import get_preset, shard


DREAM_OPTIONS = frozenset({"dropout", "dream_dropout"})
"""M options a fine-tuned M may change (they add no weights)."""


class SequenceSampler:
    """Windows of `window` steps from whole episodes held in RAM, padded and masked when short."""

    def __init__(self, episodes: list[dict[str, np.ndarray]], window: int):
        if not episodes:
            raise ValueError("no episodes to sample from")
        self.episodes = episodes
        self.window = window
        counts = np.array([max(1, len(e["reward"]) - window + 1) for e in episodes])
        self._cumulative = np.cumsum(counts)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        picks = rng.integers(0, self._cumulative[-1], size=batch_size)
        rows = []
        for pick in picks:
            e = int(np.searchsorted(self._cumulative, pick, side="right"))
            start = int(pick - (self._cumulative[e - 1] if e else 0))
            episode = self.episodes[e]
            n = min(self.window, len(episode["reward"]) - start)
            row = {}
            for key, values in episode.items():
                piece = values[start : start + n]
                pad = np.zeros((self.window - n, *piece.shape[1:]), piece.dtype)
                row[key] = np.concatenate([piece, pad])
            row["mask"] = np.arange(self.window) < n
            rows.append(row)
        batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
        noise = rng.standard_normal(batch["mu"].shape).astype(np.float32)
        batch["z"] = sample_latent(batch.pop("mu"), batch.pop("logvar"), noise)
        return batch


def load_episodes(config: TrainConfig, rank: int, world: int) -> list[dict[str, np.ndarray]]:
    """This worker's share of whole episodes: latents plus the store's actions, rewards, ends (and vectors)."""
    from worldmodel.data import EpisodeStore
    from worldmodel.models.vector_norm import VectorStats
    from worldmodel.train.latents import read_latents

    stats = VectorStats.from_dict(config.vector_norm)
    episodes = []
    for location, latent_location in zip(config.stores, config.latents):
        store = EpisodeStore.open(location)
        latents = read_latents(store, latent_location)
        keys = ("action", "reward", "terminated") + (("vector",) if store.spec.vector is not None else ())
        for ref in shard(store.episodes, rank, world):
            data = store.read_episode(ref, keys)
            episode = {
                "mu": latents[ref.part][0][ref.start : ref.stop],
                "logvar": latents[ref.part][1][ref.start : ref.stop],
                **{k: data[k] for k in ("action", "reward", "terminated")},
            }
            if store.spec.vector is not None:
                episode["vector"] = stats.normalize_numpy(data["vector"])
            episodes.append(episode)
    return episodes


def train_func(raw: dict[str, Any]) -> None:
    """One Ray Train worker."""
    import ray.train

    from worldmodel.models import MDNRNN, MDNRNNConfig
    from worldmodel.train.loop import seed_worker, train_loop

    config = TrainConfig.from_dict(raw)
    context = ray.train.get_context()
    sampler = SequenceSampler(load_episodes(config, context.get_world_rank(), context.get_world_size()), config.window)
    seed_worker(config)
    model = MDNRNN(MDNRNNConfig.from_dict(config.model))

    def next_batch(rng):
        return sampler.sample(config.batch_size, rng)

    def objective(mdnrnn, batch):
        return mdnrnn.loss(
            batch["z"], batch["action"], batch["reward"], batch["terminated"], batch.get("vector"), batch["mask"]
        )

    train_loop(config, model, next_batch, objective)


def vector_normalization(stores: list[str]) -> dict[str, list[float]]:
    """VectorStats of the vector observation over the stores, as a dict (empty without a vector)."""
    from worldmodel.data import EpisodeStore
    from worldmodel.models.vector_norm import VectorStats

    opened = [EpisodeStore.open(s) for s in stores]
    if opened[0].spec.vector is None:
        return VectorStats().to_dict()
    return VectorStats.fit(np.concatenate([s.read_column("vector") for s in opened])).to_dict()


def train_mdnrnn(
    stores: list[str],
    vae_dir: str,
    options: LaunchOptions,
    *,
    preset: str = "small",
    max_steps: int | None = None,
    seed: int = 0,
    init_from: str = "",
    window: int | None = None,
    batch_size: int | None = None,
    **model_options: Any,
) -> Path:
    """Encode latents (cached under RUN/latents), train M, write RUN/model and RUN/loss.png; returns RUN/model.

    `init_from`: an M model directory to start from (fine-tuning on new data, or on a fine-tuned V's latents);
    its architecture and vector normalisation are kept. `window` and `batch_size`: steps per training sequence
    and sequences per step (default: the preset's). `model_options`: MDNRNNConfig fields over the preset's
    (predict_delta, reward_from_next, dropout, dream_dropout); a fine-tuned M keeps its own architecture but
    takes the dream options."""
    from worldmodel.data import EpisodeStore
    from worldmodel.models import MDNRNNConfig
    from worldmodel.models.io import load_pretrained
    from worldmodel.models.vector_norm import VectorStats
    from worldmodel.train.latents import encode_store

    spec = common_spec(stores)
    vae = load_pretrained(vae_dir, expected="ConvVAE")
    cache = Path(options.out).resolve() / "latents"
    latents = [encode_store(EpisodeStore.open(s), vae_dir, cache) for s in store_locations(stores)]
    chosen = get_preset("mdnrnn", preset)
    unknown = sorted(set(model_options) - DREAM_OPTIONS - {"predict_delta", "reward_from_next"})
    if unknown:
        raise TrainingError(f"unknown M options {unknown}")
    fresh = MDNRNNConfig.from_spec(spec, latent_dim=vae.config.latent_dim, **{**chosen.model, **model_options})
    init_from, model_config = starting_point(init_from, "MDNRNN", fresh.to_dict())
    if init_from:  # the architecture stays the saved one; how it dreams may change
        model_config = {**model_config, **{k: v for k, v in model_options.items() if k in DREAM_OPTIONS}}
    if model_config["latent_dim"] != vae.config.latent_dim:
        raise TrainingError(f"{init_from} reads z of {model_config['latent_dim']} dims; V makes {vae.config.latent_dim}")
    stats = VectorStats.load(init_from) if init_from else VectorStats.from_dict(vector_normalization(stores))
    config = TrainConfig.from_preset(
        "mdnrnn", preset, stores=store_locations(stores), model=model_config, max_steps=max_steps, seed=seed,
        latents=latents, vae=str(Path(vae_dir).resolve()), vector_norm=stats.to_dict(), init_from=init_from,
    )
    config = config.replace(window=int(window or config.window), batch_size=int(batch_size or config.batch_size))
    launch(train_func, config, options)
    return export_model(options.out, "MDNRNN", config, spec)
