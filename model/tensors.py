"""Checked images, boxes and masks (regionscribe.model.images) as the model's tensors: the resized, normalised pixel
values, boxes normalised to the image, and a mask as the fraction of each cell of a square grid that it covers."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image


def pixel_values(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[3, size, size] float tensor: bilinear resize to a square (aspect not kept), then CLIP normalisation."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    arr = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (arr - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def normalise_boxes(boxes: Sequence[Sequence[float]], width: int, height: int) -> torch.Tensor:
    """[N, 4] xyxy in [0, 1] of the image (the same frame the resized model input uses)."""
    t = torch.tensor([list(b) for b in boxes], dtype=torch.float32).reshape(-1, 4)
    return t / torch.tensor([width, height, width, height], dtype=torch.float32)


def mask_grid(mask: np.ndarray, size: int) -> torch.Tensor:
    """[size, size] float32 in [0, 1]: the fraction of each cell that the (H, W) boolean mask covers, with the image
    resized to a square as the model input is (a box filter, so thin parts of a mask are not lost)."""
    small = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((size, size), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)
