"""TrainConfig: everything one training run reads, as one documented dataclass (CleanRL's `Args`).

The command line and `train_vae`/`train_mdnrnn`/`train_diffusion` build it from a preset;
the launcher fills in where the run lives; Ray hands it to every worker as a plain dict
(`to_dict`), and `train_func(config)` reads it back (`from_dict`). The model directory
records `provenance()`: what produced the weights, not where the run happened to live.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from worldmodel.train.presets import Schedule, get_preset


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Schedule):
    """One training run (batch size, learning rate, lengths, clip and window come from Schedule)."""

    model_name: str
    """Which model trains: "vae", "mdnrnn" or "diffusion" (the preset table and run name)."""
    stores: tuple[str, ...]
    """Episode stores to train on, as every worker must see them (absolute paths or URLs)."""
    model: dict[str, Any]
    """The model's config (its ConfigMixin.to_dict())."""
    preset: str = "small"
    """tiny | small | paper: where the schedule came from."""
    seed: int = 0
    """Seeds the initial weights (per rank) and every batch (per rank and step, so resumes repeat nothing)."""
    vector_norm: dict[str, list[float]] = field(default_factory=dict)
    """VectorStats.to_dict() of the training stores: normalises vector observations in batches."""
    latents: tuple[str, ...] = ()
    """M only: V's latents of each store (train/latents.py), in the order of `stores`."""
    vae: str = ""
    """M only: the model directory of the V whose latents M learns."""
    init_from: str = ""
    """A model directory whose weights this run starts from (fine-tuning); "" starts from the seed."""
    out: str = ""
    """The run directory (set by the launcher)."""
    threads_per_worker: int = 0
    """Torch threads per worker (set by the launcher; 0 keeps torch's default)."""
    resume_from: str = ""
    """A checkpoint directory `--resume` found on disk (set by the launcher)."""
    store_weights: tuple[float, ...] = ()
    """Diffusion: each store's share of a batch's windows, in the order of `stores` (empty: by their steps)."""
    store_envs: tuple[int, ...] = ()
    """Diffusion: the env (index into the model config's envs) of each store (empty: all env 0)."""
    env_vector_norms: tuple[dict[str, list[float]], ...] = ()
    """Diffusion: VectorStats.to_dict() per env (empty: `vector_norm` for env 0)."""
    adapt: dict[str, Any] = field(default_factory=dict)
    """`worldmodel adapt`: {"base": bundle, "method": lora|heads|full, "rank": R, "episodes": K (0: all)}."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stores", tuple(self.stores))
        object.__setattr__(self, "latents", tuple(self.latents))
        for name in ("store_weights", "store_envs", "env_vector_norms"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("batch_size", "max_steps", "checkpoint_every", "log_every", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_preset(cls, model_name: str, preset: str, *, stores, model: dict[str, Any], max_steps: int | None = None,
                    seed: int = 0, **fields_: Any) -> TrainConfig:
        """The preset's batch size, learning rate, lengths and clip, with `max_steps` and `seed` from the user."""
        chosen = get_preset(model_name, preset)
        steps = chosen.max_steps if max_steps is None else int(max_steps)
        if steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {steps}")
        schedule = {f.name: getattr(chosen, f.name) for f in fields(Schedule)}
        schedule.update(max_steps=steps, checkpoint_every=min(chosen.checkpoint_every, steps),
                        log_every=min(chosen.log_every, steps))
        return cls(model_name=model_name, stores=tuple(stores), model=model, preset=preset, seed=int(seed),
                   **schedule, **fields_)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def provenance(self) -> dict[str, Any]:
        """What produced the weights, for the model directory: all but the model config (saved beside it),
        the vector stats (saved as vector_norm.json) and where this run happened to live."""
        skip = {"model", "vector_norm", "env_vector_norms", "out", "threads_per_worker", "resume_from"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


__all__ = ["TrainConfig"]
