"""Run a model's `train_func(config)` under Ray Train's TorchTrainer, locally or on a cluster.

Layout of a run directory (`--out`):

    RUN/metrics.csv      one row per logged step (written by rank 0)
    RUN/loss.png         the loss curves
    RUN/model/           config.json + model.safetensors of the final weights
    RUN/ray/<name>/      Ray Train's run state and checkpoints (resume reads these)
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldmodel.errors import UserError
from worldmodel.train.config import TrainConfig
from worldmodel.train.loop import STATE_FILE


class TrainingError(UserError):
    """Training could not start or finish; the message says what to do."""


@dataclass
class LaunchOptions:
    out: str
    workers: int = 1
    gpus_per_worker: float = 0.0
    resume: bool = False
    max_failures: int = 2
    """Restarts from the latest checkpoint after a worker crash; a UserError raised in a worker (a damaged
    store) is deterministic and ends the run at once."""
    threads_per_worker: int = 0  # 0: the CPUs of this machine divided among local workers


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, int] | None:
    """The newest checkpoint directory under RUN/ray and its step, or None."""
    found = []
    for state in Path(run_dir, "ray").glob(f"*/checkpoint_*/{STATE_FILE}"):
        try:
            found.append((json.loads(state.read_text())["step"], state.parent))
        except (ValueError, KeyError, TypeError):
            continue  # a checkpoint cut off mid-write (or damaged) is no checkpoint
    if not found:
        return None
    step, path = max(found)
    return path, step


def launch(train_func: Callable[[dict], None], config: TrainConfig, options: LaunchOptions):
    """Fit `train_func` with `options.workers` DDP workers (each gets `config.to_dict()`); returns Ray's Result."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer

    from worldmodel.raycluster import init_ray

    if options.workers < 1:
        raise TrainingError(f"--workers must be >= 1, got {options.workers}")
    out = Path(options.out).resolve()
    previous = latest_checkpoint(out)
    if previous is not None and not options.resume:
        raise TrainingError(
            f"{out} already holds a checkpoint at step {previous[1]}: pass --resume to continue it, or choose another --out"
        )
    if options.resume and previous is None and (out / "ray").exists():
        print(f"no complete checkpoint under {out}; starting from step 0")
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    cpus = int(ray.available_resources().get("CPU", 1))
    threads = options.threads_per_worker or max(1, cpus // options.workers)
    use_gpu = options.gpus_per_worker > 0
    check_gpus(options, ray.cluster_resources().get("GPU", 0.0))
    resources = {"CPU": 1, **({"GPU": options.gpus_per_worker} if use_gpu else {})}
    # Train v2 dropped `resume_from_checkpoint`; the loop reads resume_from when Ray has no checkpoint of its own.
    resume_from = str(previous[0]) if options.resume and previous is not None else ""
    config = config.replace(out=str(out), threads_per_worker=threads, resume_from=resume_from)
    name = config.model_name
    for retry in range(options.max_failures + 1):
        trainer = TorchTrainer(
            functools.partial(run_worker, train_func),
            train_loop_config=config.to_dict(),
            scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(
                name=name,
                storage_path=str(out / "ray"),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                # Ray retries every worker error, a damaged store too (3 times its start-up for nothing):
                # the retries are ours, below, and only for what a retry may cure.
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        try:
            return trainer.fit()  # Ray 2.60 raises the run's error itself (never returns result.error)
        except WorkerGroupError as err:
            mistake = user_mistake(err)
            if mistake is not None:
                raise TrainingError(f"training {name} failed: {mistake}") from None
            if retry == options.max_failures:
                raise
            resumed = latest_checkpoint(out)
            config = config.replace(resume_from=str(resumed[0]) if resumed else config.resume_from)
            print(f"training {name}: a worker failed ({describe_failures(err.worker_failures)}); "
                  f"retry {retry + 1} of {options.max_failures} from {f'step {resumed[1]}' if resumed else 'the start'}")
    raise AssertionError("unreachable: the last retry returns or raises")


def check_gpus(options: LaunchOptions, cluster_gpus: float) -> None:
    """TrainingError when this machine's embedded Ray lacks the GPUs the workers ask for: Ray would wait for
    them forever. A cluster joined through RAY_ADDRESS may add GPU nodes (an autoscaler), so it is trusted."""
    if options.gpus_per_worker < 0:
        raise TrainingError(f"--gpus-per-worker must be >= 0, got {options.gpus_per_worker}")
    needed = options.workers * options.gpus_per_worker
    if needed > cluster_gpus and not os.environ.get("RAY_ADDRESS"):
        raise TrainingError(f"{options.workers} worker(s) x {options.gpus_per_worker:g} GPU need {needed:g} GPU(s); "
                            f"this machine's Ray has {cluster_gpus:g}")


def run_worker(train_func: Callable[[dict], None], config: dict) -> None:
    """A Ray Train worker's body: a user's mistake (a damaged store, a bad path) ends the run with its message
    alone; Ray logs the traceback of whatever a worker raises, and the mistake's stack helps nobody."""
    try:
        train_func(config)
    except UserError as err:
        raise err.with_traceback(None) from None


def user_mistake(error: Exception) -> str | None:
    """The message of the first UserError a worker raised (deterministic: a retry fails the same), or None."""
    for failure in getattr(error, "worker_failures", {}).values():
        for candidate in (failure, getattr(failure, "cause", None), failure.__cause__):
            if isinstance(candidate, UserError):
                return " ".join(str(candidate).split())
    return None


def describe_failures(worker_failures: dict[int, BaseException]) -> str:
    """Each failed rank's error type and first line."""
    return "; ".join(f"rank {rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                     for rank, e in sorted(worker_failures.items()))


def final_checkpoint_dir(out: str | Path) -> Path:
    found = latest_checkpoint(Path(out).resolve())
    if found is None:
        raise TrainingError(f"no checkpoint under {out}: did training run?")
    return found[0]


def store_locations(stores: list[str]) -> list[str]:
    """Stores as Ray workers must see them: local paths made absolute (workers run elsewhere), URLs as given."""
    return [s if "://" in str(s) else str(Path(s).resolve()) for s in stores]


def common_spec(stores: list[str], *, frames_only: bool = False):
    """The stores' spec (the first's), or a StoreError when they differ; `frames_only`: only their frames
    must be alike (V, a visual encoder, learns from several envs)."""
    from worldmodel.data import EpisodeStore, StoreError

    if not stores:
        raise ValueError("give at least one --store")
    opened = [EpisodeStore.open(s) for s in stores]
    for store in opened[1:]:
        if frames_only and store.spec.image != opened[0].spec.image:
            raise StoreError(f"{store.location} holds {store.spec.image.shape} frames, {opened[0].location} "
                             f"{opened[0].spec.image.shape}: V learns frames of one size")
        if not frames_only and store.spec != opened[0].spec:
            raise StoreError(f"{store.location} has another spec than {opened[0].location}")
    if sum(s.num_steps for s in opened) == 0:
        raise StoreError(f"{', '.join(stores)} hold no episodes: collect some first")
    return opened[0].spec


def export_model(out: str, class_name: str, config: TrainConfig, spec, *, build=None, save=None) -> Path:
    """Write RUN/model (weights, config, provenance, vector_norm.json) from the final checkpoint, and
    RUN/loss.png from RUN/metrics.csv. `build() -> module` and `save(module, directory, extra) -> directory`
    default to the model classes of models/io.py (the diffusion backbone passes its own)."""
    from worldmodel.models.io import MODEL_CLASSES, load_weights, save_pretrained
    from worldmodel.models.vector_norm import VectorStats
    from worldmodel.train.loop import MODEL_FILE
    from worldmodel.train.metrics import plot_metrics

    run = Path(out).resolve()
    if build is None:
        model_cls, config_cls = MODEL_CLASSES[class_name]
        build = (lambda: model_cls(config_cls.from_dict(config.model)))
    model = build()
    load_weights(model, final_checkpoint_dir(run) / MODEL_FILE)
    target = (save or save_pretrained)(model, run / "model", {"spec": spec.to_dict(), "training": config.provenance()})
    VectorStats.from_dict(config.vector_norm).save(target)
    plot_metrics(run / "metrics.csv", run / "loss.png", f"{class_name} ({config.preset})")
    return target


def starting_point(init_from: str, class_name: str, fresh: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(model directory, model config) a run starts from: `fresh` (the preset's config) when `init_from` is
    empty, else the saved model's own config, so fine-tuning keeps its architecture whatever the preset."""
    if not init_from:
        return "", fresh
    from worldmodel.models.io import CONFIG_FILE, load_pretrained

    directory = Path(init_from).resolve()
    if (directory / "model" / CONFIG_FILE).is_file():
        directory = directory / "model"  # a run directory: its model/
    try:
        load_pretrained(directory, expected=class_name)  # checks files, class and weights before Ray starts
    except (FileNotFoundError, ValueError) as err:
        raise TrainingError(f"cannot start from {init_from}: {err}") from err
    return str(directory), json.loads((directory / CONFIG_FILE).read_text())["config"]
