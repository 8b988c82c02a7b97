"""The project's claim on a small real case: a controller evolved only in the dream beats random in reality."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agents.cmaes import CMAESConfig, train_controller
from agents.evaluate import evaluate
from worldmodel.bundle import BundleError, load_controller

# Pre-registered before the test was first run green: real CartPole, episode seeds 123..132,
# the dream-trained controller's mean return must beat the random policy's by at least this.
MARGIN = 15.0
EVAL_SEEDS_START, EVAL_EPISODES = 123, 10


@pytest.fixture(scope="module")
def cartpole_bundle(tmp_path_factory, ray_local) -> str:
    """150 real random CartPole episodes -> V (tiny, 150 steps) -> M (small preset, 600 steps) -> bundle.

    V trains 150 steps, not 30: at 30, training seeds 3 and 4 gave dreams too poor to learn in
    (real returns 9.4 and 11.9) and CI once saw 27.5; at 150, seeds 0-5 all beat the margin (71.6-335.6)."""
    from envs.collect import collect
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    root = tmp_path_factory.mktemp("agents")
    store = str(root / "cartpole.zarr")
    collect("CartPole-v1", store, episodes=150, max_steps=200, workers=2, seed=0, show_progress=False)
    vae = train_vae([store], LaunchOptions(out=str(root / "vae")), preset="tiny", max_steps=150)
    mdnrnn = train_mdnrnn([store], str(vae), LaunchOptions(out=str(root / "mdnrnn")), preset="small", max_steps=600)
    return str(write_vmc_bundle(root / "bundle", vae, mdnrnn, [store], contexts=64))


def test_dream_trained_controller_beats_random_in_the_real_env(cartpole_bundle, tmp_path):
    config = CMAESConfig(generations=20, population=16, rollouts=8, max_steps=200, temperature=1.0, seed=0)
    result = train_controller(cartpole_bundle, str(tmp_path / "cmaes"), config, show_progress=False)
    rows = (tmp_path / "cmaes" / "cmaes.csv").read_text().splitlines()
    assert len(rows) == 1 + config.generations and (tmp_path / "cmaes" / "cmaes.png").stat().st_size > 1000
    assert np.isfinite(result["best_dream_return"])

    gif = tmp_path / "real_vs_dream.gif"
    trained = evaluate(cartpole_bundle, "CartPole-v1", EVAL_EPISODES, "controller", seed=EVAL_SEEDS_START, max_steps=500, gif=str(gif))
    random = evaluate(cartpole_bundle, "CartPole-v1", EVAL_EPISODES, "random", seed=EVAL_SEEDS_START, max_steps=500)
    print(f"real CartPole: dream-trained {trained.mean:.1f} +- {trained.std:.1f}, random {random.mean:.1f} +- {random.std:.1f}")
    assert trained.seeds == random.seeds
    assert trained.mean >= random.mean + MARGIN, (trained.returns, random.returns)
    assert gif.stat().st_size > 0


def test_cmaes_resumes_from_its_last_generation(cartpole_bundle, tmp_path):
    out = str(tmp_path / "run")
    tiny = CMAESConfig(generations=2, population=4, rollouts=2, max_steps=20, temperature=1.0)
    train_controller(cartpole_bundle, out, tiny, show_progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_controller(cartpole_bundle, out, tiny, show_progress=False)
    train_controller(cartpole_bundle, out, replace(tiny, generations=4), resume=True, show_progress=False)
    state = json.loads(Path(out, "cmaes_state.json").read_text())
    generations = [int(float(line.split(",")[0])) for line in Path(out, "cmaes.csv").read_text().splitlines()[1:]]
    assert state["generation"] == 4 and generations == [1, 2, 3, 4]
    assert load_controller(cartpole_bundle).num_params == len(state["mean"])


def test_cmaes_in_the_real_env_improves_with_the_population_split_over_two_ray_workers(cartpole_bundle, tmp_path):
    """The paper's procedure: C on V and M features of real frames, fitness from real rollouts."""
    import shutil

    from worldmodel.train.metrics import read_metrics

    bundle = shutil.copytree(cartpole_bundle, tmp_path / "bundle")  # the module's bundle keeps its dream C
    config = CMAESConfig(generations=5, population=8, rollouts=2, max_steps=200, where="real", workers=2,
                         envs_per_worker=4, seed=0)
    result = train_controller(str(bundle), str(tmp_path / "real"), config, show_progress=False)
    rows = read_metrics(tmp_path / "real" / "cmaes.csv")
    print("real CMA-ES on CartPole:", [(r["mean"], r["best"]) for r in rows], result)
    assert [r["generation"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["real_steps"] > rows[0]["real_steps"] > 0
    # Pre-registered: the re-judged controller beats the first generation's mean by 30 (real CartPole).
    assert result["best_real_return"] >= rows[0]["mean"] + 30
    assert load_controller(bundle).num_params == len(json.loads((tmp_path / "real" / "cmaes_state.json").read_text())["mean"])
    assert json.loads((bundle / "config.json").read_text())["controller"]["trained_in"] == "real"


def test_population_split_over_ray_workers_matches_one_batch(cartpole_bundle):
    from agents.dream_fitness import DreamFitness
    from worldmodel.bundle import load_bundle
    from worldmodel.models import Controller

    model = load_bundle(cartpole_bundle)
    params = np.random.default_rng(0).normal(0, 0.5, (6, Controller(model.controller_config()).num_params))
    settings = dict(rollouts=3, max_steps=30, temperature=1.0)
    one = DreamFitness(cartpole_bundle, workers=1, **settings)(params, seed=7)
    split = DreamFitness(cartpole_bundle, workers=2, **settings)
    try:
        np.testing.assert_allclose(one, split(params, seed=7), rtol=1e-4, atol=1e-3)
    finally:
        split.close()


def test_eval_cli_and_missing_controller(cartpole_bundle, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(cartpole_bundle, bare)
    config = json.loads((bare / "config.json").read_text())
    config.pop("controller", None)
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="no controller yet"):
        load_controller(bare)
    out = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "eval", "--bundle", cartpole_bundle, "--episodes", "2",
         "--max-steps", "50", "--out", str(tmp_path / "eval")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert set(summary) == {"controller", "random"} and len(summary["random"]["returns"]) == 2


def test_loop_appends_to_the_store_fine_tunes_v_and_m_and_resumes(cartpole_bundle, tmp_path):
    """`train loop`: each round collects into new parts of the same store, fine-tunes V and M from the
    previous weights, evolves C from the previous C and judges it; --resume continues after the last round."""
    import shutil

    from agents.loop import LoopConfig, run_loop
    from worldmodel.bundle import read_bundle_config
    from worldmodel.data import EpisodeStore
    from worldmodel.train.metrics import read_metrics

    store = str(shutil.copytree(read_bundle_config(cartpole_bundle)["provenance"]["stores"][0], tmp_path / "store.zarr"))
    before = EpisodeStore.open(store).num_episodes
    config = LoopConfig(rounds=1, episodes=4, max_steps=60, vae_steps=5, mdnrnn_steps=5, preset="tiny",
                        cmaes=CMAESConfig(generations=2, population=4, rollouts=2, max_steps=30, temperature=1.0,
                                          start="controller"),
                        judge_episodes=2, workers=1)
    run = tmp_path / "loop"
    run_loop(store, cartpole_bundle, str(run), config)
    with pytest.raises(FileExistsError, match="--resume"):
        run_loop(store, cartpole_bundle, str(run), config)
    final = run_loop(store, cartpole_bundle, str(run), replace(config, rounds=2, vae_steps=0), resume=True)

    rows = read_metrics(run / "rounds.csv")
    assert [r["round"] for r in rows] == [1, 2]
    assert [r["episodes_in_store"] for r in rows] == [before + 4, before + 8]
    assert {"real_return", "dream_return", "gap"} <= set(rows[0]) and (run / "rounds.png").stat().st_size > 1000
    # Round 1 fine-tuned V and M from the bundle's weights; round 2 kept V and fine-tuned round 1's M.
    provenance = read_bundle_config(run / "round_1" / "bundle")["provenance"]
    assert provenance["vae"]["init_from"].endswith("round_1/start/vae")
    assert provenance["mdnrnn"]["init_from"].endswith("round_1/start/mdnrnn")
    assert read_bundle_config(run / "round_2" / "bundle")["provenance"]["mdnrnn"]["init_from"].endswith("round_2/start/mdnrnn")
    assert read_bundle_config(final)["controller"]["trained_in"] == "dream"
