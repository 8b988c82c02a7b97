"""Import a folder of videos, one episode each, with their per-frame actions.

Files pair by name: `NAME.mp4` (or .avi, .mov, .mkv, .webm) with `NAME.npz` or `NAME.csv`, one action per
frame. An npz holds `action` ((N,) or (N, A)) and optionally `reward`, `terminated` and `truncated` ((N,)
each). A csv has a header row naming the same columns; a multi-dimensional action is the columns
`action_0, action_1, ...`. Actions written as integers (no decimal point in a csv, an integer dtype in an
npz) are discrete; any other number makes them a box. Without `terminated` and `truncated` the episode is
taken to be cut where the video ends: its last step is truncated. Without `reward`, rewards are 0.

The action space, unless given, is inferred from all episodes: integers give Discrete(max + 1), floats a Box
of their width bounded by their range; when the target store exists and its space holds every action, the
store's space is kept (a shorter import must not narrow it). Every video is decoded once to check it (its
frame count, that it decodes) before anything is written, and once more while writing.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from envs.importers.core import (
    EpisodeSource, ImportPlan, check_actions_fit, end_flags, existing_spec, resized_frames,
)
from worldmodel.errors import UserError
from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ACTION_SUFFIXES = (".npz", ".csv")
COLUMNS = ("action", "reward", "terminated", "truncated")


@dataclass(frozen=True)
class VideoEpisode:
    name: str
    video: str
    actions: np.ndarray  # (N,) integers or (N, A) floats
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


def plan_video_import(
    folder: str, *, image_size: int = 64, action_space: ActionSpec | None = None, env_id: str = "",
    store: str | None = None,
) -> ImportPlan:
    """Read and check every episode in `folder`; UserError on anything that does not fit (nothing written).

    `store`: the store the plan is for, whose action space is kept when no `action_space` is given and it holds
    every action.
    """
    episodes = [_read_episode(folder, name, video, table) for name, video, table in pair_files(folder)]
    action = action_space or _inferred_space([episode.actions for episode in episodes], store)
    for episode in episodes:
        check_actions_fit(_store_actions(episode.actions, action), action, os.path.basename(episode.video))
    spec = EnvSpec(ImageSpec(image_size, image_size, 3), action, env_id=env_id)
    sources = [EpisodeSource(episode.name, len(episode.actions), None, _reader(episode, action, image_size))
               for episode in episodes]
    return ImportPlan(spec, sources, {"source": "video", "folder": os.path.abspath(folder)})


def pair_files(folder: str) -> list[tuple[str, str, str]]:
    """(name, video path, actions path) per episode, sorted by name; UserError for a file without its pair."""
    if not os.path.isdir(folder):
        raise UserError(f"--video {folder} is not a directory")
    videos, tables = {}, {}
    for entry in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(entry)
        if suffix.lower() in VIDEO_SUFFIXES:
            videos.setdefault(stem, []).append(entry)
        elif suffix.lower() in ACTION_SUFFIXES:
            tables.setdefault(stem, []).append(entry)
    for found in (videos, tables):
        for stem, entries in found.items():
            if len(entries) > 1:
                raise UserError(f"--video {folder}: {', '.join(entries)} share the name {stem!r}; keep one")
    for stem in sorted(set(videos) - set(tables)):
        raise UserError(f"--video {folder}: {videos[stem][0]} has no actions file ({stem}.npz or {stem}.csv)")
    for stem in sorted(set(tables) - set(videos)):
        raise UserError(f"--video {folder}: {tables[stem][0]} has no video ({stem}{VIDEO_SUFFIXES[0]}, ...)")
    if not videos:
        raise UserError(f"--video {folder} holds no videos ({', '.join(VIDEO_SUFFIXES)}) with actions files")
    return [(stem, os.path.join(folder, videos[stem][0]), os.path.join(folder, tables[stem][0])) for stem in sorted(videos)]


# -- reading --------------------------------------------------------------------------------------------


def _read_episode(folder: str, name: str, video: str, table: str) -> VideoEpisode:
    columns = _read_npz(table) if table.endswith(".npz") else _read_csv(table)
    actions = columns["action"]
    length = len(actions)
    frames = count_frames(video)
    if frames != length:
        raise UserError(f"{os.path.basename(video)} has {frames} frames but {os.path.basename(table)} has {length} "
                        "actions: one action per frame")
    for key in COLUMNS[1:]:
        if key in columns and len(columns[key]) != length:
            raise UserError(f"{os.path.basename(table)}: {len(columns[key])} {key} values for {length} actions")
    if length == 0:
        raise UserError(f"{os.path.basename(table)} holds no actions")
    reward = columns.get("reward", np.zeros(length)).astype(np.float32)
    if not np.all(np.isfinite(reward)):
        raise UserError(f"{os.path.basename(table)}: rewards hold NaN or infinite values")
    terminated, truncated = end_flags(length, columns.get("terminated"), columns.get("truncated"))
    return VideoEpisode(name, video, actions, reward, terminated, truncated)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            columns = {key: np.asarray(data[key]) for key in data.files if key in COLUMNS}
            keys = data.files
    except (OSError, ValueError) as err:
        raise UserError(f"{os.path.basename(path)} is no readable npz: {err}") from None
    if "action" not in columns:
        raise UserError(f"{os.path.basename(path)} has no 'action' array; its arrays: {', '.join(keys) or 'none'}")
    if columns["action"].ndim not in (1, 2) or not np.issubdtype(columns["action"].dtype, np.number):
        raise UserError(f"{os.path.basename(path)}: 'action' must be numbers of shape (N,) or (N, A), "
                        f"got {columns['action'].dtype} {columns['action'].shape}")
    return columns


def _read_csv(path: str) -> dict[str, np.ndarray]:
    name = os.path.basename(path)
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    if not rows:
        raise UserError(f"{name} is empty; it needs a header row naming its columns ({', '.join(COLUMNS)})")
    header, body = [cell.strip() for cell in rows[0]], [row for row in rows[1:] if row]
    action_columns = ["action"] if "action" in header else sorted(
        (cell for cell in header if cell.startswith("action_") and cell[7:].isdigit()), key=lambda cell: int(cell[7:]))
    if not action_columns:
        raise UserError(f"{name} has no column 'action' (or action_0, action_1, ...); its columns: {', '.join(header)}")
    if any(len(row) != len(header) for row in body):
        raise UserError(f"{name}: every row needs {len(header)} values, as its header")
    cells = {column: [row[header.index(column)].strip() for row in body] for column in header}
    try:
        action = np.array([[_number(cells[column][i]) for column in action_columns] for i in range(len(body))])
        columns = {key: np.array([_number(cell) for cell in cells[key]]) for key in COLUMNS[1:] if key in cells}
    except ValueError as err:
        raise UserError(f"{name}: {err}") from None
    columns["action"] = action.reshape(len(body), len(action_columns))
    if action_columns == ["action"]:
        columns["action"] = columns["action"][:, 0]
    return columns


def _number(text: str) -> int | float:
    """An int when written as one (a discrete action), else a float; true/false as 1/0 (end flags)."""
    if text.lower() in ("true", "false"):
        return int(text.lower() == "true")
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None


def _frames(path: str):
    """The frames of a video as (H, W, 3) uint8 arrays; UserError naming the file when it does not decode."""
    import imageio

    try:
        reader = imageio.get_reader(path, "ffmpeg")
        try:
            for frame in reader:
                yield np.asarray(frame)[..., :3]
        finally:
            reader.close()
    except (OSError, RuntimeError, ValueError, IndexError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise UserError(f"{os.path.basename(path)} is no readable video (ffmpeg: {first})") from None


def count_frames(path: str) -> int:
    """Frames of a video, counted by decoding all of them: a video that breaks midway is found here."""
    return sum(1 for _ in _frames(path))


# -- actions --------------------------------------------------------------------------------------------


def _inferred_space(actions: list[np.ndarray], store: str | None) -> ActionSpec:
    """Discrete(max + 1) for integer actions, else a Box over their range; the existing store's when it holds them."""
    held_spec = existing_spec(store) if store else None
    held = held_spec.action if held_spec else None
    if all(np.issubdtype(array.dtype, np.integer) and array.ndim == 1 for array in actions):
        joined = np.concatenate(actions)
        if joined.min() < 0:
            raise UserError(f"integer actions must be >= 0 to be Discrete, got {joined.min()}; or give --action-space")
        inferred = ActionSpec.discrete(int(joined.max()) + 1)
        if held is not None and held.is_discrete and held.n >= inferred.n:
            return held
        return inferred
    widths = {1 if array.ndim == 1 else array.shape[1] for array in actions}
    if len(widths) != 1:
        raise UserError(f"the actions files disagree on the action's width: {sorted(widths)}")
    joined = np.concatenate([array.reshape(len(array), -1) for array in actions]).astype(np.float32)
    inferred = ActionSpec.box(joined.min(axis=0), joined.max(axis=0))
    if held is not None and not held.is_discrete and held.shape == inferred.shape and all(
            lo <= low and high <= hi for lo, hi, low, high in zip(held.low, held.high, inferred.low, inferred.high)):
        return held
    return inferred


def _store_actions(actions: np.ndarray, action: ActionSpec) -> np.ndarray:
    if action.is_discrete:
        if actions.ndim != 1 or not np.issubdtype(actions.dtype, np.integer):
            raise UserError(f"{action.describe()} needs one integer action per frame, got {actions.dtype} {actions.shape}")
        return actions.astype(np.int64)
    return actions.reshape(len(actions), -1).astype(np.float32)


def _reader(episode: VideoEpisode, action: ActionSpec, image_size: int):
    def read() -> dict[str, np.ndarray]:
        return {
            "image": resized_frames(_frames(episode.video), image_size),
            "action": action.check_batch(_store_actions(episode.actions, action)),  # box actions clipped onto bounds
            "reward": episode.reward,
            "terminated": episode.terminated,
            "truncated": episode.truncated,
        }

    return read


def parse_action_space(text: str) -> ActionSpec:
    """`discrete:N` or `box:DIM:LOW:HIGH` as an ActionSpec; ValueError saying the forms otherwise."""
    parts = text.split(":")
    try:
        if parts[0] == "discrete" and len(parts) == 2:
            return ActionSpec.discrete(int(parts[1]))
        if parts[0] == "box" and len(parts) == 4:
            dim, low, high = int(parts[1]), float(parts[2]), float(parts[3])
            if dim > 0 and np.isfinite([low, high]).all():
                return ActionSpec.box([low] * dim, [high] * dim)
    except ValueError:
        pass
    raise ValueError(f"expected discrete:N or box:DIM:LOW:HIGH (e.g. discrete:4, box:3:-1:1), got {text!r}")


__all__ = ["count_frames", "pair_files", "parse_action_space", "plan_video_import"]
