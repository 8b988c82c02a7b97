"""Train the diffusion backbone (DIAMOND-style denoiser + reward/termination head) on Ray Train.

Each step draws two batches of windows: windows of L + 1 steps for the denoiser (L context frames
and actions -> frame L) and windows of `window` steps for the reward head (a short sequence through
its LSTM). Stores of different environments train one backbone: stores of one spec are one env,
each env has its own embedding, encoders and head (models/diffusion/network.py), and each batch
mixes the stores by `store_weights` (default: in proportion to their steps). The shared loop
(train/loop.py) does the rest: DDP, checkpoints, resume, metrics, progress; the launcher writes the
loss plot.

    RUN/model/diffusion/                 the UNet (diffusers save_pretrained:
                                         UNet2DModel.from_pretrained works on it)
    RUN/model/diffusion_head.safetensors condition MLP + each env's parts
    RUN/model/diffusion.json             config, spec, envs (name, spec, stores, vector
                                         normalization), provenance
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.train.config import TrainConfig
from worldmodel.train.launcher import LaunchOptions, TrainingError, export_model, launch, store_locations
from worldmodel.train.presets import get_preset, worker_episodes


def train_func(raw: dict[str, Any]) -> None:
    """One Ray Train worker."""
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld
    from worldmodel.train.loop import seed_worker, train_loop

    config = TrainConfig.from_dict(raw)
    stores, mine = worker_episodes(config.stores)
    model_config = DiffusionConfig.from_dict(config.model)
    next_batch = mixed_batches(stores, mine, config, model_config.context_length)
    seed_worker(config)
    train_loop(config, DiffusionWorld(model_config), next_batch, lambda world, batch: world.loss(batch))


def mixed_batches(stores: list, episodes: list, config: TrainConfig, context_length: int) -> Callable:
    """next_batch(rng) for the loop: `config.batch_size` windows drawn over the stores by their weights,
    each store's under its env's keys ("ENV/d_image" ...), vectors normalized by their env's stats."""
    from worldmodel.data import StoreError, WindowSampler
    from worldmodel.models.diffusion import env_batch
    from worldmodel.models.vector_norm import VectorStats

    envs = config.store_envs or (0,) * len(stores)
    weights = np.asarray(config.store_weights or [s.num_steps for s in stores], dtype=np.float64)
    norms = [VectorStats.from_dict(n) for n in (config.env_vector_norms or (config.vector_norm,))]
    samplers = []
    for i, store in enumerate(stores):
        keys = ("image", "action") + (("vector",) if store.spec.vector is not None else ())
        own = [(0, ref) for s, ref in episodes if s == i]
        samplers.append((
            WindowSampler([store], context_length + 1, keys=keys, episodes=own),
            WindowSampler([store], config.window, keys=keys + ("reward", "terminated"), episodes=own),
        ))
        if not (len(samplers[-1][0]) and len(samplers[-1][1])):
            weights[i] = 0.0  # none of its episodes on this rank, or none long enough
    if weights.sum() <= 0:
        raise StoreError(f"no episode of {', '.join(s.location for s in stores)} on this worker is "
                         f"{max(context_length + 1, config.window)} steps long")
    probabilities = weights / weights.sum()

    def next_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
        groups: dict[int, list[dict[str, np.ndarray]]] = {}
        for i, count in enumerate(rng.multinomial(config.batch_size, probabilities).tolist()):
            if count:
                denoiser, head = samplers[i]
                part = {f"d_{k}": v for k, v in denoiser.sample(count, rng).items()}
                part.update({f"h_{k}": v for k, v in head.sample(count, rng).items()})
                for key in ("d_vector", "h_vector"):
                    if key in part:
                        part[key] = norms[envs[i]].normalize_numpy(part[key])
                groups.setdefault(envs[i], []).append(part)
        batch = {}
        for env, parts in sorted(groups.items()):
            batch.update(env_batch(env, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}))
        return batch

    return next_batch


def group_envs(stores: list[str]) -> tuple[list, list[dict[str, Any]]]:
    """The opened stores and their envs: stores of one spec are one env, named by its env id (made
    unique), in the order of their first store. Each env: {"name", "spec", "stores": [indices]}."""
    from worldmodel.data import EpisodeStore, StoreError

    if not stores:
        raise ValueError("give at least one --store")
    opened = [EpisodeStore.open(s) for s in stores]
    if sum(s.num_steps for s in opened) == 0:
        raise StoreError(f"{', '.join(stores)} hold no episodes: collect some first")
    envs: list[dict[str, Any]] = []
    for i, store in enumerate(opened):
        found = next((env for env in envs if env["spec"] == store.spec), None)
        if found is None:
            name = store.spec.env_id or f"env{len(envs)}"
            taken = {env["name"] for env in envs}
            name = next(f"{name}#{k}" for k in range(1, len(envs) + 2) if f"{name}#{k}" not in taken) \
                if name in taken else name
            envs.append(found := {"name": name, "spec": store.spec, "stores": []})
        found["stores"].append(i)
    return opened, envs


def parse_store_weights(weights: list[float] | None, stores: list) -> tuple[float, ...]:
    """--store-weights, checked: one non-negative weight per store, not all zero (None: by steps)."""
    if weights is None:
        return ()
    if len(weights) != len(stores):
        raise TrainingError(f"--store-weights has {len(weights)} weights for {len(stores)} stores: give one per --store")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise TrainingError(f"--store-weights must be finite, >= 0 and not all 0, got {','.join(map(str, weights))}")
    return tuple(float(w) for w in weights)


def train_diffusion(
    stores: list[str],
    options: LaunchOptions,
    *,
    preset: str = "small",
    max_steps: int | None = None,
    seed: int = 0,
    context_length: int | None = None,
    store_weights: list[float] | None = None,
) -> Path:
    """Train and write RUN/model (UNet in diffusers format + head + config) and RUN/loss.png; returns RUN/model."""
    from worldmodel.models.diffusion import DiffusionConfig
    from worldmodel.train.mdnrnn import vector_normalization

    opened, envs = group_envs(stores)
    weights = parse_store_weights(store_weights, opened)
    locations = store_locations(stores)
    chosen = get_preset("diffusion", preset)
    overrides = dict(chosen.model)
    if context_length is not None:
        overrides["context_length"] = int(context_length)
    try:
        model_config = DiffusionConfig.from_specs([e["spec"] for e in envs], [e["name"] for e in envs], **overrides)
    except ValueError as err:
        raise TrainingError(str(err)) from err
    norms = [vector_normalization([locations[i] for i in env["stores"]]) for env in envs]
    store_envs = [next(k for k, env in enumerate(envs) if i in env["stores"]) for i in range(len(stores))]
    config = TrainConfig.from_preset(
        "diffusion", preset, stores=locations, model=model_config.to_dict(), max_steps=max_steps, seed=seed,
        vector_norm=norms[0], env_vector_norms=tuple(norms), store_envs=tuple(store_envs), store_weights=weights,
    )
    config = config.replace(window=max(config.window, model_config.context_length + 1))
    launch(train_func, config, options)
    return export_diffusion(options.out, config, envs[0]["spec"], env_records(envs, locations, norms))


def env_records(envs: list[dict[str, Any]], locations: list[str], norms: list[dict]) -> list[dict[str, Any]]:
    """What diffusion.json says of each env: name, spec, stores and vector normalization."""
    return [{"name": env["name"], "spec": env["spec"].to_dict(), "stores": [locations[i] for i in env["stores"]],
             "vector_norm": norm} for env, norm in zip(envs, norms, strict=True)]


def export_diffusion(out: str, config: TrainConfig, spec, envs: list[dict[str, Any]] | None = None) -> Path:
    """RUN/model from the final checkpoint (diffusers format for the UNet), RUN/loss.png from RUN/metrics.csv."""
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld, save_diffusion

    def save(world, directory, extra):
        return save_diffusion(world, directory, {**extra, **({"envs": envs} if envs else {})})

    return export_model(out, "diffusion", config, spec, save=save,
                        build=lambda: DiffusionWorld(DiffusionConfig.from_dict(config.model)))
