"""Shared fixtures: one embedded Ray on 127.0.0.1 for the whole session, and small real stores."""

from __future__ import annotations

import os

# Before anything imports Ray or pygame (NOTES.md): loopback only, no usage stats, quiet.
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


@pytest.fixture(scope="session")
def cartpole_store(tmp_path_factory, ray_local) -> str:
    """A real CartPole store: 12 episodes from 2 Ray workers (about 300 steps)."""
    from envs.collect import collect

    location = str(tmp_path_factory.mktemp("stores") / "cartpole.zarr")
    collect("CartPole-v1", location, episodes=12, max_steps=60, workers=2, seed=0, show_progress=False)
    return location


@pytest.fixture(scope="session")
def vmc_runs(tmp_path_factory, cartpole_store) -> dict[str, str]:
    """Tiny V and M trained through Ray Train on the CartPole store, and their bundle."""
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    root = tmp_path_factory.mktemp("vmc")
    vae = train_vae([cartpole_store], LaunchOptions(out=str(root / "vae")), preset="tiny", max_steps=40)
    mdnrnn = train_mdnrnn([cartpole_store], str(vae), LaunchOptions(out=str(root / "mdnrnn")), preset="tiny", max_steps=40)
    bundle = write_vmc_bundle(root / "bundle", vae, mdnrnn, [cartpole_store], contexts=16)
    return {"vae": str(root / "vae"), "mdnrnn": str(root / "mdnrnn"), "bundle": str(bundle), "store": cartpole_store}
