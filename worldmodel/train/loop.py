"""The training loop every model shares, run inside a Ray Train worker.

Each model file supplies its model, a batch sampler and an objective; this
loop does the rest the same way for all: DDP through `prepare_model`,
restore from `ray.train.get_checkpoint()`, per-step metrics, a checkpoint
every `checkpoint_every` steps through `ray.train.report`, a progress bar.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from worldmodel.models.io import WEIGHTS_FILE, load_weights, state_dict_for_saving, unwrap
from worldmodel.train.config import TrainConfig
from worldmodel.train.metrics import MetricsLog

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"

Batch = dict[str, torch.Tensor]
Objective = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class _ObjectiveModule(nn.Module):
    """Makes `objective(model, batch)` the forward, so DDP's gradient hooks see it."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch):
        return self.objective(self.model, batch)


def seed_worker(config: TrainConfig) -> None:
    """Seed torch on this rank; a train_func calls it before it builds the model, whose initial
    weights are part of the run (so is the sampling noise of training, drawn later)."""
    import ray.train

    torch.manual_seed(config.seed + ray.train.get_context().get_world_rank())


def batch_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The generator for one step's batch: the same after a resume as in an unbroken run."""
    return np.random.default_rng([seed, rank, step])


def train_loop(
    config: TrainConfig,
    model: nn.Module,
    next_batch: Callable[[np.random.Generator], dict[str, np.ndarray]],
    objective: Objective,
    to_tensors: Callable[[dict[str, np.ndarray], torch.device], Batch] | None = None,
) -> None:
    """Train `model` for config.max_steps steps; the train_func built it after seed_worker(config). A run
    with `init_from` starts from that model directory's weights, unless it has a checkpoint of its own."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank = context.get_world_rank()
    threads = config.threads_per_worker
    if threads > 0:
        torch.set_num_threads(threads)
    device = ray.train.torch.get_device()

    start_step, optimizer_state = 0, None
    checkpoint = _newest_checkpoint(config)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            load_weights(model, Path(directory) / MODEL_FILE)
            optimizer_state = torch.load(Path(directory) / OPTIMIZER_FILE, weights_only=True)
            start_step = json.loads((Path(directory) / STATE_FILE).read_text())["step"]
    elif config.init_from:
        load_weights(model, Path(config.init_from) / WEIGHTS_FILE)

    wrapped = ray.train.torch.prepare_model(_ObjectiveModule(model, objective))
    optimizer = torch.optim.Adam(unwrap(wrapped).parameters(), lr=config.lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    convert = to_tensors or _default_to_tensors

    out = Path(config.out)
    log = MetricsLog(out / "metrics.csv", resume_after=start_step) if rank == 0 else None
    bar = _progress(rank, config.max_steps, start_step, config.model_name)
    max_steps, grad_clip = config.max_steps, config.grad_clip
    samples, window_start = 0, time.perf_counter()
    for step in range(start_step + 1, max_steps + 1):
        batch = convert(next_batch(batch_rng(config.seed, rank, step)), device)
        loss, logs = wrapped(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(unwrap(wrapped).parameters(), grad_clip)
        optimizer.step()
        samples += config.batch_size  # rows per step, however a batch splits them (several envs: several groups)
        if bar is not None:
            bar.update(1)
        is_last = step == max_steps
        if step % config.log_every == 0 or is_last or step % config.checkpoint_every == 0:
            elapsed = time.perf_counter() - window_start
            metrics = {"step": step, "loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}}
            metrics["charts/samples_per_second"] = samples / elapsed if elapsed > 0 else 0.0
            samples, window_start = 0, time.perf_counter()
            if log is not None:
                log.append(metrics)
            if step % config.checkpoint_every == 0 or is_last:
                _report(metrics, rank, model, optimizer, step)
    if bar is not None:
        bar.close()


def _newest_checkpoint(config: TrainConfig):
    """Ray's checkpoint (after a worker failure, or its own restore of the run) or the one
    `--resume` found on disk, whichever is further along: a driver killed mid-run can leave
    Ray's record of checkpoints behind the files."""
    import ray.train

    candidates = [ray.train.get_checkpoint()]
    if config.resume_from:
        candidates.append(ray.train.Checkpoint(config.resume_from))

    def step_of(checkpoint) -> int:
        with checkpoint.as_directory() as directory:
            return json.loads((Path(directory) / STATE_FILE).read_text())["step"]

    found = [c for c in candidates if c is not None]
    return max(found, key=step_of) if found else None


def _report(metrics: dict, rank: int, model: nn.Module, optimizer, step: int) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)  # every rank reports: it is a barrier
        return
    with tempfile.TemporaryDirectory() as directory:
        save_file(state_dict_for_saving(model), os.path.join(directory, MODEL_FILE))
        torch.save(optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))
        Path(directory, STATE_FILE).write_text(json.dumps({"step": step, "metrics": metrics}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _default_to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> Batch:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


def _progress(rank: int, total: int, initial: int, name: str):
    if rank != 0:
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=total, desc=f"train {name}")  # Ray's bar forwards to the driver; it has no `initial`
    if initial:
        bar.update(initial)
    return bar
