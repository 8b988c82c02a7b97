"""Conversions between stored frames and model inputs.

Stores, environments and the wire carry images as uint8 [..., H, W, C]; the
convolutional models take float32 [..., C, H, W] in [0, 1]. These are two
lines each, written by hand because torchvision's `to_dtype(..., scale=True)`
truncates floats to uint8 instead of rounding them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_model_input(images: Tensor) -> Tensor:
    """uint8 [..., H, W, C] in [0, 255] -> float32 [..., C, H, W] in [0, 1]."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images [..., H, W, C], got dtype {images.dtype}")
    if images.dim() < 3:
        raise ValueError(f"expected images [..., H, W, C], got shape {tuple(images.shape)}")
    return images.movedim(-1, -3).to(torch.float32).div(255.0).contiguous()


def to_uint8_images(x: Tensor) -> Tensor:
    """float [..., C, H, W] in [0, 1] -> uint8 [..., H, W, C] (clamped to [0, 1], rounded)."""
    if not x.is_floating_point():
        raise ValueError(f"expected float images [..., C, H, W], got dtype {x.dtype}")
    if x.dim() < 3:
        raise ValueError(f"expected images [..., C, H, W], got shape {tuple(x.shape)}")
    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).movedim(-3, -1).contiguous()
