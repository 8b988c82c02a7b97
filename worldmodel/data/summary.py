"""What `worldmodel info` prints: a store's size, spec, per-episode statistics and where its parts came from."""

from __future__ import annotations

from typing import Any

import numpy as np

from worldmodel.data.layout import part_path, zarr_store
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
        "provenance": provenance(store),
        "episodes": len(episodes),
        "steps": int(lengths.sum()),
        "bytes_on_disk": on_disk,
        "bytes_raw": raw,
        "compression_ratio": raw / on_disk if on_disk else 0.0,
        "episode_length": _stats(lengths),
        "episode_return": _stats(returns),
        "terminated_episodes": int(ended.sum()),
    }


def provenance(store: EpisodeStore) -> list[dict[str, Any]]:
    """Where the parts came from, grouped: [{"from": "collect CartPole-v1 (random)", "parts": 3, "episodes": 12}, ...],
    in the order of the parts (by writer id, so by time). The label comes from the attrs each writer gave its part."""
    import zarr

    episodes: dict[str, int] = {}
    for ref in store.episodes:
        episodes[ref.part] = episodes.get(ref.part, 0) + 1
    root = zarr.open_group(zarr_store(store.location, read_only=True, storage_options=store.storage_options), mode="r")
    groups: dict[str, dict[str, Any]] = {}
    for part_id in store.part_ids():
        label = provenance_label(root[part_path(part_id)].attrs.asdict())
        group = groups.setdefault(label, {"from": label, "parts": 0, "episodes": 0})
        group["parts"] += 1
        group["episodes"] += episodes.get(part_id, 0)
    return list(groups.values())


def provenance_label(attrs: dict[str, Any]) -> str:
    """One part's origin in words: `collect ENV (POLICY)`, `import minari:DATASET`, `import video:FOLDER`."""
    source = attrs.get("source")
    if source == "minari":
        return f"import minari:{attrs.get('dataset', '?')}"
    if source == "video":
        return f"import video:{attrs.get('folder', '?')}"
    if "env_id" in attrs:
        return f"collect {attrs['env_id']} ({attrs.get('policy', '?')})"
    return "a writer that recorded no origin"


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
            f"parts        {_provenance_text(summary.get('provenance', []))}",
            f"steps        {summary['steps']}",
            f"length       mean {length['mean']:.1f} +- {length['std']:.1f}, min {length['min']:.0f}, max {length['max']:.0f}",
            f"return       mean {ret['mean']:.2f} +- {ret['std']:.2f}, min {ret['min']:.2f}, max {ret['max']:.2f}",
            f"size         {summary['bytes_on_disk'] / 2**20:.2f} MiB on disk, {summary['bytes_raw'] / 2**20:.2f} MiB raw, "
            f"compression {summary['compression_ratio']:.1f}x",
        ]
    )


def _provenance_text(groups: list[dict[str, Any]]) -> str:
    return ", ".join(f"{group['parts']} from {group['from']}" for group in groups) or "none"
