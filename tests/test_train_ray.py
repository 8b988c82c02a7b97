"""Training survives a kill and resumes; the same command runs under `ray job submit`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from worldmodel.train.launcher import latest_checkpoint
from worldmodel.train.metrics import read_metrics

WORLDMODEL = [sys.executable, "-m", "worldmodel.cli"]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_training_resumes_from_its_checkpoint(cartpole_store, tmp_path):
    run = tmp_path / "vae"
    train = [*WORLDMODEL, "train", "vae", "--store", cartpole_store, "--out", str(run), "--preset", "tiny"]
    proc = subprocess.Popen([*train, "--max-steps", "100000"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: latest_checkpoint(run) is not None, 180, "a first checkpoint", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait(timeout=60)
    _, killed_at = latest_checkpoint(run)
    assert killed_at >= 10

    refused = subprocess.run([*train, "--max-steps", str(killed_at + 20)], capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    subprocess.run([*train, "--max-steps", str(killed_at + 20), "--resume"], check=True, capture_output=True)
    steps = [row["step"] for row in read_metrics(run / "metrics.csv")]
    assert steps == list(range(5, killed_at + 21, 5))  # nothing repeated, nothing missing
    assert latest_checkpoint(run)[1] == killed_at + 20
    assert (run / "model" / "model.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(420)
def test_ray_job_submit_runs_the_same_command(cartpole_store, tmp_path):
    import ray

    if ray.is_initialized():  # one Ray per machine is enough on 2 cores; later tests start theirs again
        ray.shutdown()
    ray_bin, env, head, address, temp_dir = start_ray_head()
    run = tmp_path / "job-run"
    try:
        submit = [ray_bin, "job", "submit", "--address", address, "--no-wait", "--", "worldmodel", "train", "vae",
                  "--store", cartpole_store, "--out", str(run), "--preset", "tiny", "--max-steps", "10"]
        deadline = time.monotonic() + 120  # the job server and its agent may still be starting after `ray job
        while True:                           # list` first answers ("No available agent"): slow under load
            submitted = subprocess.run(submit, env=env, capture_output=True, text=True)
            if submitted.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
        job_id = next(line.split("'")[1] for line in submitted.stdout.splitlines() if "submitted successfully" in line)

        def status() -> str:
            done = subprocess.run([ray_bin, "job", "status", "--address", address, job_id], env=env,
                                  capture_output=True, text=True)
            text = (done.stdout + done.stderr).lower()  # "Job '...' succeeded" / "failed" / "stopped"
            return next((s for s in ("succeeded", "failed", "stopped") if f"' {s}" in text), "")

        _wait_for(lambda: status() != "", 300, "the job to finish")
        logs = subprocess.run([ray_bin, "job", "logs", "--address", address, job_id], env=env,
                              capture_output=True, text=True).stdout
        assert status() == "succeeded", logs[-3000:]
        assert "Started a local Ray instance" not in logs  # it joined the cluster
        assert latest_checkpoint(run)[1] == 10
        config = json.loads((run / "model" / "config.json").read_text())
        assert config["class"] == "ConvVAE"
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_ray_head():
    """A `ray start --head` cluster of 2 CPUs on 127.0.0.1 whose job server answers: (ray binary, the environment
    to run `ray` in, the head process, the dashboard address, its temp dir). Stop it with `_stop_head`."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # job entrypoints run in the head's environment
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="wmray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--num-cpus=2", f"--port={_free_port()}",
         f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
         f"--temp-dir={temp_dir}", "--include-dashboard=true"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for(lambda: subprocess.run([ray_bin, "job", "list", "--address", address], env=env,
                                         capture_output=True).returncode == 0, 120, "the Ray head", head)
    except BaseException:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return ray_bin, env, head, address, temp_dir


def _stop_head(head: subprocess.Popen) -> None:
    """`ray start --block` takes its processes down with it on SIGTERM; SIGKILL the group if it lingers."""
    if head.poll() is not None:
        return
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)


def _weights(run: Path) -> bytes:
    return (Path(run) / "model.safetensors").read_bytes()


@pytest.mark.slow  # a Ray Train fit (about 38 s): make test stays under its 15 minutes; seeded dreams are tested fast
def test_the_same_seed_trains_the_same_weights(vmc_runs, tmp_path):
    """Training is reproducible: the session's tiny V, trained again with its seed, is the same bit for bit."""
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.vae import train_vae

    again = train_vae([vmc_runs["store"]], LaunchOptions(out=str(tmp_path / "again")), preset="tiny", max_steps=40)
    assert _weights(again) == _weights(Path(vmc_runs["vae"]) / "model")


@pytest.mark.slow  # a Ray Train fit (about 30 s)
def test_another_seed_trains_other_weights(vmc_runs, tmp_path):
    """Initial weights and batches both follow the seed, so the seed reaches the workers."""
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.vae import train_vae

    other = train_vae([vmc_runs["store"]], LaunchOptions(out=str(tmp_path / "other")), preset="tiny", max_steps=40, seed=1)
    assert _weights(other) != _weights(Path(vmc_runs["vae"]) / "model")


def test_mdnrnn_caches_latents_under_its_run_and_only_reads_the_store(vmc_runs):
    """A read-only or shared store must work: V's latents go under RUN/latents, nothing beside the store."""
    store = Path(vmc_runs["store"])
    assert any((Path(vmc_runs["mdnrnn"]) / "latents").iterdir())
    assert not list(store.parent.glob(store.name + ".latents*"))
    assert sorted(p.name for p in store.iterdir()) == ["parts", "zarr.json"]


def test_gpus_this_machine_lacks_fail_at_once_instead_of_waiting(monkeypatch):
    """Ray waits forever for GPUs an embedded cluster does not have: the launcher says so in one line."""
    from worldmodel.train.launcher import LaunchOptions, TrainingError, check_gpus

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(TrainingError, match=r"2 worker\(s\) x 1 GPU need 2 GPU\(s\); this machine's Ray has 1"):
        check_gpus(LaunchOptions(out="run", workers=2, gpus_per_worker=1.0), 1.0)
    check_gpus(LaunchOptions(out="run", workers=2, gpus_per_worker=0.5), 1.0)  # fractions that fit
    check_gpus(LaunchOptions(out="run", workers=2), 0.0)  # CPU training needs none
