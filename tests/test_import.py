"""`worldmodel import`: real Minari datasets (made with Minari's own DataCollector) and real video folders
(written with imageio) become store episodes; every bad input is one line, exit 2, and writes nothing."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from conftest import step_dream_env
from worldmodel.cli import main
from worldmodel.data import EpisodeStore

FRAMES = 12  # per video episode


class ImageCartPole(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """CartPole whose observation is {"image": its render at 80x120, "state": its state}: a dataset with frames."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (80, 120, 3), np.uint8), "state": env.observation_space,
        })

    def observation(self, observation):
        return {"image": np.ascontiguousarray(self.env.render()[::5, ::5]), "state": observation}


def record_dataset(dataset_id: str, env: gym.Env, seeds: list[int | None]) -> None:
    """Random episodes of `env` into a local Minari dataset, one per seed (None: no seed recorded)."""
    from minari import DataCollector

    collector = DataCollector(env, record_infos=False)
    for seed in seeds:
        collector.reset(seed=seed, options=None if seed is not None else {"minari_autoseed": False})
        done = False
        while not done:
            _, _, terminated, truncated, _ = collector.step(collector.action_space.sample())
            done = terminated or truncated
    collector.create_dataset(dataset_id, ref_min_score=0.0, ref_max_score=1.0, algorithm_name="random",
                             author="tests", author_email="tests@example.com", description="test data")
    collector.close()


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """MINARI_DATASETS_PATH with three datasets: images in the observation, states only, states without seeds."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari's advice on metadata a test dataset need not have
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        env = ImageCartPole(gym.make("CartPole-v1", render_mode="rgb_array", max_episode_steps=10))
        env.action_space.seed(0)
        record_dataset("cartpole/images-v0", env, [100, 101, 102, 103])
        states = gym.make("CartPole-v1", max_episode_steps=10)
        states.action_space.seed(1)
        record_dataset("cartpole/states-v0", states, [7, 8])
        record_dataset("cartpole/unseeded-v0", gym.make("CartPole-v1", max_episode_steps=10), [None, None])
        yield root


@pytest.fixture
def minari_env(minari_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    return minari_root


def write_video(path: Path, frames: np.ndarray) -> None:
    import imageio

    imageio.mimwrite(path, frames, fps=10, macro_block_size=1)


def video_folder(root: Path, actions: dict[str, np.ndarray], csv_names: tuple[str, ...] = ()) -> Path:
    """One 48x48 video of FRAMES frames per name, with its actions as NAME.npz, or NAME.csv for `csv_names`."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, action in actions.items():
        write_video(root / f"{name}.mp4", rng.integers(0, 256, (FRAMES, 48, 48, 3), dtype=np.uint8))
        reward = np.arange(len(action), dtype=np.float32) / 10
        if name in csv_names:
            columns = ["action"] if action.ndim == 1 else [f"action_{i}" for i in range(action.shape[1])]
            rows = [[*np.atleast_1d(a).tolist(), r, int(t == len(action) - 1)] for t, (a, r) in enumerate(zip(action, reward))]
            text = ",".join([*columns, "reward", "terminated"]) + "\n" + "\n".join(",".join(map(str, row)) for row in rows)
            (root / f"{name}.csv").write_text(text + "\n")
        else:
            np.savez(root / f"{name}.npz", action=action, reward=reward)
    return root


@pytest.fixture(scope="module")
def discrete_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos") / "discrete"
    actions = {f"ep{i}": np.arange(FRAMES) % (i + 1) for i in range(3)}  # 0..2 in all: Discrete(3)
    return video_folder(root, actions, csv_names=("ep1",))


@pytest.fixture(scope="module")
def box_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos") / "box"
    rng = np.random.default_rng(1)
    actions = {f"ep{i}": rng.uniform(-0.5, 2.0, (FRAMES, 2)).round(3) for i in range(2)}
    return video_folder(root, actions, csv_names=("ep0",))


def run_cli(*argv: str) -> int:
    return main(["import", *map(str, argv)])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# -- Minari ---------------------------------------------------------------------------------------------


def test_minari_episodes_become_store_rows_without_their_final_observation(minari_env, tmp_path, capsys):
    import minari

    from envs.sources import resize_image

    out = tmp_path / "store.zarr"
    assert run_cli("--minari", "cartpole/images-v0", "--vector-keys", "state", "--out", out) == 0
    assert "imported 4 episodes" in capsys.readouterr().out
    dataset = minari.load_dataset("cartpole/images-v0")
    store = EpisodeStore.open(str(out))
    assert store.spec.env_id == "CartPole-v1" and store.spec.action.n == 2 and store.spec.image.shape == (64, 64, 3)
    assert store.spec.vector.names == ("state_0", "state_1", "state_2", "state_3")
    assert store.num_steps == sum(len(episode.actions) for episode in dataset.iterate_episodes())
    assert [ref.seed for ref in store.episodes] == [100, 101, 102, 103]
    for ref, episode in zip(store.episodes, dataset.iterate_episodes()):
        rows = store.read_episode(ref)
        assert ref.length == len(episode.actions) == len(episode.observations["image"]) - 1
        np.testing.assert_array_equal(rows["image"][-1], resize_image(episode.observations["image"][-2], 64))
        np.testing.assert_array_equal(rows["vector"], episode.observations["state"][:-1])
        np.testing.assert_array_equal(rows["action"], episode.actions)
        np.testing.assert_array_equal(rows["reward"], episode.rewards)
        np.testing.assert_array_equal(rows["terminated"], episode.terminations)
        np.testing.assert_array_equal(rows["truncated"], episode.truncations)


def test_minari_dataset_without_images_is_rendered_by_replay_with_the_collectors_spec(minari_env, tmp_path):
    import minari

    from envs.sources import make_source, source_spec

    out = tmp_path / "store.zarr"
    assert run_cli("--minari", str(minari_env / "cartpole" / "states-v0"), "--out", out) == 0
    store = EpisodeStore.open(str(out))
    collector_source = make_source("CartPole-v1")
    assert store.spec == source_spec(collector_source)  # so collected and imported CartPole share a store
    first = store.read_episode(0)
    observation, _ = collector_source.reset(seed=7)
    np.testing.assert_array_equal(first["image"][0], observation["image"])
    episode = next(minari.load_dataset("cartpole/states-v0").iterate_episodes())
    np.testing.assert_array_equal(first["vector"], episode.observations[:-1])
    collector_source.close()


def test_info_lists_where_each_part_came_from(minari_env, discrete_videos, tmp_path, capsys):
    out = tmp_path / "store.zarr"
    assert run_cli("--video", discrete_videos, "--out", out) == 0
    assert run_cli("--video", discrete_videos, "--out", out) == 0
    store = EpisodeStore.open(str(out))
    with store.writer(attrs={"env_id": "Recorded-v0", "policy": "random"}) as writer:  # the attrs collect writes
        writer.write_episode(store.read_episode(0))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    parts = next(line for line in text.splitlines() if line.startswith("parts        "))
    assert f"2 from import video:{discrete_videos}" in parts and "1 from collect Recorded-v0 (random)" in parts
    assert "episodes     7 in 3 parts" in text


# -- videos ---------------------------------------------------------------------------------------------


def test_video_folder_with_integer_actions_imports_as_discrete(discrete_videos, tmp_path, capsys):
    out = tmp_path / "store.zarr"
    assert run_cli("--video", discrete_videos, "--out", out, "--env-id", "Recorded-v0") == 0
    assert "imported 3 episodes, 36 steps" in capsys.readouterr().out
    store = EpisodeStore.open(str(out))
    assert store.spec.action.describe() == "Discrete(3)" and store.spec.env_id == "Recorded-v0"
    npz, csv = store.read_episode(0), store.read_episode(1)
    assert npz["image"].shape == (FRAMES, 64, 64, 3)
    np.testing.assert_array_equal(npz["action"], np.zeros(FRAMES))
    np.testing.assert_array_equal(csv["action"], np.arange(FRAMES) % 2)
    np.testing.assert_allclose(csv["reward"], np.arange(FRAMES) / 10)
    assert npz["truncated"][-1] and not npz["terminated"].any()  # no flags given: cut where the video ends
    assert csv["terminated"][-1] and not csv["truncated"].any()


def test_video_folder_with_float_actions_imports_as_a_box_over_their_range(box_videos, tmp_path):
    out = tmp_path / "store.zarr"
    assert run_cli("--video", box_videos, "--out", out) == 0
    store = EpisodeStore.open(str(out))
    actions = np.concatenate([np.load(box_videos / "ep1.npz")["action"], store.read_episode(0)["action"]])
    assert store.spec.action.shape == (2,)
    np.testing.assert_allclose(store.spec.action.low, actions.min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(store.spec.action.high, actions.max(axis=0), rtol=1e-6)


def test_action_space_flag_overrides_the_inferred_one(discrete_videos, box_videos, tmp_path):
    assert run_cli("--video", discrete_videos, "--out", tmp_path / "d.zarr", "--action-space", "discrete:5") == 0
    assert EpisodeStore.open(str(tmp_path / "d.zarr")).spec.action.n == 5
    assert run_cli("--video", box_videos, "--out", tmp_path / "b.zarr", "--action-space", "box:2:-1:3") == 0
    action = EpisodeStore.open(str(tmp_path / "b.zarr")).spec.action
    assert action.low == (-1.0, -1.0) and action.high == (3.0, 3.0)


def test_a_smaller_import_keeps_the_existing_stores_action_space(discrete_videos, tmp_path):
    out = tmp_path / "store.zarr"
    assert run_cli("--video", discrete_videos, "--out", out, "--action-space", "discrete:6") == 0
    assert run_cli("--video", discrete_videos, "--out", out) == 0  # infers Discrete(3), which Discrete(6) holds
    store = EpisodeStore.open(str(out))
    assert store.spec.action.n == 6 and len(store.part_ids()) == 2


# -- bad inputs: one line, exit 2, nothing written --------------------------------------------------------


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory) -> Path:
    """One folder per bad case."""
    root = tmp_path_factory.mktemp("bad")
    frames = np.zeros((FRAMES, 48, 48, 3), np.uint8)
    (root / "short").mkdir()
    write_video(root / "short" / "clip.mp4", frames)
    np.savez(root / "short" / "clip.npz", action=np.zeros(FRAMES - 1, np.int64))
    (root / "corrupt").mkdir()
    (root / "corrupt" / "clip.mp4").write_bytes(b"no video here" * 50)
    np.savez(root / "corrupt" / "clip.npz", action=np.zeros(FRAMES, np.int64))
    (root / "no_actions").mkdir()
    write_video(root / "no_actions" / "clip.mp4", frames)
    (root / "no_video").mkdir()
    np.savez(root / "no_video" / "clip.npz", action=np.zeros(FRAMES, np.int64))
    (root / "no_action_column").mkdir()
    write_video(root / "no_action_column" / "clip.mp4", frames)
    (root / "no_action_column" / "clip.csv").write_text("act,reward\n" + "0,1\n" * FRAMES)
    return root


BAD_INPUTS = {
    "mismatched lengths": (["--video", "{bad}/short"], "clip.mp4 has 12 frames but clip.npz has 11 actions"),
    "corrupt video": (["--video", "{bad}/corrupt"], "clip.mp4 is no readable video"),
    "video without actions": (["--video", "{bad}/no_actions"], "clip.mp4 has no actions file"),
    "actions without video": (["--video", "{bad}/no_video"], "clip.npz has no video"),
    "csv without an action column": (["--video", "{bad}/no_action_column"], "no column 'action'"),
    "bad --action-space": (["--video", "{good}", "--action-space", "discrete:x"], "expected discrete:N"),
    "other action space": (["--video", "{good}", "--action-space", "discrete:9"], "holds actions of Discrete(3)"),
    "other spec": (["--video", "{good}", "--image-size", "32"], "another spec: image"),
    "unknown image key": (["--minari", "cartpole/images-v0", "--image-key", "pixels"], "its keys: image, state"),
    "unknown vector key": (["--minari", "cartpole/images-v0", "--vector-keys", "state,speed"], "its keys: image, state"),
    "no images, no render": (["--minari", "cartpole/unseeded-v0"], "records no seed"),
    "unknown dataset": (["--minari", "cartpole/missing-v0"], "no local Minari dataset"),
}


@pytest.fixture(scope="module")
def existing_store(discrete_videos, tmp_path_factory) -> Path:
    """A store of the good video folder (Discrete(3), 64x64) that bad imports must leave as it is."""
    out = tmp_path_factory.mktemp("existing") / "store.zarr"
    assert run_cli("--video", discrete_videos, "--out", out) == 0
    return out


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_the_store_unchanged(
    case, minari_env, bad_videos, discrete_videos, existing_store, capsys
):
    out = existing_store
    before = tree_bytes(out)
    argv, message = BAD_INPUTS[case]
    argv = [arg.format(bad=bad_videos, good=discrete_videos) for arg in argv]
    capsys.readouterr()
    assert run_cli(*argv, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("worldmodel import: error: ") and message in err and err.count("\n") == 1, err
    assert tree_bytes(out) == before


def test_bad_input_creates_no_store(bad_videos, tmp_path):
    assert run_cli("--video", bad_videos / "short", "--out", tmp_path / "new.zarr") == 2
    assert not (tmp_path / "new.zarr").exists()


# -- slow: the imported stores train a world model -------------------------------------------------------


def dream_on(store: str, root: Path) -> None:
    """Tiny V and M trained on `store`, bundled, and stepped as the Dream env."""
    import worldmodel  # noqa: F401  (registers worldmodel/Dream-v0)
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    vae = train_vae([store], LaunchOptions(out=str(root / "vae")), preset="tiny", max_steps=10)
    mdnrnn = train_mdnrnn([store], str(vae), LaunchOptions(out=str(root / "mdnrnn")), preset="tiny", max_steps=10)
    bundle = write_vmc_bundle(root / "bundle", vae, mdnrnn, [store], contexts=4)
    image, reward = step_dream_env(bundle, 5)
    assert image.shape == (64, 64, 3) and np.isfinite(reward)


@pytest.mark.slow
def test_world_model_trains_and_dreams_on_an_imported_minari_store(minari_env, ray_local, tmp_path):
    out = tmp_path / "store.zarr"
    assert run_cli("--minari", "cartpole/images-v0", "--vector-keys", "state", "--out", out) == 0
    dream_on(str(out), tmp_path)


@pytest.mark.slow
def test_world_model_trains_and_dreams_on_an_imported_video_store(box_videos, ray_local, tmp_path):
    out = tmp_path / "store.zarr"
    assert run_cli("--video", box_videos, "--out", out) == 0
    dream_on(str(out), tmp_path)


def test_import_modules_stay_out_of_the_cli_import():
    """`worldmodel --help` stays instant: the importers, minari and imageio load only when `import` runs."""
    import subprocess
    import sys

    code = "import sys, worldmodel.cli; print(sorted(m for m in ('minari', 'imageio', 'envs.importers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.stdout.strip() == "[]"
