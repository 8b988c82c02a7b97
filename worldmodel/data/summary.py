"""What `worldmodel info` prints: a store's size, spec and per-episode statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from worldmodel.data.store import EpisodeStore


def summarize(store: EpisodeStore) -> dict[str, Any]:
    """Episodes, steps, sizes and return/length statistics of a store, as plain data."""
    episodes = store.episodes
    lengths = np.array([ref.length for ref in episodes], dtype=np.int64)
    rewards = store.read_column("reward")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    returns = np.add.reduceat(rewards, bounds[:-1]) if len(episodes) else np.zeros(0)
    terminated = store.read_column("terminated")
    ended = terminated[bounds[1:] - 1] if len(episodes) else np.zeros(0, bool)
    on_disk = store.bytes_on_disk()
    raw = store.bytes_raw()
    return {
        "location": store.location,
        "env_id": store.spec.env_id,
        "spec": store.spec.to_dict(),
        "parts": len(store.part_ids()),
        "episodes": len(episodes),
        "steps": int(lengths.sum()),
        "bytes_on_disk": on_disk,
        "bytes_raw": raw,
        "compression_ratio": raw / on_disk if on_disk else 0.0,
        "episode_length": _stats(lengths),
        "episode_return": _stats(returns),
        "terminated_episodes": int(ended.sum()),
    }


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    values = values.astype(np.float64)
    return {"mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max()}


def format_summary(summary: dict[str, Any]) -> str:
    spec = summary["spec"]
    image = spec["image"]
    action = spec["action"]
    action_text = f"Discrete({action['n']})" if action["kind"] == "discrete" else f"Box{tuple(action['shape'])}"
    vector = spec.get("vector")
    vector_text = f", vector[{len(vector['names'])}] ({', '.join(vector['names'])})" if vector else ""
    ret, length = summary["episode_return"], summary["episode_length"]
    return "\n".join(
        [
            f"store        {summary['location']}",
            f"env          {summary['env_id'] or '?'} (frame skip {spec['frame_skip']})",
            f"observation  image {image['height']}x{image['width']}x{image['channels']} uint8{vector_text}",
            f"action       {action_text}",
            f"episodes     {summary['episodes']} in {summary['parts']} parts, "
            f"{summary['terminated_episodes']} terminated, the rest truncated",
            f"steps        {summary['steps']}",
            f"length       mean {length['mean']:.1f} +- {length['std']:.1f}, min {length['min']:.0f}, max {length['max']:.0f}",
            f"return       mean {ret['mean']:.2f} +- {ret['std']:.2f}, min {ret['min']:.2f}, max {ret['max']:.2f}",
            f"size         {summary['bytes_on_disk'] / 2**20:.2f} MiB on disk, {summary['bytes_raw'] / 2**20:.2f} MiB raw, "
            f"compression {summary['compression_ratio']:.1f}x",
        ]
    )
