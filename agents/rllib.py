"""RLlib (new API stack) learns in the dream, in-process or through the gRPC service.

`worldmodel train rllib --bundle B --out RUN [--preset tiny|small|paper]` registers the
dream env with Ray Tune's registry and trains on latent observations; with
`--remote ADDRESS` the env runners step the served model instead. The policy
is saved as an RLlib checkpoint and can be judged in the real env like C
(`worldmodel eval --policy rllib --rllib RUN`).

Layout of a run directory (`--out`):

    RUN/rllib.json                the iterations so far and the newest checkpoint (written after it)
    RUN/checkpoints/iteration_N/  RLlib's own checkpoint after iteration N (`--resume` continues from it)
    RUN/policy.safetensors        the policy's weights (evaluation rebuilds the module, unpickling nothing)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.train.launcher import TrainingError

DREAM_ENV = "worldmodel-dream"
REMOTE_ENV = "worldmodel-remote"
ALGOS = ("PPO",)
RECORD_FILE = "rllib.json"
CHECKPOINTS_DIR = "checkpoints"
POLICY_FILE = "policy.safetensors"


@dataclass(frozen=True)
class RLlibConfig:
    """What `--preset` sets for RLlib PPO: how long it trains and on how large batches."""

    iterations: int = 10
    """Training iterations; each samples `train_batch_size` env steps, then updates the policy."""
    train_batch_size: int = 2000
    """Env steps per iteration (RLlib's train_batch_size_per_learner)."""
    minibatch_size: int = 256
    """Env steps per gradient step (at most train_batch_size)."""
    num_epochs: int = 4
    """Passes over each iteration's batch."""


PRESETS = {
    "tiny": RLlibConfig(iterations=1, train_batch_size=200, minibatch_size=200, num_epochs=1),
    "small": RLlibConfig(),
    "paper": RLlibConfig(iterations=200, train_batch_size=4000, minibatch_size=128, num_epochs=30),  # RLlib's PPO defaults
}


def _make_dream(config: dict):
    from envs.dream import DreamEnv

    return DreamEnv(bundle=config["bundle"], observation="latent", temperature=config["temperature"],
                    max_episode_steps=config["max_episode_steps"])


def _make_remote(config: dict):
    from envs.remote import RemoteEnv

    return RemoteEnv(address=config["address"], model=config["model"], observation="latent",
                     temperature=config["temperature"], max_episode_steps=config["max_episode_steps"],
                     token=config.get("token"))


def rllib_config(preset: str, iterations: int | None = None, train_batch_size: int | None = None) -> RLlibConfig:
    """The preset's RLlibConfig, with the lengths given overriding it."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = {"iterations": iterations, "train_batch_size": train_batch_size}
    config = replace(PRESETS[preset], **{k: v for k, v in chosen.items() if v is not None})
    if config.iterations < 1 or config.train_batch_size < 1:
        raise ValueError(f"iterations and train_batch_size must be >= 1, got {config.iterations} and {config.train_batch_size}")
    return config


def train_rllib(
    bundle: str,
    out: str,
    *,
    algo: str = "PPO",
    preset: str = "small",
    iterations: int | None = None,
    remote: str | None = None,
    model_name: str | None = None,
    temperature: float = 1.0,
    max_episode_steps: int = 1000,
    train_batch_size: int | None = None,
    workers: int = 0,
    gpus: float = 0.0,
    resume: bool = False,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train up to `iterations` RLlib iterations in all (default: the preset's), checkpointing after each.

    `workers`: RLlib env runners (0: sample in this process). `gpus`: GPUs of the learner. An earlier
    run in `out` is continued with `resume`, and refused (TrainingError) without it."""
    from worldmodel.raycluster import init_ray

    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; supported: {ALGOS}")
    config = rllib_config(preset, iterations, train_batch_size)
    out_dir = Path(out).resolve()
    record = _previous_run(out_dir, resume)
    env_config = {"bundle": str(Path(bundle).resolve()), "temperature": temperature, "max_episode_steps": max_episode_steps}
    if remote:
        env_config.update(address=remote, model=model_name or Path(bundle).resolve().name)
        _check_server(remote, env_config["model"])
    out_dir.mkdir(parents=True, exist_ok=True)
    init_ray()
    algorithm = _build_algorithm(config, env_config, remote is not None, workers, gpus, seed)
    rows = list(record["iterations"]) if record else []
    try:
        if record:
            algorithm.restore_from_path(str(out_dir / record["checkpoint"]))
        describe = {"algo": algo, "remote": remote, "preset": preset}
        _train(algorithm, config, rows, out_dir, describe, show_progress)
        _export_policy(algorithm.get_module(), out_dir)
    finally:
        algorithm.stop()
    record = json.loads((out_dir / RECORD_FILE).read_text())
    return {"iterations": rows, "checkpoint": str(out_dir / record["checkpoint"]), "policy": str(out_dir / POLICY_FILE)}


def _previous_run(out_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The record of an earlier run in out_dir to resume, None to start afresh; TrainingError for a run
    there without `resume` (never overwritten silently)."""
    path = out_dir / RECORD_FILE
    if not path.is_file():
        if resume:
            print(f"no RLlib checkpoint under {out_dir}; starting from iteration 0")
        return None
    record = json.loads(path.read_text())
    if not resume:
        raise TrainingError(f"{out_dir} already holds an RLlib run at iteration {len(record['iterations'])}: "
                            "pass --resume to continue it, or choose another --out")
    return record


def _check_server(address: str, model: str) -> None:
    """TrainingError unless a worldmodel server at `address` hosts `model`: said here in one line,
    rather than as a failure deep inside RLlib's env runners."""
    import grpc

    from services.client import SimulatorClient

    client = SimulatorClient(address, timeout=30.0)
    try:
        served = [m.name for m in client.list_models()]
    except grpc.RpcError as err:
        raise TrainingError(f"--remote {address}: no worldmodel server answers there ({err.code().name})") from err
    finally:
        client.close()
    if model not in served:
        raise TrainingError(f"the server at {address} hosts {sorted(served)}, not {model!r}: choose one with --model-name")


def _build_algorithm(config: RLlibConfig, env_config: dict, remote: bool, workers: int, gpus: float, seed: int):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    register_env(REMOTE_ENV if remote else DREAM_ENV, _make_remote if remote else _make_dream)
    ppo = (
        PPOConfig()
        .environment(REMOTE_ENV if remote else DREAM_ENV, env_config=env_config)
        .env_runners(num_env_runners=workers, num_envs_per_env_runner=1)  # 0: sample in this process
        .learners(num_learners=0, num_gpus_per_learner=gpus)  # one learner, here, on a GPU when given
        .training(train_batch_size_per_learner=config.train_batch_size,
                  minibatch_size=min(config.minibatch_size, config.train_batch_size), num_epochs=config.num_epochs)
        .debugging(seed=seed)
    )
    return ppo.build_algo()


def _train(algorithm, config: RLlibConfig, rows: list[dict], out_dir: Path, describe: dict, show_progress: bool) -> None:
    """Iterations len(rows) + 1 ... config.iterations; after each, a checkpoint, then the record naming it."""
    from tqdm import tqdm

    where = "remote " if describe["remote"] else ""
    bar = tqdm(range(len(rows), config.iterations), desc=f"RLlib {describe['algo']} in the {where}dream",
               disable=not show_progress)
    for i in bar:
        began = time.perf_counter()
        runners = algorithm.train().get("env_runners", {})
        rows.append({
            "iteration": i + 1,
            "episode_return_mean": float(runners.get("episode_return_mean", float("nan"))),
            "episode_len_mean": float(runners.get("episode_len_mean", float("nan"))),
            "env_steps": int(runners.get("num_env_steps_sampled_lifetime", 0)),
            "seconds": time.perf_counter() - began,
        })
        _save_checkpoint(algorithm, out_dir, {**describe, "iterations": rows})


def _save_checkpoint(algorithm, out_dir: Path, record: dict[str, Any]) -> None:
    """RLlib's checkpoint of this iteration, then the record naming it (written last, so it always names a
    complete checkpoint), then the older checkpoints go."""
    name = f"{CHECKPOINTS_DIR}/iteration_{len(record['iterations']):06d}"
    target = out_dir / name
    shutil.rmtree(target, ignore_errors=True)  # a half-written one from a killed run
    algorithm.save_to_path(str(target))
    temporary = out_dir / f"{RECORD_FILE}.tmp"
    temporary.write_text(json.dumps({**record, "checkpoint": name}, indent=2))
    temporary.replace(out_dir / RECORD_FILE)
    for older in (out_dir / CHECKPOINTS_DIR).iterdir():
        if older != target:
            shutil.rmtree(older, ignore_errors=True)


def _export_policy(module, out_dir: Path) -> None:
    """The policy's weights as safetensors: evaluation rebuilds the module from spaces, never unpickling."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(out_dir / POLICY_FILE), metadata={"observation_dim": str(module.observation_space.shape[0])})


class RLlibPolicy:
    """An RLlib PPO module acting on the world model's latent features (argmax / distribution mean)."""

    def __init__(self, run_dir: str | Path, action_space):
        import dataclasses

        import gymnasium as gym
        from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
        from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
        from safetensors import SafetensorError, safe_open

        from worldmodel.errors import UserError
        from worldmodel.models.io import read_safetensors

        path = Path(run_dir) / POLICY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} holds no {POLICY_FILE}: is it a `worldmodel train rllib` output?")
        weights = read_safetensors(path)  # a damaged file is a UserError naming it
        try:
            with safe_open(str(path), "pt") as f:
                observation_dim = int((f.metadata() or {})["observation_dim"])
        except (SafetensorError, KeyError, ValueError) as err:
            raise UserError(f"{path} has no observation_dim in its metadata ({err}): it was not written by "
                            "`worldmodel train rllib`; train the policy again") from err
        observation_space = gym.spaces.Box(-np.inf, np.inf, (observation_dim,), np.float32)
        self.module = DefaultPPOTorchRLModule(
            observation_space=observation_space, action_space=action_space, inference_only=True,
            model_config=dataclasses.asdict(DefaultModelConfig(vf_share_layers=False)),
        )
        self.module.load_state_dict(weights)
        self.module.eval()

    @torch.no_grad()
    def __call__(self, features: torch.Tensor, discrete: bool):
        out = self.module.forward_inference({"obs": features.float()})
        logits = out["action_dist_inputs"]
        if discrete:
            return logits.argmax(dim=-1)
        mean, _ = logits.chunk(2, dim=-1)  # diagonal Gaussian: [mean, log_std]
        return mean


__all__ = ["PRESETS", "RLlibConfig", "RLlibPolicy", "rllib_config", "train_rllib"]
