"""Shared fixtures: one embedded Ray on 127.0.0.1 for the whole session, small real stores and bundles,
and the background asyncio loop that in-process gRPC servers run on.

`make test` runs the suite on two pytest-xdist workers (the suite mostly waits on Ray and servers, so two
share two cores well). The store and the tiny trained bundle are built once for both: the first worker to
need them builds them under a file lock, the other reads what it wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

# Before anything imports Ray or pygame (docs/notes.md): loopback only, no usage stats, quiet.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Dream steps are many tiny ops: one thread beats two on 2 cores (Ray Train workers set their own).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray (2 CPUs) shared by every test that needs one."""
    import ray

    from worldmodel.raycluster import init_ray

    started = init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """What `build(folder)` returns, built once per test run: by this process alone, or under xdist by the
    first worker that gets here (the others wait on the lock and read the JSON it left)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own
    done = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            folder = shared / name
            folder.mkdir()
            done.write_text(json.dumps(build(folder)))
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def cartpole_store(tmp_path_factory, ray_local) -> str:
    """A real CartPole store: 12 episodes from 2 Ray workers (about 300 steps)."""
    from envs.collect import collect

    def build(folder: Path) -> str:
        location = str(folder / "cartpole.zarr")
        collect("CartPole-v1", location, episodes=12, max_steps=60, workers=2, seed=0, show_progress=False)
        return location

    return built_once(tmp_path_factory, "stores", build)


@pytest.fixture(scope="session")
def vmc_runs(tmp_path_factory, cartpole_store) -> dict[str, str]:
    """Tiny V and M trained through Ray Train on the CartPole store, and their bundle."""
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    def build(root: Path) -> dict[str, str]:
        vae = train_vae([cartpole_store], LaunchOptions(out=str(root / "vae")), preset="tiny", max_steps=40)
        mdnrnn = train_mdnrnn([cartpole_store], str(vae), LaunchOptions(out=str(root / "mdnrnn")), preset="tiny",
                              max_steps=40)
        bundle = write_vmc_bundle(root / "bundle", vae, mdnrnn, [cartpole_store], contexts=16)
        return {"vae": str(root / "vae"), "mdnrnn": str(root / "mdnrnn"), "bundle": str(bundle), "store": cartpole_store}

    return built_once(tmp_path_factory, "vmc", build)


@pytest.fixture(scope="session")
def loop():
    """An asyncio loop on a background thread: the servers' home while the test thread plays client."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-server-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture(scope="session")
def box_bundle(tmp_path_factory) -> str:
    """An untrained V-M-C bundle whose actions are a Box (CarRacing's bounds), with random start frames."""
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.data import EpisodeStore
    from worldmodel.models import MDNRNN, ConvVAE, MDNRNNConfig, VAEConfig
    from worldmodel.models.io import save_pretrained
    from worldmodel.models.vector_norm import VectorStats
    from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec
    from worldmodel.train.presets import get_preset

    import numpy as np
    import torch

    root = tmp_path_factory.mktemp("box")
    spec = EnvSpec(ImageSpec(64, 64, 3), ActionSpec.box([-1, 0, 0], [1, 1, 1]), env_id="BoxTest-v0")
    store = EpisodeStore.create(str(root / "store.zarr"), spec)
    rng = np.random.default_rng(0)
    with store.writer() as writer:
        for _ in range(2):
            writer.write_episode({
                "image": rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8),
                "action": rng.uniform([-1, 0, 0], [1, 1, 1], (6, 3)).astype(np.float32),
                "reward": np.zeros(6, np.float32),
                "terminated": np.zeros(6, bool),
                "truncated": np.zeros(6, bool),
            })
    torch.manual_seed(0)
    vae = ConvVAE(VAEConfig(**get_preset("vae", "tiny").model))
    mdnrnn = MDNRNN(MDNRNNConfig.from_spec(spec, latent_dim=vae.config.latent_dim, **get_preset("mdnrnn", "tiny").model))
    extra = {"spec": spec.to_dict(), "training": {}}
    save_pretrained(vae, root / "vae", extra)
    VectorStats().save(save_pretrained(mdnrnn, root / "mdnrnn", extra))
    return str(write_vmc_bundle(root / "bundle", root / "vae", root / "mdnrnn", [store.location], contexts=4))


def step_dream_env(bundle: str, steps: int, **options):
    """Reset `worldmodel/Dream-v0` of the bundle at seed 0 and take `steps` random actions; the last frame and reward."""
    import gymnasium

    import worldmodel  # noqa: F401  (registers the env ids)

    env = gymnasium.make("worldmodel/Dream-v0", bundle=str(bundle), **options)
    observation, _ = env.reset(seed=0)
    for _ in range(steps):
        observation, reward, *_ = env.step(env.action_space.sample())
    env.close()
    return (observation["image"] if isinstance(observation, dict) else observation), reward


# -- in-process gRPC servers (tests/test_service.py, tests/test_dm_env_rpc.py) ---------------------------
def on_loop(loop, coroutine, timeout: float = 60):
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


@pytest.fixture(scope="module")
def served_bundles(vmc_runs, box_bundle) -> dict[str, str]:
    return {"cartpole": vmc_runs["bundle"], "box": box_bundle}


@pytest.fixture(scope="module")
def server(loop, served_bundles):
    """The default server: both models, batching on, no auth."""
    from services.server import ServerConfig, start_server

    running = on_loop(loop, start_server(served_bundles, ServerConfig(port=0)))
    yield running
    on_loop(loop, running.stop(0))


@pytest.fixture
def serve(loop, served_bundles):
    """Start a server with other settings (`serve(idle_ttl_s=0.3)`); it stops after the test."""
    from services.batcher import BatcherConfig
    from services.server import ServerConfig, start_server

    started = []

    def start(**options):
        config = ServerConfig(port=0, batcher=options.pop("batcher", BatcherConfig()), **options)
        running = on_loop(loop, start_server(served_bundles, config))
        started.append(running)
        return running

    yield start
    for running in started:
        on_loop(loop, running.stop(0))
