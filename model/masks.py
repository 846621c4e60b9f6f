"""Region masks from the formats that carry them, without torch: a polygon filled on the pixel grid (how Label
Studio's polygons and ellipses become masks, regionscribe.backend.labelstudio.shapes), COCO's compressed RLE, and the
conversations export's `segmentation` entry (a normalised polygon or a COCO RLE). One implementation for the backend,
the exports and the training readers, so a shape read back is the shape that was written."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def polygon_mask(outline: Sequence[tuple[float, float]], width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of a polygon given in pixels: its inside and its outline (PIL's fill)."""
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(px, py) for px, py in outline], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def segment_mask(segment: dict | None, width: int, height: int) -> np.ndarray | None:
    """A conversations export's `segmentation` entry → boolean (height, width) mask, None for a box. Raises
    ValueError for a polygon of fewer than 3 points or a mask with nothing inside the image."""
    if segment is None:
        return None
    if "polygon" in segment:
        points = [(float(x) * 100.0, float(y) * 100.0) for x, y in segment["polygon"]]  # percent, as Label Studio
        if len(points) > 1 and points[0] == points[-1]:
            points = points[:-1]
        if len(points) < 3:
            raise ValueError(f"the polygon has {len(points)} point(s); it needs at least 3")
        mask = polygon_mask([(x / 100.0 * width, y / 100.0 * height) for x, y in points], width, height)
    else:
        mask = coco_rle_mask(segment["rle"])
        if mask.shape != (height, width):
            raise ValueError(f"the RLE is {mask.shape[1]}×{mask.shape[0]}; the image is {width}×{height}")
    if not mask.any():
        raise ValueError(f"the mask is empty on the {width}×{height} image")
    return mask


def coco_rle_mask(rle: dict) -> np.ndarray:
    """COCO's compressed RLE ({"size": [h, w], "counts": str}, as pycocotools.mask.encode writes it) → boolean
    (h, w) mask. Read here rather than by pycocotools.mask.decode, which raises a DeprecationWarning under numpy 2
    (its __array__ lacks `copy`); the format is pycocotools' maskApi.c rleFrString."""
    height, width = (int(v) for v in rle["size"])
    text = rle["counts"]
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    if sum(counts) != width * height or any(c < 0 for c in counts):
        raise ValueError(f"the RLE's runs add up to {sum(counts)} pixels; its size says {width}x{height}")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)  # runs alternate 0, 1, 0... from 0
    return flat.reshape(width, height).T  # column-major, as COCO stores it
