"""Pictures people look at: side-by-side videos as GIF (imageio), upscaled with torchvision."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def side_by_side(videos: list[np.ndarray], scale: int = 2, gap: int = 2) -> np.ndarray:
    """Videos [T, H, W, C] uint8 of one length -> one video [T, H*scale, (W*scale+gap)*n - gap, C]."""
    import torch
    from torchvision.transforms.v2.functional import resize
    from torchvision.utils import make_grid

    length = min(len(v) for v in videos)
    frames = []
    for t in range(length):
        row = torch.stack([torch.from_numpy(np.ascontiguousarray(v[t])).permute(2, 0, 1) for v in videos])
        h, w = row.shape[-2:]
        row = resize(row, [h * scale, w * scale], interpolation=0)  # nearest: keep pixels crisp
        grid = make_grid(row, nrow=len(videos), padding=gap, pad_value=255)
        frames.append(grid[:, gap:-gap, gap:-gap].permute(1, 2, 0).numpy())
    return np.stack(frames)


def save_gif(path: str | Path, frames: np.ndarray, fps: int = 15) -> Path:
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, extension=".gif", duration=int(1000 / fps), loop=0)
    return path
