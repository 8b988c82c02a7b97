"""V-M-C end to end on real CartPole data: training on Ray, bundles, the WorldModel interface."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import worldmodel
from worldmodel.bundle import BundleError, read_bundle_config
from worldmodel.models.noise import RowStreams
from worldmodel.models.world import Context
from worldmodel.train.metrics import read_metrics

def streams(keys, step: int = 0) -> RowStreams:
    """Per-row noise streams keyed `keys`, at `step` (what a DreamBatch passes its model)."""
    keys = torch.tensor(list(keys), dtype=torch.int64)
    return RowStreams(keys, torch.full_like(keys, step))



@pytest.mark.parametrize("run", ["vae", "mdnrnn"])
def test_losses_fall_and_artifacts_exist(vmc_runs, run):
    rows = read_metrics(Path(vmc_runs[run]) / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < first, (first, last)
    assert (Path(vmc_runs[run]) / "loss.png").stat().st_size > 1000
    assert (Path(vmc_runs[run]) / "model" / "model.safetensors").is_file()


def test_bundle_round_trip_gives_identical_dreams(vmc_runs):
    a = worldmodel.load_bundle(vmc_runs["bundle"])
    b = worldmodel.load_bundle(vmc_runs["bundle"])
    assert a.spec == b.spec and a.spec.env_id == "CartPole-v1"
    assert len(a.contexts) == 16 and a.contexts.frames.shape[1:] == (4, 64, 64, 3)
    for model in (a, b):
        model.state = model.initial_state(a.contexts.select(slice(0, 5)))
    actions = torch.tensor([0, 1, 1, 0, 1])
    for t in range(6):
        seeds = streams(range(5), step=t)
        twins = streams(range(5), step=t)
        a.state, ta = a.step(a.state, actions, seeds)
        b.state, tb = b.step(b.state, actions, twins)
        for field in ("image", "vector", "reward", "terminated"):
            assert torch.equal(getattr(ta, field), getattr(tb, field)), field
    assert ta.image.dtype == torch.uint8 and ta.image.shape == (5, 64, 64, 3)
    assert ta.vector.shape == (5, 4) and ta.reward.dtype == torch.float32 and ta.terminated.dtype == torch.bool


def test_batch_of_one_equals_row_of_batch(vmc_runs):
    model = worldmodel.load_bundle(vmc_runs["bundle"], temperature=1.15)
    context = model.contexts.select(slice(0, 4))
    actions = torch.tensor([1, 0, 1, 1])
    state = model.initial_state(context)
    batched, transition = model.step(state, actions, streams(range(4)))
    for i in range(4):
        single_state = model.initial_state(context.select(slice(i, i + 1)))
        single, single_t = model.step(single_state, actions[i : i + 1], streams([i]))
        for key in single:
            torch.testing.assert_close(single[key][0], batched[key][i], rtol=1e-5, atol=1e-5)
        assert torch.equal(single_t.terminated[0], transition.terminated[i])
        assert (single_t.image[0].int() - transition.image[i].int()).abs().max() <= 1


def test_seeds_make_dreams_reproducible_and_different(vmc_runs):
    model = worldmodel.load_bundle(vmc_runs["bundle"])
    state = model.initial_state(model.contexts.select(slice(0, 2)))
    one = model.step_latent(state, torch.tensor([0, 1]), torch.Generator().manual_seed(1))[0]
    again = model.step_latent(state, torch.tensor([0, 1]), torch.Generator().manual_seed(1))[0]
    other = model.step_latent(state, torch.tensor([0, 1]), torch.Generator().manual_seed(2))[0]
    assert torch.equal(one["z"], again["z"]) and not torch.equal(one["z"], other["z"])
    assert model.features(one).shape == (2, model.feature_dim)


def test_world_model_rejects_bad_actions(vmc_runs):
    model = worldmodel.load_bundle(vmc_runs["bundle"])
    state = model.initial_state(model.contexts.select(slice(0, 2)))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        model.step(state, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="must be integers"):
        model.step(state, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        model.step(state, torch.tensor([0, 1, 1]))


def test_bad_bundles_get_clear_errors(vmc_runs, tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        worldmodel.load_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match="unknown backend"):
        worldmodel.load_bundle(vmc_runs["bundle"], backend="gan")
    broken = tmp_path / "broken"
    shutil.copytree(vmc_runs["bundle"], broken)
    (broken / "mdnrnn.safetensors").unlink()
    with pytest.raises(BundleError, match="mdnrnn.safetensors is missing"):
        worldmodel.load_bundle(broken)
    shutil.copy(Path(vmc_runs["bundle"]) / "vae.safetensors", broken / "mdnrnn.safetensors")
    with pytest.raises(BundleError, match="does not match MDNRNN"):
        worldmodel.load_bundle(broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(dict(config, version=9)))
    with pytest.raises(BundleError, match="bundle version 9"):
        read_bundle_config(broken)


def test_bundle_cli_refuses_models_of_another_store(vmc_runs, tmp_path):
    from worldmodel.data import EpisodeStore
    from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec

    other = str(tmp_path / "other.zarr")
    EpisodeStore.create(other, EnvSpec(ImageSpec(64, 64, 3), ActionSpec.discrete(3)))
    result = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "bundle", "--vae", vmc_runs["vae"], "--mdnrnn", vmc_runs["mdnrnn"],
         "--store", other, "--out", str(tmp_path / "b")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "another spec" in result.stderr


def test_eval_model_reports_against_baselines(vmc_runs, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "eval-model", "--bundle", vmc_runs["bundle"], "--store",
         vmc_runs["store"], "--out", str(tmp_path), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    result = json.loads(out)
    for key in ("v_mse", "v_mse_mean_frame", "m_nll", "m_nll_copy", "reward_mse", "termination_accuracy"):
        assert np.isfinite(result[key]), key
    assert 0 <= result["termination_accuracy"] <= 1 and result["episodes"] == 12
    frames = iio.imread(result["gif"], index=None)
    assert frames.ndim == 4 and frames.shape[2] == 2 * 64 * 3 + 2  # real | reconstruction, 3x


def test_initial_state_needs_vectors_when_the_spec_has_them(vmc_runs):
    model = worldmodel.load_bundle(vmc_runs["bundle"])
    c = model.contexts
    with pytest.raises(ValueError, match="needs vectors"):
        model.initial_state(Context(c.frames[:1], c.actions[:1], None))
