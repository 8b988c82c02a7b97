"""Open-loop dreams beside reality: start from real frames, feed the real actions, compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldmodel.models.world import Context


@torch.no_grad()
def open_loop(model, episode: dict[str, np.ndarray], context_length: int, steps: int, seed: int = 0) -> np.ndarray:
    """Frames [steps, H, W, C] the model dreams after the episode's first `context_length` real
    frames, driven by the episode's own actions (frame L-1+k+1 follows action L-1+k)."""
    length = context_length
    vectors = episode.get("vector")
    context = Context(
        episode["image"][None, :length], episode["action"][None, :length],
        None if vectors is None else vectors[None, :length],
    )
    state = model.initial_state(context)
    generator = torch.Generator(device=model.device).manual_seed(seed)  # one row: one stream
    frames = []
    for t in range(length - 1, length - 1 + steps):
        state, transition = model.step(state, torch.as_tensor(episode["action"][t : t + 1]), generator)
        frames.append(transition.image[0].cpu().numpy())
    return np.stack(frames)


def real_vs_dream_gif(bundle: str, store_location: str, path: str | Path, backends=("vmc",), steps: int = 60,
                      seed: int = 0) -> Path:
    """GIF of [real | dream per backend] from the same start and actions, on the store's longest episode."""
    from worldmodel.bundle import load_bundle, read_bundle_config
    from worldmodel.data import EpisodeStore
    from worldmodel.media import save_gif, side_by_side

    length = read_bundle_config(bundle)["context_length"]
    store = EpisodeStore.open(store_location)
    ref = max(store.episodes, key=lambda r: r.length)
    episode = store.read_episode(ref)
    steps = max(1, min(steps, ref.length - length))
    videos = [episode["image"][length : length + steps]]
    videos += [open_loop(load_bundle(bundle, backend), episode, length, steps, seed) for backend in backends]
    return save_gif(path, side_by_side(videos, scale=3))
