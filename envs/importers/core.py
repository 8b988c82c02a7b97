"""What every importer shares: a checked plan of episodes, the store check, and the one writer that writes it.

An importer reads and checks all of its input first and returns an ImportPlan (the spec, and per episode a
function that reads it again as store arrays); only `write_plan` writes. So a bad input anywhere is a
UserError before the store or a part is created, and the store is left byte-identical.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldmodel.errors import UserError
from worldmodel.spec import ActionSpec, EnvSpec


@dataclass(frozen=True)
class EpisodeSource:
    """One episode of the input: its name for messages, its length, seed (None: unknown) and a reader.

    `read()` gives the store's arrays (image, vector where the spec has one, action, reward, terminated,
    truncated), each with `length` rows; it is called once, while writing.
    """

    name: str
    length: int
    seed: int | None
    read: Callable[[], dict[str, np.ndarray]]


@dataclass(frozen=True)
class ImportPlan:
    """A checked import: the spec of its episodes, the episodes, and the part attrs that say where they came from."""

    spec: EnvSpec
    episodes: list[EpisodeSource]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return sum(episode.length for episode in self.episodes)


@dataclass(frozen=True)
class ImportSummary:
    store: str
    part: str
    episodes: int
    steps: int


def existing_spec(location: str) -> EnvSpec | None:
    """The spec of the store at `location`, or None where there is none yet."""
    from worldmodel.data import EpisodeStore, StoreError

    try:
        return EpisodeStore.open(location).spec
    except StoreError:
        return None  # EpisodeStore.create says so if something else is there


def check_store_accepts(location: str, spec: EnvSpec) -> None:
    """UserError naming what differs when `location` holds a store of another spec (nothing is written)."""
    held = existing_spec(location)
    if held is None or held == spec:
        return
    if held.action != spec.action:
        raise UserError(f"{location} holds actions of {held.action.describe()}; this import's are "
                        f"{spec.action.describe()}: import into another store")
    theirs, ours = held.to_dict(), spec.to_dict()
    differing = ", ".join(f"{key} {theirs[key]!r} (this import: {ours[key]!r})" for key in theirs if theirs[key] != ours[key])
    raise UserError(f"{location} holds episodes of another spec: {differing}; import into another store")


def write_plan(plan: ImportPlan, location: str, *, show_progress: bool | None = None) -> ImportSummary:
    """Create (or open) the store and write every episode of the plan into one new part."""
    from tqdm import tqdm

    from worldmodel.data import EpisodeStore

    check_store_accepts(location, plan.spec)
    store = EpisodeStore.create(location, plan.spec, source=plan.attrs)
    show = sys.stderr.isatty() if show_progress is None else show_progress
    with store.writer(attrs=plan.attrs) as writer, tqdm(total=plan.steps, unit="step", desc="import",
                                                        disable=not show) as progress:
        for episode in plan.episodes:
            writer.write_episode(episode.read(), seed=episode.seed)
            progress.update(episode.length)
    return ImportSummary(store.location, writer.writer_id, writer.episodes_written, writer.steps_written)


def stored_seed(seed: Any) -> int | None:
    """A seed as the store keeps it: an int64 >= 0; others (None, Minari's 64-bit autoseeds past 2^63) are unknown."""
    if seed is None:
        return None
    seed = int(seed)
    return seed if 0 <= seed < 2**63 else None


def check_actions_fit(actions: np.ndarray, action: ActionSpec, where: str) -> None:
    """UserError naming `where` unless every action lies in the space (the writer checks shapes, not box bounds)."""
    try:
        action.check_batch(actions)
    except ValueError as err:
        text = " ".join(str(err).split())
        raise UserError(f"{where}: actions do not fit {action.describe()}: {text[:300]}") from None


def end_flags(length: int, terminated: np.ndarray | None, truncated: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Terminated and truncated flags; when neither is given the episode is cut at its last step (truncated)."""
    if terminated is None and truncated is None:
        truncated = np.zeros(length, bool)
        truncated[-1] = True
    terminated = np.zeros(length, bool) if terminated is None else terminated.astype(bool)
    truncated = np.zeros(length, bool) if truncated is None else truncated.astype(bool)
    return terminated, truncated


def resized_frames(frames, image_size: int) -> np.ndarray:
    """(T, S, S, 3) uint8 from an iterable of (H, W, 3) uint8 frames, each resized as the collector does."""
    from envs.sources import resize_image

    return np.stack([resize_image(np.asarray(frame), image_size) for frame in frames])


__all__ = [
    "EpisodeSource", "ImportPlan", "ImportSummary", "check_actions_fit", "check_store_accepts", "end_flags",
    "existing_spec", "resized_frames", "stored_seed", "write_plan",
]
