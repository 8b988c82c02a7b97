"""The reward, termination and vector head of the diffusion backbone (DIAMOND's reward/end model).

A small CNN encodes the current frame; an LSTM cell reads it with the action (and the vector
observation) and predicts the reward, a termination logit and the next vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodel.models.diffusion.config import DiffusionConfig, EnvInterface

HeadState = tuple[Tensor, Tensor]
"""The LSTM's (h, c), each [B, head_hidden]."""


class RewardHead(nn.Module):
    """Reward, termination and next vector from (frame_t, a_t, v_t) and an LSTM's memory.

    One LSTM cell steps the dream; `forward` runs the same cell over a sequence for training.
    Each env has its own head (`interface`: its action and vector sizes).
    """

    def __init__(self, config: DiffusionConfig, interface: EnvInterface):
        super().__init__()
        self.config = config
        self.vector_dim = interface.vector_dim
        layers, channels = [], config.channels
        for out in config.head_channels:
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.SiLU()]
            channels = out
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        side = config.image_size // 2 ** len(config.head_channels)
        self.project = nn.Linear(channels * side * side, config.head_hidden)
        self.cell = nn.LSTMCell(config.head_hidden + interface.action_dim + interface.vector_dim, config.head_hidden)
        self.out = nn.Linear(config.head_hidden, 2 + interface.vector_dim)

    def initial_state(self, batch: int, device: torch.device | str) -> HeadState:
        zeros = torch.zeros(batch, self.config.head_hidden, device=device)
        return zeros, zeros.clone()

    def step(
        self, frame: Tensor, action: Tensor, vector: Tensor | None, hc: HeadState
    ) -> tuple[tuple[Tensor, Tensor, Tensor | None], HeadState]:
        """frame [B, C, H, W] in [-1, 1], action features [B, A], vector [B, D] | None ->
        (reward [B], termination logit [B], next vector [B, D] | None), (h, c)."""
        features = F.silu(self.project(self.encoder(frame)))
        parts = [features, action] + ([vector] if vector is not None else [])
        h, c = self.cell(torch.cat(parts, dim=-1), hc)
        out = self.out(h)
        next_vector = out[:, 2:] if self.vector_dim else None
        return (out[:, 0], out[:, 1], next_vector), (h, c)

    def forward(
        self, frames: Tensor, actions: Tensor, vectors: Tensor | None, hc: HeadState | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None, HeadState]:
        """frames [B, T, C, H, W], actions [B, T, A], vectors [B, T, D] | None ->
        reward [B, T], termination logit [B, T], next vector [B, T, D] | None; and the last (h, c)."""
        b, t = frames.shape[:2]
        hc = hc if hc is not None else self.initial_state(b, frames.device)
        rewards, logits, nexts = [], [], []
        for i in range(t):
            (r, e, v), hc = self.step(frames[:, i], actions[:, i], None if vectors is None else vectors[:, i], hc)
            rewards.append(r), logits.append(e), nexts.append(v)
        stacked = torch.stack(nexts, 1) if self.vector_dim else None
        return torch.stack(rewards, 1), torch.stack(logits, 1), stacked, hc


__all__ = ["HeadState", "RewardHead"]
