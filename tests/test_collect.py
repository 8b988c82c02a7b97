"""Collection from real environments into stores, through Ray tasks and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from envs.collect import collect, episode_seeds
from worldmodel.data import EpisodeStore, StoreError


def test_cartpole_two_workers_write_two_parts(cartpole_store):
    store = EpisodeStore.open(cartpole_store)
    assert len(store.part_ids()) == 2
    assert store.num_episodes == 12
    assert store.spec.env_id == "CartPole-v1" and store.spec.vector.size == 4
    assert sorted(ref.seed for ref in store.episodes) == sorted(episode_seeds(12, 0))
    for ref in store.episodes:
        episode = store.read_episode(ref)
        assert episode["image"].shape == (ref.length, 64, 64, 3)
        assert set(np.unique(episode["action"])) <= {0, 1}
        # CartPole pays 1 per step and ends by termination or by our step cap
        np.testing.assert_array_equal(episode["reward"], 1.0)
        assert episode["terminated"][-1] or episode["truncated"][-1]
        assert not (episode["terminated"][:-1] | episode["truncated"][:-1]).any()
        assert ref.length <= 60


def test_ray_collection_reports_each_parts_cpu_at_the_drivers_priority(tmp_path, ray_local):
    """Ray's default nice 15 for its workers left collection only the CPU nobody else wanted (2 workers beside
    other load got 1.0 core in all, like 1): an embedded Ray's workers run at the driver's priority."""
    summary = collect("CartPole-v1", str(tmp_path / "s.zarr"), episodes=2, max_steps=20, workers=2, seed=4,
                      show_progress=False)
    assert len(summary.parts) == 2 and all(0 < part.cpu_seconds for part in summary.parts)

    def niceness() -> int:  # nested: Ray ships it by value (tests/ is no package the workers import)
        return os.nice(0)

    assert ray_local.get(ray_local.remote(num_cpus=1)(niceness).remote()) == niceness()


def test_episodes_replay_from_their_recorded_seed(cartpole_store):
    """The recorded seed reproduces an episode: same env seed, same policy seed."""
    from envs.collect import collect_part

    store = EpisodeStore.open(cartpole_store)
    ref = store.episodes[3]
    replay_location = cartpole_store + "-replay"
    EpisodeStore.create(replay_location, store.spec)
    collect_part(replay_location, "CartPole-v1", [ref.seed], max_steps=60)
    replayed = EpisodeStore.open(replay_location).read_episode(0)
    original = store.read_episode(ref)
    for name in original:
        np.testing.assert_array_equal(replayed[name], original[name], err_msg=name)


def test_collect_appends_and_refuses_another_env(tmp_path, ray_local):
    location = str(tmp_path / "s.zarr")
    collect("CartPole-v1", location, episodes=2, max_steps=10, workers=1, seed=1, show_progress=False)
    collect("CartPole-v1", location, episodes=3, max_steps=10, workers=0, seed=2, show_progress=False)
    store = EpisodeStore.open(location)
    assert store.num_episodes == 5 and len(store.part_ids()) == 2
    with pytest.raises(StoreError, match="another spec"):
        collect("ALE/Pong-v5", location, episodes=1, max_steps=5, workers=0, show_progress=False)
    assert EpisodeStore.open(location).num_episodes == 5
    with pytest.raises(ValueError, match="policy"):
        collect("CartPole-v1", location, episodes=1, max_steps=5, workers=0, policy="greedy", show_progress=False)


def test_carracing_short_run_records_the_multimodal_spec(tmp_path, ray_local):
    location = str(tmp_path / "car.zarr")
    summary = collect("CarRacing-v3", location, episodes=2, max_steps=40, workers=2, seed=3, show_progress=False)
    assert summary.steps == 80
    store = EpisodeStore.open(location)
    assert store.spec.action.kind == "box" and store.spec.vector.size == 7
    episode = store.read_episode(0)
    assert episode["truncated"][-1] and not episode["terminated"].any()
    assert episode["action"].dtype == np.float32 and episode["action"].shape == (40, 3)
    assert np.isfinite(episode["vector"]).all()
    assert episode["image"].std() > 5  # a real rendered track, not a blank frame


def test_info_cli_reports_the_store(cartpole_store):
    out = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "info", cartpole_store, "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    info = json.loads(out)
    store = EpisodeStore.open(cartpole_store)
    assert info["episodes"] == 12 and info["steps"] == store.num_steps and info["parts"] == 2
    assert info["compression_ratio"] > 6
    assert info["episode_return"]["mean"] == pytest.approx(store.num_steps / 12)
    text = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "info", cartpole_store], capture_output=True, text=True, check=True
    ).stdout
    assert "CartPole-v1" in text and "compression" in text


def test_cli_errors_are_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "info", str(tmp_path / "missing.zarr")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "not a worldmodel episode store" in result.stderr and "Traceback" not in result.stderr
