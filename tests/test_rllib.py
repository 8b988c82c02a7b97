"""RLlib PPO for one iteration on the dream env (then resumed for a second), and on the remote env
through a real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from agents.rllib import RLlibPolicy, train_rllib
from worldmodel.train.launcher import TrainingError


def _check_run(out, result) -> None:
    assert len(result["iterations"]) == 1
    first = result["iterations"][0]
    assert first["env_steps"] >= 200 and first["episode_len_mean"] > 0
    assert json.loads((out / "rllib.json").read_text())["iterations"] == result["iterations"]


def test_ppo_iteration_in_the_dream_and_resume(vmc_runs, tmp_path, ray_local):
    import worldmodel

    options = {"train_batch_size": 200, "max_episode_steps": 50, "show_progress": False}
    result = train_rllib(vmc_runs["bundle"], str(tmp_path), iterations=1, **options)
    _check_run(tmp_path, result)
    model = worldmodel.load_bundle(vmc_runs["bundle"])
    policy = RLlibPolicy(tmp_path, model.spec.action_space())  # rebuilt from safetensors, nothing unpickled
    actions = policy(model.features(model.initial_state(model.contexts.select(slice(0, 4)))), discrete=True)
    assert actions.shape == (4,) and actions.dtype == torch.int64 and set(actions.tolist()) <= {0, 1}

    with pytest.raises(TrainingError, match="--resume"):  # an earlier run is never overwritten silently
        train_rllib(vmc_runs["bundle"], str(tmp_path), iterations=2, **options)
    resumed = train_rllib(vmc_runs["bundle"], str(tmp_path), iterations=2, resume=True, **options)
    assert [row["iteration"] for row in resumed["iterations"]] == [1, 2]
    assert resumed["iterations"][0] == result["iterations"][0]
    assert resumed["iterations"][1]["env_steps"] > result["iterations"][0]["env_steps"]  # RLlib's counters came back
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["iteration_000002"]


@pytest.fixture
def served(vmc_runs):
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldmodel.cli", "serve", f"cartpole={vmc_runs['bundle']}", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"serving on (127\.0\.0\.1:\d+)", line)
    assert match, f"server did not start: {line!r}"
    yield match.group(1)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_ppo_iteration_through_the_service(vmc_runs, served, tmp_path, ray_local):
    result = train_rllib(vmc_runs["bundle"], str(tmp_path), iterations=1, remote=served, model_name="cartpole",
                         train_batch_size=200, max_episode_steps=50, show_progress=False)
    _check_run(tmp_path, result)
