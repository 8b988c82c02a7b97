"""What the command line promises when files, flags or Ray go wrong (issue 17): a damaged or mismatched file
is one line naming it, a flag out of range is a usage error, a damaged store ends training at once with the
worker's own words, and an embedded Ray belongs to its command alone. Everything here is real: real
damaged files, real Ray in the slow tests. The fast part starts no Ray."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import _one_line_error
from worldmodel.cli import build_parser, main

WORLDMODEL = [sys.executable, "-m", "worldmodel.cli"]


@pytest.fixture
def bundle_copy(box_bundle, tmp_path) -> Path:
    """A copy of the untrained box bundle (and its V and M directories beside it) that a test may damage."""
    root = tmp_path / "box"
    shutil.copytree(Path(box_bundle).parent, root)
    return root / "bundle"


def _store_of(bundle: Path) -> str:
    return str(bundle.parent / "store.zarr")


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


# -- damaged files ------------------------------------------------------------------------------------------


class _Exploit:
    """A pickle that makes a directory when unpickled: loading a bundle must never run it."""

    marker = Path("/tmp") / f"worldmodel-unpickled-{os.getpid()}"

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


DAMAGES = {
    "truncated": lambda data: data[:100],
    "empty": lambda data: b"",
    "pickled": lambda data: pickle.dumps({"weights": [1, 2, 3], "payload": _Exploit()}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("file", ["vae.safetensors", "mdnrnn.safetensors", "contexts.safetensors"])
def test_damaged_safetensors_is_one_line(capsys, bundle_copy, file, damage):
    path = bundle_copy / file
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    line = _one_line_error(capsys, ["eval-model", "--bundle", str(bundle_copy), "--store", _store_of(bundle_copy)],
                           "worldmodel eval-model")
    assert str(path) in line and "damaged or not a safetensors file" in line
    assert not _Exploit.marker.exists(), "a pickle in a bundle was executed"


def test_serving_beyond_loopback_is_refused_unless_asked(capsys, tmp_path):
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        line = _one_line_error(capsys, ["serve", str(tmp_path), "--host", host], "worldmodel serve")
        assert f"refusing to bind {host}" in line and "--allow-remote" in line


def test_damaged_model_weights_are_one_line(capsys, bundle_copy):
    weights = bundle_copy.parent / "vae" / "model.safetensors"
    weights.write_bytes(b"")
    line = _one_line_error(capsys, ["bundle", "--vae", str(weights.parent), "--mdnrnn", str(bundle_copy.parent / "mdnrnn"),
                                    "--store", _store_of(bundle_copy), "--out", str(bundle_copy.parent / "out")],
                           "worldmodel bundle")
    assert str(weights) in line and "damaged" in line


BUNDLE_CONFIG_EDITS = {  # what was done to config.json -> the key the message must name
    "backends a string": (lambda c: {**c, "backends": "vmc"}, "'backends' must be a list"),
    "backends missing": (lambda c: {k: v for k, v in c.items() if k != "backends"}, "lacks the key 'backends'"),
    "spec missing": (lambda c: {k: v for k, v in c.items() if k != "spec"}, "lacks the key 'spec'"),
    "spec malformed": (lambda c: {**c, "spec": {"image": {}}}, "key 'spec'"),
    "vmc a list": (lambda c: {**c, "vmc": []}, "'vmc' must be an object"),
    "vae missing": (lambda c: {**c, "vmc": {"mdnrnn": c["vmc"]["mdnrnn"]}}, "lacks the key 'vae'"),
    "vector_norm a string": (lambda c: {**c, "vmc": {**c["vmc"], "vector_norm": "x"}}, "'vector_norm' must be"),
    "context_length a string": (lambda c: {**c, "context_length": "4"}, "'context_length' must be an integer"),
    "context_length 0": (lambda c: {**c, "context_length": 0}, "'context_length' must be >= 1"),
    "unknown backend": (lambda c: {**c, "backends": ["vmc", "dreamer"]}, "'backends' must list"),
}


@pytest.mark.parametrize("edit", sorted(BUNDLE_CONFIG_EDITS))
def test_malformed_bundle_config_names_the_key(capsys, bundle_copy, edit):
    change, expected = BUNDLE_CONFIG_EDITS[edit]
    _edit_json(bundle_copy / "config.json", change)
    line = _one_line_error(capsys, ["eval-model", "--bundle", str(bundle_copy), "--store", _store_of(bundle_copy)],
                           "worldmodel eval-model")
    assert expected in line


def test_a_bundle_config_that_is_not_an_object_is_one_line(capsys, bundle_copy):
    (bundle_copy / "config.json").write_text("[1, 2]")
    line = _one_line_error(capsys, ["train", "rllib", "--bundle", str(bundle_copy), "--out", str(bundle_copy.parent / "r")],
                           "worldmodel train rllib")
    assert "not a worldmodel bundle" in line


MODEL_CONFIG_EDITS = {
    "config missing": (lambda c: {k: v for k, v in c.items() if k != "config"}, "lacks the key 'config'"),
    "config a string": (lambda c: {**c, "config": "x"}, "'config' must be an object"),
    "class a number": (lambda c: {**c, "class": 3}, "'class' must be a string"),
    "spec missing": (lambda c: {k: v for k, v in c.items() if k != "spec"}, "lacks the key 'spec'"),
    "a field of the wrong type": (lambda c: {**c, "config": {**c["config"], "latent_dim": 8.5}}, "latent_dim"),
    "not an object": (lambda c: [c], "must hold a JSON object"),
}


@pytest.mark.parametrize("model", ["vae", "mdnrnn"])
@pytest.mark.parametrize("edit", sorted(MODEL_CONFIG_EDITS))
def test_malformed_model_config_names_the_key(capsys, bundle_copy, model, edit):
    change, expected = MODEL_CONFIG_EDITS[edit]
    config = bundle_copy.parent / model / "config.json"
    _edit_json(config, change)
    line = _one_line_error(capsys, ["bundle", "--vae", str(bundle_copy.parent / "vae"), "--mdnrnn",
                                    str(bundle_copy.parent / "mdnrnn"), "--store", _store_of(bundle_copy),
                                    "--out", str(bundle_copy.parent / "out")], "worldmodel bundle")
    assert str(config) in line and expected in line


# -- a spec that does not fit the weights ---------------------------------------------------------------------


def test_spec_that_does_not_fit_the_weights_fails_at_load(capsys, bundle_copy):
    """The spec says 5 box actions, M was trained with 3: refused when the bundle loads, not at the first step."""
    from worldmodel.bundle import BundleError, load_bundle

    five = {"kind": "box", "shape": [5], "low": [-1.0] * 5, "high": [1.0] * 5, "n": 0}
    _edit_json(bundle_copy / "config.json", lambda c: {**c, "spec": {**c["spec"], "action": five}})
    with pytest.raises(BundleError, match="spec has 5 box actions, but M .* trained with 3 box actions"):
        load_bundle(bundle_copy)
    line = _one_line_error(capsys, ["train", "controller", "--bundle", str(bundle_copy), "--out",
                                    str(bundle_copy.parent / "c"), "--preset", "tiny"], "worldmodel train controller")
    assert "5 box actions" in line and "3 box actions" in line


def test_controller_that_does_not_fit_the_spec_fails_at_load(bundle_copy):
    from worldmodel.bundle import BundleError, load_controller, save_controller
    from worldmodel.models import Controller, ControllerConfig

    two_actions = Controller(ControllerConfig(input_dim=4, action_dim=2, low=(-1.0, -1.0), high=(1.0, 1.0)))
    save_controller(bundle_copy, two_actions, {})
    with pytest.raises(BundleError, match="spec has 3 box actions, but C .* trained with 2 box actions"):
        load_controller(bundle_copy)


# -- env ids, flags, --out -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["foo:Bar-v0", "ALE/NoSuch-v5", "NoSuchEnv-v0", "FrozenLake-v1"])
def test_unknown_env_id_is_one_line(capsys, box_bundle, tmp_path, env_id):
    line = _one_line_error(capsys, ["collect", "--env", env_id, "--episodes", "1", "--workers", "2",
                                    "--out", str(tmp_path / "s")], "worldmodel collect")
    assert f"--env {env_id}" in line
    line = _one_line_error(capsys, ["eval", "--bundle", box_bundle, "--env", env_id, "--policy", "random"],
                           "worldmodel eval")
    assert f"--env {env_id}" in line


def test_eval_of_a_bundle_whose_env_is_not_real_is_one_line(capsys, box_bundle):
    line = _one_line_error(capsys, ["eval", "--bundle", box_bundle, "--policy", "random"], "worldmodel eval")
    assert "the bundle's env BoxTest-v0" in line


def test_eval_needs_at_least_one_episode(box_bundle):
    from agents.evaluate import evaluate
    from worldmodel.errors import UserError

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--bundle", box_bundle, "--episodes", "-1"])
    with pytest.raises(UserError, match="at least 1 episode"):
        evaluate(box_bundle, "CartPole-v1", 0, "random")


def _subcommands(parser=None, prefix=()):
    """(argv prefix, parser) of every leaf subcommand."""
    import argparse

    parser = parser or build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield prefix, parser
        return
    for name, sub in actions[0].choices.items():
        yield from _subcommands(sub, (*prefix, name))


def _option(parser, flag):
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_seed_and_context_flag_refuses_bad_values():
    """--seed must be in [0, 2^32), --contexts and --context-length >= 1, in every subcommand that takes them."""
    import argparse

    checked = []
    for argv, parser in _subcommands():
        for flag, bad in (("--seed", ["-1", "4294967296", "x"]), ("--contexts", ["0", "-3"]),
                          ("--context-length", ["0", "-1"])):
            action = _option(parser, flag)
            if action is None:
                continue
            checked.append((" ".join(argv), flag))
            for text in bad:
                with pytest.raises(argparse.ArgumentTypeError):
                    action.type(text)
            assert action.type("1") == 1
    assert ("bundle", "--context-length") in checked and ("train diffusion", "--context-length") in checked
    assert ("bundle", "--contexts") in checked and len([c for c in checked if c[1] == "--seed"]) >= 10


OUT_COMMANDS = {  # every subcommand with --out, and the least it needs besides
    "collect": ["--env", "CartPole-v1", "--episodes", "1"],
    "import": ["--video", "v"],
    "train vae": ["--store", "s"],
    "train mdnrnn": ["--store", "s", "--vae", "v"],
    "train diffusion": ["--store", "s"],
    "train controller": ["--bundle", "b"],
    "train loop": ["--store", "s", "--bundle", "b"],
    "train rllib": ["--bundle", "b"],
    "bundle": ["--vae", "v", "--mdnrnn", "m", "--store", "s"],
    "adapt": ["--bundle", "b", "--store", "s"],
    "eval": ["--bundle", "b"],
    "eval-model": ["--bundle", "b", "--store", "s"],
    "demo": [],
}


def test_out_that_is_a_file_is_one_line(capsys, tmp_path):
    with_out = {" ".join(argv) for argv, parser in _subcommands() if _option(parser, "--out")}
    assert with_out == set(OUT_COMMANDS)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    for command, extra in OUT_COMMANDS.items():
        for out, says in ((a_file, "is a file"), (a_file / "below", "lies under")):
            line = _one_line_error(capsys, [*command.split(), *extra, "--out", str(out)], f"worldmodel {command}")
            assert f"--out {out} {says}" in line
    assert a_file.read_text() == "not a directory"


# -- the diffusion backend's files (diffusers takes seconds to import: slow) ---------------------------------


@pytest.mark.slow
def test_damaged_diffusion_files_and_a_mismatched_spec_fail_at_load(tmp_path):
    import torch

    from envs.collect import collect
    from worldmodel.bundle import BundleError, add_diffusion_to_bundle, load_bundle
    from worldmodel.data import EpisodeStore
    from worldmodel.models.diffusion import DiffusionConfig, DiffusionWorld, save_diffusion
    from worldmodel.models.vector_norm import VectorStats
    from worldmodel.train.presets import get_preset

    store = str(tmp_path / "store.zarr")
    collect("CartPole-v1", store, episodes=2, max_steps=10, workers=0, seed=0, show_progress=False)
    spec = EpisodeStore.open(store).spec
    torch.manual_seed(0)
    world = DiffusionWorld(DiffusionConfig.from_spec(spec, **get_preset("diffusion", "tiny").model))
    VectorStats().save(save_diffusion(world, tmp_path / "model", {"spec": spec.to_dict(), "training": {}}))
    good = add_diffusion_to_bundle(tmp_path / "bundle", tmp_path / "model", [store], contexts=2)
    load_bundle(good, "diffusion")

    def damaged(name: str, change) -> Path:
        copy = tmp_path / name
        shutil.copytree(good, copy)
        change(copy)
        return copy

    unet = damaged("unet", lambda b: (b / "diffusion" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64))
    with pytest.raises(BundleError, match="damaged or unreadable UNet"):
        load_bundle(unet, "diffusion")
    head = damaged("head", lambda b: (b / "diffusion_head.safetensors").write_bytes(b""))
    with pytest.raises(BundleError, match="diffusion_head.safetensors is damaged"):
        load_bundle(head, "diffusion")

    def five_actions(bundle: Path) -> None:
        _edit_json(bundle / "config.json", lambda c: {**c, "spec": {**c["spec"], "action": {**c["spec"]["action"], "n": 5}}})

    with pytest.raises(BundleError, match="spec has 5 discrete actions, but the diffusion backbone .* with 2"):
        load_bundle(damaged("five", five_actions), "diffusion")


# -- training on a damaged store, and Ray of its own (slow: each starts Ray) ----------------------------------


def _damaged_store(tmp_path: Path) -> str:
    from envs.collect import collect

    store = tmp_path / "damaged.zarr"
    collect("CartPole-v1", str(store), episodes=2, max_steps=20, workers=0, seed=0, show_progress=False)
    chunks = [path for path in store.glob("parts/*/data/image/c/**/*") if path.is_file()]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(os.urandom(500))
    return str(store)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_damaged_training_data_fails_at_once_with_the_workers_message(tmp_path):
    store = _damaged_store(tmp_path)
    started = time.monotonic()
    done = subprocess.run([*WORLDMODEL, "train", "vae", "--preset", "tiny", "--store", store, "--out",
                           str(tmp_path / "run"), "--max-steps", "5"], capture_output=True, text=True, timeout=280)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    ours = [line for line in done.stderr.splitlines() if not line.startswith("\x1b[36m(") and not line.startswith("(")]
    assert ours[-1].startswith("worldmodel train vae: error: training vae failed: "), ours[-5:]
    assert "damaged" in ours[-1] and "Traceback" not in "\n".join(ours)
    attempts = (done.stdout + done.stderr).count("Attempting to start training worker group")
    assert attempts == 1, f"{attempts} attempts in {seconds:.0f} s"  # Ray used to retry it twice


def _start_driver(tmp_path: Path, name: str, task: str = "1") -> subprocess.Popen:
    """A python process that starts the project's embedded Ray, runs `task` in a Ray worker and waits; ready
    when it prints."""
    code = ("import subprocess, time, ray; from worldmodel.raycluster import init_ray; init_ray(num_cpus=1); "
            f"ray.get(ray.remote(lambda: {task}).remote()); print('ready', flush=True); time.sleep(600)")
    log = open(tmp_path / f"{name}.log", "w")
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while "ready" not in (tmp_path / f"{name}.log").read_text():
        assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()[-2000:]
        time.sleep(0.5)
    return driver


def _processes_marked_by(pid: int) -> list[int]:
    from worldmodel.raycluster import OWNER_ENV

    mark = f"{OWNER_ENV}={pid}:".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if any(item.startswith(mark) for item in (entry / "environ").read_bytes().split(b"\0")):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
def test_killed_driver_leaves_no_ray_behind(tmp_path):
    """SIGKILL of a driver may leave Ray's agents running (they ignore SIGTERM), and whatever its Ray workers
    started (an env's subprocess, here a `sleep`) always; the next embedded start kills them all."""
    first = _start_driver(tmp_path, "first", task="subprocess.run(['sh', '-c', 'sleep 600 &'])")
    assert len(_processes_marked_by(first.pid)) >= 4  # gcs, raylet, agents, workers, the sleep: all carry the owner
    first.kill()
    first.wait(timeout=30)
    time.sleep(3)
    left = _processes_marked_by(first.pid)
    assert left, "the worker's child should outlive the killed driver"
    second = _start_driver(tmp_path, "second")
    try:
        assert _processes_marked_by(first.pid) == [], f"left by the killed driver: {left}; still running after a restart"
        assert _processes_marked_by(second.pid)  # the live driver's Ray is not touched
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_embedded_rays_do_not_see_each_other(tmp_path):
    """With another embedded Ray running, a Ray Train run talks to its own cluster only."""
    other = _start_driver(tmp_path, "other")
    code = ("import time; from worldmodel.raycluster import init_ray; init_ray(num_cpus=1)\n"
            "from ray.train import RunConfig, ScalingConfig\nfrom ray.train.torch import TorchTrainer\n"
            f"TorchTrainer(lambda config: time.sleep(8), scaling_config=ScalingConfig(num_workers=1), "
            f"run_config=RunConfig(storage_path={str(tmp_path / 'runs')!r}, name='own')).fit()\nprint('fitted')")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=380)
    finally:
        os.killpg(other.pid, signal.SIGTERM)
        other.wait(timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "fitted" in output, output[-3000:]
    assert "Found multiple active Ray instances" not in output


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_worker_crash_is_still_retried(tmp_path, capsys):
    """Only a user's mistake fails at once: a worker that crashes (here once, as a lost node would) is retried."""
    from worldmodel.train.config import TrainConfig
    from worldmodel.train.launcher import LaunchOptions, launch

    marker = str(tmp_path / "crashed-once")

    def crashes_once(config: dict) -> None:  # nested: Ray pickles it by value, no import of this module needed
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("a worker lost its node")

    config = TrainConfig(model_name="vae", stores=(), model={})
    launch(crashes_once, config, LaunchOptions(out=str(tmp_path / "run"), max_failures=1))
    assert os.path.exists(marker)
    assert "retry 1 of 1 from the start" in capsys.readouterr().out
