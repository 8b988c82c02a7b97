"""Dream environments (envs/dream.py) and the play tool (envs/play.py), VMC backend only.

The diffusion backend does not exist yet; it plugs in through
`load_bundle(..., backend=...)` and these tests will take it as a parameter.
Most tests use the tiny CartPole bundle of the `vmc_runs` fixture (Discrete(2)
actions, a Dict(image, vector) observation); the box-action checks use an
untrained in-memory model with CarRacing's action box, because they are
about the interface, not the dynamics.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldmodel
from envs.dream import DreamEnv, DreamVectorEnv
from worldmodel.bundle import BundleError

ENV_ID = "worldmodel/Dream-v0"
# What check_env may say about a dream: the latent and the vector observation are unbounded by nature.
EXPECTED_WARNINGS = ("minimum value is -infinity", "maximum value is infinity")


@pytest.fixture
def bundle(vmc_runs) -> str:
    return vmc_runs["bundle"]


@pytest.fixture
def headless(monkeypatch):
    """pygame without a screen: check_env and play open windows on SDL's dummy driver."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")


def box_model():
    """An untrained VMC model with CarRacing's action box and a 2-dim vector, and 3 random start contexts."""
    from worldmodel.models import MDNRNN, ConvVAE, MDNRNNConfig, VAEConfig
    from worldmodel.models.vmc import VMCWorldModel
    from worldmodel.models.world import Context
    from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec, VectorSpec

    spec = EnvSpec(ImageSpec(64, 64, 3), ActionSpec.box([-1, 0, 0], [1, 1, 1]), VectorSpec(("speed", "yaw")))
    torch.manual_seed(0)
    vae = ConvVAE(VAEConfig(latent_dim=8, encoder_channels=(4, 8, 8, 16), decoder_channels=(16, 8, 4)))
    rng = np.random.default_rng(0)
    contexts = Context(
        rng.integers(0, 256, (3, 4, 64, 64, 3), dtype=np.uint8),
        rng.uniform(0, 1, (3, 4, 3)).astype(np.float32),
        rng.normal(size=(3, 4, 2)).astype(np.float32),
    )
    mdnrnn = MDNRNN(MDNRNNConfig.from_spec(spec, latent_dim=8, hidden_size=16, num_mixtures=2))
    return VMCWorldModel(spec, vae, mdnrnn, contexts=contexts)


def _row(obs, i: int):
    return {k: v[i] for k, v in obs.items()} if isinstance(obs, dict) else obs[i]


def assert_obs_close(a, b) -> None:
    """Equal up to the rounding of batched matmuls: 1 grey level in images, 1e-4 in floats."""
    pairs = [(a[k], b[k]) for k in a] if isinstance(a, dict) else [(a, b)]
    for x, y in pairs:
        atol = 1 if x.dtype == np.uint8 else 1e-4
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=atol)


def rollout(env, seed: int, actions: list) -> list:
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for action in actions:
        out.append(env.step(action))
    return out


# -- gymnasium's own checks and registration -------------------------------------------------
@pytest.mark.parametrize("observation", ["pixels", "latent"])
def test_check_env_passes(bundle, headless, observation):
    # Through gym.make so check_env also remakes the env in every declared render mode ("human" too).
    env = gym.make(ENV_ID, bundle=bundle, observation=observation, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    said = sorted({str(w.message) for w in caught})
    print(f"check_env({observation}) warned: {said}")
    assert all(any(e in s for e in EXPECTED_WARNINGS) for s in said), said
    assert env.render().shape == (256, 256, 3)


def test_check_env_passes_with_box_actions(headless):
    env = DreamEnv(model=box_model(), render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert all(any(e in str(w.message) for e in EXPECTED_WARNINGS) for w in caught)
    assert env.action_space == gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))
    assert env.observation_space["vector"].shape == (2,)


def test_make_with_module_prefix_in_a_fresh_interpreter(bundle):
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'worldmodel' not in sys.modules and 'envs' not in sys.modules\n"
        f"env = gym.make('worldmodel:{ENV_ID}', bundle={bundle!r}, observation='latent')\n"
        "obs, info = env.reset(seed=0)\n"
        "print(type(env.unwrapped).__name__, obs.shape, obs.dtype)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["DreamEnv", "(28,)", "float32"]


def test_registration_imports_nothing_heavy():
    code = (
        "import sys, worldmodel, gymnasium as gym\n"
        "print(gym.spec('worldmodel/Dream-v0').vector_entry_point, 'torch' in sys.modules, 'envs' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["envs.dream:DreamVectorEnv", "False", "False"]


def test_make_and_make_vec_by_plain_id(bundle):
    assert worldmodel.DREAM_ENV_ID == ENV_ID
    env = gym.make(ENV_ID, bundle=bundle, max_episode_steps=7)
    assert isinstance(env.unwrapped, DreamEnv) and env.spec.max_episode_steps == 7
    envs = gym.make_vec(ENV_ID, num_envs=3, bundle=bundle)  # vector_entry_point is the default mode
    assert isinstance(envs.unwrapped, DreamVectorEnv) and envs.num_envs == 3
    assert envs.single_observation_space == env.observation_space
    assert envs.observation_space["image"].shape == (3, 64, 64, 3)


# -- the vector env against single envs ------------------------------------------------------
@pytest.mark.parametrize(("observation", "num_envs"), [("latent", 1), ("latent", 3), ("pixels", 3)])
def test_vector_env_agrees_with_single_envs(bundle, observation, num_envs):
    steps, limit = 9, 4  # limit < steps: every sub-env autoresets twice on the way
    vec = gym.make_vec(ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", bundle=bundle,
                       observation=observation, max_episode_steps=limit)
    singles = [DreamEnv(bundle, observation=observation, max_episode_steps=limit) for _ in range(num_envs)]
    actions = np.random.default_rng(0).integers(0, 2, (steps, num_envs))

    obs, _ = vec.reset(seed=10)
    for i, env in enumerate(singles):
        assert_obs_close(_row(obs, i), env.reset(seed=10 + i)[0])
    ended = np.zeros(num_envs, bool)
    for t in range(steps):
        obs, reward, terminated, truncated, info = vec.step(actions[t])
        for i, env in enumerate(singles):
            if ended[i]:  # NEXT_STEP: this step resets sub-env i, as reset() does a single env
                o, _ = env.reset()
                r, term, trunc = 0.0, False, False
            else:
                o, r, term, trunc, _ = env.step(actions[t, i])
            assert_obs_close(_row(obs, i), o)
            assert (reward[i], terminated[i], truncated[i]) == pytest.approx((r, term, trunc), abs=1e-4)
        ended = terminated | truncated


class ScriptedEnds:
    """A WorldModel whose episodes end when the script says (everything else is the wrapped model)."""

    def __init__(self, model, ends: list[list[bool]]):
        self.inner, self.ends = model, iter(ends)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step_latent(self, state, action, generator=None, temperature=None):
        state, reward, _ = self.inner.step_latent(state, action, generator, temperature)
        return state, reward, torch.tensor(next(self.ends))


def test_vector_autoreset_is_next_step(bundle):
    model = worldmodel.load_bundle(bundle)
    ends = [[True, False]] + [[False, False]] * 4
    envs = DreamVectorEnv(2, model=ScriptedEnds(model, ends), observation="latent", max_episode_steps=3)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    envs.reset(seed=[5, 6])
    act = np.array([1, 0])
    expected = [  # (terminated, truncated, reset this step) per sub-env
        ([True, False], [False, False], [False, False]),  # sub-env 0 ends (the model says so)
        ([False, False], [False, False], [True, False]),  # ...and restarts: its action is ignored, reward 0
        ([False, False], [False, True], [False, False]),  # sub-env 1 reaches max_episode_steps=3
        ([False, False], [False, False], [False, True]),  # ...and restarts
        ([False, False], [True, False], [False, False]),  # sub-env 0: 3 steps since its restart
    ]
    observations = []
    for terminated, truncated, resets in expected:
        obs, reward, term, trunc, info = envs.step(act)
        observations.append(obs)
        assert term.tolist() == terminated and trunc.tolist() == truncated and info == {}
        assert (reward[np.array(resets)] == 0).all()
    # A restart shows what DreamEnv.reset() gives after reset(seed=s): the sub-env's own stream continues.
    for i, seed, t in ((0, 5, 1), (1, 6, 3)):
        twin = DreamEnv(model=model, observation="latent")
        twin.reset(seed=seed)
        np.testing.assert_allclose(observations[t][i], twin.reset()[0], atol=1e-5)
        assert not np.allclose(observations[t][i], observations[t - 1][i])


def test_seeding_reproduces_trajectories(bundle):
    env = DreamEnv(bundle, observation="latent", temperature=1.5)
    actions = [1, 0, 0, 1, 1, 0]
    a, b, c = rollout(env, 3, actions), rollout(env, 3, actions), rollout(env, 4, actions)
    for x, y in zip(a[1:], b[1:]):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:4] == y[1:4]
    np.testing.assert_array_equal(a[0], b[0])
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a[1:], c[1:]))
    # Unseeded resets continue the seeded stream, so they too repeat.
    env.reset(seed=3)
    again = [env.reset()[0] for _ in range(3)]
    env.reset(seed=3)
    np.testing.assert_array_equal(np.stack(again), np.stack([env.reset()[0] for _ in range(3)]))


def test_wrappers_stack_on_top(bundle):
    env = gym.wrappers.RecordEpisodeStatistics(gym.make(ENV_ID, bundle=bundle, max_episode_steps=5))
    env.reset(seed=0)
    for steps in range(1, 6):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert info["episode"]["l"] == steps and (terminated or steps == 5 and truncated)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(
        gym.make_vec(ENV_ID, num_envs=2, bundle=bundle, observation="latent", max_episode_steps=3)
    )
    envs.reset(seed=0)
    for _ in range(4):
        _, _, terminated, truncated, info = envs.step(envs.action_space.sample())
        if "episode" in info:
            break
    assert info["_episode"].any() and (info["episode"]["l"][info["_episode"]] <= 3).all()


def test_render_modes(bundle, headless):
    env = DreamEnv(bundle, observation="latent", render_mode="rgb_array", render_scale=2)
    env.reset(seed=0)
    assert env.render().shape == (128, 128, 3)  # latent mode decodes the frame only to render it
    human = DreamEnv(bundle, render_mode="human")
    human.reset(seed=0), human.step(0)
    assert human.render() is None
    human.close(), human.close()
    envs = DreamVectorEnv(2, bundle, render_mode="rgb_array")
    envs.reset(seed=0)
    frames = envs.render()
    assert len(frames) == 2 and frames[0].shape == (256, 256, 3)


# -- clear errors ------------------------------------------------------------------------------
def test_bad_arguments_get_clear_errors(bundle, tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        DreamEnv(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="exactly one of bundle=PATH"):
        DreamEnv()
    with pytest.raises(BundleError, match="unknown backend 'gan'"):
        gym.make(ENV_ID, bundle=bundle, backend="gan")
    with pytest.raises(BundleError, match="has no 'diffusion' backend"):
        DreamEnv(bundle, backend="diffusion")
    with pytest.raises(ValueError, match="observation must be one of pixels, latent"):
        DreamEnv(bundle, observation="rgb")
    with pytest.raises(ValueError, match="render_mode must be None or one of"):
        DreamEnv(bundle, render_mode="ansi")
    with pytest.raises(ValueError, match="max_episode_steps"):
        DreamVectorEnv(2, bundle, max_episode_steps=0)
    model = worldmodel.load_bundle(bundle)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        DreamEnv(model=model, temperature=0.0)
    with pytest.raises(ValueError, match="does not match"):
        DreamEnv(model=model, backend="diffusion")
    env = DreamEnv(model=model)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)
    env.reset(seed=0)
    for bad, message in [(2, r"must be in \[0, 2\)"), (0.5, "must be integers"), (np.array([0, 1]), r"Discrete\(2\)"),
                         (np.nan, "must be integers")]:
        with pytest.raises(ValueError, match=f"DreamEnv.step: .*{message}"):
            env.step(bad)
    envs = DreamVectorEnv(2, model=model)
    envs.reset(seed=[1, 2])
    with pytest.raises(ValueError, match=r"DreamVectorEnv.step: expected 2 discrete actions"):
        envs.step(np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"must be in \[0, 2\)"):
        envs.step(np.array([0, 3]))
    with pytest.raises(ValueError, match="3 seeds for 2 envs"):
        envs.reset(seed=[1, 2, 3])


def test_box_actions_are_checked():
    env = DreamEnv(model=box_model())
    env.reset(seed=0)
    obs, reward, *_ = env.step([0.5, 1.0, 0.0])  # a list, float64: what people type
    assert obs["image"].dtype == np.uint8 and obs["vector"].dtype == np.float32 and isinstance(reward, float)
    for bad, message in [([0.0, 0.0], r"Box\(.*shape=\(3,\)\)"), ([0.0, 2.0, 0.0], r"must lie in \[\[-1.0, 0.0, 0.0\]"),
                         ([np.nan, 0.0, 0.0], "NaN or infinite"), ([[0.0, 0.0, 0.0]], r"Box\(.*shape=\(3,\)\)")]:
        with pytest.raises(ValueError, match=f"DreamEnv.step: .*{message}"):
            env.step(bad)
    env.step(np.array([-1 - 5e-7, 0, 1 + 5e-7], np.float64))  # float rounding of a bound is no error (the spec's tolerance)
    envs = DreamVectorEnv(2, model=env.model)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        envs.step(np.array([[0, 0, 0], [np.nan, 0, 0]], np.float32))
    with pytest.raises(ValueError, match="must lie in"):
        envs.step(np.array([[0, 0, 0], [0, -1, 0]], np.float32))


# -- play ------------------------------------------------------------------------------------
class RecordingModel:
    """A WorldModel that notes the actions it is stepped with (everything else is the wrapped model)."""

    def __init__(self, model):
        self.inner, self.actions = model, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, state, action, generator=None, temperature=None):
        self.actions.append(action.tolist())
        return self.inner.step(state, action, generator, temperature)


def test_play_headless_with_scripted_keys(bundle, headless, tmp_path):
    import imageio.v3 as iio
    import pygame

    from envs.play import action_for, play

    key = lambda kind, k: pygame.event.Event(kind, key=k)  # noqa: E731
    script = iter([
        [key(pygame.KEYDOWN, pygame.K_1)], [], [key(pygame.KEYUP, pygame.K_1)], [],
        [key(pygame.KEYDOWN, pygame.K_r)], [key(pygame.KEYDOWN, pygame.K_9)],  # 9 is no action of Discrete(2): 0
        [key(pygame.KEYDOWN, pygame.K_ESCAPE)], [key(pygame.KEYDOWN, pygame.K_1)],
    ])
    model = RecordingModel(worldmodel.load_bundle(bundle))
    result = play(model=model, record=tmp_path / "ride.gif", fps=0, seed=0, events=lambda: next(script, []))
    assert model.actions == [[1], [1], [0], [0], [0]] and result.steps == 5 and result.episodes >= 1
    frames = iio.imread(result.record, index=None)
    # 7 frames shown (the first, 5 steps, the reset); the GIF writer merges identical neighbours.
    assert 1 < len(frames) <= 7 and frames.shape[1:] == (64 * 6, 64 * 6, 3)

    car = box_model().spec
    assert action_for(car, [pygame.K_LEFT, pygame.K_UP]).tolist() == [-1.0, 1.0, 0.0]
    assert action_for(car, [pygame.K_RIGHT, pygame.K_DOWN]) == pytest.approx([1.0, 0.0, 0.8])
    assert action_for(car, []).tolist() == [0.0, 0.0, 0.0]


def test_play_command(bundle, headless, tmp_path, capsys):
    from worldmodel.cli import main

    assert main(["play", "--bundle", bundle, "--steps", "3", "--fps", "0", "--seed", "1",
                 "--record", str(tmp_path / "r.gif")]) == 0
    out = capsys.readouterr().out
    assert "played 3 steps" in out and (tmp_path / "r.gif").stat().st_size > 0
    assert main(["play", "--bundle", str(tmp_path / "none"), "--steps", "1"]) == 2
    assert "no bundle at" in capsys.readouterr().err
