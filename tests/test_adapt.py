"""Pretraining on several envs and adapting to a new one (issue 13): one backbone learns a discrete env
with vectors (real CartPole) and a Box env without; `worldmodel adapt` teaches it real Pong by LoRA,
leaving the base bundle as it was, and the adapted bundle is a whole simulator."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import worldmodel
from conftest import step_dream_env
from worldmodel.cli import main

STEPS = 4


def digests(directory) -> dict[str, str]:
    return {str(f.relative_to(directory)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(Path(directory).rglob("*")) if f.is_file()}


def weights_bytes(directory) -> int:
    return sum(f.stat().st_size for f in Path(directory).rglob("*.safetensors") if f.name != "contexts.safetensors")


@pytest.fixture(scope="module")
def pong_store(tmp_path_factory) -> str:
    """Real Pong frames: 3 short episodes, collected in this process."""
    from envs.collect import collect

    location = str(tmp_path_factory.mktemp("pong") / "pong.zarr")
    collect("ALE/Pong-v5", location, episodes=3, max_steps=12, workers=0, seed=0, show_progress=False, policy="random")
    return location


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, cartpole_store, box_bundle) -> dict[str, str]:
    """A tiny backbone trained on CartPole (discrete, vector) and the Box store (no vector), bundled for Box
    with no --store: its start contexts come from the run's Box store."""
    from worldmodel.bundle import add_diffusion_to_bundle
    from worldmodel.train.diffusion import train_diffusion
    from worldmodel.train.launcher import LaunchOptions

    root = tmp_path_factory.mktemp("pretrained")
    box_store = str(Path(box_bundle).parent / "store.zarr")
    model = train_diffusion([cartpole_store, box_store], LaunchOptions(out=str(root / "run")), preset="tiny",
                            max_steps=STEPS, store_weights=[1.0, 1.0])
    bundle = add_diffusion_to_bundle(root / "bundle", model, None, env="BoxTest-v0")
    return {"run": str(root / "run"), "model": str(model), "bundle": str(bundle), "box_store": box_store}


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, pretrained, pong_store) -> dict:
    root = tmp_path_factory.mktemp("adapted")
    before = digests(pretrained["bundle"])
    out = root / "pong-lora"
    assert main(["adapt", "--bundle", pretrained["bundle"], "--store", pong_store, "--out", str(out), "--method", "lora",
                 "--rank", "1", "--preset", "tiny", "--max-steps", str(STEPS), "--contexts", "4"]) == 0
    return {"bundle": str(out), "run": f"{out}.run", "before": before}


def test_one_backbone_learns_envs_of_different_action_spaces(pretrained, cartpole_store):
    saved = json.loads((Path(pretrained["model"]) / "diffusion.json").read_text())
    envs = saved["config"]["envs"]
    assert [(e["name"], e["action_dim"], e["discrete_actions"], e["vector_dim"]) for e in envs] == [
        ("CartPole-v1", 2, True, 4), ("BoxTest-v0", 3, False, 0)]
    assert [record["stores"] for record in saved["envs"]] == [[cartpole_store], [pretrained["box_store"]]]
    assert saved["training"]["store_weights"] == [1.0, 1.0] and saved["training"]["store_envs"] == [0, 1]
    rows = (Path(pretrained["run"]) / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1 and "loss/vector" in rows[0]  # CartPole's vectors train its head's vector output
    # The bundle simulates the Box env, from the run's own Box episodes, and says what it was pretrained on.
    model = worldmodel.load_bundle(pretrained["bundle"], "diffusion")
    assert model.spec.env_id == "BoxTest-v0" and model.env == 1 and model.contexts.frames.shape[0] == 64
    info = worldmodel.bundle.bundle_summary(pretrained["bundle"])
    assert info["diffusion"]["pretrained_envs"] == ["CartPole-v1", "BoxTest-v0"]
    assert info["diffusion"]["simulates"] == "BoxTest-v0"


def test_store_weights_must_fit_the_stores(cartpole_store, tmp_path, capsys):
    assert main(["train", "diffusion", "--store", cartpole_store, "--store-weights", "1,2", "--preset", "tiny",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--store-weights has 2 weights for 1 stores" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_adapt_lora_leaves_the_base_bundle_and_the_unets_base_weights_as_they_were(pretrained, adapted):
    from safetensors.torch import load_file

    from worldmodel.train.launcher import final_checkpoint_dir
    from worldmodel.train.loop import MODEL_FILE

    assert digests(pretrained["bundle"]) == adapted["before"]
    base = load_file(str(Path(pretrained["bundle"]) / "diffusion" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(final_checkpoint_dir(adapted["run"]) / MODEL_FILE))
    frozen = {k.removeprefix("unet.").replace(".base_layer", ""): v for k, v in trained.items()
              if k.startswith("unet.") and "lora_" not in k}
    assert set(frozen) == set(base)
    assert all(torch.equal(frozen[k], base[k]) for k in base)
    lora = [k for k in trained if "lora_B" in k]
    assert lora and any(trained[k].abs().sum() > 0 for k in lora)  # the adapter did learn


def test_the_adapted_bundle_is_small_and_a_whole_simulator(pretrained, adapted, pong_store):
    bundle = adapted["bundle"]
    config = json.loads((Path(bundle) / "config.json").read_text())
    assert config["diffusion"]["adapter"] == {"method": "lora", "rank": 1}
    assert not (Path(bundle) / "diffusion").exists() and (Path(bundle) / "diffusion_lora" / "adapter_config.json").is_file()
    # The tiny preset's head is a third of the backbone (its projection from the frame), the UNet most of the rest.
    assert weights_bytes(bundle) < 0.4 * weights_bytes(pretrained["bundle"])
    assert weights_bytes(Path(bundle) / "diffusion_lora") < 0.1 * weights_bytes(Path(pretrained["bundle"]) / "diffusion")
    model = worldmodel.load_bundle(bundle, "diffusion")
    assert model.spec.env_id == "ALE/Pong-v5" and model.env == 2
    image, reward = step_dream_env(bundle, 3, backend="diffusion")
    assert image.shape == (64, 64, 3) and np.isfinite(reward)
    assert main(["info", bundle]) == 0


def test_the_adapted_bundle_serves(adapted):
    from envs.remote import RemoteEnv
    from services.server import ServerConfig, start_server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    run = (lambda coroutine: asyncio.run_coroutine_threadsafe(coroutine, loop).result(120))
    running = run(start_server({"pong": adapted["bundle"]}, ServerConfig(port=0)))
    try:
        with RemoteEnv(f"127.0.0.1:{running.port}", backend="diffusion") as env:
            env.reset(seed=3)
            _, reward, *_ = env.step(np.int64(1))
            assert np.isfinite(reward)
    finally:
        run(running.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def test_an_adapted_bundle_without_its_base_says_so(pretrained, adapted, tmp_path):
    import shutil

    from worldmodel.bundle import BundleError

    moved = tmp_path / "alone"
    shutil.copytree(adapted["bundle"], moved)
    section = json.loads((moved / "config.json").read_text())
    section["diffusion"]["base"].update(absolute=str(tmp_path / "gone"), bundle="../gone")
    (moved / "config.json").write_text(json.dumps(section))
    with pytest.raises(BundleError, match="which is gone"):
        worldmodel.load_bundle(moved, "diffusion")


def test_bad_combinations_are_one_line_and_write_nothing(pretrained, vmc_runs, cartpole_store, tmp_path, capsys):
    from dataclasses import replace

    from worldmodel.data import EpisodeStore
    from worldmodel.spec import ImageSpec

    spec = replace(EpisodeStore.open(cartpole_store).spec, image=ImageSpec(32, 32, 3), vector=None)
    small = EpisodeStore.create(str(tmp_path / "small.zarr"), spec)
    with small.writer() as writer:
        n = 6
        writer.write_episode({"image": np.zeros((n, 32, 32, 3), np.uint8), "action": np.zeros(n, np.int64),
                              "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool),
                              "truncated": np.zeros(n, bool)})
    cases = [
        (["--bundle", pretrained["bundle"], "--store", small.location], "holds (32, 32, 3) frames"),
        (["--bundle", vmc_runs["bundle"], "--store", cartpole_store], "has no diffusion backend"),
        (["--bundle", pretrained["bundle"], "--store", cartpole_store, "--method", "full", "--rank", "4"], "--rank is LoRA's"),
    ]
    for argv, expected in cases:
        out = tmp_path / "out"
        assert main(["adapt", *argv, "--out", str(out), "--preset", "tiny", "--max-steps", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not Path(f"{out}.run").exists()


def test_v_learns_the_frames_of_several_envs(cartpole_store, pretrained, tmp_path):
    from worldmodel.data import EpisodeStore, StoreError, WindowSampler
    from worldmodel.models.io import load_pretrained
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.vae import train_vae

    stores = [cartpole_store, pretrained["box_store"]]
    model = train_vae(stores, LaunchOptions(out=str(tmp_path / "vae")), preset="tiny", max_steps=2)
    assert load_pretrained(model, expected="ConvVAE").config.latent_dim > 0
    opened = [EpisodeStore.open(s) for s in stores]
    assert WindowSampler(opened, 1, keys=("image",)).sample(4, np.random.default_rng(0))["image"].shape == (4, 1, 64, 64, 3)
    with pytest.raises(StoreError, match="action differ"):  # their actions are not alike: no window of both
        WindowSampler(opened, 2, keys=("image", "action"))


def test_heads_adaptation_to_an_env_with_vectors(pretrained, cartpole_store, tmp_path):
    """--method heads on CartPole (vectors normalized by the new env's own stats): no peft, no UNet change."""
    from worldmodel.bundle import write_adapted_bundle
    from worldmodel.train.adapt import adapt_diffusion
    from worldmodel.train.launcher import LaunchOptions

    adapted, config, facts = adapt_diffusion(pretrained["bundle"], [cartpole_store], LaunchOptions(out=str(tmp_path / "run")),
                                             method="heads", preset="tiny", max_steps=2, episodes=3)
    assert facts["lora_parameters"] == 0 and config.adapt["episodes"] == 3
    bundle = write_adapted_bundle(tmp_path / "bundle", adapted, pretrained["bundle"], [cartpole_store], facts,
                                  config.provenance(), contexts=4)
    assert not (bundle / "diffusion_lora").exists()
    model = worldmodel.load_bundle(bundle, "diffusion")
    assert model.config.envs[-1].name == "CartPole-v1#2" and model.config.envs[-1].vector_dim == 4
    state = model.initial_state(model.contexts.select(slice(0, 2)))
    _, transition = model.step(state, torch.zeros(2, dtype=torch.int64))
    assert transition.vector.shape == (2, 4) and torch.isfinite(transition.vector).all()
