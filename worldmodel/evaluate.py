"""`worldmodel eval-model`: how well a bundle's models predict held-out episodes, against trivial baselines.

V: per-pixel reconstruction MSE vs the held-out store's mean frame.
M (teacher-forced on V's encodings of real frames): next-z NLL and MSE vs
copying z_t (its NLL under a Gaussian with the per-dimension variance of the
real z_{t+1} - z_t, fitted on the same held-out data), reward MSE vs the
mean reward, termination accuracy vs always "not terminated".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.data import EpisodeStore
from worldmodel.models.mdnrnn import gmm_nll


def evaluate_vmc(bundle: str, heldout: str, *, max_episodes: int = 100, out: str | None = None) -> dict[str, Any]:
    from worldmodel.bundle import BundleError, load_bundle

    model = load_bundle(bundle, "vmc")
    store = EpisodeStore.open(heldout)
    if store.spec != model.spec:
        raise BundleError(f"{heldout} holds another spec than bundle {bundle}")
    refs = [ref for ref in store.episodes if ref.length >= 2][:max_episodes]
    if not refs:
        raise ValueError(f"{heldout} has no episode of 2 or more steps to evaluate on")
    episodes = [store.read_episode(ref) for ref in refs]
    mean_frame = np.mean([e["image"].mean(axis=0) for e in episodes], axis=0) / 255.0
    mean_reward = float(np.concatenate([e["reward"] for e in episodes]).mean())

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(key: str, total: float, n: int) -> None:
        sums[key] = sums.get(key, 0.0) + total
        counts[key] = counts.get(key, 0) + n

    diffs = []
    gif_videos = None
    with torch.no_grad():
        for episode in episodes:
            frames = torch.from_numpy(episode["image"])
            real = frames.float() / 255.0
            z = model.encode(frames)
            recon = model.decode(z)
            add("v_mse", float(((recon.float() / 255.0 - real) ** 2).mean(dim=(1, 2, 3)).sum()), len(frames))
            add("v_mse_mean_frame", float(((torch.from_numpy(mean_frame).float() - real) ** 2).mean(dim=(1, 2, 3)).sum()), len(frames))
            if gif_videos is None:
                gif_videos = [episode["image"][:64], recon.numpy()[:64]]

            actions = torch.from_numpy(episode["action"])[None]
            vectors = model.normalize_vector(episode.get("vector"))
            out_m, _ = model.mdnrnn(z[None], actions, None if vectors is None else vectors[None])
            n = len(frames) - 1
            nll = gmm_nll(z[None, 1:], out_m.logits[:, :-1], out_m.mu[:, :-1], out_m.log_sigma[:, :-1])
            add("m_nll", float(nll) * n, n)
            expected = (torch.softmax(out_m.logits, -1) * out_m.mu).sum(-1)[0, :-1]
            add("m_mse", float(((expected - z[1:]) ** 2).mean(-1).sum()), n)
            diffs.append((z[1:] - z[:-1]).numpy())
            reward = torch.from_numpy(episode["reward"])
            add("reward_mse", float(((out_m.reward[0] - reward) ** 2).sum()), len(reward))
            add("reward_mse_mean", float(((mean_reward - reward) ** 2).sum()), len(reward))
            terminated = torch.from_numpy(episode["terminated"])
            add("termination_accuracy", float(((out_m.termination_logit[0] > 0) == terminated).sum()), len(reward))
            add("termination_accuracy_never", float((~terminated).sum()), len(reward))
            if terminated.any():
                add("termination_recall", float((out_m.termination_logit[0][terminated] > 0).sum()), int(terminated.sum()))

    result = {key: sums[key] / counts[key] for key in sums}
    delta = np.concatenate(diffs)
    variance = np.maximum(delta.var(axis=0) + delta.mean(axis=0) ** 2, 1e-8)  # E[(z_{t+1}-z_t)^2] per dim
    result["m_nll_copy"] = float(0.5 * np.sum(np.log(2 * math.pi * variance)) + 0.5 * (delta**2 / variance).sum(-1).mean())
    result["m_mse_copy"] = float((delta**2).mean())
    result["episodes"] = len(refs)
    result["steps"] = int(sum(ref.length for ref in refs))
    if out is not None and gif_videos is not None:
        from worldmodel.media import save_gif, side_by_side

        result["gif"] = str(save_gif(Path(out) / "vae_reconstruction.gif", side_by_side(gif_videos, scale=3)))
    return result


def format_vmc_report(result: dict[str, Any]) -> str:
    rows = [
        ("V reconstruction MSE / pixel", result["v_mse"], result["v_mse_mean_frame"], "mean frame", "lower"),
        ("M next-z NLL / step", result["m_nll"], result["m_nll_copy"], "z(t+1)=z(t), fitted var", "lower"),
        ("M next-z MSE / dim", result["m_mse"], result["m_mse_copy"], "z(t+1)=z(t)", "lower"),
        ("M reward MSE", result["reward_mse"], result["reward_mse_mean"], "mean reward", "lower"),
        ("M termination accuracy", result["termination_accuracy"], result["termination_accuracy_never"], "never ends", "higher"),
    ]
    lines = [f"held-out: {result['episodes']} episodes, {result['steps']} steps", ""]
    lines.append(f"{'metric':32s} {'model':>12s} {'baseline':>12s}  baseline")
    for name, value, base, base_name, better in rows:
        wins = value < base if better == "lower" else value > base
        lines.append(f"{name:32s} {value:12.5f} {base:12.5f}  {base_name}{'' if wins else '  (model does not beat it)'}")
    if "termination_recall" in result:
        lines.append(f"{'M termination recall':32s} {result['termination_recall']:12.5f}")
    if "gif" in result:
        lines.append(f"\nreal | V reconstruction: {result['gif']}")
    return "\n".join(lines)
