"""Tests for the V-M-C models: shapes, batch independence, step == forward,
the mixture likelihood, seeded sampling, learning, the controller's CMA-ES
interface, configs and safetensors round trips. Tiny configs, CPU, seconds."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from worldmodel.models import (
    MDNRNN,
    Controller,
    ControllerConfig,
    ConvVAE,
    MDNOutput,
    MDNRNNConfig,
    VAEConfig,
    gmm_nll,
    to_model_input,
    to_uint8_images,
)
from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec, VectorSpec

TINY_VAE = VAEConfig(latent_dim=4, encoder_channels=(4, 8, 8, 8), decoder_channels=(8, 8, 4))


def tiny_mdn(discrete: bool = False, vector_dim: int = 0) -> MDNRNNConfig:
    return MDNRNNConfig(
        latent_dim=4,
        action_dim=3,
        discrete_actions=discrete,
        vector_dim=vector_dim,
        hidden_size=16,
        num_mixtures=3,
    )


def make_actions(cfg: MDNRNNConfig, b: int, t: int, gen: torch.Generator) -> torch.Tensor:
    if cfg.discrete_actions:
        return torch.randint(0, cfg.action_dim, (b, t), generator=gen)
    return torch.rand(b, t, cfg.action_dim, generator=gen) * 2 - 1


def make_sequence(cfg: MDNRNNConfig, b: int = 3, t: int = 6, seed: int = 0) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "z": torch.randn(b, t, cfg.latent_dim, generator=gen),
        "action": make_actions(cfg, b, t, gen),
        "vector": torch.randn(b, t, cfg.vector_dim, generator=gen) if cfg.vector_dim else None,
    }


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# -- images ------------------------------------------------------------------


def test_image_conversions_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 5, 64, 64, 3), generator=gen, dtype=torch.uint8)
    x = to_model_input(images)
    assert x.shape == (2, 5, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[1, 2, 0], images[1, 2, :, :, 0].float() / 255)
    assert torch.equal(to_uint8_images(x), images)
    # Out-of-range values are clamped; in-between values round to nearest.
    y = torch.tensor([-0.5, 1.7, 0.5 / 255 + 1e-4, 0.49 / 255]).view(1, 1, 4)
    assert to_uint8_images(y).flatten().tolist() == [0, 255, 1, 0]
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(x)


# -- VAE ---------------------------------------------------------------------


def test_vae_shapes_and_paper_size() -> None:
    vae = ConvVAE(TINY_VAE)
    x = torch.rand(2, 3, 64, 64)
    recon, mu, logvar = vae(x)
    assert recon.shape == (2, 3, 64, 64) and mu.shape == (2, 4) and logvar.shape == (2, 4)
    assert 0.0 <= recon.min() and recon.max() <= 1.0
    assert vae.decode(torch.randn(1, 4)).shape == (1, 3, 64, 64)
    # The paper's encoder flattens 256 x 2 x 2 = 1024 features.
    assert ConvVAE(VAEConfig()).flat_dim == 1024


def test_vae_rejects_sizes_it_cannot_make() -> None:
    with pytest.raises(ValueError, match="64x64"):
        VAEConfig(image_size=96)
    with pytest.raises(ValueError, match="decoder_channels"):
        VAEConfig(decoder_channels=(8, 8))
    vae = ConvVAE(TINY_VAE)
    with pytest.raises(ValueError, match="expects float images"):
        vae.encode(torch.rand(2, 3, 32, 32))


def test_vae_batch_of_one_matches_batch_row() -> None:
    vae = ConvVAE(TINY_VAE).eval()
    x = torch.rand(4, 3, 64, 64)
    z = torch.randn(4, 4)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        recon = vae.decode(z)
        for i in range(4):
            mu_i, logvar_i = vae.encode(x[i : i + 1])
            torch.testing.assert_close(mu_i, mu[i : i + 1])
            torch.testing.assert_close(logvar_i, logvar[i : i + 1])
            torch.testing.assert_close(vae.decode(z[i : i + 1]), recon[i : i + 1])


def test_vae_loss_terms_follow_the_original_code() -> None:
    vae = ConvVAE(TINY_VAE)
    x = torch.rand(3, 3, 64, 64)
    loss, logs = vae.loss(x, generator=torch.Generator().manual_seed(1))
    recon, mu, logvar = vae(x, generator=torch.Generator().manual_seed(1))
    expected_recon = ((recon - x) ** 2).sum(dim=(1, 2, 3)).mean()
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)
    expected_kl = torch.maximum(kl, torch.tensor(0.5 * 4)).mean()
    torch.testing.assert_close(logs["loss/recon"], expected_recon.detach())
    torch.testing.assert_close(logs["loss/kl"], expected_kl.detach())
    torch.testing.assert_close(loss, expected_recon + expected_kl)
    assert not logs["loss/recon"].requires_grad and loss.requires_grad
    # A fresh VAE has KL near 0, below the free-bits floor of 0.5 * 4.
    assert logs["loss/kl"].item() == pytest.approx(2.0)


def test_vae_learns_a_fixed_batch() -> None:
    vae = ConvVAE(TINY_VAE)
    # Structured frames (flat colours plus a ramp); pure noise would leave nothing to learn.
    colours = torch.rand(4, 3, 1, 1, generator=torch.Generator().manual_seed(3))
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64)
    x = (0.7 * colours + 0.3 * ramp).expand(4, 3, 64, 64).contiguous()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss, _ = vae.loss(x, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# -- MDN-RNN -------------------------------------------------------------------


def test_gmm_nll_matches_a_gaussian_log_pdf_for_one_component() -> None:
    gen = torch.Generator().manual_seed(0)
    b, t, z = 2, 3, 4
    z_next = torch.randn(b, t, z, generator=gen)
    mu = torch.randn(b, t, z, 1, generator=gen)
    log_sigma = 0.3 * torch.randn(b, t, z, 1, generator=gen)
    logits = torch.randn(b, t, z, 1, generator=gen)  # one component: any logit means weight 1
    sigma = log_sigma[..., 0].exp()
    log_pdf = -0.5 * ((z_next - mu[..., 0]) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    expected = -log_pdf.sum(dim=-1).mean()
    torch.testing.assert_close(gmm_nll(z_next, logits, mu, log_sigma), expected)
    # A mask averages over the kept steps only.
    mask = torch.tensor([[True, False, True], [False, False, True]])
    expected_masked = -log_pdf.sum(dim=-1)[mask].mean()
    torch.testing.assert_close(gmm_nll(z_next, logits, mu, log_sigma, mask), expected_masked)


def test_gmm_nll_of_two_components_is_the_log_of_the_weighted_sum() -> None:
    z_next = torch.tensor([0.5]).view(1, 1, 1)
    logits = torch.log(torch.tensor([0.25, 0.75])).view(1, 1, 1, 2)
    mu = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    log_sigma = torch.log(torch.tensor([1.0, 2.0])).view(1, 1, 1, 2)

    def pdf(x: float, m: float, s: float) -> float:
        return math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))

    expected = -math.log(0.25 * pdf(0.5, 0.0, 1.0) + 0.75 * pdf(0.5, 1.0, 2.0))
    assert gmm_nll(z_next, logits, mu, log_sigma).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("discrete", "vector_dim"), [(False, 0), (True, 0), (False, 2), (True, 2)])
def test_mdnrnn_shapes(discrete: bool, vector_dim: int) -> None:
    cfg = tiny_mdn(discrete, vector_dim)
    model = MDNRNN(cfg)
    seq = make_sequence(cfg, b=3, t=5)
    out, (h, c) = model(seq["z"], seq["action"], seq["vector"])
    assert isinstance(out, MDNOutput)
    assert out.logits.shape == out.mu.shape == out.log_sigma.shape == (3, 5, 4, 3)
    assert out.reward.shape == out.termination_logit.shape == (3, 5)
    assert h.shape == c.shape == (1, 3, 16)
    if vector_dim:
        assert out.vector is not None and out.vector.shape == (3, 5, vector_dim)
    else:
        assert out.vector is None
    step_out, _ = model.step(seq["z"][:, 0], seq["action"][:, 0], None if seq["vector"] is None else seq["vector"][:, 0])
    assert step_out.logits.shape == (3, 4, 3) and step_out.reward.shape == (3,)


def test_mdnrnn_rejects_bad_inputs() -> None:
    model = MDNRNN(tiny_mdn(discrete=True))
    z = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="integer indices"):
        model(z, torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="vector_dim=0"):
        model(z, torch.zeros(2, 3, dtype=torch.long), torch.randn(2, 3, 2))
    with pytest.raises(ValueError, match="needs a vector"):
        MDNRNN(tiny_mdn(vector_dim=2))(z, torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="box actions"):
        MDNRNN(tiny_mdn())(z, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        model.loss(z[:, :1], torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.bool))


@pytest.mark.parametrize(("discrete", "vector_dim"), [(False, 0), (True, 2)])
def test_mdnrnn_step_by_step_equals_forward(discrete: bool, vector_dim: int) -> None:
    cfg = tiny_mdn(discrete, vector_dim)
    model = MDNRNN(cfg).eval()
    seq = make_sequence(cfg, b=2, t=5)
    z, action, vector = seq["z"], seq["action"], seq["vector"]
    with torch.no_grad():
        full, (h_full, c_full) = model(z, action, vector)
        state = model.initial_state(2, "cpu")
        for t in range(5):
            out, state = model.step(z[:, t], action[:, t], None if vector is None else vector[:, t], state)
            expected = full.at(t)
            for name, got in out._asdict().items():
                want = getattr(expected, name)
                if want is None:
                    assert got is None
                else:
                    torch.testing.assert_close(got, want, msg=f"{name} differs at t={t}")
    torch.testing.assert_close(state[0], h_full)
    torch.testing.assert_close(state[1], c_full)


@pytest.mark.parametrize("discrete", [False, True])
def test_mdnrnn_batch_of_one_matches_batch_row(discrete: bool) -> None:
    cfg = tiny_mdn(discrete, vector_dim=2)
    model = MDNRNN(cfg).eval()
    seq = make_sequence(cfg, b=4, t=5)
    z, action, vector = seq["z"], seq["action"], seq["vector"]
    assert vector is not None
    with torch.no_grad():
        full, _ = model(z, action, vector)
        stepped, _ = model.step(z[:, 0], action[:, 0], vector[:, 0])
        for i in range(4):
            one, _ = model(z[i : i + 1], action[i : i + 1], vector[i : i + 1])
            torch.testing.assert_close(one.mu, full.mu[i : i + 1])
            torch.testing.assert_close(one.reward, full.reward[i : i + 1])
            # step with B = 1 keeps the batch dimension (no squeeze()).
            one_step, (h, _) = model.step(z[i : i + 1, 0], action[i : i + 1, 0], vector[i : i + 1, 0])
            assert one_step.reward.shape == (1,) and one_step.mu.shape == (1, 4, 3) and h.shape == (1, 1, 16)
            torch.testing.assert_close(one_step.logits, stepped.logits[i : i + 1])
            torch.testing.assert_close(one_step.vector, stepped.vector[i : i + 1])


def _mixture_output(b: int = 2, z: int = 3) -> MDNOutput:
    """A fixed mixture whose component 1 dominates, with distinct means."""
    logits = torch.tensor([0.0, 2.0, -1.0]).expand(b, z, 3).clone()
    mu = torch.tensor([-5.0, 3.0, 10.0]).expand(b, z, 3).clone()
    log_sigma = torch.zeros(b, z, 3)
    return MDNOutput(logits, mu, log_sigma, torch.zeros(b), torch.zeros(b))


def test_sample_next_z_is_seeded() -> None:
    model = MDNRNN(tiny_mdn())
    cfg = model.config
    out, _ = model(torch.randn(3, 2, cfg.latent_dim), torch.rand(3, 2, cfg.action_dim))
    step = out.at(1)
    a = model.sample_next_z(step, 1.0, torch.Generator().manual_seed(7))
    b = model.sample_next_z(step, 1.0, torch.Generator().manual_seed(7))
    c = model.sample_next_z(step, 1.0, torch.Generator().manual_seed(8))
    assert a.shape == (3, cfg.latent_dim)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Works on [B, T, ...] outputs as well.
    assert model.sample_next_z(out, 0.5, torch.Generator().manual_seed(0)).shape == (3, 2, cfg.latent_dim)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            model.sample_next_z(step, bad)


def test_low_temperature_concentrates_on_the_dominant_mean() -> None:
    model = MDNRNN(tiny_mdn())
    out = _mixture_output(b=64, z=3)
    cold = model.sample_next_z(out, 1e-4, torch.Generator().manual_seed(0))
    assert (cold - 3.0).abs().max() < 0.1
    # At temperature 1 the other components show up and the spread is wide.
    warm = model.sample_next_z(out, 1.0, torch.Generator().manual_seed(0))
    assert (warm - 3.0).abs().max() > 1.0


@pytest.mark.parametrize(("discrete", "vector_dim"), [(False, 0), (True, 0), (False, 2), (True, 2)])
def test_mdnrnn_learns_a_fixed_batch(discrete: bool, vector_dim: int) -> None:
    cfg = tiny_mdn(discrete, vector_dim)
    model = MDNRNN(cfg)
    seq = make_sequence(cfg, b=4, t=8, seed=1)
    gen = torch.Generator().manual_seed(2)
    reward = torch.randn(4, 8, generator=gen)
    terminated = torch.zeros(4, 8, dtype=torch.bool)
    terminated[:, -1] = True
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[0, 6:] = False  # a padded tail
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, logs = model.loss(seq["z"], seq["action"], reward, terminated, seq["vector"], mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    expected_keys = {"loss/gmm", "loss/reward", "loss/termination"} | ({"loss/vector"} if vector_dim else set())
    assert set(logs) == expected_keys
    assert all(not v.requires_grad for v in logs.values())
    assert losses[-1] < 0.8 * losses[0], losses


def test_mdnrnn_loss_ignores_masked_steps() -> None:
    cfg = tiny_mdn(vector_dim=2)
    model = MDNRNN(cfg)
    seq = make_sequence(cfg, b=2, t=5)
    reward = torch.randn(2, 5)
    terminated = torch.zeros(2, 5, dtype=torch.bool)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    loss, _ = model.loss(seq["z"], seq["action"], reward, terminated, seq["vector"], mask)
    # Garbage on masked steps changes nothing (the LSTM is causal, so earlier outputs are unaffected).
    z2, vector2, reward2 = seq["z"].clone(), seq["vector"].clone(), reward.clone()
    z2[1, 3:] = 100.0
    vector2[1, 3:] = -100.0
    reward2[1, 3:] = 50.0
    loss2, _ = model.loss(z2, seq["action"], reward2, terminated, vector2, mask)
    torch.testing.assert_close(loss, loss2)


# -- controller ----------------------------------------------------------------


def test_controller_box_actions_within_bounds() -> None:
    cfg = ControllerConfig(input_dim=6, action_dim=3, low=(-1.0, 0.0, 0.0), high=(1.0, 1.0, 0.5))
    ctrl = Controller(cfg)
    ctrl.set_flat(torch.randn(ctrl.num_params) * 10)  # large weights push tanh to its ends
    actions = ctrl.act(torch.randn(256, 6) * 10)
    assert actions.shape == (256, 3) and actions.dtype == torch.float32
    low, high = torch.tensor(cfg.low), torch.tensor(cfg.high)
    assert torch.all(actions >= low) and torch.all(actions <= high)
    # Zero parameters give the middle of the box.
    ctrl.set_flat(torch.zeros(ctrl.num_params))
    torch.testing.assert_close(ctrl.act(torch.randn(2, 6)), ((low + high) / 2).expand(2, 3))


def test_controller_discrete_actions() -> None:
    ctrl = Controller(ControllerConfig(input_dim=5, action_dim=4, discrete_actions=True))
    features = torch.randn(7, 5)
    actions = ctrl.act(features)
    assert actions.shape == (7,) and actions.dtype == torch.int64
    assert torch.all((actions >= 0) & (actions < 4))
    with torch.no_grad():
        assert torch.equal(actions, ctrl.linear(features).argmax(dim=-1))


def test_controller_flat_round_trip() -> None:
    ctrl = Controller(ControllerConfig(input_dim=288, action_dim=3, low=(-1.0, 0.0, 0.0), high=(1.0, 1.0, 1.0)))
    assert ctrl.num_params == 867  # the paper's CarRacing controller
    vec = torch.randn(ctrl.num_params)
    ctrl.set_flat(vec)
    assert torch.equal(ctrl.get_flat(), vec)
    assert torch.equal(ctrl.linear.weight[1], vec[288:576]) and torch.equal(ctrl.linear.bias, vec[-3:])
    vec.zero_()  # set_flat copies: later edits to vec do not leak into the module
    assert ctrl.get_flat().abs().sum() > 0
    with pytest.raises(ValueError, match="flat parameter vector"):
        ctrl.set_flat(torch.zeros(10))


@pytest.mark.parametrize("discrete", [False, True])
def test_population_actions_match_act_per_row(discrete: bool) -> None:
    if discrete:
        cfg = ControllerConfig(input_dim=6, action_dim=4, discrete_actions=True)
    else:
        cfg = ControllerConfig(input_dim=6, action_dim=2, low=(-2.0, 0.0), high=(2.0, 1.0))
    ctrl = Controller(cfg)
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(9, ctrl.num_params, generator=gen)
    features = torch.randn(9, 6, generator=gen)
    population = ctrl.population_actions(params, features)
    for n in range(9):
        ctrl.set_flat(params[n])
        single = ctrl.act(features[n : n + 1])
        assert torch.equal(population[n : n + 1], single), n
    # Also agrees with a plain nn.Linear evaluation (up to float rounding).
    ctrl.set_flat(params[0])
    if not discrete:
        expected = ctrl.low + (torch.tanh(ctrl.linear(features[:1])) + 1) / 2 * (ctrl.high - ctrl.low)
        torch.testing.assert_close(population[:1], expected)


def test_controller_config_checks_bounds() -> None:
    with pytest.raises(ValueError, match="2 low and high"):
        ControllerConfig(input_dim=4, action_dim=2, low=(0.0,), high=(1.0,))
    with pytest.raises(ValueError, match="finite"):
        ControllerConfig(input_dim=4, action_dim=1, low=(-math.inf,), high=(1.0,))
    with pytest.raises(ValueError, match="no low/high"):
        ControllerConfig(input_dim=4, action_dim=2, discrete_actions=True, low=(0.0, 0.0), high=(1.0, 1.0))


# -- configs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        VAEConfig(),
        TINY_VAE,
        MDNRNNConfig(),
        tiny_mdn(discrete=True, vector_dim=2),
        ControllerConfig(input_dim=288, action_dim=3, low=(-1.0, 0.0, 0.0), high=(1.0, 1.0, 1.0)),
        ControllerConfig(input_dim=8, action_dim=4, discrete_actions=True),
    ],
)
def test_config_json_round_trip(config) -> None:
    data = json.loads(json.dumps(config.to_dict()))
    restored = type(config).from_dict(data)
    assert restored == config
    assert all(type(getattr(restored, k)) is type(getattr(config, k)) for k in data)


def test_config_from_dict_names_unknown_and_missing_keys() -> None:
    with pytest.raises(ValueError, match="latent_dimm"):
        VAEConfig.from_dict({**VAEConfig().to_dict(), "latent_dimm": 8})
    with pytest.raises(ValueError, match="input_dim"):
        ControllerConfig.from_dict({"action_dim": 2, "discrete_actions": True})
    with pytest.raises(ValueError):
        MDNRNNConfig.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


def test_configs_from_spec() -> None:
    box = EnvSpec(ImageSpec(64, 64, 3), ActionSpec.box([-1, 0, 0], [1, 1, 1]), VectorSpec(("speed", "angle")))
    assert VAEConfig.from_spec(box, latent_dim=8) == VAEConfig(latent_dim=8)
    m = MDNRNNConfig.from_spec(box)
    assert (m.action_dim, m.discrete_actions, m.vector_dim) == (3, False, 2)
    c = ControllerConfig.from_spec(box, input_dim=288)
    assert (c.action_dim, c.low, c.high) == (3, (-1.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    discrete = EnvSpec(ImageSpec(64, 64, 3), ActionSpec.discrete(6))
    m = MDNRNNConfig.from_spec(discrete, hidden_size=32)
    assert (m.action_dim, m.discrete_actions, m.vector_dim, m.hidden_size) == (6, True, 0, 32)
    assert ControllerConfig.from_spec(discrete, input_dim=10).discrete_actions
    with pytest.raises(ValueError, match="64x64"):
        VAEConfig.from_spec(EnvSpec(ImageSpec(96, 96, 3), ActionSpec.discrete(2)))


# -- safetensors ----------------------------------------------------------------


def _reload(module: torch.nn.Module, fresh: torch.nn.Module, path) -> torch.nn.Module:
    save_file(module.state_dict(), str(path))
    fresh.load_state_dict(load_file(str(path)))
    return fresh.eval()


def test_safetensors_round_trip(tmp_path) -> None:
    vae = ConvVAE(TINY_VAE).eval()
    vae2 = _reload(vae, ConvVAE(VAEConfig.from_dict(TINY_VAE.to_dict())), tmp_path / "vae.safetensors")
    x = torch.rand(2, 3, 64, 64)
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(vae.encode(x)[0], vae2.encode(x)[0])
        assert torch.equal(vae.decode(z), vae2.decode(z))

    cfg = tiny_mdn(discrete=True, vector_dim=2)
    mdn = MDNRNN(cfg).eval()
    mdn2 = _reload(mdn, MDNRNN(cfg), tmp_path / "mdn.safetensors")
    seq = make_sequence(cfg)
    with torch.no_grad():
        out, _ = mdn(seq["z"], seq["action"], seq["vector"])
        out2, _ = mdn2(seq["z"], seq["action"], seq["vector"])
    for a, b in zip(out, out2):
        assert torch.equal(a, b)

    ccfg = ControllerConfig(input_dim=6, action_dim=2, low=(-1.0, 0.0), high=(1.0, 1.0))
    ctrl = Controller(ccfg)
    ctrl2 = _reload(ctrl, Controller(ccfg), tmp_path / "ctrl.safetensors")
    assert set(load_file(str(tmp_path / "ctrl.safetensors"))) == {"linear.weight", "linear.bias"}
    f = torch.randn(5, 6)
    assert torch.equal(ctrl.act(f), ctrl2.act(f))


def test_predict_delta_makes_means_offsets_from_the_current_latent() -> None:
    from worldmodel.models import MDNRNN, MDNRNNConfig

    cfg = MDNRNNConfig(latent_dim=4, action_dim=2, discrete_actions=True, vector_dim=3, hidden_size=8,
                       num_mixtures=2, predict_delta=True)
    model = MDNRNN(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every head outputs 0: the prediction is "no change"
    z = torch.randn(2, 5, 4)
    vector = torch.randn(2, 5, 3)
    out, _ = model(z, torch.zeros(2, 5, dtype=torch.long), vector)
    torch.testing.assert_close(out.mu, z[..., None].expand(-1, -1, -1, 2))
    torch.testing.assert_close(out.vector, vector)
    one, _ = model.step(z[:, 0], torch.zeros(2, dtype=torch.long), vector[:, 0])
    torch.testing.assert_close(one.mu, z[:, 0, :, None].expand(-1, -1, 2))
