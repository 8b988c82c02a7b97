"""RLlib (new API stack) learns in the dream, in-process or through the gRPC service.

`worldmodel train rllib --bundle B --algo PPO --iterations N` registers the
dream env with Ray Tune's registry and trains on latent observations; with
`--remote ADDRESS` the env runners step the served model instead. The policy
is saved as an RLlib checkpoint and can be judged in the real env like C
(`worldmodel eval --policy rllib --rllib RUN`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

DREAM_ENV = "worldmodel-dream"
REMOTE_ENV = "worldmodel-remote"
ALGOS = ("PPO",)


def _make_dream(config: dict):
    from envs.dream import DreamEnv

    return DreamEnv(bundle=config["bundle"], observation="latent", temperature=config["temperature"],
                    max_episode_steps=config["max_episode_steps"])


def _make_remote(config: dict):
    from envs.remote import RemoteEnv

    return RemoteEnv(address=config["address"], model=config["model"], observation="latent",
                     temperature=config["temperature"], max_episode_steps=config["max_episode_steps"],
                     token=config.get("token"))


def train_rllib(
    bundle: str,
    out: str,
    *,
    algo: str = "PPO",
    iterations: int = 10,
    remote: str | None = None,
    model_name: str | None = None,
    temperature: float = 1.0,
    max_episode_steps: int = 1000,
    train_batch_size: int = 2000,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Train `iterations` RLlib iterations; writes OUT/rllib.csv and OUT/checkpoint."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env
    from tqdm import tqdm

    from worldmodel.raycluster import init_ray

    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; supported: {ALGOS}")
    init_ray()
    env_config = {"bundle": str(Path(bundle).resolve()), "temperature": temperature, "max_episode_steps": max_episode_steps}
    if remote:
        env_config.update(address=remote, model=model_name or Path(bundle).resolve().name)
        register_env(REMOTE_ENV, _make_remote)
    else:
        register_env(DREAM_ENV, _make_dream)
    config = (
        PPOConfig()
        .environment(REMOTE_ENV if remote else DREAM_ENV, env_config=env_config)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)  # sample in this process: 2 cores
        .training(train_batch_size_per_learner=train_batch_size, minibatch_size=min(256, train_batch_size), num_epochs=4)
        .debugging(seed=seed)
    )
    algorithm = config.build_algo()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for i in tqdm(range(iterations), desc=f"RLlib {algo} in the {'remote ' if remote else ''}dream", disable=not show_progress):
            began = time.perf_counter()
            result = algorithm.train()
            runners = result.get("env_runners", {})
            rows.append({
                "iteration": i + 1,
                "episode_return_mean": float(runners.get("episode_return_mean", float("nan"))),
                "episode_len_mean": float(runners.get("episode_len_mean", float("nan"))),
                "env_steps": int(runners.get("num_env_steps_sampled_lifetime", 0)),
                "seconds": time.perf_counter() - began,
            })
        checkpoint = algorithm.save_to_path(str((out_dir / "checkpoint").resolve()))  # RLlib's own, to continue training
        _export_policy(algorithm.get_module(), out_dir)
    finally:
        algorithm.stop()
    (out_dir / "rllib.json").write_text(json.dumps({"algo": algo, "remote": remote, "iterations": rows}, indent=2))
    return {"iterations": rows, "checkpoint": str(checkpoint), "policy": str(out_dir / POLICY_FILE)}


POLICY_FILE = "policy.safetensors"


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
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(run_dir) / POLICY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} holds no {POLICY_FILE}: is it a `worldmodel train rllib` output?")
        with safe_open(str(path), "pt") as f:
            observation_dim = int(f.metadata()["observation_dim"])
        observation_space = gym.spaces.Box(-np.inf, np.inf, (observation_dim,), np.float32)
        self.module = DefaultPPOTorchRLModule(
            observation_space=observation_space, action_space=action_space, inference_only=True,
            model_config=dataclasses.asdict(DefaultModelConfig(vf_share_layers=False)),
        )
        self.module.load_state_dict(load_file(str(path)))
        self.module.eval()

    @torch.no_grad()
    def __call__(self, features: torch.Tensor, discrete: bool):
        out = self.module.forward_inference({"obs": features.float()})
        logits = out["action_dist_inputs"]
        if discrete:
            return logits.argmax(dim=-1)
        mean, _ = logits.chunk(2, dim=-1)  # diagonal Gaussian: [mean, log_std]
        return mean


__all__ = ["train_rllib", "RLlibPolicy"]
