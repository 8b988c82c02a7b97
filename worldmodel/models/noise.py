"""The randomness of dreams: one counter-based stream per batch row.

A dream's draws come from Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as
1, 2, 3"; the generator of cuRAND and of torch's CUDA backend), written in torch integer ops so a
whole batch is drawn in one vectorised call. Each number is a pure function of

    (the row's key, the row's step, which draw of that step, which word of that draw)

so a row dreams the same whatever shares its batch, on any device: the integer math is exact, and
uniforms are exact functions of the bits (normals go through log/cos/sin in float64, the same on CPU
and CUDA up to the last bit of a float32 in rare cases).

Before this, every row had its own torch.Generator and a step made one small draw per row and per
kind of noise (768 calls for 256 rows): about 1 ms of a 3 ms batched latent step.

`Noise` is what the models take: a RowStreams (per-row streams, what DreamBatch passes), a
torch.Generator (one stream for the whole batch: training, tests) or None (torch's global one).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

_WORD = 0xFFFFFFFF
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)  # the key schedule's increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10
"""Random123's default: 7 rounds already pass BigCrush, 10 keep its safety margin."""


def philox4x32(counter: Tensor, key: Tensor, rounds: int = ROUNDS) -> Tensor:
    """Philox4x32 of `counter` [4, ...] under `key` [2, ...] (int64 tensors of 32-bit words, broadcast
    together) -> [4, ...] int64 words in [0, 2**32).

    The 32x32-bit products fit in int64's 64 bits as two's complement (the high word is masked out
    after an arithmetic shift), so no unsigned type is needed: torch has few uint64 kernels.
    """
    shape = (2,) + (1,) * (counter.dim() - 1)
    multipliers = torch.tensor(_MULTIPLIERS, dtype=torch.int64, device=counter.device).view(shape)
    schedule = torch.arange(rounds, dtype=torch.int64, device=counter.device).view(rounds, *(1,) * len(shape))
    weyl = torch.tensor(_WEYL, dtype=torch.int64, device=counter.device).view(shape)
    round_keys = (key + schedule * weyl) & _WORD  # [rounds, 2, ...]: key bumped once per round
    even, odd = counter[0::2], counter[1::2]  # (c0, c2) are multiplied; (c1, c3) are mixed in
    for r in range(rounds):
        product = even * multipliers
        # c0' = hi(M1 c2) ^ c1 ^ k0, c1' = lo(M1 c2), c2' = hi(M0 c0) ^ c3 ^ k1, c3' = lo(M0 c0)
        even = ((product >> 32) & _WORD).flip(0) ^ odd ^ round_keys[r]
        odd = (product & _WORD).flip(0)
    return torch.stack((even[0], odd[0], even[1], odd[1]))


def philox4x32_numpy(counter: np.ndarray, key: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """`philox4x32` in numpy uint64 (the same words): numpy's small integer ops cost a third of torch's on
    the CPU, and a dream draws a few small blocks per step. Arrays as in `philox4x32`, dtype uint64."""
    even, odd = _philox_numpy_rounds(counter[0::2], counter[1::2], key, rounds)
    return np.stack((even[0], odd[0], even[1], odd[1]))


def _philox_numpy_rounds(even: np.ndarray, odd: np.ndarray, key: np.ndarray, rounds: int = ROUNDS):
    """The rounds on (c0, c2) and (c1, c3), each [2, ...] uint64 (broadcast together): the final pairs."""
    shape = (2,) + (1,) * (even.ndim - 1)
    multipliers = np.array(_MULTIPLIERS, dtype=np.uint64).reshape(shape)
    schedule = np.arange(rounds, dtype=np.uint64).reshape((rounds,) + (1,) * len(shape))
    round_keys = (key + schedule * np.array(_WEYL, dtype=np.uint64).reshape(shape)) & np.uint64(_WORD)
    word, shift = np.uint64(_WORD), np.uint64(32)
    for r in range(rounds):
        product = even * multipliers  # < 2**64: no wrap in uint64
        even = (product >> shift)[::-1] ^ odd ^ round_keys[r]
        odd = (product & word)[::-1]
    return even, odd


class RowStreams:
    """Per-row random streams for one step of a batch: row r draws from Philox keyed by keys[r] at
    counter (word block, draw, steps[r]). Each call is the next draw of this step for every row.

    keys: int64 [B] (any 64-bit pattern); steps: int64 [B] >= 0, the step each row is at (the owner
    advances it between steps: a new RowStreams per step).
    """

    def __init__(self, keys: Tensor, steps: Tensor):
        if keys.shape != steps.shape or keys.dim() != 1:
            raise ValueError(f"keys and steps must both be [B], got {tuple(keys.shape)} and {tuple(steps.shape)}")
        self.keys = keys.to(torch.int64)
        self.steps = steps.to(torch.int64)
        self.draws = 0
        """Draws made so far this step: the next one's index (counter word 1)."""

    def __len__(self) -> int:
        return self.keys.shape[0]

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def bits(self, words: int) -> Tensor:
        """The next draw: [B, words] int64 words in [0, 2**32), a row's words from its stream alone."""
        if words < 1:
            raise ValueError(f"a draw needs at least one word, got {words}")
        batch, blocks = len(self), -(-words // 4)
        draw, self.draws = self.draws, self.draws + 1
        if self.device.type == "cpu":
            return torch.from_numpy(self._bits_numpy(batch, blocks, draw)[:, :words])
        block = torch.arange(blocks, dtype=torch.int64, device=self.device).expand(batch, blocks)
        steps = self.steps[:, None].expand(batch, blocks)
        counter = torch.stack((block, torch.full_like(block, draw), steps & _WORD, (steps >> 32) & _WORD))
        keys = self.keys[:, None]
        key = torch.stack((keys & _WORD, (keys >> 32) & _WORD))
        out = philox4x32(counter, key)  # [4, B, blocks]
        return out.permute(1, 2, 0).reshape(batch, blocks * 4)[:, :words]

    def _bits_numpy(self, batch: int, blocks: int, draw: int) -> np.ndarray:
        """`bits` on the CPU, through numpy: [B, blocks * 4] int64 words."""
        word, shift = np.uint64(_WORD), np.uint64(32)
        steps = self.steps.numpy().view(np.uint64)[:, None]
        keys = self.keys.numpy().view(np.uint64)[:, None]
        block = np.broadcast_to(np.arange(blocks, dtype=np.uint64), (batch, blocks))
        even = np.stack((block, np.broadcast_to(steps & word, (batch, blocks))))  # (c0, c2)
        odd = np.stack((np.full((batch, 1), draw, np.uint64), steps >> shift))  # (c1, c3), broadcast
        even, odd = _philox_numpy_rounds(even, odd, np.stack((keys & word, keys >> shift)))
        return np.stack((even[0], odd[0], even[1], odd[1]), axis=-1).reshape(batch, blocks * 4).view(np.int64)

    def uniform_and_normal(self, uniforms: int, normals: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """One draw: uniforms [B, uniforms] in [0, 1) and standard normals [B, normals] (Box-Muller)."""
        pairs = -(-normals // 2)
        bits = self.bits(uniforms + 2 * pairs)
        uniform = ((bits[:, :uniforms] >> 8).to(torch.float32) * 2.0**-24).to(dtype)  # 24 bits: exact in float32
        if normals == 0:
            return uniform, bits.new_zeros((len(self), 0), dtype=dtype)
        words = bits[:, uniforms:].double()
        radius = torch.sqrt(-2.0 * torch.log((words[:, :pairs] + 1.0) * 2.0**-32))  # (0, 1]: log is finite
        angle = words[:, pairs:] * (2.0 * math.pi * 2.0**-32)
        normal = torch.cat((radius * torch.cos(angle), radius * torch.sin(angle)), dim=1)[:, :normals]
        return uniform, normal.to(dtype)


Noise = torch.Generator | RowStreams | None
"""Where a model's draws come from: per-row streams, one generator for the batch, or torch's global one."""


def uniform_and_normal(
    noise: Noise, batch: int, uniforms: int, normals: int, device, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """uniforms [batch, uniforms] in [0, 1) and normals [batch, normals], from `noise` (one draw of a RowStreams)."""
    if isinstance(noise, RowStreams):
        if len(noise) != batch:
            raise ValueError(f"{len(noise)} row streams for a batch of {batch}")
        return noise.uniform_and_normal(uniforms, normals, dtype)
    if noise is not None and not isinstance(noise, torch.Generator):
        raise TypeError(f"noise must be a RowStreams, a torch.Generator or None, got {type(noise).__name__}")
    uniform = torch.rand((batch, uniforms), generator=noise, device=device, dtype=dtype)
    return uniform, torch.randn((batch, normals), generator=noise, device=device, dtype=dtype)


def draw_uniform(batch: int, noise: Noise, device) -> Tensor:
    """[batch] uniforms in [0, 1) from `noise`."""
    return uniform_and_normal(noise, batch, 1, 0, device)[0][:, 0]


def draw_normal(shape: tuple[int, ...], noise: Noise, device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normals of `shape` (its first dimension the batch) from `noise`."""
    per_row = math.prod(shape[1:])
    return uniform_and_normal(noise, shape[0], 0, per_row, device, dtype)[1].reshape(shape)


__all__ = ["Noise", "ROUNDS", "RowStreams", "draw_normal", "draw_uniform", "philox4x32", "philox4x32_numpy",
           "uniform_and_normal"]
