"""Scenes of the synthetic corpus: objects drawn with PIL on a grey, slightly noisy background, with tight boxes and
visible masks, and the relations that follow from their boxes. Deterministic given the random generator's state.

Holds the records (SceneObject, Scene), their geometry (size class, position, relations), the drawing (render_scene,
render_overlapping_pair, make_scenes per split).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from regionscribe.training.corpus.concepts import (
    _ALL_RGB, _MIN_AREA_RATIO, _MIN_CENTRE_GAP, _SIZE_THRESHOLDS, COLORS, POSITIONS, SHAPES, SIZE_RANGES, SIZES,
    SPLITS, TEXTURES, WITHHELD_COLOR, WITHHELD_SHAPE,
)

Box = tuple[float, float, float, float]


@dataclass
class SceneObject:
    """One drawn object. `box` is pixel xyxy (x1/y1 exclusive), tight around every pixel of the drawn shape; `mask`
    (H, W boolean) its visible pixels: the drawn shape less what later objects cover (inside `box`, never empty)."""

    box: Box
    color: str
    shape: str
    size: str
    texture: str
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    scene_id: str

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image.size


# -------------------------------------------------------------------------------------------------- geometry

def size_class(box: Box, image_size: tuple[int, int]) -> str:
    """"small" / "medium" / "large" from the box's longest side relative to the image's longest side."""
    frac = max(box[2] - box[0], box[3] - box[1]) / max(image_size)
    return "small" if frac < _SIZE_THRESHOLDS[0] else "medium" if frac < _SIZE_THRESHOLDS[1] else "large"


def position_name(box: Box, image_size: tuple[int, int]) -> str:
    """Where the box centre falls in a 3x3 grid of the image ("top left" ... "center" ... "bottom right")."""
    w, h = image_size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = min(2, max(0, int(3 * cx / w)))
    row = min(2, max(0, int(3 * cy / h)))
    return POSITIONS[row][col]


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _intersection(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def relations(a: SceneObject, b: SceneObject, image_size: tuple[int, int]) -> dict[str, str]:
    """The true label of every unambiguous axis for the ordered pair (a, b), in RELATION_AXES order."""
    w, h = image_size
    out: dict[str, str] = {}
    acx, acy = (a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2
    bcx, bcy = (b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2
    if abs(acx - bcx) >= _MIN_CENTRE_GAP * w:
        out["horizontal"] = "left of" if acx < bcx else "right of"
    if abs(acy - bcy) >= _MIN_CENTRE_GAP * h:
        out["vertical"] = "above" if acy < bcy else "below"
    area_a, area_b = _area(a.box), _area(b.box)
    if max(area_a, area_b) >= _MIN_AREA_RATIO * min(area_a, area_b):
        out["size"] = "bigger than" if area_a > area_b else "smaller than"
    out["color"] = "same colour as" if a.color == b.color else "different colour from"
    out["overlap"] = "overlapping" if _intersection(a.box, b.box) > 0 else "not overlapping"
    return out


# ------------------------------------------------------------------------------------------------- rendering

def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """The shape's outline, normalised so that its bounding box is [0, 1] on its longer side."""
    if shape == "square":
        pts = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "triangle":
        pts = [(0.5, 0.0), (1.0, 0.9), (0.0, 0.9)]
    elif shape == "cross":
        t0, t1 = 0.32, 0.68
        pts = [(t0, 0), (t1, 0), (t1, t0), (1, t0), (1, t1), (t1, t1), (t1, 1), (t0, 1), (t0, t1), (0, t1),
               (0, t0), (t0, t0)]
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((r * np.cos(ang), r * np.sin(ang)))
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0 = min(xs), min(ys)
    scale = max(max(xs) - x0, max(ys) - y0)
    return [((x - x0) / scale, (y - y0) / scale) for x, y in pts]


_POLYGONS = {shape: _unit_polygon(shape) for shape in ("square", "triangle", "cross", "star")}


def _shape_mask(shape: str, x0: int, y0: int, side: int, image_size: tuple[int, int]) -> np.ndarray:
    """Boolean HxW mask of the shape drawn with its bounding square's top-left at (x0, y0)."""
    canvas = Image.new("L", image_size, 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([x0, y0, x0 + side - 1, y0 + side - 1], fill=255)
    else:
        s = side - 1
        draw.polygon([(x0 + u * s, y0 + v * s) for u, v in _POLYGONS[shape]], fill=255)
    return np.asarray(canvas) > 0


def _tight_box(mask: np.ndarray) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


@lru_cache(maxsize=16)
def _patterns(image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Texture masks over the whole image: diagonal stripes (~4 px period at 128 px) and a grid of dots."""
    w, h = image_size
    scale = max(image_size) / 128
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(3, round(4 * scale))
    stripes = ((xx + yy) % period) < period / 2
    dot_period = max(4, round(5 * scale))
    radius = max(1.0, 1.3 * scale)
    c = (dot_period - 1) / 2
    dots = ((xx % dot_period) - c) ** 2 + ((yy % dot_period) - c) ** 2 <= radius ** 2
    return {"solid": np.zeros((h, w), bool), "striped": stripes, "dotted": dots}


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The texture colour: a darker shade, or a lighter one for very dark colours."""
    if sum(rgb) / 3 < 60:
        return tuple(min(255, c + 70) for c in rgb)  # type: ignore[return-value]
    return tuple(int(c * 0.55) for c in rgb)  # type: ignore[return-value]


_MAX_PIXEL_OVERLAP = 0.12   # a pair of overlapping objects may share at most this fraction of either's pixels
_P_TRY_OVERLAP = 0.3        # chance that a new object tries to overlap an earlier one
_P_REUSE_COLOR = 0.25       # chance that a new object copies an earlier object's colour


def _draw_attributes(rng: random.Random, placed: list[dict], allow_withheld: bool,
                     force: str | None) -> tuple[str, str, str]:
    colors, shapes = list(COLORS), list(SHAPES)
    if allow_withheld:
        colors.append(WITHHELD_COLOR)
        shapes.append(WITHHELD_SHAPE)
    if placed and rng.random() < _P_REUSE_COLOR:
        color = rng.choice(placed)["color"]
    else:
        color = rng.choice(colors)
    shape = rng.choice(shapes)
    if force in ("color", "both"):
        color = WITHHELD_COLOR
    if force in ("shape", "both"):
        shape = WITHHELD_SHAPE
    if force == "color" and shape == WITHHELD_SHAPE:
        shape = rng.choice(SHAPES)
    if force == "shape" and color == WITHHELD_COLOR:
        color = rng.choice(list(COLORS))
    return color, shape, rng.choice(TEXTURES)


def _place(rng: random.Random, shape: str, size: str, placed: list[dict], image_size: tuple[int, int],
           ) -> tuple[np.ndarray, Box] | None:
    """Try to put one object of this size class; None when it does not fit."""
    w, h = image_size
    longest = max(image_size)
    want_overlap = bool(placed) and rng.random() < _P_TRY_OVERLAP
    for attempt in range(40):
        side = round(rng.uniform(*SIZE_RANGES[size]) * longest)
        if side + 2 > min(w, h):
            return None
        if want_overlap and attempt < 20:
            t = rng.choice(placed)["box"]
            xlo, xhi = max(1, int(t[0]) - side + 2), min(w - side - 1, int(t[2]) - 2)
            ylo, yhi = max(1, int(t[1]) - side + 2), min(h - side - 1, int(t[3]) - 2)
            if xlo > xhi or ylo > yhi:
                continue
            x0, y0 = rng.randint(xlo, xhi), rng.randint(ylo, yhi)
        else:
            x0, y0 = rng.randint(1, w - side - 1), rng.randint(1, h - side - 1)
        nominal = (x0 - 1, y0 - 1, x0 + side + 1, y0 + side + 1)   # generous: contains the drawn pixels
        hits = [p for p in placed if _intersection(nominal, p["box"]) > 0]
        if hits and not (want_overlap and attempt < 20):
            continue
        mask = _shape_mask(shape, x0, y0, side, image_size)
        box = _tight_box(mask)
        area = mask.sum()
        ok = True
        for p in hits:
            if _intersection(box, p["box"]) <= 0:
                continue
            shared = np.logical_and(mask, p["mask"]).sum()
            if shared > _MAX_PIXEL_OVERLAP * min(area, p["area"]):
                ok = False
                break
        if ok:
            return mask, box
    return None


def visible_masks(placed: list[dict]) -> list[np.ndarray]:
    """Each drawn object's visible pixels, in drawing order: its shape's mask less every later object's."""
    out = []
    covered = np.zeros_like(placed[0]["mask"]) if placed else None
    for p in reversed(placed):
        out.append(p["mask"] & ~covered)
        covered = covered | p["mask"]
    return out[::-1]


def render_scene(rng: random.Random, image_size: tuple[int, int] = (128, 128), n_objects: tuple[int, int] = (2, 4),
                 allow_withheld: bool = False, require_withheld: bool = False, scene_id: str | None = None,
                 ) -> Scene:
    """Draw one scene. Deterministic given the state of `rng`.

    Objects mostly sit apart; about one in three tries to overlap an earlier one, sharing at most 12% of either's
    pixels so both shapes stay visible. `require_withheld` (implies `allow_withheld`) makes at least one object
    purple, a star, or both.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    w, h = image_size
    allow_withheld = allow_withheld or require_withheld
    if scene_id is None:
        scene_id = f"scene-{rng.getrandbits(48):012x}"
    n = rng.randint(*n_objects)
    forced_index = rng.randrange(n) if require_withheld else -1
    force = rng.choice(["color", "shape", "shape", "color", "both"]) if require_withheld else None
    placed: list[dict] = []
    for i in range(n):
        color, shape, texture = _draw_attributes(rng, placed, allow_withheld, force if i == forced_index else None)
        first = rng.choice(SIZES)
        result = None
        for size in SIZES[: SIZES.index(first) + 1][::-1]:
            result = _place(rng, shape, size, placed, image_size)
            if result is not None:
                break
        if result is None:          # no room left even for a small object: stop here unless this one is required
            if i == forced_index or len(placed) < n_objects[0]:
                for _ in range(200):
                    result = _place(rng, shape, "small", placed, image_size)
                    if result is not None:
                        break
            if result is None:
                if i == forced_index or len(placed) < n_objects[0]:
                    raise RuntimeError("could not place the required objects; use a larger image_size")
                continue
        mask, box = result
        base = _ALL_RGB[color]
        rgb = tuple(int(min(255, max(0, c + rng.randint(-8, 8)))) for c in base)
        placed.append({"mask": mask, "box": box, "area": int(mask.sum()), "color": color, "shape": shape,
                       "texture": texture, "rgb": rgb})

    return _paint(rng, placed, image_size, scene_id)


def _paint(rng: random.Random, placed: list[dict], image_size: tuple[int, int], scene_id: str) -> Scene:
    """The scene of the placed objects, drawn in order on a grey background with mild noise."""
    w, h = image_size
    gen = np.random.default_rng(rng.getrandbits(63))
    grey = rng.randint(150, 200)
    canvas = np.full((h, w, 3), grey, dtype=np.int16)
    patterns = _patterns(image_size)
    for p in placed:
        canvas[p["mask"]] = p["rgb"]
        canvas[p["mask"] & patterns[p["texture"]]] = _shade(p["rgb"])
    canvas += gen.integers(-5, 6, size=(h, w, 1), dtype=np.int16)   # mild luminance noise, same on every channel
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    objects = [SceneObject(box=p["box"], color=p["color"], shape=p["shape"], size=size_class(p["box"], image_size),
                           texture=p["texture"], mask=visible) for p, visible in zip(placed, visible_masks(placed))]
    return Scene(image=image, objects=objects, scene_id=scene_id)


def render_overlapping_pair(rng: random.Random, image_size: tuple[int, int] = (128, 128), min_shared: float = 0.5,
                            min_visible: float = 0.3, scene_id: str | None = None) -> Scene:
    """Two objects of different colours whose boxes share most of their area: the second (drawn on top) covers
    part of the first, whose box intersects the second's in at least `min_shared` of the smaller box, while at least
    `min_visible` (and at most 70%) of the first's pixels stay visible. Deterministic given the state of `rng`. Objects 0 (occluded)
    and 1 (occluder) carry their visible masks like every corpus object."""
    image_size = (int(image_size[0]), int(image_size[1]))
    w, h = image_size
    longest = max(image_size)
    if scene_id is None:
        scene_id = f"pair-{rng.getrandbits(48):012x}"
    colors = rng.sample(list(COLORS), 2)
    shapes = [rng.choice(SHAPES), rng.choice(SHAPES)]
    textures = [rng.choice(TEXTURES), rng.choice(TEXTURES)]
    for _ in range(500):
        side_a = round(rng.uniform(SIZE_RANGES["medium"][0], SIZE_RANGES["large"][1]) * longest)
        side_b = round(side_a * rng.uniform(0.8, 1.1))
        xa, ya = rng.randint(1, w - side_a - 1), rng.randint(1, h - side_a - 1)
        xb = xa + round(rng.choice((-1, 1)) * rng.uniform(0.1, 0.4) * side_a)
        yb = ya + round(rng.choice((-1, 1)) * rng.uniform(0.1, 0.4) * side_a)
        if not (1 <= xb <= w - side_b - 1 and 1 <= yb <= h - side_b - 1):
            continue
        mask_a = _shape_mask(shapes[0], xa, ya, side_a, image_size)
        mask_b = _shape_mask(shapes[1], xb, yb, side_b, image_size)
        box_a, box_b = _tight_box(mask_a), _tight_box(mask_b)
        shared = _intersection(box_a, box_b) / min(_area(box_a), _area(box_b))
        visible = np.count_nonzero(mask_a & ~mask_b) / np.count_nonzero(mask_a)
        if shared >= min_shared and min_visible <= visible <= 0.7:
            break
    else:
        raise RuntimeError("could not draw an overlapping pair; use a larger image_size")
    placed = []
    for mask, box, color, shape, texture in zip((mask_a, mask_b), (box_a, box_b), colors, shapes, textures):
        rgb = tuple(int(min(255, max(0, c + rng.randint(-8, 8)))) for c in COLORS[color])
        placed.append({"mask": mask, "box": box, "area": int(mask.sum()), "color": color, "shape": shape,
                       "texture": texture, "rgb": rgb})
    return _paint(rng, placed, image_size, scene_id)


def make_scenes(split: str, n: int, seed: int = 0, image_size: tuple[int, int] = (128, 128),
                n_objects: tuple[int, int] = (2, 4)) -> list[Scene]:
    """`n` scenes of a split. "train"/"val"/"test" use base concepts only; every "novel" scene has at least one
    object with the withheld colour or shape. Scene i of a split is drawn from its own
    `random.Random(f"{seed}:{split}:{i}")`, so splits are deterministic, independent and disjoint by seed."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    novel = split == "novel"
    return [render_scene(random.Random(f"{seed}:{split}:{i}"), image_size=image_size, n_objects=n_objects,
                         allow_withheld=novel, require_withheld=novel, scene_id=f"{split}-{seed}-{i}")
            for i in range(n)]
