"""Images, boxes and masks in, checked: decoding, EXIF rotation, mode conversion, box and mask checks. No torch here
(the web process and the exports read images too); regionscribe.model.tensors turns them into the model's tensors.

Every bad input stops here with an `ImageError` or a `BoxError` that says what is wrong, before any tensor work.
Documented behaviour:
- EXIF orientation is applied first; boxes are in pixels of the rotated (as displayed) image.
- Grayscale, palette, 16-bit and float images are converted to 8-bit RGB (16-bit/float scaled by their max);
  transparent images are composited on white.
- The image is resized to the model's square input without keeping the aspect ratio (GPT4RoI's Resize with
  keep_ratio=False); boxes are normalised by the image's width and height, so they follow the same distortion.
- Boxes partly outside the image are clipped to it; a box with no area inside the image, an inverted or zero-size
  box, or one that is not four finite numbers is an error naming the box's index.
- A region may come with a mask: a boolean (H, W) array of the (EXIF-corrected) image, its box being the mask's
  bounding box. A mask of another shape or type, an empty one, or one with pixels outside its box is a `MaskError`
  naming the region's index. The region encoder sees the mask as `tensors.mask_grid`: the fraction of each cell of a
  square grid over the image that the mask covers (the same square frame as the resized model input).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from regionscribe.model.errors import BoxError, ImageError, MaskError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger images are refused before they are decoded (decompression bombs)


def load_image(data: bytes | str | Path | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes (or a path, or a PIL image) into an 8-bit RGB image with EXIF rotation applied."""
    if isinstance(data, Image.Image):
        image = data
    else:
        try:
            raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else bytes(data)
        except OSError as e:
            raise ImageError(f"cannot read image file: {e}") from e
        if not raw:
            raise ImageError("empty image data")
        try:
            image = Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError as e:
            raise ImageError(f"image refused as a decompression bomb: {e}") from e
        except Exception as e:  # PIL raises UnidentifiedImageError, SyntaxError, ValueError... on junk
            raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from e
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"image could not be decoded ({type(e).__name__}: {e})") from e


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        arr = arr / top * 255.0 if top > 0 else arr * 0
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_boxes(boxes: Sequence[Sequence[float]], width: int, height: int) -> list[tuple[float, float, float, float]]:
    """Validate pixel xyxy boxes and clip them to the image. Raises BoxError naming the first bad box."""
    if boxes is None or len(boxes) == 0:
        raise BoxError("no boxes given: at least one region is needed")
    out = []
    for i, box in enumerate(boxes):
        try:
            x1, y1, x2, y2 = (float(v) for v in box)
        except (TypeError, ValueError) as e:
            raise BoxError(f"box {i} is not four numbers x1, y1, x2, y2: {box!r}") from e
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise BoxError(f"box {i} has a non-finite coordinate: {box!r}")
        if x2 <= x1 or y2 <= y1:
            raise BoxError(f"box {i} is inverted or has zero size (need x2 > x1 and y2 > y1): {box!r}")
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
            raise BoxError(f"box {i} lies outside the {width}x{height} image: {box!r}")
        out.append((cx1, cy1, cx2, cy2))
    return out


def check_masks(masks: Sequence[np.ndarray | None] | None, boxes: Sequence[Sequence[float]], width: int,
                height: int) -> list[np.ndarray | None]:
    """Validate the masks given with (already checked) pixel xyxy boxes: None, or one entry per box, each None (the
    box itself) or a boolean (height, width) array with at least one pixel, all of them inside the box (its pixels
    rounded outwards). Raises MaskError naming the first bad mask."""
    if masks is None:
        return [None] * len(boxes)
    if isinstance(masks, np.ndarray) or len(masks) != len(boxes):
        raise MaskError(f"masks must be a list with one entry (a mask or None) per box: {len(boxes)} boxes, "
                        f"{'an array' if isinstance(masks, np.ndarray) else f'{len(masks)} masks'} given")
    out: list[np.ndarray | None] = []
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        if mask is None:
            out.append(None)
            continue
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            kind = f"a {mask.dtype} array" if isinstance(mask, np.ndarray) else type(mask).__name__
            raise MaskError(f"mask {i} must be a boolean numpy array, not {kind}")
        if mask.shape != (height, width):
            raise MaskError(f"mask {i} has shape {mask.shape}; the image is {width}x{height}, so a mask must be "
                            f"({height}, {width})")
        total = int(np.count_nonzero(mask))
        if total == 0:
            raise MaskError(f"mask {i} is empty (no pixel set)")
        x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
        outside = total - int(np.count_nonzero(mask[y0:y1, x0:x1]))
        if outside:
            raise MaskError(f"mask {i} has {outside} of its {total} pixels outside its box {tuple(box)!r}; the box "
                            f"given with a mask is the mask's bounding box")
        out.append(mask)
    return out
