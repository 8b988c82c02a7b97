"""A torch Dataset over store windows, for DataLoader and DistributedSampler."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from worldmodel.data.sampler import WindowSampler


class WindowDataset(Dataset):
    """Item i is window i of the sampler, as a dict of tensors [T, ...].

    Map-style on purpose: a DistributedSampler (or Ray Train's
    prepare_data_loader) then shards windows across workers.
    """

    def __init__(self, sampler: WindowSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        window = self.sampler.window_at(int(index))
        return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in window.items()}
