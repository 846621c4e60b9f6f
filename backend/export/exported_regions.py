"""An exported image and its regions (`_Image`, `_Region`) and what the writers derive from a region: its shape as
a polygon or mask (`_segment_of`), a mask as COCO RLE or a 1-bit PNG, flattened attributes, and the key that finds
identical regions (`_dedup_key`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regionscribe.backend.store.records import canonical_json
from regionscribe.backend.export.errors import ExportError


@dataclass
class _Region:
    id: int  # unique in the export (VG region_id / object_id, COCO annotation id)
    rec: Any  # regionscribe.backend.store.RegionRecord
    box: tuple[float, float, float, float]  # pixel xyxy
    raw_relations: list[tuple[int, dict]] = field(default_factory=list)  # (annotation id, relation as stored)
    relations: list[tuple[int, str, str | None]] = field(default_factory=list)  # (target id, label, direction)
    _segment: Any = None

    @property
    def xywh(self) -> list[float]:
        x1, y1, x2, y2 = self.box
        return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]

    def segment(self, width: int, height: int) -> tuple[str, Any, Any] | None:
        """The region's shape on the `width`×`height` image: ("polygon", pixel points, mask) for a polygon (an
        ellipse: its outline), ("mask", None, mask) for a brush; None for a box or keypoint, or a shape with no
        pixels on this image (an RLE of another size)."""
        if self._segment is None:
            self._segment = (_segment_of(self.rec.shape, width, height),)
        return self._segment[0]


def _segment_of(shape: dict | None, width: int, height: int) -> tuple[str, Any, Any] | None:
    from regionscribe.backend.labelstudio.shapes import Shape, ShapeError

    if not shape:
        return None
    try:
        parsed = Shape.from_json(shape)
        if not parsed.has_mask:
            return None
        mask = parsed.mask(width, height)
    except ShapeError:
        return None
    if parsed.kind == "brush":
        return "mask", None, mask
    return "polygon", [(float(x), float(y)) for x, y in parsed.outline(width, height)], mask


def _coco_rle(mask) -> dict:
    """COCO's compressed RLE of a boolean mask ({"size": [h, w], "counts": str}), by pycocotools."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:  # pragma: no cover - depends on the install
        raise ExportError("exporting brush masks needs pycocotools (COCO RLE): pip install pycocotools") from None
    import numpy as np

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _mask_png(mask) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(mask).convert("1").save(out, format="PNG")
    return out.getvalue()


@dataclass
class _Image:
    id: int
    key: str  # sha256 of the content, or "ref-<image key>" while the image is not cached
    sha256: str | None
    image_ref: str | None
    path: Path | None  # the cached file
    width: int
    height: int
    split: str
    regions: list[_Region]
    file: str | None = None  # name under images/ (copy) or the reference (path of the cached file, else LS ref)


def _leaf(value) -> str:
    return str(value[-1]) if isinstance(value, (list, tuple)) and value else str(value)


def _flat_attributes(attributes: dict) -> list[str]:
    return [_leaf(v) for name in sorted(attributes) for v in attributes[name] or []]


def _dedup_key(rec, box) -> str:
    return canonical_json([[round(v) for v in box], (rec.caption or "").strip(), (rec.detailed_caption or "").strip(),
                       (rec.relation_text or "").strip(), rec.attributes, list(rec.labels)])
