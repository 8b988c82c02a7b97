"""Import a Minari dataset: its observations, actions, rewards, end flags and seeds as store episodes.

Frames come from the observation: the observation itself when it is an (H, W, 3) uint8 image, or a dict
observation's image entry (`image_key`; without it, the one image entry there is). The vector is the
dict entries `vector_keys`, flattened and concatenated (named `key` or `key_i`, as `collect` names them).

A dataset whose observations hold no image is rendered by replay: its env is recovered with
render_mode="rgb_array", reset with each episode's recorded seed and stepped with the recorded actions;
every replayed observation must equal the recorded one (checked for all episodes before anything is
written), so the frames are those of the recorded states. Without a recoverable env, rgb_array rendering,
a seed per episode, or a replay that matches, the import is a UserError saying which. A flat Box
observation is then also the vector, as `collect` records such envs.

A Minari episode has one more observation than actions; row t of the store holds o_t and the action taken
there, so the final observation is dropped. The spec is built by the collector's own SourceWrapper, so a
dataset of an env gives the spec `collect` gives with the same keys.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.importers.core import EpisodeSource, ImportPlan, check_actions_fit, resized_frames, stored_seed
from worldmodel.errors import UserError
from worldmodel.spec import EnvSpec

REPLAY_TOLERANCE = 1e-5
"""How far a replayed observation may lie from the recorded one (float32 rounding in storage)."""


class _RecordedSpaces(gym.Env):
    """The spaces of a dataset, as an env for SourceWrapper to build the spec from (it is never stepped)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        self.observation_space = observation_space
        self.action_space = action_space


def load_dataset(dataset: str):
    """A MinariDataset from a local dataset id or a dataset directory (the one holding data/, or data/ itself)."""
    import minari

    path = os.path.join(dataset, "data") if os.path.isdir(os.path.join(dataset, "data")) else dataset
    try:
        if os.path.isfile(os.path.join(path, "metadata.json")):
            return minari.MinariDataset(path)
        return minari.load_dataset(dataset)
    except FileNotFoundError:
        local = ", ".join(minari.list_local_datasets()) or "none"
        root = minari.storage.get_dataset_path()
        raise UserError(f"--minari {dataset}: no such dataset directory and no local Minari dataset of that id "
                        f"(in {root}: {local})") from None
    except (ValueError, OSError) as err:
        raise UserError(f"--minari {dataset}: cannot read the dataset: {' '.join(str(err).split())}") from err


def plan_minari_import(
    dataset: str, *, image_size: int = 64, image_key: str | None = None, vector_keys: tuple[str, ...] = (),
) -> ImportPlan:
    """Read and check every episode of `dataset`; UserError on anything that does not fit (nothing written)."""
    data = load_dataset(dataset)
    observation_space, env_spec = data.observation_space, data.spec.env_spec
    image_key = _image_key(observation_space, image_key, dataset)
    _check_vector_keys(observation_space, vector_keys, dataset)
    env = None if image_key is not False else _recover_rendering_env(data, dataset)
    spec = _spec(data, env, image_key, vector_keys, image_size, dataset)
    metadata = list(data.storage.get_episode_metadata(data.episode_indices))
    episodes = []
    indices = data.episode_indices.tolist()
    for index, meta, episode in zip(indices, metadata, data.iterate_episodes(indices)):
        name = f"{dataset} episode {index}"
        length = _check_episode(episode, spec, name)
        seed = stored_seed(meta.get("seed"))
        if env is not None:
            _check_replay(env, episode, meta.get("seed"), name)
        read = _episode_reader(data, index, spec, env, image_key, vector_keys, meta.get("seed"), image_size)
        episodes.append(EpisodeSource(name, length, seed, read))
    if not episodes:
        raise UserError(f"--minari {dataset} holds no episodes")
    attrs = {"source": "minari", "dataset": data.id, "env_id": env_spec.id if env_spec else ""}
    return ImportPlan(spec, episodes, attrs)


# -- choosing what to record ----------------------------------------------------------------------------


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[2] == 3


def _image_key(space: gym.Space, image_key: str | None, dataset: str) -> str | None | bool:
    """The dict entry that is the image, None when the observation is the image, False when there is none."""
    if not isinstance(space, spaces.Dict):
        if image_key is not None:
            raise UserError(f"--image-key {image_key!r}: the observations of {dataset} are no dict but {space}")
        return None if _is_image(space) else False
    keys = ", ".join(space.spaces)
    if image_key is not None:
        if image_key not in space.spaces:
            raise UserError(f"--image-key {image_key!r} is not in the observations of {dataset}; its keys: {keys}")
        if not _is_image(space[image_key]):
            raise UserError(f"--image-key {image_key!r} of {dataset} is no (H, W, 3) uint8 image: {space[image_key]}")
        return image_key
    images = [key for key, entry in space.spaces.items() if _is_image(entry)]
    if len(images) > 1:
        raise UserError(f"the observations of {dataset} hold several images ({', '.join(images)}): choose one with --image-key")
    return images[0] if images else False


def _check_vector_keys(space: gym.Space, vector_keys: tuple[str, ...], dataset: str) -> None:
    if not vector_keys:
        return
    if not isinstance(space, spaces.Dict):
        raise UserError(f"--vector-keys: the observations of {dataset} are no dict but {space}")
    missing = [key for key in vector_keys if key not in space.spaces]
    if missing:
        raise UserError(f"--vector-keys {', '.join(missing)} not in the observations of {dataset}; "
                        f"its keys: {', '.join(space.spaces)}")


def _recover_rendering_env(data, dataset: str) -> gym.Env:
    """The dataset's env with render_mode="rgb_array", for replay; UserError when there can be none."""
    why = f"the observations of {dataset} hold no image, so frames must be rendered by replaying its episodes"
    if data.spec.env_spec is None:
        raise UserError(f"{why}, but it records no env to recover")
    try:
        env = data.recover_environment(render_mode="rgb_array")
    except (gym.error.Error, ImportError, ValueError, TypeError) as err:
        raise UserError(f"{why}, but its env {data.spec.env_spec.id} cannot be made: {' '.join(str(err).split())}") from err
    if env.render_mode != "rgb_array":
        env.close()
        raise UserError(f"{why}, but its env {data.spec.env_spec.id} has no rgb_array rendering")
    return env


def _spec(data, env: gym.Env | None, image_key, vector_keys, image_size: int, dataset: str) -> EnvSpec:
    """The spec `collect` would give: the collector's SourceWrapper around the recovered env or the dataset's spaces."""
    from envs.sources import KNOWN_VECTOR_NAMES, SourceWrapper

    env_id = data.spec.env_spec.id if data.spec.env_spec else ""
    flat_vector = env is not None and not vector_keys and not isinstance(data.observation_space, spaces.Dict)
    names = None
    if flat_vector:  # collect names the state of known envs (CartPole's cart_position, ...)
        known = KNOWN_VECTOR_NAMES.get(env_id.split("/")[-1].split("-v")[0])
        names = known if known and len(known) == int(np.prod(data.observation_space.shape)) else None
    try:
        wrapper = SourceWrapper(
            env or _RecordedSpaces(data.observation_space, data.action_space),
            image_from="observation" if env is None else "render",
            vector_from="observation" if vector_keys or flat_vector else None,
            image_size=image_size, vector_names=names, source_id=env_id,
            image_key=image_key or None, vector_keys=vector_keys or None,
        )
    except ValueError as err:
        raise UserError(f"--minari {dataset}: {' '.join(str(err).split())}") from err
    return wrapper.spec_data


# -- checking and reading episodes ----------------------------------------------------------------------


def _leaves(observations: Any) -> list[np.ndarray]:
    if isinstance(observations, dict):
        return [leaf for value in observations.values() for leaf in _leaves(value)]
    if isinstance(observations, tuple):
        return [leaf for value in observations for leaf in _leaves(value)]
    return [np.asarray(observations)]


def _check_episode(episode, spec: EnvSpec, name: str) -> int:
    """The length (actions) of a minari EpisodeData; UserError when its arrays disagree or its actions do not fit."""
    actions = np.asarray(episode.actions)
    length = len(actions)
    if length == 0:
        raise UserError(f"{name} has no steps")
    observations = {len(leaf) for leaf in _leaves(episode.observations)}
    if observations != {length + 1}:
        raise UserError(f"{name}: {sorted(observations)} observations for {length} actions (need one more observation)")
    for key in ("rewards", "terminations", "truncations"):
        if len(getattr(episode, key)) != length:
            raise UserError(f"{name}: {len(getattr(episode, key))} {key} for {length} actions")
    if not np.all(np.isfinite(np.asarray(episode.rewards, np.float64))):
        raise UserError(f"{name}: rewards hold NaN or infinite values")
    check_actions_fit(_store_actions(actions, spec), spec.action, name)
    return length


def _store_actions(actions: np.ndarray, spec: EnvSpec) -> np.ndarray:
    actions = np.asarray(actions)
    return actions.reshape(len(actions)) if spec.action.is_discrete else actions.reshape(len(actions), -1).astype(np.float32)


def _check_replay(env: gym.Env, episode, seed: Any, name: str) -> None:
    """UserError unless the env, reset with the episode's seed and stepped with its actions, gives its observations."""
    if seed is None:
        raise UserError(f"{name} records no seed, so its frames cannot be rendered by replay (its observations hold no image)")
    recorded = episode.observations
    observation, _ = env.reset(seed=int(seed))
    for t, action in enumerate(np.asarray(episode.actions)):
        if not _same(observation, _at(recorded, t)):
            raise UserError(f"{name}: replaying its env from seed {seed} diverges from the recorded observations at "
                            f"step {t}, so frames cannot be rendered (the env is not deterministic from its seed)")
        observation, *_ = env.step(action)


def _at(observations: Any, t: int) -> Any:
    if isinstance(observations, dict):
        return {key: _at(value, t) for key, value in observations.items()}
    if isinstance(observations, tuple):
        return tuple(_at(value, t) for value in observations)
    return observations[t]


def _same(a: Any, b: Any) -> bool:
    left, right = _leaves(a), _leaves(b)
    return len(left) == len(right) and all(
        x.shape == y.shape and np.allclose(x.astype(np.float64), y.astype(np.float64), atol=REPLAY_TOLERANCE)
        for x, y in zip(left, right)
    )


def _episode_reader(data, index: int, spec: EnvSpec, env, image_key, vector_keys, seed, image_size: int):
    def read() -> dict[str, np.ndarray]:
        episode = next(data.iterate_episodes([index]))
        observations, actions = episode.observations, np.asarray(episode.actions)
        length = len(actions)
        if env is None:
            frames = observations[image_key] if image_key else observations
            images = resized_frames(np.asarray(frames)[:length], image_size)
        else:
            images = resized_frames(_replayed_frames(env, actions, seed), image_size)
        arrays = {
            "image": images,
            "action": _store_actions(actions, spec),
            "reward": np.asarray(episode.rewards, np.float32),
            "terminated": np.asarray(episode.terminations, bool),
            "truncated": np.asarray(episode.truncations, bool),
        }
        if spec.vector is not None:
            parts = [np.asarray(observations[key]) for key in vector_keys] if vector_keys else [np.asarray(observations)]
            arrays["vector"] = np.concatenate([part[:length].reshape(length, -1) for part in parts], axis=1).astype(np.float32)
        return arrays

    return read


def _replayed_frames(env: gym.Env, actions: np.ndarray, seed) -> list[np.ndarray]:
    """The rgb_array frame of o_t for each recorded action (replay matched the recording when it was checked)."""
    env.reset(seed=int(seed))
    frames = []
    for action in actions:
        frames.append(np.asarray(env.render()))
        env.step(action)
    return frames


__all__ = ["load_dataset", "plan_minari_import"]
