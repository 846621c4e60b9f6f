"""Label Studio's region shapes, read from a result's `value`, checked, and turned into what the model takes: a pixel
bounding box and, for shapes that are not boxes, a boolean pixel mask of the (EXIF-corrected) image.

| tag (type)                          | value (Label Studio units)                                   | to the model           |
|-------------------------------------|--------------------------------------------------------------|------------------------|
| rectanglelabels / rectangle         | x, y (top-left), width, height: percent; rotation: degrees   | its box (no mask)      |
| polygonlabels / polygon             | points: [[x, y], ...] percent                                | mask, its bounding box |
| ellipselabels / ellipse             | x, y (centre), radiusX (% of width), radiusY (% of height),  | mask, its bounding box |
|                                     | rotation: degrees clockwise about the centre                 |                        |
| brushlabels / brush                 | format "rle", rle: Label Studio's RLE of an RGBA H×W image   | mask, its bounding box |
| keypointlabels / keypoint           | x, y: percent                                                | a small box round it   |

Brush RLE is decoded and encoded with label-studio-sdk's own converter (`label_studio_sdk.converter.brush`).
A shape that cannot be described raises `ShapeError` with a message naming the problem; the other regions of a task
are unaffected. Some problems show only once the image size is known (an empty mask, an RLE of another size), so the
worker rasterises: the web process checks what it can without the image (`Shape.from_result`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from regionscribe.model.masks import polygon_mask

# control tag (lowercase) → shape kind
KINDS = {"rectanglelabels": "rectangle", "rectangle": "rectangle",
         "polygonlabels": "polygon", "polygon": "polygon",
         "ellipselabels": "ellipse", "ellipse": "ellipse",
         "brushlabels": "brush", "brush": "brush",
         "keypointlabels": "keypoint", "keypoint": "keypoint"}
REGION_TAGS = tuple(KINDS)
LABEL_KEYS = {"rectanglelabels", "polygonlabels", "ellipselabels", "brushlabels", "keypointlabels"}
KEYPOINT_BOX = 0.04  # a keypoint's box: this share of the image's shorter side, centred on the point
ELLIPSE_VERTICES = 72  # an ellipse is rasterised as a polygon of this many vertices
MAX_BRUSH_PIXELS = 64_000_000  # a brush RLE may claim at most this many pixels (the default MAX_IMAGE_PIXELS)
MAX_PERCENT_GRID = 8_000  # a polygon's or ellipse's percent box is rasterised on at most this many pixels a side
MAX_POLYGON_POINTS = 5_000  # the self-intersection check is quadratic: ~1-3 s at this size


class ShapeError(ValueError):
    """A region whose shape cannot be described (too few points, self-intersecting, empty, wrong RLE size...)."""


def _finite(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ShapeError(f"{what} is {value!r}, not a number") from None
    if not math.isfinite(v):
        raise ShapeError(f"{what} is {value!r}, not a finite number")
    return v


@dataclass(frozen=True)
class Shape:
    """One region's shape in Label Studio's units (percent of the image; degrees). Only the fields of its kind are
    set. `rle` is Label Studio's brush RLE (a flat list of byte values) of an `rle_width`×`rle_height` RGBA image."""

    kind: str
    x: float = 0.0  # rectangle: top-left corner; ellipse, keypoint: centre
    y: float = 0.0
    width: float = 0.0  # rectangle; keypoint: the point's size as Label Studio sends it (kept, not used)
    height: float = 0.0
    rotation: float = 0.0  # rectangle: about the top-left corner; ellipse: about the centre
    radius_x: float = 0.0  # ellipse, percent of the image width
    radius_y: float = 0.0  # ellipse, percent of the image height
    points: tuple[tuple[float, float], ...] = ()  # polygon
    rle: tuple[int, ...] = ()  # brush
    rle_width: int | None = None
    rle_height: int | None = None

    # ------------------------------------------------------------------------------------------------ reading

    @classmethod
    def from_result(cls, item: dict) -> "Shape":
        """The shape of one Label Studio result (its `type` picks the kind). Checks what needs no image: numbers,
        a polygon's point count and self-intersection, a brush's RLE format."""
        kind = KINDS.get(str(item.get("type", "")).lower())
        if kind is None:
            raise ShapeError(f"a {item.get('type')!r} result is not a region shape")
        value = item.get("value")
        if not isinstance(value, dict):
            raise ShapeError(f"the {kind} has no value")
        if kind == "rectangle":
            shape = cls(kind, x=_finite(value.get("x"), "x"), y=_finite(value.get("y"), "y"),
                        width=_finite(value.get("width"), "width"), height=_finite(value.get("height"), "height"),
                        rotation=_finite(value.get("rotation") or 0.0, "rotation"))
            if shape.width <= 0 or shape.height <= 0:
                raise ShapeError(f"the rectangle is {shape.width:g}% × {shape.height:g}%: it has no area")
            return shape
        if kind == "polygon":
            points = value.get("points")
            if not isinstance(points, list):
                raise ShapeError("the polygon has no `points` list")
            parsed = []
            for k, p in enumerate(points):
                if not isinstance(p, (list, tuple)) or len(p) < 2:
                    raise ShapeError(f"polygon point {k} is {p!r}, not [x, y]")
                parsed.append((_finite(p[0], f"polygon point {k} x"), _finite(p[1], f"polygon point {k} y")))
            return cls.polygon(parsed)
        if kind == "ellipse":
            shape = cls(kind, x=_finite(value.get("x"), "x"), y=_finite(value.get("y"), "y"),
                        radius_x=_finite(value.get("radiusX"), "radiusX"),
                        radius_y=_finite(value.get("radiusY"), "radiusY"),
                        rotation=_finite(value.get("rotation") or 0.0, "rotation"))
            if shape.radius_x <= 0 or shape.radius_y <= 0:
                raise ShapeError(f"the ellipse has radii {shape.radius_x:g}% and {shape.radius_y:g}%: it has no area")
            return shape
        if kind == "keypoint":
            return cls(kind, x=_finite(value.get("x"), "x"), y=_finite(value.get("y"), "y"),
                       width=_finite(value.get("width") or 0.0, "width"))
        # brush
        if str(value.get("format", "rle")).lower() != "rle":
            raise ShapeError(f"the brush mask has format {value.get('format')!r}; regionscribe reads Label Studio's "
                             "\"rle\"")
        rle = value.get("rle")
        if not isinstance(rle, list) or not rle:
            raise ShapeError("the brush mask has no `rle` list")
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in rle):
            raise ShapeError("the brush RLE is not a list of byte values (0..255)")
        width, height = positive_int(item.get("original_width")), positive_int(item.get("original_height"))
        shape = cls(kind, rle=tuple(rle), rle_width=width, rle_height=height)
        values = shape.rle_values
        if values > 4 * MAX_BRUSH_PIXELS or values % 4:
            raise ShapeError(f"the brush RLE claims {values} values: not an RGBA image of at most "
                             f"{MAX_BRUSH_PIXELS} pixels")
        if width and height and values != width * height * 4:
            raise ShapeError(f"the brush RLE holds {values} values; its original size {width}×{height} needs "
                             f"{width * height * 4} (RGBA)")
        return shape

    @classmethod
    def polygon(cls, points) -> "Shape":
        points = tuple((float(x), float(y)) for x, y in points)
        if len(points) > 1 and points[0] == points[-1]:
            points = points[:-1]  # closed explicitly: the ring closes itself
        if len(points) < 3:
            raise ShapeError(f"the polygon has {len(points)} point(s); it needs at least 3")
        if len(points) > MAX_POLYGON_POINTS:
            raise ShapeError(f"the polygon has {len(points)} points; regionscribe reads at most {MAX_POLYGON_POINTS}")
        crossing = _self_intersection(points)
        if crossing is not None:
            raise ShapeError(f"the polygon is self-intersecting (edges {crossing[0]} and {crossing[1]} cross)")
        return cls("polygon", points=points)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "Shape":
        """A brush shape holding `mask` (bool H×W) as Label Studio's RLE, encoded by label-studio-sdk."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ShapeError(f"a mask must be 2-D (H, W), not {mask.shape}")
        return cls("brush", rle=tuple(int(b) for b in _brush().mask2rle(mask.astype(np.uint8) * 255)),
                   rle_width=int(mask.shape[1]), rle_height=int(mask.shape[0]))

    # -------------------------------------------------------------------------------------------- (de)serialise

    def to_json(self) -> dict:
        """The shape as a JSON-able dict (the job payload, the store); `from_json` reads it back."""
        if self.kind == "rectangle":
            return {"kind": self.kind, "x": self.x, "y": self.y, "width": self.width, "height": self.height,
                    "rotation": self.rotation}
        if self.kind == "polygon":
            return {"kind": self.kind, "points": [list(p) for p in self.points]}
        if self.kind == "ellipse":
            return {"kind": self.kind, "x": self.x, "y": self.y, "radiusX": self.radius_x, "radiusY": self.radius_y,
                    "rotation": self.rotation}
        if self.kind == "keypoint":
            return {"kind": self.kind, "x": self.x, "y": self.y, "width": self.width}
        return {"kind": self.kind, "rle": list(self.rle), "width": self.rle_width, "height": self.rle_height}

    @classmethod
    def from_json(cls, data: dict) -> "Shape":
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "brush":
            item = {"type": "brush", "value": {"format": "rle", "rle": data.get("rle")},
                    "original_width": data.get("width"), "original_height": data.get("height")}
        elif kind in ("rectangle", "polygon", "ellipse", "keypoint"):
            item = {"type": kind, "value": {k: v for k, v in data.items() if k != "kind"}}
        else:
            raise ShapeError(f"unknown shape {data!r}")
        return cls.from_result(item)

    def value(self) -> dict:
        """The geometry part of a Label Studio result `value` for this shape (without the labels)."""
        if self.kind == "rectangle":
            return {"x": self.x, "y": self.y, "width": self.width, "height": self.height, "rotation": self.rotation}
        if self.kind == "polygon":
            return {"points": [list(p) for p in self.points], "closed": True}
        if self.kind == "ellipse":
            return {"x": self.x, "y": self.y, "radiusX": self.radius_x, "radiusY": self.radius_y,
                    "rotation": self.rotation}
        if self.kind == "keypoint":
            return {"x": self.x, "y": self.y, "width": self.width} if self.width else {"x": self.x, "y": self.y}
        return {"format": "rle", "rle": list(self.rle)}

    # ------------------------------------------------------------------------------------------------ geometry

    @property
    def rle_values(self) -> int:
        """How many values (width × height × 4) a brush RLE says it holds: its first 32 bits."""
        return int.from_bytes(bytes(self.rle[:4]).ljust(4, b"\0"), "big")

    @property
    def has_mask(self) -> bool:
        """Polygons, ellipses and brushes describe a mask; rectangles and keypoints a box."""
        return self.kind in ("polygon", "ellipse", "brush")

    def mask(self, width: int, height: int) -> np.ndarray | None:
        """Boolean (height, width) mask of this shape on a `width`×`height` image; None for box shapes. Raises
        ShapeError for an empty mask or a brush RLE of another size."""
        if not self.has_mask:
            return None
        if self.kind == "brush":
            if self.rle_values != width * height * 4:  # checked before decoding: the header says the size
                told = f" (Label Studio said {self.rle_width}×{self.rle_height})" if self.rle_width else ""
                raise ShapeError(f"the brush RLE holds {self.rle_values} values{told}; a {width}×{height} image "
                                 f"needs {width * height * 4} (RGBA)")
            try:
                flat = _brush().decode_rle(list(self.rle))
            except (IndexError, ValueError) as exc:  # the SDK's bit reader runs past the end of a truncated RLE
                raise ShapeError(f"the brush RLE does not decode ({type(exc).__name__}): truncated or not "
                                 "Label Studio's RLE") from None
            mask = flat.reshape(height, width, 4)[:, :, 3] > 0
        else:
            mask = polygon_mask(self.outline(width, height), width, height)
        if not mask.any():
            raise ShapeError(f"the {self.kind}'s mask is empty on the {width}×{height} image (nothing inside it)")
        return mask

    def outline(self, width: int, height: int) -> list[tuple[float, float]]:
        """Polygon or ellipse outline in pixels."""
        if self.kind == "polygon":
            return [(x / 100.0 * width, y / 100.0 * height) for x, y in self.points]
        cx, cy = self.x / 100.0 * width, self.y / 100.0 * height
        rx, ry = self.radius_x / 100.0 * width, self.radius_y / 100.0 * height
        c, s = math.cos(math.radians(self.rotation)), math.sin(math.radians(self.rotation))
        out = []
        for k in range(ELLIPSE_VERTICES):
            t = 2 * math.pi * k / ELLIPSE_VERTICES
            dx, dy = rx * math.cos(t), ry * math.sin(t)
            out.append((cx + dx * c - dy * s, cy + dx * s + dy * c))
        return out

    def pixel_box(self, width: int, height: int, mask: np.ndarray | None = None) -> tuple[float, float, float, float]:
        """Pixel xyxy the model gets, inside the image and at least one pixel wide: a rectangle's (rotated)
        bounding box, a keypoint's small box, a mask's bounding box (pass `mask` when it is computed already)."""
        if self.kind == "rectangle":
            x1, y1, x2, y2 = rectangle_pixels(self.x, self.y, self.width, self.height, self.rotation, width, height)
        elif self.kind == "keypoint":
            half = KEYPOINT_BOX * min(width, height) / 2.0
            cx, cy = self.x / 100.0 * width, self.y / 100.0 * height
            x1, y1 = min(max(cx - half, 0.0), float(width)), min(max(cy - half, 0.0), float(height))
            x2, y2 = min(max(cx + half, 0.0), float(width)), min(max(cy + half, 0.0), float(height))
        else:
            mask = self.mask(width, height) if mask is None else mask
            return mask_box(mask)
        x1, y1 = min(x1, width - 1.0), min(y1, height - 1.0)
        return x1, y1, max(x2, x1 + 1.0), max(y2, y1 + 1.0)

    def percent_box(self, width: int | None = None, height: int | None = None) -> tuple[float, float, float, float]:
        """The shape's axis-aligned bounding box in Label Studio percent units (x, y, width, height). A rotated
        ellipse's extent depends on the image's aspect ratio: pass the image size when it is known (else square is
        assumed). A brush needs its RLE's size (Label Studio's original_width/height)."""
        if self.kind == "rectangle":
            w, h = width or 100, height or 100
            x1, y1, x2, y2 = rectangle_pixels(self.x, self.y, self.width, self.height, self.rotation, w, h)
            return x1 / w * 100.0, y1 / h * 100.0, (x2 - x1) / w * 100.0, (y2 - y1) / h * 100.0
        if self.kind == "brush":
            if not (self.rle_width and self.rle_height):
                raise ShapeError("the brush result has no original_width/original_height: its RLE cannot be read")
            w, h = self.rle_width, self.rle_height
        else:
            w, h = positive_int(width) or 1000, positive_int(height) or 1000
            if max(w, h) > MAX_PERCENT_GRID:  # percent units need no finer grid (and the size is told, not seen)
                scale = MAX_PERCENT_GRID / max(w, h)  # the aspect kept, but never under 100 px a side (1%)
                w, h = max(min(w, 100), round(w * scale)), max(min(h, 100), round(h * scale))
        x1, y1, x2, y2 = self.pixel_box(w, h)
        return x1 / w * 100.0, y1 / h * 100.0, (x2 - x1) / w * 100.0, (y2 - y1) / h * 100.0


def rectangle_pixels(x: float, y: float, w: float, h: float, rotation: float, width: int, height: int
                     ) -> tuple[float, float, float, float]:
    """Label Studio percent rectangle → pixel xyxy of its axis-aligned bounding box (rotation is about the top-left
    corner, clockwise, in degrees), clamped to the image."""
    x, y = x / 100.0 * width, y / 100.0 * height
    w, h = w / 100.0 * width, h / 100.0 * height
    angle = math.radians(rotation or 0.0)
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    else:
        xs, ys = [x, x + w], [y, y + h]
    clamp = lambda v, hi: min(max(v, 0.0), float(hi))  # noqa: E731
    return clamp(min(xs), width), clamp(min(ys), height), clamp(max(xs), width), clamp(max(ys), height)



def percent_box_to_pixels(box: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """Label Studio percent geometry → pixel xyxy of its axis-aligned bounding box (rotation is about the top-left
    corner, clockwise, in degrees), clamped to the image."""
    return rectangle_pixels(box["x"], box["y"], box["width"], box["height"], float(box.get("rotation") or 0.0),
                            width, height)

def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Pixel xyxy of a non-empty mask's bounding box (pixel edges: a one-pixel mask is one pixel wide)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise ShapeError("the mask is empty")
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _brush():
    """label-studio-sdk's brush converter, imported on first use: its package imports nltk and the whole converter
    (a second at start-up), which the web process does not need until a brush mask arrives."""
    from label_studio_sdk.converter import brush

    return brush


def positive_int(value) -> int | None:
    """An image size as Label Studio sends it (original_width/height): a positive integer, else None."""
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if v > 0 else None


def _self_intersection(points: tuple[tuple[float, float], ...]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges of the closed ring `points` that touch or cross, else None. Edge k runs
    from point k to point k+1 (the last one back to point 0). Each edge is tested against all later ones at once."""
    n = len(points)
    p = np.asarray(points, dtype=np.float64)
    q = np.roll(p, -1, axis=0)  # edge k: p[k] → q[k]

    def orient(a, b, c):  # sign of the turn a → b → c, for arrays of points
        return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])

    def within(a, b, c):  # c (collinear with a-b) lies on the segment a-b
        return ((np.minimum(a[..., 0], b[..., 0]) <= c[..., 0]) & (c[..., 0] <= np.maximum(a[..., 0], b[..., 0]))
                & (np.minimum(a[..., 1], b[..., 1]) <= c[..., 1]) & (c[..., 1] <= np.maximum(a[..., 1], b[..., 1])))

    for i in range(n - 2):
        last = n - 1 if i > 0 else n - 2  # edge 0 and edge n-1 share point 0
        if last < i + 2:
            continue
        js = np.arange(i + 2, last + 1)
        a, b, c, d = p[i], q[i], p[js], q[js]
        d1, d2 = orient(c, d, a[None]), orient(c, d, b[None])
        d3, d4 = orient(a[None], b[None], c), orient(a[None], b[None], d)
        proper = (d1 * d2 < 0) & (d3 * d4 < 0)
        touching = (((d1 == 0) & within(c, d, np.broadcast_to(a, c.shape)))
                    | ((d2 == 0) & within(c, d, np.broadcast_to(b, c.shape)))
                    | ((d3 == 0) & within(np.broadcast_to(a, c.shape), np.broadcast_to(b, c.shape), c))
                    | ((d4 == 0) & within(np.broadcast_to(a, c.shape), np.broadcast_to(b, c.shape), d)))
        hits = np.nonzero(proper | touching)[0]
        if len(hits):
            return i, int(js[hits[0]])
    return None
