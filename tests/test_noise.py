"""The per-row noise of dreams (worldmodel/models/noise.py): Philox4x32-10 streams keyed per env.

What must hold: the generator is Philox (Random123's known answers), a row's numbers depend on its
key, step and draw alone, and a DreamBatch env dreams the same whatever shares its batch and
whenever it is reseeded the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import worldmodel
from worldmodel.models.noise import RowStreams, draw_normal, philox4x32, philox4x32_numpy, uniform_and_normal
from worldmodel.session import DreamBatch, step_many

WORD = 0xFFFFFFFF

# Random123 1.14, kat_vectors: philox4x32 10 rounds (counter, key, expected output).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((WORD,) * 4, (WORD,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_gives_random123s_known_answers():
    counters = torch.tensor([c for c, _, _ in KNOWN_ANSWERS]).T  # [4, 3]: the three vectors at once
    keys = torch.tensor([k for _, k, _ in KNOWN_ANSWERS]).T
    expected = torch.tensor([e for _, _, e in KNOWN_ANSWERS]).T
    assert torch.equal(philox4x32(counters, keys), expected)  # the torch form: CUDA's path
    as_words = (lambda t: t.numpy().astype(np.uint64))
    assert np.array_equal(philox4x32_numpy(as_words(counters), as_words(keys)), as_words(expected))  # the CPU's


def test_the_cpu_and_the_torch_forms_draw_the_same_words():
    """RowStreams draws through numpy on the CPU and through torch elsewhere (CUDA): the same words."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.randint(-2**62, 2**62, (300,), generator=generator)
    keys[:2] = torch.tensor([-1, 2**63 - 1])  # every bit set; the top bit clear
    steps = torch.randint(0, 2**40, (300,), generator=generator)
    block = torch.arange(10).expand(300, 10)
    step = steps[:, None].expand(300, 10)
    counter = torch.stack((block, torch.zeros_like(block), step & WORD, (step >> 32) & WORD))
    key = torch.stack((keys[:, None] & WORD, (keys[:, None] >> 32) & WORD))
    expected = philox4x32(counter, key).permute(1, 2, 0).reshape(300, 40)[:, :37]
    assert torch.equal(RowStreams(keys, steps).bits(37), expected)


def streams(keys, steps) -> RowStreams:
    return RowStreams(torch.tensor(keys, dtype=torch.int64), torch.tensor(steps, dtype=torch.int64))


def test_a_rows_numbers_depend_on_its_key_step_and_draw_alone():
    keys, steps = [3, 2**62 + 5, 7, -1], [0, 9, 2**40, 1]  # -1: any 64-bit pattern is a key
    batch = streams(keys, steps)
    first, second = batch.bits(11), batch.bits(11)
    for i in range(4):
        alone = streams([keys[i]], [steps[i]])
        assert torch.equal(alone.bits(11)[0], first[i]) and torch.equal(alone.bits(11)[0], second[i])
    assert not torch.equal(first, second)  # the second draw of a step is a new one
    assert not torch.equal(streams([3], [1]).bits(11)[0], first[0])  # so is the next step
    assert not torch.equal(streams([4], [0]).bits(11)[0], first[0])  # and another key
    assert int(first.min()) >= 0 and int(first.max()) <= WORD
    # A longer draw begins with the shorter one: words come in blocks of four, by position.
    assert torch.equal(streams(keys, steps).bits(3), first[:, :3])


def test_uniforms_and_normals_have_their_distributions():
    uniform, normal = streams(range(64), [0] * 64).uniform_and_normal(1000, 999)
    assert uniform.shape == (64, 1000) and normal.shape == (64, 999) and uniform.dtype == torch.float32
    assert float(uniform.min()) >= 0.0 and float(uniform.max()) < 1.0
    # 64,000 draws: the standard errors are about 0.0011 (uniform mean) and 0.004 (normal mean).
    assert abs(float(uniform.mean()) - 0.5) < 0.006 and abs(float(uniform.var()) - 1 / 12) < 0.002
    assert abs(float(normal.mean())) < 0.02 and abs(float(normal.std()) - 1.0) < 0.015
    assert abs(float((normal.abs() < 1.96).float().mean()) - 0.95) < 0.005
    counts = np.histogram(uniform.numpy(), bins=16, range=(0, 1))[0]
    assert counts.min() > 3700 and counts.max() < 4300  # 4,000 expected in each


def test_one_generator_and_bad_noise():
    a = uniform_and_normal(torch.Generator().manual_seed(1), 3, 4, 5, "cpu")
    b = uniform_and_normal(torch.Generator().manual_seed(1), 3, 4, 5, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert draw_normal((2, 3, 4), streams([1, 2], [0, 0]), "cpu").shape == (2, 3, 4)
    with pytest.raises(ValueError, match="3 row streams for a batch of 2"):
        uniform_and_normal(streams([1, 2, 3], [0, 0, 0]), 2, 1, 1, "cpu")
    with pytest.raises(TypeError, match="noise must be a RowStreams"):
        uniform_and_normal([torch.Generator()], 1, 1, 1, "cpu")
    with pytest.raises(ValueError, match="keys and steps"):
        streams([1, 2], [0])


def test_a_dream_is_the_same_whatever_shares_its_batch(vmc_runs):
    """Env i of a batch seeded s dreams what a batch of one seeded s + i dreams, stepped alone or fused
    with other sessions (the service's batcher), across resets."""
    model = worldmodel.load_bundle(vmc_runs["bundle"], temperature=1.3)
    steps = 12
    actions = np.random.default_rng(0).integers(0, 2, (steps, 3))
    masks = np.zeros((steps, 3), bool)
    masks[5, 1] = masks[8, 0] = True  # resets mid-run, of different envs
    trio, others = DreamBatch(model, 3, observation="latent", seed=40), DreamBatch(model, 2, observation="latent", seed=7)
    solo = DreamBatch(model, 1, observation="latent", seed=41)  # env 1 of the trio
    trio.reset(seed=40), others.reset(seed=7), solo.reset(seed=41)
    for t in range(steps):
        fused, _ = step_many([trio, others], [actions[t], actions[t, :2]], [masks[t], None])
        alone = solo.step(actions[t, 1:2], masks[t, 1:2])
        torch.testing.assert_close(alone.observation["latent"][0], fused.observation["latent"][1], rtol=0, atol=1e-5)
        assert alone.terminated[0] == fused.terminated[1] and alone.reward[0] == pytest.approx(fused.reward[1], abs=1e-5)


def test_seeds_reproduce_dreams_and_differ_from_each_other(vmc_runs):
    model = worldmodel.load_bundle(vmc_runs["bundle"])

    def dream(seed: int) -> np.ndarray:
        batch = DreamBatch(model, 4, observation="latent", seed=seed)
        batch.reset(seed=seed)
        return np.stack([batch.step(np.array([0, 1, 1, 0])).observation["latent"].numpy() for _ in range(6)])

    first = dream(3)
    np.testing.assert_array_equal(first, dream(3))
    assert not np.allclose(first, dream(4))
