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

from worldmodel.train.launcher import LaunchOptions, common_spec, export_model, launch, store_locations
from worldmodel.train.presets import get_preset, loop_config, shard


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
        batch["z"] = batch.pop("mu") + np.exp(0.5 * batch.pop("logvar")) * noise
        return batch


def load_episodes(config: dict[str, Any], rank: int, world: int) -> list[dict[str, np.ndarray]]:
    """This worker's share of whole episodes: latents plus the store's actions, rewards, ends (and vectors)."""
    from worldmodel.data import EpisodeStore
    from worldmodel.train.latents import read_latents

    mean, std = (np.asarray(config["vector_norm"][k], np.float32) for k in ("mean", "std"))
    episodes = []
    for location, latent_location in zip(config["stores"], config["latents"]):
        store = EpisodeStore.open(location)
        latents = read_latents(store, latent_location)
        for ref in shard(store.episodes, rank, world):
            data = store.part(ref.part)["data"]
            episode = {
                "mu": latents[ref.part][0][ref.start : ref.stop],
                "logvar": latents[ref.part][1][ref.start : ref.stop],
                **{k: np.asarray(data[k][ref.start : ref.stop]) for k in ("action", "reward", "terminated")},
            }
            if store.spec.vector is not None:
                episode["vector"] = (np.asarray(data["vector"][ref.start : ref.stop]) - mean) / std
            episodes.append(episode)
    return episodes


def train_func(config: dict[str, Any]) -> None:
    """One Ray Train worker."""
    import ray.train

    from worldmodel.models import MDNRNN, MDNRNNConfig
    from worldmodel.train.loop import seed_worker, train_loop

    context = ray.train.get_context()
    sampler = SequenceSampler(load_episodes(config, context.get_world_rank(), context.get_world_size()), config["window"])
    seed_worker(config)
    model = MDNRNN(MDNRNNConfig.from_dict(config["model"]))

    def next_batch(rng):
        return sampler.sample(config["batch_size"], rng)

    def objective(mdnrnn, batch):
        return mdnrnn.loss(
            batch["z"], batch["action"], batch["reward"], batch["terminated"], batch.get("vector"), batch["mask"]
        )

    train_loop(config, model, next_batch, objective)


def vector_normalization(stores: list[str]) -> dict[str, list[float]]:
    """Per-dimension mean and std of the vector observation over the stores (identity without one)."""
    from worldmodel.data import EpisodeStore

    opened = [EpisodeStore.open(s) for s in stores]
    if opened[0].spec.vector is None:
        return {"mean": [], "std": []}
    values = np.concatenate([s.read_column("vector") for s in opened])
    std = values.std(axis=0)
    return {"mean": values.mean(axis=0).tolist(), "std": np.where(std > 1e-6, std, 1.0).tolist()}


def train_mdnrnn(
    stores: list[str],
    vae_dir: str,
    options: LaunchOptions,
    *,
    preset: str = "small",
    max_steps: int | None = None,
    seed: int = 0,
    predict_delta: bool = False,
) -> Path:
    """Encode latents (cached), train M, write RUN/model and RUN/loss.png; returns RUN/model."""
    from worldmodel.data import EpisodeStore
    from worldmodel.models import MDNRNNConfig
    from worldmodel.models.io import load_pretrained
    from worldmodel.train.latents import encode_store

    spec = common_spec(stores)
    vae = load_pretrained(vae_dir, expected="ConvVAE")
    latents = [encode_store(EpisodeStore.open(s), vae_dir) for s in store_locations(stores)]
    chosen = get_preset("mdnrnn", preset)
    model_config = MDNRNNConfig.from_spec(spec, latent_dim=vae.config.latent_dim, predict_delta=predict_delta, **chosen.model)
    config = {
        **loop_config(chosen, max_steps, seed),
        "stores": store_locations(stores),
        "latents": latents,
        "vae": str(Path(vae_dir).resolve()),
        "vector_norm": vector_normalization(stores),
        "model": model_config.to_dict(),
        "preset": preset,
    }
    launch("mdnrnn", train_func, config, options)
    return export_model(options.out, "MDNRNN", config, spec)
