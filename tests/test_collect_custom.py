"""A user's own env and policy (tests/custom_envs.py) collected by `worldmodel collect`, through the shared
Ray's workers, which import the user's module by name from the driver's sys.path (tests/ is on it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from envs.collect import collect
from envs.sources import SourceOptions
from test_cli import _one_line_error
from worldmodel.cli import main
from worldmodel.data import EpisodeStore

# size 8: 64x64 pixels, the store's size, so the Ray workers need no resize (and no torch import: seconds);
# the in-process test below resizes.
GRID = ["--env", "custom_envs:Grid-v0", "--env-kwargs", json.dumps({"size": 8}), "--image-key", "pixels",
        "--vector-keys", "position"]
PROG = "worldmodel collect"


def collect_grid(out, *flags: str) -> EpisodeStore:
    argv = ["collect", *GRID, "--episodes", "4", "--max-steps", "10", "--seed", "0", "--out", str(out), *flags]
    assert main(argv) == 0
    return EpisodeStore.open(str(out))


def part_attrs(store: EpisodeStore) -> list[dict]:
    parts = zarr.open_group(store.location, mode="r")["parts"]
    return [dict(parts[part].attrs) for part in store.part_ids()]


def test_own_env_with_kwargs_and_dict_keys_collects_on_two_ray_workers(tmp_path, ray_local, capsys):
    store = collect_grid(tmp_path / "grid.zarr", "--workers", "2")
    assert len(store.part_ids()) == 2 and store.num_episodes == 4
    assert store.spec.env_id == "custom_envs:Grid-v0"
    assert store.spec.vector.names == ("position_0", "position_1")
    # size 8 took effect: 8 cells of 8 pixels, and positions past the default grid's last cell (2)
    assert store.spec.extra["image_key"] == "pixels" and store.spec.extra["source_image_shape"] == [64, 64, 3]
    for ref in store.episodes:
        episode = store.read_episode(ref)
        row, column = episode["vector"][0].astype(int) * 8  # the agent's cell is white in its picture
        assert (episode["image"][0, row:row + 8, column:column + 8] == 255).all()
        assert episode["image"][0].sum() == 8 * 8 * 3 * 255
    vectors = np.concatenate([store.read_episode(ref)["vector"] for ref in store.episodes])
    assert vectors.min() >= 0 and vectors.max() > 2
    assert store.source["env_kwargs"] == {"size": 8}  # the store's source, and every part's attrs
    for attrs in part_attrs(store):
        assert attrs["env_kwargs"] == {"size": 8} and attrs["vector_keys"] == ["position"]
        assert attrs["image_key"] == "pixels" and attrs["env_id"] == "custom_envs:Grid-v0"
    assert "custom_envs:Grid-v0" in capsys.readouterr().out


def test_own_policy_gives_its_actions_on_two_ray_workers(tmp_path, ray_local):
    store = collect_grid(tmp_path / "left.zarr", "--workers", "2", "--policy", "custom_envs:always_left")
    assert len(store.part_ids()) == 2
    actions = np.concatenate([store.read_episode(ref)["action"] for ref in store.episodes])
    assert actions.size == store.num_steps and (actions == 0).all()  # custom_envs.LEFT
    assert {attrs["policy"] for attrs in part_attrs(store)} == {"custom_envs:always_left"}


def test_own_policy_draws_from_a_generator_seeded_by_the_collection_seed(tmp_path):
    options = SourceOptions(env_kwargs={"size": 5}, image_key="pixels", vector_keys=("position",))

    def actions(name: str, seed: int) -> np.ndarray:
        collect("custom_envs:Grid-v0", str(tmp_path / name), episodes=3, max_steps=12, workers=0,
                policy="custom_envs:wander", seed=seed, show_progress=False, source_options=options)
        store = EpisodeStore.open(str(tmp_path / name))
        return np.concatenate([store.read_episode(ref)["action"] for ref in store.episodes])

    first = actions("a.zarr", seed=3)
    store = EpisodeStore.open(str(tmp_path / "a.zarr"))
    assert store.spec.extra["source_image_shape"] == [40, 40, 3] and store.spec.image.shape == (64, 64, 3)
    assert store.read_episode(0)["image"].max() == 255  # the agent's cell, resized from 40x40
    np.testing.assert_array_equal(actions("b.zarr", seed=3), first)
    assert not np.array_equal(actions("c.zarr", seed=4), first)
    assert len(np.unique(first)) > 1


def test_vector_keys_alone_take_the_image_from_render(tmp_path):
    out = tmp_path / "rendered.zarr"
    argv = ["collect", "--env", "custom_envs:RenderedGrid-v0", "--env-kwargs", '{"size": 8}', "--vector-keys",
            "position", "--episodes", "1", "--max-steps", "5", "--workers", "0", "--seed", "0", "--out", str(out)]
    assert main(argv) == 0
    store = EpisodeStore.open(str(out))
    assert store.spec.extra["image_from"] == "render" and store.spec.vector.names == ("position_0", "position_1")
    episode = store.read_episode(0)
    row, column = episode["vector"][0].astype(int) * 8
    assert (episode["image"][0, row:row + 8, column:column + 8] == 255).all()


@pytest.mark.parametrize(("flags", "expected"), [
    (["--env-kwargs", "{size: 5}"], "--env-kwargs is not JSON"),
    (["--env-kwargs", "[5]"], "--env-kwargs must be a JSON object"),
    (["--env-kwargs", '{"sise": 5}'], "rejects its kwargs: Grid.__init__() got an unexpected keyword argument 'sise'"),
    (["--image-key", "picture"], "image key 'picture' is not in the observation; its keys: pixels, position"),
    (["--vector-keys", "position,speed"], "vector key 'speed' is not in the observation; its keys: pixels, position"),
    (["--vector-keys", ","], "--vector-keys names no key"),
    (["--policy", "custom_envs:run_right"], "policy 'custom_envs:run_right': custom_envs has no run_right"),
    (["--policy", "no_such_module:act"], "cannot import no_such_module: ModuleNotFoundError"),
    (["--policy", "custom_envs:NOT_A_POLICY"], "NOT_A_POLICY is a int, not a callable"),
    (["--policy", "custom_envs:says_left"], "policy custom_envs:says_left returned 'left', which does not fit"),
    (["--policy", "walk"], "unknown --policy 'walk'"),
])
def test_each_bad_flag_is_one_line_and_writes_nothing(capsys, tmp_path, flags, expected):
    out = tmp_path / "never.zarr"
    argv = ["collect", *GRID, *flags, "--episodes", "2", "--workers", "2", "--out", str(out)]
    assert expected in _one_line_error(capsys, argv, PROG)
    assert not out.exists()


def test_a_dict_observation_without_keys_is_one_line_naming_the_flags(capsys, tmp_path):
    argv = ["collect", "--env", "custom_envs:Grid-v0", "--episodes", "1", "--out", str(tmp_path / "never.zarr")]
    line = _one_line_error(capsys, argv, PROG)
    assert "--image-key" in line and "keys: pixels, position" in line, line
    assert not (tmp_path / "never.zarr").exists()


def test_an_action_out_of_the_space_in_a_worker_is_one_error_line_naming_the_policy(capsys, tmp_path, ray_local):
    argv = ["collect", *GRID, "--policy", "custom_envs:leaves_the_grid", "--episodes", "2", "--max-steps", "10",
            "--workers", "2", "--seed", "0", "--out", str(tmp_path / "astray.zarr")]
    assert main(argv) == 2
    err = capsys.readouterr().err  # the progress bar ran before the worker's error: only the error is checked
    errors = [line for line in err.splitlines() if "error" in line.lower() or "warning" in line.lower()]
    assert errors == [f"{PROG}: error: policy custom_envs:leaves_the_grid returned 4, which does not fit the "
                      "action space: discrete actions must be in [0, 4), got [4]"], err
    assert "Traceback" not in err
