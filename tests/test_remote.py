"""worldmodel/Remote-v0: gymnasium envs over a real server on 127.0.0.1, checked against in-process dreams."""

from __future__ import annotations

import asyncio
import threading
import time

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import worldmodel
from envs.remote import RemoteEnv, RemoteVectorEnv
from services.server import ServerConfig, start_server
from worldmodel.session import DreamBatch

REMOTE_ID = "worldmodel/Remote-v0"
if REMOTE_ID not in gymnasium.registry:  # `import worldmodel` registers it once it knows the id
    gymnasium.register(id=REMOTE_ID, entry_point="envs.remote:RemoteEnv", vector_entry_point="envs.remote:RemoteVectorEnv")


@pytest.fixture(scope="module")
def address(vmc_runs):
    """A server of the CartPole bundle alone (so model= may be left out), on a background asyncio loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-server-loop", daemon=True)
    thread.start()
    run = (lambda coroutine: asyncio.run_coroutine_threadsafe(coroutine, loop).result(60))
    running = run(start_server({"cartpole": vmc_runs["bundle"]}, ServerConfig(port=0)))
    yield f"127.0.0.1:{running.port}"
    run(running.stop(0))
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture(scope="module")
def cartpole(vmc_runs):
    return worldmodel.load_bundle(vmc_runs["bundle"])


def dream_env_module():
    """envs/dream.py, when it exists and seeds as the service does (env i of seed s: a fresh rng of s + i)."""
    try:
        from envs import dream
    except ImportError:
        return None
    return dream if hasattr(dream, "DreamEnv") and hasattr(dream, "DreamVectorEnv") else None


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            assert_same(a[key], b[key])
        return
    a, b = np.asarray(a), np.asarray(b.cpu() if hasattr(b, "cpu") else b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("observation", ["pixels", "latent"])
def test_check_env(address, observation):
    env = gymnasium.make(REMOTE_ID, address=address, model="cartpole", observation=observation)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_spaces_come_from_the_served_spec(address, cartpole):
    with RemoteEnv(address) as env:  # one model served: model= may be left out
        assert env.observation_space == cartpole.spec.observation_space()
        assert env.action_space == cartpole.spec.action_space()
    with RemoteEnv(address, "cartpole", observation="latent") as env:
        assert env.observation_space == gymnasium.spaces.Box(-np.inf, np.inf, (cartpole.feature_dim,), np.float32)
        observation, _ = env.reset(seed=0)
        assert observation.shape == (cartpole.feature_dim,) and observation.dtype == np.float32


def test_remote_env_agrees_step_by_step_with_the_in_process_dream(address, cartpole):
    """Same seed, same actions: RemoteEnv dreams exactly what a one-env DreamBatch (and DreamEnv) dream."""
    dream = dream_env_module()
    env = gymnasium.make(REMOTE_ID, address=address, model="cartpole", max_episode_steps=6, render_mode="rgb_array")
    local = DreamBatch(cartpole, 1, max_episode_steps=6)
    twin = dream.DreamEnv(model=cartpole, max_episode_steps=6) if dream else None
    rng = np.random.default_rng(0)
    episodes = 0
    for seed in (3, None, None, 11):
        observation, _ = env.reset(seed=seed)
        mine = local.reset(seed=seed)
        assert_same(observation, {key: value[0] for key, value in mine.items()})
        if twin is not None:
            assert_same(observation, twin.reset(seed=seed)[0])
        for _ in range(8):
            action = int(rng.integers(2))
            observation, reward, terminated, truncated, _ = env.step(action)
            result = local.step(np.array([action]))
            assert_same(observation, {key: value[0] for key, value in result.observation.items()})
            assert (reward, terminated, truncated) == (float(result.reward[0]), bool(result.terminated[0]), bool(result.truncated[0]))
            if twin is not None:
                expected = twin.step(action)
                assert_same(observation, expected[0])
                assert (reward, terminated, truncated) == expected[1:4]
            if terminated or truncated:
                episodes += 1
                break
    assert episodes >= 1
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    env.close()


def test_remote_vector_env_autoresets_on_the_next_step(address, cartpole):
    """NEXT_STEP autoreset through reset_mask; env i of seed s dreams what DreamVectorEnv's env i dreams."""
    dream = dream_env_module()
    envs = gymnasium.make_vec(REMOTE_ID, num_envs=3, address=address, model="cartpole", max_episode_steps=4)
    assert isinstance(envs, RemoteVectorEnv) and envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.single_action_space == cartpole.spec.action_space() and envs.action_space.shape == (3,)
    twin = dream.DreamVectorEnv(3, model=cartpole, max_episode_steps=4) if dream else None
    observations, _ = envs.reset(seed=5)
    assert observations["image"].shape == (3, 64, 64, 3) and observations["vector"].shape == (3, 4)
    if twin is not None:
        assert_same(observations, twin.reset(seed=5)[0])
    # Env i on its own, seeded 5 + i, as DreamBatch of one.
    singles = [DreamBatch(cartpole, 1, max_episode_steps=4) for _ in range(3)]
    for i, single in enumerate(singles):
        np.testing.assert_allclose(observations["vector"][i], single.reset(seed=5 + i)["vector"][0].numpy(), atol=1e-5)

    rng = np.random.default_rng(1)
    ended = np.zeros(3, bool)
    restarted = 0
    for t in range(9):
        actions = rng.integers(0, 2, size=3)
        observations, rewards, terminated, truncated, _ = envs.step(actions)
        if ended.any():  # the envs that ended last step were reset instead of stepped
            assert not terminated[ended].any() and not truncated[ended].any() and (rewards[ended] == 0).all()
            restarted += int(ended.sum())
        if twin is not None:
            expected = twin.step(actions)
            assert_same(observations, expected[0])
            for got, want in zip((rewards, terminated, truncated), expected[1:4]):
                np.testing.assert_array_equal(got, want)
        ended = terminated | truncated
    assert restarted >= 3  # max_episode_steps=4 over 9 steps: every env ended and restarted at least once

    with pytest.raises(ValueError, match=r"expected DTYPE_INT64 of shape \(3,\)"):
        envs.step(np.array([0, 1]))
    observations, _ = envs.reset(seed=[7, None, 9])
    assert observations["image"].shape == (3, 64, 64, 3)
    envs.close()


def test_a_list_of_seeds_resets_every_env_in_one_call(address, cartpole, monkeypatch):
    """reset(seed=[...]) is one Reset round trip, and env i dreams what a dream of one seeded with seed[i] dreams."""
    envs = RemoteVectorEnv(3, address, "cartpole")
    client, calls = envs._session.client, []
    reset = client.reset
    monkeypatch.setattr(client, "reset", lambda *args, **kwargs: calls.append(kwargs) or reset(*args, **kwargs))
    seeds = [11, 3, 7]  # not s + i: each env its own
    observations, _ = envs.reset(seed=seeds)
    assert len(calls) == 1
    for i, seed in enumerate(seeds):
        alone = DreamBatch(cartpole, 1).reset(seed=seed)
        np.testing.assert_allclose(observations["vector"][i], alone["vector"][0].numpy(), atol=1e-5)
    envs.close()


def test_bad_arguments_and_actions_raise_value_error(address):
    with pytest.raises(ValueError, match="no model 'nope'"):
        RemoteEnv(address, "nope")
    with pytest.raises(ValueError, match="observation must be one of"):
        RemoteEnv(address, observation="rgb")
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        RemoteEnv(address, temperature=-1.0)
    env = RemoteEnv(address, "cartpole")
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"RemoteEnv.step: discrete actions must be in \[0, 2\)"):
        env.step(2)
    env.step(1)  # the env is fine after a bad action
    env.close()
    env.close()  # idempotent


def test_the_step_stream_dreams_and_fails_as_unary_steps_do(address):
    """RemoteVectorEnv steps over one StepStream by default: the same dream as unary Step calls (seed, actions
    and autoresets alike), and the same errors; after one, the next step opens a new stream."""
    streamed = RemoteVectorEnv(3, address, "cartpole", max_episode_steps=3, observation="latent")
    unary = RemoteVectorEnv(3, address, "cartpole", max_episode_steps=3, observation="latent", stream=False)
    assert streamed._session.stream and not unary._session.stream
    for envs in (streamed, unary):
        envs.reset(seed=21)
    rng = np.random.default_rng(2)
    for _ in range(7):  # over two autoresets
        actions = rng.integers(0, 2, size=3)
        for got, want in zip(streamed.step(actions)[:4], unary.step(actions)[:4]):
            np.testing.assert_array_equal(got, want)
    assert streamed._session._steps is not None and not streamed._session._steps.closed

    messages = []
    for envs in (streamed, unary):
        with pytest.raises(ValueError, match=r"expected DTYPE_INT64 of shape \(3,\)") as info:
            envs.step(np.array([0, 1]))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert streamed._session._steps.closed  # the server ended that stream: the next step opens another
    np.testing.assert_array_equal(streamed.step(np.array([0, 1, 0]))[0], unary.step(np.array([0, 1, 0]))[0])

    for envs in (streamed, unary):  # the session is gone on the server: NOT_FOUND, as ValueError
        envs._session.client.close_session(envs.session_id)
        with pytest.raises(ValueError, match="step: no session"):
            envs.step(np.array([0, 1, 1]))
        envs.close()


def test_the_step_stream_keeps_auth_and_per_step_timeouts(serve):
    import grpc

    from services.batcher import BatcherConfig

    running = serve(token="s3cret", batcher=BatcherConfig(window_s=0.8))
    address = f"127.0.0.1:{running.port}"
    envs = RemoteVectorEnv(2, address, "cartpole", token="s3cret")
    envs.reset(seed=0)
    assert envs.step(np.array([0, 1]))[0]["vector"].shape == (2, 4)  # over the stream, with the token
    other = RemoteVectorEnv(2, address, "cartpole", token="s3cret")
    other.reset(seed=1)
    other.step(np.array([1, 1]))  # `envs` and `other` now share each round: each waits up to the window for the other

    envs._session.client.timeout = 0.2  # per step: a stream opened now cancels a step that waits longer
    envs._session._steps.close()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        envs.step(np.array([0, 1]))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 0.7

    envs._session.client.metadata = (("authorization", "Bearer wrong"),)
    for stream in (True, False):  # a wrong token: UNAUTHENTICATED, over the stream as over unary Step
        envs._session.stream = stream
        with pytest.raises(grpc.RpcError) as info:
            envs.step(np.array([0, 1]))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    other.close()
