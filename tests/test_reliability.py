"""The reliability promises of the README's "Reliability" section, each tested against the real component:
a real zarr store under real SIGKILLs and real damage."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from worldmodel.data import EpisodeStore, StoreError, StoreWarning
from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec

SPEC = EnvSpec(ImageSpec(8, 8, 3), ActionSpec.discrete(3), env_id="Reliability-v0")

# A parent that has imported the writer forks one child per kill; the child appends 1-step
# episodes as fast as it can (the pattern that tore `episode_ends` before commits were ordered)
# until the parent SIGKILLs it at a random moment. The parent then waits for the test to check
# the store before the next fork. Forking keeps each kill at a few milliseconds, not an import.
_KILL_LOOP = textwrap.dedent("""
    import os, random, signal, sys, time
    import numpy as np
    from worldmodel.data import EpisodeStore
    location, kills = sys.argv[1], int(sys.argv[2])
    rng = random.Random(0)
    for kill in range(kills):
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            writer = EpisodeStore.open(location).writer(f"w{kill:03d}")
            image = np.full((8, 8, 3), kill % 256, np.uint8)
            for step in range(10**9):
                writer.add_step(image, step % 3, float(step), False, True)
                writer.end_episode(seed=step)
                if step == 0:
                    os.write(ready_write, b"x")
        os.close(ready_write)
        os.read(ready_read, 1)  # the child has committed its first episode
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_read)
        print(kill, flush=True)
        sys.stdin.readline()  # the test has checked the store
""")


def _check_part(part_id: str, part: zarr.Group) -> int:
    """The part's `episode_ends` holds only committed ends, read as an outside tool reads it; returns its episodes."""
    ends = part["meta/episode_ends"][:]
    rows = min(part[f"data/{name}"].shape[0] for name in ("image", "action", "reward", "terminated", "truncated"))
    assert (np.diff(ends, prepend=0) > 0).all(), f"part {part_id}: episode_ends {ends.tolist()}"
    assert len(ends) == 0 or ends[-1] <= rows, f"part {part_id}: ends {ends.tolist()} past {rows} rows"
    return len(ends)


def _check_store(location: str) -> None:
    """Every part holds only committed ends, and the reader reads every episode with nothing to distrust."""
    root = zarr.open_group(location, mode="r")
    total = sum(_check_part(part_id, part) for part_id, part in root["parts"].groups())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = EpisodeStore.open(location)
        assert store.num_episodes == total
        for ref in store.episodes:
            episode = store.read_episode(ref)
            assert episode["reward"][0] == ref.seed and (episode["image"] == int(ref.part[1:]) % 256).all()


def _sigkill_writers(location: str, kills: int) -> None:
    EpisodeStore.create(location, SPEC)
    proc = subprocess.Popen([sys.executable, "-c", _KILL_LOOP, location, str(kills)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for kill in range(kills):
            assert int(proc.stdout.readline()) == kill
            # Parts of earlier kills cannot change (their writers are dead): check the new one now.
            part_id = f"w{kill:03d}"
            assert _check_part(part_id, zarr.open_group(f"{location}/parts/{part_id}", mode="r")) > 0
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    _check_store(location)


def test_sigkilled_writers_leave_only_committed_episode_ends(tmp_path):
    _sigkill_writers(str(tmp_path / "store.zarr"), kills=30)


@pytest.mark.slow
def test_sigkilled_writers_leave_only_committed_episode_ends_many_times(tmp_path):
    _sigkill_writers(str(tmp_path / "store.zarr"), kills=300)


# -- damage from outside is reported, never read as zeros --------------------------------------------


def _small_store(location: str, lengths=(5, 7, 4)) -> EpisodeStore:
    store = EpisodeStore.create(location, SPEC)
    with store.writer("w") as writer:
        for i, length in enumerate(lengths):
            for step in range(length):
                writer.add_step(np.full((8, 8, 3), 10 + i, np.uint8), step % 3, float(step + 1), step == length - 1, False)
            writer.end_episode(seed=i)
    return EpisodeStore.open(location)


def _set_episode_ends(location: str, ends: list[int]) -> None:
    """Overwrite a part's `episode_ends` as a hand edit or another tool could (zarr append: shape first)."""
    with zarr.config.set({"array.write_empty_chunks": True}):  # a chunk of zeros is still a chunk
        array = zarr.open_group(location, mode="r+")["parts/w/meta/episode_ends"]
        array.resize((len(ends),))
        array[:] = np.array(ends, np.int64)


@pytest.mark.parametrize("ends, trusted", [([5, 12, 0], 2), ([5, 4, 16], 1), ([5, 12, 99], 2), ([0], 0)])
def test_readers_trust_only_committed_episode_ends_and_warn_once(tmp_path, ends, trusted):
    location = str(tmp_path / "s.zarr")
    _small_store(location)
    _set_episode_ends(location, ends)
    store = EpisodeStore.open(location)
    with pytest.warns(StoreWarning, match=f"part w: episode_ends\\[{trusted}:\\]") as caught:
        episodes = store.episodes
    assert len(caught) == 1 and len(episodes) == trusted
    assert all(ref.length > 0 for ref in episodes)
    store.read_column("reward")  # no second warning: the listing is cached
    assert len(store.read_column("reward")) == sum(ref.length for ref in episodes)


def test_info_on_torn_episode_ends_is_no_traceback_nor_negative_length(tmp_path, capsys):
    from worldmodel.cli import main

    location = str(tmp_path / "s.zarr")
    _small_store(location)
    _set_episode_ends(location, [5, 12, 0])
    assert main(["info", location]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert err.startswith("worldmodel info: warning: ") and err.count("\n") == 1 and "episode_ends[2:]" in err, err
    assert "2 in 1 parts" in out and "steps        12" in out and "min 5, max 7" in out


@pytest.mark.parametrize("array, chunk", [("data/image", "c/0/0/0/0"), ("data/reward", "c/0"),
                                          ("data/terminated", "c/0"), ("meta/episode_ends", "c/0")])
def test_a_missing_chunk_is_an_error_naming_part_and_array(tmp_path, array, chunk):
    location = str(tmp_path / "s.zarr")
    _small_store(location)
    Path(location, "parts/w", array, chunk).unlink()
    with pytest.raises(StoreError, match=f"parts/w/{array} is missing chunk 0 \\(rows 0-"):
        EpisodeStore.open(location).episodes


def test_a_chunk_that_does_not_decode_is_an_error_naming_it(tmp_path):
    from worldmodel.data import WindowSampler

    location = str(tmp_path / "s.zarr")
    _small_store(location)
    Path(location, "parts/w/data/image/c/0/0/0/0").write_bytes(b"not a blosc frame")
    store = EpisodeStore.open(location)
    with pytest.raises(StoreError, match=r"parts/w/data/image: rows \[0, 5\) do not decode"):
        store.read_episode(0)
    with pytest.raises(StoreError, match="parts/w/data/image: rows .* do not decode"):
        WindowSampler([store], 2).sample(4, np.random.default_rng(0))


def test_fill_value_chunks_are_written_so_that_their_absence_means_damage(tmp_path):
    """Rewards of 0 and flags all False equal the fill value; they are stored all the same."""
    location = str(tmp_path / "s.zarr")
    store = EpisodeStore.create(location, SPEC)
    with store.writer("w") as writer:
        writer.add_step(np.zeros((8, 8, 3), np.uint8), 0, 0.0, False, False)
        writer.end_episode()
    for array in ("image", "action", "reward", "terminated", "truncated"):
        assert Path(location, "parts/w/data", array, "c").exists(), array


def test_a_url_scheme_without_its_package_is_one_line(capsys):
    from worldmodel.cli import main

    pytest.importorskip("fsspec")
    if "s3fs" in sys.modules or subprocess.run([sys.executable, "-c", "import s3fs"], capture_output=True).returncode == 0:
        pytest.skip("s3fs is installed here")
    assert main(["info", "s3://bucket/store.zarr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("worldmodel info: error: ") and err.count("\n") == 1, err
    assert "s3:// URLs need the package 's3fs'" in err and "pip install s3fs" in err, err
