"""The diffusion backbone on real CartPole frames: training on Ray, diffusers-format save/load,
seeded per-row sampling, and the WorldModel contract shared with V-M-C."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import worldmodel
from worldmodel.bundle import read_bundle_config
from worldmodel.models.noise import RowStreams
from worldmodel.models.world import Context, Transition
from worldmodel.train.metrics import read_metrics

STEPS = 40

def streams(keys, step: int = 0) -> RowStreams:
    """Per-row noise streams keyed `keys`, at `step` (what a DreamBatch passes its model)."""
    keys = torch.tensor(list(keys), dtype=torch.int64)
    return RowStreams(keys, torch.full_like(keys, step))



@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory, vmc_runs) -> dict[str, str]:
    """A tiny diffusion backbone trained through Ray Train, added to a copy of the V-M-C bundle."""
    from worldmodel.bundle import add_diffusion_to_bundle
    from worldmodel.train.diffusion import train_diffusion
    from worldmodel.train.launcher import LaunchOptions

    root = tmp_path_factory.mktemp("diffusion")
    model_dir = train_diffusion([vmc_runs["store"]], LaunchOptions(out=str(root / "run")), preset="tiny", max_steps=STEPS)
    bundle = root / "bundle"
    shutil.copytree(vmc_runs["bundle"], bundle)
    add_diffusion_to_bundle(bundle, model_dir, [vmc_runs["store"]])
    return {"run": str(root / "run"), "model": str(model_dir), "bundle": str(bundle), "store": vmc_runs["store"]}


def test_import_does_not_load_diffusers():
    import subprocess

    code = "import sys, worldmodel, worldmodel.models, worldmodel.models.diffusion, worldmodel.bundle; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_tiny_model_trains_and_its_loss_falls(diffusion_run):
    rows = read_metrics(Path(diffusion_run["run"]) / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1, 5))
    for key in ("loss/denoising", "loss/reward", "loss/termination", "loss/vector"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert (Path(diffusion_run["run"]) / "loss.png").stat().st_size > 1000
    # Logged losses are single small batches at random noise levels: too noisy to compare. Instead the
    # trained network and a fresh one are scored on the same real windows, noise levels and noise.
    from worldmodel.data import EpisodeStore, WindowSampler
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld

    model = worldmodel.load_bundle(diffusion_run["bundle"], "diffusion")
    torch.manual_seed(0)
    fresh = DiffusionWorld(DiffusionConfig.from_dict(model.config.to_dict())).eval()
    windows = WindowSampler(EpisodeStore.open(diffusion_run["store"]), 5, keys=("image", "action", "vector"))
    batch = {k: torch.from_numpy(v) for k, v in windows.sample(32, np.random.default_rng(0)).items()}
    vectors = model.vector_norm.normalize(batch["vector"])[:, :-1]
    with torch.no_grad():
        before, after = (
            float(w.denoising_loss(batch["image"], batch["action"][:, :-1], vectors, torch.Generator().manual_seed(1)))
            for w in (fresh, model.world)
        )
    assert after < 0.8 * before, (before, after)


def test_bundle_holds_the_unet_in_diffusers_format_and_round_trips(diffusion_run):
    from diffusers import UNet2DModel

    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld, load_diffusion, save_diffusion

    bundle = Path(diffusion_run["bundle"])
    config = read_bundle_config(bundle)
    assert config["backends"] == ["vmc", "diffusion"]
    unet = UNet2DModel.from_pretrained(bundle / "diffusion")
    assert unet.config.in_channels == 3 * (4 + 1) and unet.config.class_embed_type == "identity"

    model = worldmodel.load_bundle(bundle, "diffusion")
    assert model.backend == "diffusion" and model.spec == config["spec"]
    for key, value in unet.state_dict().items():
        assert torch.equal(model.world.unet.state_dict()[key], value), key

    # save -> load gives a network with identical outputs
    again = load_diffusion(save_diffusion(model.world, bundle.parent / "resaved"))
    x, sigma = torch.randn(2, 3, 64, 64), torch.tensor([0.3, 2.0])
    context = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    actions = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    vectors = torch.randn(2, 4, 4)
    outputs = [w.denoise(x, sigma, context, w.condition_embedding(actions, vectors)) for w in (model.world, again)]
    assert torch.equal(outputs[0], outputs[1])
    fresh = DiffusionWorld(DiffusionConfig.from_dict(config["diffusion"]["config"]))
    assert not torch.equal(fresh.denoise(x, sigma, context, fresh.condition_embedding(actions, vectors)), outputs[0])


def test_sampling_is_seeded_and_a_batch_row_equals_a_batch_of_one(diffusion_run):
    model = worldmodel.load_bundle(diffusion_run["bundle"], "diffusion")
    context = model.contexts.select(slice(0, 4))
    actions = torch.tensor([1, 0, 1, 1])
    state = model.initial_state(context)
    batched, transition = model.step(state, actions, streams(range(4)))
    again, twin = model.step(state, actions, streams(range(4)))
    other, _ = model.step(state, actions, streams(range(10, 14)))
    assert torch.equal(transition.image, twin.image) and torch.equal(transition.terminated, twin.terminated)
    assert not torch.equal(batched["frames"], other["frames"])
    for i in range(4):
        single_state = model.initial_state(context.select(slice(i, i + 1)))
        single, single_t = model.step(single_state, actions[i : i + 1], streams([i]))
        assert (single_t.image[0].int() - transition.image[i].int()).abs().max() <= 1
        assert torch.equal(single_t.terminated[0], transition.terminated[i])
        torch.testing.assert_close(single["h"][0], batched["h"][i], rtol=1e-5, atol=1e-5)
    # steps and seed are options: one Euler step, and a model-level seed when no generator is passed
    model.sampling_steps = 1
    seeded = [worldmodel.load_bundle(diffusion_run["bundle"], "diffusion") for _ in range(2)]
    for m in seeded:
        m.generator = torch.Generator().manual_seed(7)
    a, b = (m.step(state, actions)[1].image for m in seeded)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["vmc", "diffusion"])
def test_world_model_contract(diffusion_run, backend):
    """What DreamBatch, the envs and the service rely on, for any backend."""
    from worldmodel.models.world import cat_states, split_state
    from worldmodel.session import DreamBatch

    model = worldmodel.load_bundle(diffusion_run["bundle"], backend)
    assert model.backend == backend and model.spec.env_id == "CartPole-v1"
    assert len(model.contexts) == 16 and model.contexts.frames.shape[1:] == (4, 64, 64, 3)
    b = 3
    state = model.initial_state(model.contexts.select(slice(0, b)))
    assert all(value.shape[0] == b for value in state.values())
    seen = model.observation_of(state)
    assert isinstance(seen, Transition) and seen.image.shape == (b, 64, 64, 3) and seen.image.dtype == torch.uint8
    assert seen.vector.shape == (b, 4)
    for t in range(3):
        state, transition = model.step(state, torch.tensor([0, 1, 1]), streams(range(b), step=t))
        assert transition.image.dtype == torch.uint8 and transition.image.shape == (b, 64, 64, 3)
        assert transition.vector.dtype == torch.float32 and transition.vector.shape == (b, 4)
        assert transition.reward.dtype == torch.float32 and transition.reward.shape == (b,)
        assert transition.terminated.dtype == torch.bool and transition.terminated.shape == (b,)
        assert torch.equal(model.observation_of(state).image, transition.image)
    parts = split_state(state, [1, 2])
    assert all(torch.equal(x, y) for x, y in zip(cat_states(parts).values(), state.values()))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        model.step(state, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="shape"):
        model.step(state, torch.tensor([0, 1]))
    c = model.contexts
    with pytest.raises(ValueError, match="needs vectors"):
        model.initial_state(Context(c.frames[:1], c.actions[:1], None))
    # the session core drives it the same way
    dreams = DreamBatch(model, 2, seed=3, max_episode_steps=2)
    first = dreams.reset()
    assert first["image"].shape == (2, 64, 64, 3) and first["vector"].shape == (2, 4)
    result = dreams.step(torch.tensor([1, 0]))
    assert result.observation["image"].shape == (2, 64, 64, 3) and result.reward.dtype == np.float32


def test_bundle_cli_adds_the_diffusion_backend(diffusion_run, tmp_path):
    import subprocess

    out = tmp_path / "only_diffusion"
    result = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "bundle", "--diffusion", diffusion_run["run"], "--store",
         str(read_bundle_config(diffusion_run["bundle"])["provenance"]["stores"][0]), "--out", str(out), "--contexts", "8"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["backends"] == ["diffusion"]
    assert len(worldmodel.load_bundle(out, "diffusion").contexts) == 8


def test_box_actions_without_vector_untrained_tiny_model():
    """The other action kind, and a spec with no vector, on an untrained tiny model (no fixture)."""
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld, DiffusionWorldModel
    from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec
    from worldmodel.train.presets import get_preset

    spec = EnvSpec(ImageSpec(64, 64, 3), ActionSpec.box([-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    context = Context(rng.integers(0, 256, (2, 5, 64, 64, 3), dtype=np.uint8), rng.uniform(0, 1, (2, 5, 3)).astype(np.float32))
    world = DiffusionWorld(DiffusionConfig.from_spec(spec, **get_preset("diffusion", "tiny").model))
    model = DiffusionWorldModel(spec, world, contexts=context)  # a complete simulator: it carries its start contexts
    assert model.contexts is context
    state = model.initial_state(context)
    assert state["frames"].shape == (2, 4, 64, 64, 3) and state["actions"].shape == (2, 3, 3) and "vectors" not in state
    action = torch.tensor([[0.5, 1.0, 0.0], [-1.0, 0.2, 0.3]])
    _, transition = model.step(state, action, streams(range(2)))
    assert transition.vector is None and transition.image.shape == (2, 64, 64, 3)
    _, single = model.step(model.initial_state(context.select(slice(1, 2))), action[1:], streams([1]))
    assert (single.image[0].int() - transition.image[1].int()).abs().max() <= 1
    with pytest.raises(ValueError, match="box actions must lie"):
        model.step(state, torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="conditions on 4 frames"):
        model.initial_state(context.select(slice(0, 1)).__class__(context.frames[:1, :2], context.actions[:1, :2]))


def test_eval_model_fidelity_table_and_gif(diffusion_run, tmp_path):
    import subprocess

    import imageio.v3 as iio

    out = subprocess.run(
        [sys.executable, "-m", "worldmodel.cli", "eval-model", "--bundle", diffusion_run["bundle"], "--store",
         diffusion_run["store"], "--out", str(tmp_path), "--json", "--fidelity-episodes", "4"],
        capture_output=True, text=True, check=True,
    ).stdout
    fidelity = json.loads(out)["fidelity"]
    assert set(fidelity["rows"]) == {"copy last frame", "vmc", "diffusion"}
    for name, per in fidelity["rows"].items():
        assert per["1"]["frames"] > 0 and np.isfinite(per["1"]["psnr"]) and -1 <= per["1"]["ssim"] <= 1, name
    frames = iio.imread(fidelity["gif"], index=None)
    assert frames.ndim == 4 and frames.shape[2] == 3 * 64 * 3 + 2 * 2  # real | VMC | diffusion, 3x
    from worldmodel.evaluate import format_fidelity_table

    table = format_fidelity_table(fidelity)
    assert "PSNR@16" in table and "diffusion" in table
