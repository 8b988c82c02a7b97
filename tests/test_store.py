"""The zarr episode store: exact round trips, window sampling, bad input, crash safety."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import zarr

from worldmodel.data import EpisodeStore, StoreError, WindowSampler, split_episodes
from worldmodel.data.layout import ATTRS_KEY
from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec, VectorSpec

BOX_SPEC = EnvSpec(
    ImageSpec(8, 8, 3), ActionSpec.box([-1, 0, 0], [1, 1, 1]), VectorSpec(("speed", "steer")), env_id="Test-v0"
)
DISCRETE_SPEC = EnvSpec(ImageSpec(8, 8, 3), ActionSpec.discrete(4), env_id="TestDiscrete-v0", frame_skip=4)


def make_episode(spec: EnvSpec, length: int, episode_id: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random arrays, with the episode id and step index written into the image so windows can be traced."""
    image = rng.integers(0, 256, (length, *spec.image.shape), dtype=np.uint8)
    image[:, 0, 0, 0] = episode_id
    image[:, 0, 0, 1] = np.arange(length) % 256
    episode = {"image": image}
    if spec.vector is not None:
        episode["vector"] = rng.normal(size=(length, spec.vector.size)).astype(np.float32)
    if spec.action.is_discrete:
        episode["action"] = rng.integers(0, spec.action.n, length).astype(np.int64)
    else:
        episode["action"] = rng.uniform(spec.action.low, spec.action.high, (length, spec.action.dim)).astype(np.float32)
    episode["reward"] = rng.normal(size=length).astype(np.float32)
    episode["terminated"] = np.zeros(length, bool)
    episode["terminated"][-1] = True
    episode["truncated"] = np.zeros(length, bool)
    return episode


@pytest.fixture(params=["local", "memory"])
def location(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store.zarr")
    return f"memory://{uuid.uuid4().hex}/store.zarr"


@pytest.mark.parametrize("spec", [BOX_SPEC, DISCRETE_SPEC], ids=["box+vector", "discrete"])
def test_round_trip_is_exact(location, spec):
    rng = np.random.default_rng(0)
    episodes = [make_episode(spec, n, i, rng) for i, n in enumerate([5, 70, 33])]
    store = EpisodeStore.create(location, spec, source={"env_id": spec.env_id})
    with store.writer(image_chunk=16) as writer:
        writer.write_episode(episodes[0], seed=11)
        for t in range(70):  # the second episode step by step
            row = {k: v[t] for k, v in episodes[1].items()}
            writer.add_step(row["image"], row["action"], row["reward"], row["terminated"], row["truncated"], row.get("vector"))
        writer.end_episode(seed=12)
    with store.writer() as second:  # another part
        second.write_episode(episodes[2])

    reopened = EpisodeStore.open(location)
    assert reopened.spec == spec
    assert reopened.source == {"env_id": spec.env_id}
    assert reopened.num_episodes == 3 and reopened.num_steps == 108
    assert len(reopened.part_ids()) == 2
    by_length = sorted(reopened.episodes, key=lambda ref: ref.length)
    assert [ref.seed for ref in by_length] == [11, -1, 12]
    for ref, expected in zip(by_length, [episodes[0], episodes[2], episodes[1]]):
        got = reopened.read_episode(ref)
        assert set(got) == set(expected)
        for name, values in expected.items():
            assert got[name].dtype == values.dtype, name
            np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_windows_never_cross_episode_ends(location):
    rng = np.random.default_rng(1)
    lengths = [3, 16, 17, 40, 9, 64]
    store = EpisodeStore.create(location, BOX_SPEC)
    with store.writer(image_chunk=8) as writer:
        for i, n in enumerate(lengths):
            writer.write_episode(make_episode(BOX_SPEC, n, i, rng))
    sampler = WindowSampler(EpisodeStore.open(location), window=16, cache_bytes=1 << 14)
    assert sampler.skipped_episodes == 2  # the 3- and 9-step episodes
    assert len(sampler) == sum(n - 15 for n in lengths if n >= 16)
    seen = set()
    for i in range(len(sampler)):  # every window, through a cache small enough to evict
        window = sampler.window_at(i)
        ids, steps = window["image"][:, 0, 0, 0], window["image"][:, 0, 0, 1]
        assert len(set(ids.tolist())) == 1
        np.testing.assert_array_equal(np.diff(steps.astype(int)), 1)
        seen.add((int(ids[0]), int(steps[0])))
    assert len(seen) == len(sampler)
    batch = sampler.sample(32, np.random.default_rng(0))
    assert batch["image"].shape == (32, 16, 8, 8, 3) and batch["vector"].shape == (32, 16, 2)
    again = sampler.sample(32, np.random.default_rng(0))
    np.testing.assert_array_equal(batch["image"], again["image"])
    with pytest.raises(StoreError, match="at least 100 steps"):
        WindowSampler(store, window=100).sample(1, np.random.default_rng(0))



def _store_of(location: str, spec: EnvSpec, lengths: list[int], image_chunk: int = 4):
    """A store at `location` with one part holding episodes of `lengths`, and those episodes."""
    rng = np.random.default_rng(4)
    episodes = [make_episode(spec, n, i, rng) for i, n in enumerate(lengths)]
    store = EpisodeStore.create(location, spec)
    with store.writer("w", image_chunk=image_chunk) as writer:
        for i, episode in enumerate(episodes):
            writer.write_episode(episode, seed=i)
    return store, episodes


def test_read_episode_rows_and_keys(tmp_path):
    store, episodes = _store_of(str(tmp_path / "s.zarr"), BOX_SPEC, [6, 9])
    ref = store.episodes[1]  # rows [6, 15) of the part
    whole = store.read_episode(ref)
    assert list(whole) == ["image", "vector", "action", "reward", "terminated", "truncated"]
    for key, values in episodes[1].items():
        np.testing.assert_array_equal(whole[key], values, err_msg=key)
    rows = store.read_episode(ref, keys=["action", "image"], start=2, stop=7)
    assert list(rows) == ["action", "image"]
    for key in rows:
        np.testing.assert_array_equal(rows[key], episodes[1][key][2:7], err_msg=key)
    np.testing.assert_array_equal(store.read_episode(ref, ("reward",), start=5)["reward"], episodes[1]["reward"][5:])
    assert store.read_episode(ref, start=9)["image"].shape == (0, 8, 8, 3)
    np.testing.assert_array_equal(store.read_episode(0, ["reward"])["reward"], episodes[0]["reward"])  # by index

    with pytest.raises(ValueError, match=r"unknown keys \['speed'\]; the store has \('image', 'vector'"):
        store.read_episode(ref, keys=["image", "speed"])
    with pytest.raises(ValueError, match="not a string"):
        store.read_episode(ref, keys="image")
    for start, stop in [(-1, None), (0, -1), (0, 10), (5, 4), (10, None)]:
        with pytest.raises(ValueError, match=r"0 <= start <= stop <= 9"):
            store.read_episode(ref, start=start, stop=stop)


def test_data_array_is_one_part_column(tmp_path):
    store, episodes = _store_of(str(tmp_path / "s.zarr"), DISCRETE_SPEC, [5, 7])
    assert list(store.read_episode(store.episodes[0])) == ["image", "action", "reward", "terminated", "truncated"]
    images = store.data_array("w", "image")
    assert images.shape == (12, 8, 8, 3) and images.dtype == np.uint8 and images.chunks[0] == 4
    np.testing.assert_array_equal(images[5:12], episodes[1]["image"])
    np.testing.assert_array_equal(store.data_array("w", "action")[:5], episodes[0]["action"])
    with pytest.raises(ValueError, match="unknown keys"):
        store.data_array("w", "vector")  # this spec has none
    with pytest.raises(ValueError, match="no part 'other'"):
        store.data_array("other", "image")


def test_on_disk_layout_is_the_documented_one(tmp_path):
    """The README documents these paths, dtypes, chunks and codecs and outside tools read them."""
    location = str(tmp_path / "s.zarr")
    _store_of(location, BOX_SPEC, [5], image_chunk=8)
    root = zarr.open_group(location, mode="r")
    assert {k: root.attrs[ATTRS_KEY][k] for k in ("format", "version")} == {"format": "worldmodel.episodes", "version": 1}
    expected = {
        "image": ((5, 8, 8, 3), np.uint8, 8, "noshuffle"),
        "vector": ((5, 2), np.float32, 4096, "shuffle"),
        "action": ((5, 3), np.float32, 4096, "shuffle"),
        "reward": ((5,), np.float32, 4096, "shuffle"),
        "terminated": ((5,), np.bool_, 4096, "shuffle"),
        "truncated": ((5,), np.bool_, 4096, "shuffle"),
    }
    for name, (shape, dtype, chunk, shuffle) in expected.items():
        array = root[f"parts/w/data/{name}"]
        (codec,) = array.compressors
        config = codec.to_dict()["configuration"]
        assert (array.shape, array.dtype, array.chunks[0]) == (shape, dtype, chunk), name
        assert (config["cname"], config["clevel"], config["shuffle"]) == ("zstd", 3, shuffle), name
    assert root["parts/w/meta/episode_ends"][:].tolist() == [5]
    assert root["parts/w/meta/episode_seeds"][:].tolist() == [0]
    assert root["parts/w/meta/episode_ends"].chunks == (1024,)

def test_episode_split_is_by_whole_episode(tmp_path):
    store = EpisodeStore.create(str(tmp_path / "s.zarr"), DISCRETE_SPEC)
    rng = np.random.default_rng(0)
    with store.writer() as writer:
        for i in range(10):
            writer.write_episode(make_episode(DISCRETE_SPEC, 5, i, rng))
    train, heldout = split_episodes([store], 0.2, seed=3)
    assert len(train) == 8 and len(heldout) == 2
    assert not {ref for _, ref in train} & {ref for _, ref in heldout}
    assert split_episodes([store], 0.2, seed=3) == (train, heldout)


def test_bad_input_is_rejected_and_writes_nothing(location):
    store = EpisodeStore.create(location, BOX_SPEC)
    rng = np.random.default_rng(2)
    good = make_episode(BOX_SPEC, 4, 0, rng)
    with store.writer() as writer:
        with pytest.raises(ValueError, match="uint8 image of shape"):
            writer.add_step(np.zeros((8, 8, 3), np.float32), good["action"][0], 0.0, False, False, good["vector"][0])
        with pytest.raises(ValueError, match=r"one action of Box.*got shape \(2,\)"):
            writer.add_step(good["image"][0], [0.0, 1.0], 0.0, False, False, good["vector"][0])
        with pytest.raises(ValueError, match="reward must be finite"):
            writer.add_step(good["image"][0], good["action"][0], float("nan"), False, False, good["vector"][0])
        with pytest.raises(ValueError, match="vector observation of 2 dims"):
            writer.add_step(good["image"][0], good["action"][0], 0.0, False, False)
        with pytest.raises(ValueError, match="empty episode"):
            writer.end_episode()
        assert writer.pending_steps == 0
        nan_reward = dict(good, reward=np.array([0, np.nan, 0, 0], np.float32))
        with pytest.raises(ValueError, match="NaN"):
            writer.write_episode(nan_reward)
        with pytest.raises(ValueError, match="disagree on length"):
            writer.write_episode(dict(good, reward=good["reward"][:3]))
        with pytest.raises(ValueError, match="missing"):
            writer.write_episode({k: v for k, v in good.items() if k != "vector"})
        with pytest.raises(ValueError, match="empty episode"):
            writer.write_episode({k: v[:0] for k, v in good.items()})
        writer.write_episode(good)
    discrete = EpisodeStore.create(location + "-discrete", DISCRETE_SPEC)
    with discrete.writer() as writer:
        episode = make_episode(DISCRETE_SPEC, 3, 0, rng)
        with pytest.raises(ValueError, match=r"integers in \[0, 4\)"):
            writer.write_episode(dict(episode, action=np.array([0, 4, 1])))
        with pytest.raises(ValueError, match=r"discrete actions must be in \[0, 4\), got \[7\]"):
            writer.add_step(episode["image"][0], 7, 0.0, False, False)
    assert EpisodeStore.open(location).num_steps == 4
    assert EpisodeStore.open(location + "-discrete").num_steps == 0


def test_spec_mismatch_and_foreign_paths(tmp_path):
    location = str(tmp_path / "store.zarr")
    EpisodeStore.create(location, BOX_SPEC)
    with pytest.raises(StoreError, match="another spec"):
        EpisodeStore.create(location, DISCRETE_SPEC)
    assert EpisodeStore.open(location).spec == BOX_SPEC  # untouched

    with pytest.raises(StoreError, match="not a worldmodel episode store"):
        EpisodeStore.open(str(tmp_path / "nowhere"))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="refusing to write"):
        EpisodeStore.create(str(plain), BOX_SPEC)
    assert os.listdir(plain) == ["notes.txt"]

    other = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    other.attrs["something"] = 1
    with pytest.raises(StoreError, match="not a worldmodel episode store"):
        EpisodeStore.open(str(tmp_path / "other.zarr"))

    root = zarr.open_group(location, mode="r+")
    attrs = root.attrs[ATTRS_KEY]
    root.attrs[ATTRS_KEY] = dict(attrs, version=99)
    with pytest.raises(StoreError, match="format version 99"):
        EpisodeStore.open(location)


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np
    from worldmodel.data import EpisodeStore
    store = EpisodeStore.open(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    with store.writer(sys.argv[3]) as writer:
        episode = 0
        while True:
            for t in range(30):
                writer.add_step(np.full((8, 8, 3), episode % 256, np.uint8), rng.integers(0, 4), float(t), t == 29, False)
                if t == 15:
                    print(episode, flush=True)  # mid-episode: the parent may kill us now
                    time.sleep(0.02)
            writer.end_episode(seed=episode)
            episode += 1
    """
)


def test_sigkill_mid_episode_keeps_every_finished_episode(tmp_path):
    location = str(tmp_path / "store.zarr")
    EpisodeStore.create(location, DISCRETE_SPEC)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, location, "0", "killed-writer"], stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:
            if int(line) >= 5:
                break  # now in the middle of episode 5
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    store = EpisodeStore.open(location)
    assert store.num_episodes >= 5
    for i, ref in enumerate(store.episodes):
        episode = store.read_episode(ref)
        assert ref.seed == i and ref.length == 30
        assert (episode["image"] == i).all()
        np.testing.assert_array_equal(episode["reward"], np.arange(30, dtype=np.float32))
        assert episode["terminated"][-1] and not episode["terminated"][:-1].any()
    finished = store.num_episodes
    with store.writer() as writer:  # the store stays writable by others
        writer.write_episode(make_episode(DISCRETE_SPEC, 3, 0, np.random.default_rng(0)))
    assert EpisodeStore.open(location).num_episodes == finished + 1


def _write_many(location: str, writer_index: int, count: int) -> None:
    store = EpisodeStore.open(location)
    rng = np.random.default_rng(writer_index)
    with store.writer(f"writer-{writer_index}") as writer:
        for i in range(count):
            writer.write_episode(make_episode(DISCRETE_SPEC, 10 + i, writer_index, rng), seed=1000 * writer_index + i)


def test_four_concurrent_writers_lose_nothing(tmp_path):
    location = str(tmp_path / "store.zarr")
    EpisodeStore.create(location, DISCRETE_SPEC)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(location, w, 12)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = EpisodeStore.open(location)
    assert store.part_ids() == [f"writer-{w}" for w in range(4)]
    assert store.num_episodes == 48
    assert sorted(ref.seed for ref in store.episodes) == sorted(1000 * w + i for w in range(4) for i in range(12))
    for ref in store.episodes:
        writer_index = int(ref.part.split("-")[1])
        episode = store.read_episode(ref)
        assert ref.length == 10 + ref.seed % 1000
        assert (episode["image"][:, 0, 0, 0] == writer_index).all()
