"""`worldmodel eval-model`: how well a bundle's models predict held-out episodes, against trivial baselines.

V: per-pixel reconstruction MSE vs the held-out store's mean frame.
M (teacher-forced on V's encodings of real frames, z drawn from V's posterior
as in training, with a fixed seed): next-z NLL and MSE vs copying z_t (its NLL
under a Gaussian with the per-dimension variance of the same z_{t+1} - z_t,
fitted on the held-out data itself, which flatters the baseline), reward MSE
vs the mean reward, termination accuracy vs always "not terminated".
Frames (`evaluate_fidelity`): PSNR and SSIM (piq) of the next frame from a real
context and of autoregressive rollouts at horizons 4 and 16, for the diffusion
backbone, V-M-C's decoded frames and the copy-last-frame baseline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from worldmodel.data import EpisodeStore, StoreError
from worldmodel.models.images import to_model_input
from worldmodel.models.mdnrnn import gmm_nll
from worldmodel.models.noise import RowStreams
from worldmodel.models.world import Context


def evaluate_vmc(bundle: str, heldout: str, *, max_episodes: int = 100, out: str | None = None) -> dict[str, Any]:
    from worldmodel.bundle import load_bundle

    model = load_bundle(bundle, "vmc")
    store = _heldout_store(heldout, model.spec, bundle)
    refs = [ref for ref in store.episodes if ref.length >= 2][:max_episodes]
    if not refs:
        raise StoreError(f"{heldout} has no episode of 2 or more steps to evaluate on")
    keys = ("image", "action", "reward", "terminated") + (("vector",) if store.spec.vector is not None else ())
    episodes = [store.read_episode(ref, keys) for ref in refs]
    mean_frame = np.mean([e["image"].mean(axis=0) for e in episodes], axis=0) / 255.0
    mean_reward = float(np.concatenate([e["reward"] for e in episodes]).mean())

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(key: str, total: float, n: int) -> None:
        sums[key] = sums.get(key, 0.0) + total
        counts[key] = counts.get(key, 0) + n

    diffs = []
    gif_videos = None
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for episode in episodes:
            frames = torch.from_numpy(episode["image"])
            real = frames.float() / 255.0
            mu, logvar = model.vae.encode(to_model_input(frames))
            recon = model.decode(mu)
            z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=noise)  # what M was trained on
            add("v_mse", float(((recon.float() / 255.0 - real) ** 2).mean(dim=(1, 2, 3)).sum()), len(frames))
            add("v_mse_mean_frame", float(((torch.from_numpy(mean_frame).float() - real) ** 2).mean(dim=(1, 2, 3)).sum()), len(frames))
            if gif_videos is None:
                gif_videos = [episode["image"][:64], recon.numpy()[:64]]

            actions = torch.from_numpy(episode["action"])[None]
            vectors = model.vector_norm.normalize(episode.get("vector"))
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


# -- frame fidelity: diffusion vs V-M-C vs copy-last-frame --------------------------------------

FIDELITY_HORIZONS = (1, 4, 16)
GIF_COLUMNS = ("vmc", "diffusion")
"""The dreams shown beside the real frames in real_vmc_diffusion.gif, left to right."""

Start = tuple[int, int]
"""(episode index, s): s is the index of the last real context frame."""


def evaluate_fidelity(
    bundle: str,
    heldout: str,
    *,
    max_episodes: int = 8,
    max_starts: int = 32,
    horizons: tuple[int, ...] = FIDELITY_HORIZONS,
    sampling_steps: int | None = None,
    seed: int = 0,
    out: str | None = None,
) -> dict[str, Any]:
    """PSNR and SSIM (piq) of predicted frames against held-out real ones.

    From real contexts of L frames at starts spread over the held-out episodes, each backend of the
    bundle (and the copy-last-frame baseline) rolls out with the real actions; the frame at step h
    is scored for each h in `horizons`. Step 1 is the next frame from a real (teacher-forced) context,
    later steps are autoregressive. A start counts for horizon h only when the episode has frame
    s + h. With `out`, writes out/real_vmc_diffusion.gif: real | VMC dream | diffusion dream from the
    start with the longest real continuation (up to the longest horizon), under the same actions.
    """
    from worldmodel.bundle import read_bundle_config

    config = read_bundle_config(bundle)
    models = _fidelity_models(bundle, config["backends"], sampling_steps)
    store = _heldout_store(heldout, config["spec"], bundle)
    length = max([m.context_length for m in models.values()] + [int(config["context_length"])])
    refs = [ref for ref in store.episodes if ref.length >= length + 1][:max_episodes]
    if not refs:
        raise StoreError(f"{heldout} has no episode of {length + 1} or more steps to evaluate on")
    keys = ("image", "action") + (("vector",) if store.spec.vector is not None else ())
    episodes = [store.read_episode(ref, keys) for ref in refs]
    longest = max(horizons)
    starts = spread_starts(episodes, length, max_starts)
    start_context = context_at(episodes, starts, keys, length)
    actions = np.stack([window(episodes[e]["action"], s, 0, longest) for e, s in starts])  # a_s ... a_{s+H-1}
    real = np.stack([window(episodes[e]["image"], s, 1, longest) for e, s in starts])  # x_{s+1} ... x_{s+H}
    valid = np.array([[s + h < len(episodes[e]["image"]) for h in range(1, longest + 1)] for e, s in starts])
    predictions = {"copy last frame": np.repeat(start_context.frames[:, -1:], longest, axis=1)}
    predictions.update({name: dream_frames(model, start_context, actions, seed) for name, model in models.items()})
    result: dict[str, Any] = {"horizons": list(horizons), "starts": len(starts), "episodes": len(refs),
                              "rows": score_predictions(real, predictions, valid, horizons)}
    if "diffusion" in models:
        result["sampling_steps"] = models["diffusion"].sampling_steps
    if out is not None:
        result.update(_fidelity_gif(Path(out), real, predictions, valid))
    return result


def _fidelity_models(bundle: str, backends: list[str], sampling_steps: int | None) -> dict[str, Any]:
    """The bundle's world models by backend, diffusion first, with its Euler steps set when given."""
    from worldmodel.bundle import load_bundle

    models = {name: load_bundle(bundle, name) for name in ("diffusion", "vmc") if name in backends}
    if sampling_steps is not None and "diffusion" in models:
        models["diffusion"].sampling_steps = int(sampling_steps)
    return models


def _heldout_store(heldout: str, spec, bundle: str) -> EpisodeStore:
    from worldmodel.bundle import BundleError

    store = EpisodeStore.open(heldout)
    if store.spec != spec:
        raise BundleError(f"{heldout} holds another spec than bundle {bundle}")
    return store


def spread_starts(episodes: list[dict[str, np.ndarray]], length: int, max_starts: int) -> list[Start]:
    """At most max_starts starts (e, s), spread evenly over every s with L real frames up to s and a real s + 1."""
    starts = [(e, s) for e, ep in enumerate(episodes) for s in range(length - 1, len(ep["image"]) - 1)]
    picks = np.linspace(0, len(starts) - 1, num=min(max_starts, len(starts))).round().astype(int)
    return [starts[i] for i in sorted(set(picks.tolist()))]


def window(values: np.ndarray, s: int, first: int, count: int) -> np.ndarray:
    """values[s + first : s + first + count], padded with its last row past the end."""
    rows = [values[min(s + first + i, len(values) - 1)] for i in range(count)]
    return np.stack(rows)


def context_at(episodes: list[dict[str, np.ndarray]], starts: list[Start], keys: tuple[str, ...], length: int) -> Context:
    """The real context of each start: its last L frames (and actions, vectors), frame s the newest."""
    picked = {k: np.stack([window(episodes[e][k], s, 1 - length, length) for e, s in starts]) for k in keys}
    return Context(picked["image"], picked["action"], picked.get("vector"))


def dream_frames(model, context: Context, actions: np.ndarray, seed: int) -> np.ndarray:
    """Frames [B, H_max, H, W, C] uint8 the model dreams from the contexts under the real actions
    [B, H_max(, A)]; row i draws from its own stream, keyed seed + i (what a DreamBatch row does)."""
    state = model.initial_state(context)
    keys = torch.arange(len(actions), dtype=torch.int64, device=model.device) + seed
    frames = []
    for t in range(actions.shape[1]):
        noise = RowStreams(keys, torch.full_like(keys, t))
        state, transition = model.step(state, torch.as_tensor(actions[:, t], device=model.device), noise)
        frames.append(transition.image.cpu().numpy())
    return np.stack(frames, axis=1)


def score_predictions(
    real: np.ndarray, predictions: dict[str, np.ndarray], valid: np.ndarray, horizons: tuple[int, ...]
) -> dict[str, dict[str, dict[str, float]]]:
    """{predictor: {horizon: {psnr, ssim, frames}}} over the starts valid at that horizon (piq)."""
    import piq

    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name, predicted in predictions.items():
        rows[name] = {}
        for h in horizons:
            mask = valid[:, h - 1]
            if not mask.any():
                continue
            target, guess = _unit_images(real[mask, h - 1]), _unit_images(predicted[mask, h - 1])
            rows[name][str(h)] = {
                "psnr": float(piq.psnr(guess, target, data_range=1.0, reduction="none").clamp(max=100.0).mean()),
                "ssim": float(piq.ssim(guess, target, data_range=1.0, reduction="none").mean()),
                "frames": int(mask.sum()),
            }
    return rows


def _unit_images(x: np.ndarray) -> Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0


def _fidelity_gif(out: Path, real: np.ndarray, predictions: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, Any]:
    """out/real_vmc_diffusion.gif from the start with the longest real continuation; its path and columns."""
    from worldmodel.media import save_gif, side_by_side

    row = int(valid.sum(axis=1).argmax())
    steps = int(valid[row].sum())
    shown = [name for name in GIF_COLUMNS if name in predictions]
    videos = [real[row, :steps]] + [predictions[name][row, :steps] for name in shown]
    gif = save_gif(out / "real_vmc_diffusion.gif", side_by_side(videos, scale=3), fps=5)
    return {"gif": str(gif), "gif_columns": ["real", *shown]}


def format_fidelity_table(result: dict[str, Any]) -> str:
    """The fidelity result as a table: one row per predictor, PSNR (dB) and SSIM per horizon."""
    horizons = [str(h) for h in result["horizons"]]
    head = f"{'frame fidelity':18s}" + "".join(f"{'PSNR@' + h:>10s}{'SSIM@' + h:>9s}" for h in horizons)
    lines = [
        f"held-out: {result['episodes']} episodes, {result['starts']} starts; horizon 1 from a real context, "
        f"longer ones autoregressive" + (f"; diffusion {result['sampling_steps']} Euler steps" if "sampling_steps" in result else ""),
        "",
        head,
    ]
    for name, per in result["rows"].items():
        cells = "".join(
            f"{per[h]['psnr']:10.2f}{per[h]['ssim']:9.3f}" if h in per else f"{'-':>10s}{'-':>9s}" for h in horizons
        )
        lines.append(f"{name:18s}{cells}")
    counts = next(iter(result["rows"].values()))
    lines.append(f"{'(frames scored)':18s}" + "".join(f"{counts[h]['frames'] if h in counts else 0:>10d}{'':9s}" for h in horizons))
    if "gif" in result:
        lines.append(f"\n{' | '.join(result['gif_columns'])}: {result['gif']}")
    return "\n".join(lines)
