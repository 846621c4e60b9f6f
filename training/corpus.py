"""The synthetic corpus: scenes drawn with PIL, with known boxes, and GPT4RoI-format conversations.

No dataset can be downloaded where regionscribe is built, so the embedded default model learns from scenes this
module draws itself: 2-4 objects on a grey, slightly noisy background, each with a colour, a shape, a size class
and a texture that must be read from pixels, and pairwise relations (left of / above / bigger than / same colour as
/ overlapping) that follow from the boxes.

A withheld colour (``WITHHELD_COLOR``) and a withheld shape (``WITHHELD_SHAPE``) never appear in the "train",
"val" and "test" splits; every scene of the "novel" split has at least one of them. They exist so that an
annotator's corrections can be shown to teach the model something it has never seen.

Conversations follow GPT4RoI: the first human turn starts with ``IMAGE_PREFIX``; a region is introduced as
``regionK <bbox>`` at its first mention and later mentioned as plain ``regionK``; the k-th ``<bbox>`` of the whole
conversation stands for ``Sample.boxes[k-1]``. Everything is deterministic per seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from regionscribe.model.conversation import Sample, Turn
from regionscribe.model.prompts import BBOX, CAPTION_Q, DETAILED_Q, IMAGE, IMAGE_PREFIX, RELATION_Q, YESNO_Q

__all__ = [
    "COLORS", "WITHHELD_COLOR", "WITHHELD_COLOR_RGB", "SHAPES", "WITHHELD_SHAPE", "TEXTURES", "SIZES",
    "SIZE_RANGES", "ATTRIBUTES", "ATTRIBUTE_WORDS", "ATTRIBUTE_VALUES", "BASE_VALUES", "RELATION_AXES",
    "RELATION_LABELS", "LABEL_PHRASES", "POSITIONS", "NUMBER_WORDS", "IMAGE_PREFIX", "BBOX", "IMAGE", "SPLITS",
    "MAX_REGIONS", "SceneObject", "Scene", "Turn", "Sample", "render_scene", "make_scenes", "size_class",
    "visible_masks", "render_overlapping_pair", "with_masks",
    "position_name", "relations", "phrase_text", "caption_text", "detailed_text", "relation_text",
    "iter_samples", "check_axes", "relation_samples", "eval_samples", "vocabulary_text",
]

# --------------------------------------------------------------------------------------------------- concepts

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 210, 40),
    "orange": (245, 140, 30),
    "brown": (130, 80, 40),
    "black": (25, 25, 25),
}
WITHHELD_COLOR = "purple"
WITHHELD_COLOR_RGB = (145, 50, 175)
_ALL_RGB = {**COLORS, WITHHELD_COLOR: WITHHELD_COLOR_RGB}

SHAPES: list[str] = ["circle", "square", "triangle", "cross"]
WITHHELD_SHAPE = "star"
TEXTURES: list[str] = ["solid", "striped", "dotted"]
SIZES: list[str] = ["small", "medium", "large"]
# Size class = the box's longest side / the image's longest side. Objects are drawn inside SIZE_RANGES; the
# classification thresholds (_SIZE_THRESHOLDS) sit in the gaps, so rasterisation never moves an object across.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.15, 0.20), "medium": (0.26, 0.32), "large": (0.38, 0.46)}
_SIZE_THRESHOLDS = (0.23, 0.35)

ATTRIBUTES: list[str] = ["color", "shape", "size", "texture"]
ATTRIBUTE_WORDS: dict[str, list[str]] = {
    "color": ["color", "colour"],
    "shape": ["shape"],
    "size": ["size"],
    "texture": ["texture", "pattern", "material"],
}
BASE_VALUES: dict[str, list[str]] = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES),
                                     "texture": list(TEXTURES)}
ATTRIBUTE_VALUES: dict[str, list[str]] = {"color": [*COLORS, WITHHELD_COLOR], "shape": [*SHAPES, WITHHELD_SHAPE],
                                          "size": list(SIZES), "texture": list(TEXTURES)}

# Relations of an ordered pair (subject, object): each axis has two answers, exactly one of them true.
RELATION_AXES: dict[str, tuple[str, str]] = {
    "horizontal": ("left of", "right of"),
    "vertical": ("above", "below"),
    "size": ("bigger than", "smaller than"),
    "color": ("same colour as", "different colour from"),
    "overlap": ("overlapping", "not overlapping"),
}
RELATION_LABELS: list[str] = [label for pair in RELATION_AXES.values() for label in pair]
# How a label reads inside a sentence ("Is region1 the same colour as region2?").
LABEL_PHRASES: dict[str, str] = {**{label: label for label in RELATION_LABELS},
                                 "same colour as": "the same colour as",
                                 "different colour from": "a different colour from"}
_MIN_CENTRE_GAP = 0.10   # horizontal/vertical asked only when centres differ by >= 10% of the image side
_MIN_AREA_RATIO = 1.4    # size asked only when the bigger box is >= 1.4x the smaller one

POSITIONS: list[list[str]] = [["top left", "top", "top right"], ["left", "center", "right"],
                              ["bottom left", "bottom", "bottom right"]]
NUMBER_WORDS: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]
_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses", "star": "stars"}

MAX_REGIONS = 16
SPLITS = ("train", "val", "test", "novel")

# ------------------------------------------------------------------------------------------------- templates
# "{r}" / "{a}" / "{b}" stand for a region mention ("region1 <bbox>" or "region1"). The first template of each
# list is the canonical one used by eval_samples().

PHRASE_TEMPLATES = [
    "What is in {r}? Answer with a short phrase.",
    "Name the object in {r} with a short phrase.",
    "What object is in {r}? Answer briefly.",
]
CAPTION_TEMPLATES = [
    CAPTION_Q,
    "What can you tell me about the region marked by {r}?",
    "Describe {r} briefly.",
    "Can you describe {r} in a few words?",
    "Briefly describe the object in {r}.",
    "What object is shown in {r}?",
    "Write a short caption for {r}.",
    "Summarize what {r} contains.",
    "Provide a brief description of {r}.",
    "What do you see in {r}?",
]
DETAILED_TEMPLATES = [
    DETAILED_Q,
    "Give a detailed description of {r}, including where it is in the image.",
    "Where is {r} in the image and what does it look like?",
    "Please describe {r} and its position in the image.",
]
ATTRIBUTE_TEMPLATES = [
    "What is the {word} of {r}?",
    "Tell me the {word} of {r}.",
]
RELATION_TEMPLATES: dict[str, list[str]] = {
    "horizontal": ["Is {a} left of or right of {b}?", "Is {a} to the left or to the right of {b}?"],
    "vertical": ["Is {a} above or below {b}?", "Is {a} higher or lower than {b}, above or below?"],
    "size": ["Is {a} bigger or smaller than {b}?", "Is {a} bigger than or smaller than {b}?"],
    "color": ["Does {a} have the same colour as {b}?", "Is {a} the same colour as or a different colour from {b}?"],
    "overlap": ["Does {a} overlap {b}?", "Is {a} overlapping or not overlapping {b}?"],
}
YESNO_TEMPLATE = YESNO_Q
RELATION_TEXT_TEMPLATES = [RELATION_Q, "Describe the relation between {a} and {b}."]
WHICH_TEMPLATES = {"color": "Which of {group} is {value}?", "shape": "Which of {group} is a {value}?"}
COUNT_TEMPLATES = {"color": "How many of {group} are {value}?", "shape": "How many of {group} are {value}?"}
EXTREME_TEMPLATES = {"biggest": "Which of {group} is the biggest?", "smallest": "Which of {group} is the smallest?"}

# ---------------------------------------------------------------------------------------------- dataclasses

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


TURN_KINDS = ("phrase", "caption", "detailed", "attribute", "relation", "yesno", "relation_text", "multi")


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


# --------------------------------------------------------------------------------------------- answer texts

def phrase_text(obj: SceneObject) -> str:
    """Stage-1 phrase: "red circle"."""
    return f"{obj.color} {obj.shape}"


def caption_text(obj: SceneObject) -> str:
    """Short caption, always "a {size} {color} {texture} {shape}"."""
    return f"a {obj.size} {obj.color} {obj.texture} {obj.shape}"


def detailed_text(obj: SceneObject, image_size: tuple[int, int]) -> str:
    """Detailed caption with the position; solid objects read "a {size} solid {color} {shape} in the ..."."""
    where = f"in the {position_name(obj.box, image_size)} of the image"
    if obj.texture == "solid":
        return f"a {obj.size} solid {obj.color} {obj.shape} {where}"
    return f"a {obj.size} {obj.color} {obj.shape} with a {obj.texture} pattern {where}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def relation_text(rels: dict[str, str], a_name: str, b_name: str) -> str | None:
    """"region1 is left of, above and bigger than region2": the unambiguous horizontal/vertical/size labels, then
    "the same colour as" when the colours match, then "overlapping" when the boxes intersect. None when nothing
    is worth saying."""
    parts = [rels[axis] for axis in ("horizontal", "vertical", "size") if axis in rels]
    if rels.get("color") == "same colour as":
        parts.append("the same colour as")
    if rels.get("overlap") == "overlapping":
        parts.append("overlapping")
    if not parts:
        return None
    return f"{a_name} is {_join(parts)} {b_name}"


# --------------------------------------------------------------------------------------------- conversations

class _Regions:
    """Names objects in order of first mention: "region3 <bbox>" the first time, "region3" afterwards."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}
        self.boxes: list[Box] = []

    def name(self, i: int) -> str:
        return f"region{self.index[i] + 1}"

    def mention(self, i: int, obj: SceneObject) -> str:
        if i in self.index:
            return self.name(i)
        if len(self.boxes) >= MAX_REGIONS:
            raise ValueError(f"more than {MAX_REGIONS} regions in one conversation")
        self.index[i] = len(self.boxes)
        self.boxes.append(obj.box)
        return f"{self.name(i)} {BBOX}"


def _group_text(mentions: list[str]) -> str:
    return _join(mentions)


def _make_turn(kind: str, scene: Scene, rng: random.Random, reg: _Regions) -> tuple[Turn, tuple] | None:
    """One stage-2 turn of this kind and what it asks about (so a conversation asks each thing once), or None
    when the scene offers no valid question of that kind. Region mentions are only allocated once the turn is
    certain to be produced."""
    objs = scene.objects
    size = scene.image_size
    if kind in ("caption", "detailed", "attribute"):
        i = rng.randrange(len(objs))
        obj = objs[i]
        if kind == "caption":
            q = rng.choice(CAPTION_TEMPLATES).format(r=reg.mention(i, obj))
            return Turn(q, caption_text(obj), "caption"), ("caption", i)
        if kind == "detailed":
            q = rng.choice(DETAILED_TEMPLATES).format(r=reg.mention(i, obj))
            return Turn(q, detailed_text(obj, size), "detailed"), ("detailed", i)
        attr = rng.choice(ATTRIBUTES)
        word = rng.choice(ATTRIBUTE_WORDS[attr])
        q = rng.choice(ATTRIBUTE_TEMPLATES).format(word=word, r=reg.mention(i, obj))
        return Turn(q, getattr(obj, attr), "attribute", tuple(ATTRIBUTE_VALUES[attr]), attr), ("attribute", i, attr)

    if len(objs) < 2:
        return None
    if kind in ("relation", "yesno", "relation_text"):
        i, j = rng.sample(range(len(objs)), 2)
        rels = relations(objs[i], objs[j], size)
        if kind == "relation_text":
            if relation_text(rels, "A", "B") is None:
                return None
            template = rng.choice(RELATION_TEXT_TEMPLATES)
            q = template.format(a=reg.mention(i, objs[i]), b=reg.mention(j, objs[j]))
            answer = relation_text(rels, reg.name(i), reg.name(j))
            return Turn(q, answer, "relation_text"), ("relation_text", min(i, j), max(i, j))  # type: ignore
        axis = rng.choice(list(rels))
        if kind == "relation":
            template = rng.choice(RELATION_TEMPLATES[axis])
            q = template.format(a=reg.mention(i, objs[i]), b=reg.mention(j, objs[j]))
            return Turn(q, rels[axis], "relation", RELATION_AXES[axis], axis), ("relation", min(i, j), max(i, j), axis)
        true_label = rels[axis]
        ask_true = rng.random() < 0.5
        label = true_label if ask_true else next(x for x in RELATION_AXES[axis] if x != true_label)
        # half the time the bare label, as a Label Studio <Relations> value arrives at inference ("same colour as")
        phrase = LABEL_PHRASES[label] if rng.random() < 0.5 else label
        q = YESNO_TEMPLATE.format(a=reg.mention(i, objs[i]), label=phrase, b=reg.mention(j, objs[j]))
        turn = Turn(q, "yes" if ask_true else "no", "yesno", ("yes", "no"), axis)
        return turn, ("relation", min(i, j), max(i, j), axis)

    if kind == "multi":
        k = rng.randint(2, min(4, len(objs)))
        group = rng.sample(range(len(objs)), k)
        form = rng.choice(["which", "count", "extreme"])
        answer_index: int | None = None
        if form == "which":
            attr = rng.choice(["color", "shape"])
            values = [getattr(objs[g], attr) for g in group]
            unique = [v for v in dict.fromkeys(values) if values.count(v) == 1]
            if not unique:
                return None
            value = rng.choice(unique)
            answer_index = group[values.index(value)]
            template, fill, key = WHICH_TEMPLATES[attr], value, f"which-{attr}"
        elif form == "count":
            attr = rng.choice(["color", "shape"])
            values = [getattr(objs[g], attr) for g in group]
            pool = sorted(set(BASE_VALUES[attr]) | {getattr(o, attr) for o in objs})
            value = rng.choice(values) if rng.random() < 0.7 else rng.choice(pool)
            count = NUMBER_WORDS[values.count(value)]
            fill = _PLURALS[value] if attr == "shape" else value
            template, key = COUNT_TEMPLATES[attr], f"count-{attr}"
        else:
            which = rng.choice(["biggest", "smallest"])
            areas = sorted(((_area(objs[g].box), g) for g in group), reverse=(which == "biggest"))
            ratio = areas[0][0] / areas[1][0] if which == "biggest" else areas[1][0] / areas[0][0]
            if ratio < _MIN_AREA_RATIO:
                return None
            answer_index = areas[0][1]
            template, fill, key = EXTREME_TEMPLATES[which], None, which
        group_text = _group_text([reg.mention(g, objs[g]) for g in group])
        q = template.format(group=group_text, value=fill)
        answer = reg.name(answer_index) if answer_index is not None else count
        return Turn(q, answer, "multi", None, key), ("multi", key, fill, tuple(sorted(group)))
    raise ValueError(f"unknown turn kind {kind!r}")


_STAGE2_KINDS = ["caption", "detailed", "attribute", "relation", "yesno", "relation_text", "multi"]
_STAGE2_WEIGHTS = [2.0, 1.0, 3.0, 2.0, 1.5, 1.0, 1.5]


def _with_prefix(turns: list[Turn]) -> list[Turn]:
    if turns:
        turns[0].question = IMAGE_PREFIX + turns[0].question
    return turns


def _stage1_sample(scene: Scene, rng: random.Random) -> Sample:
    reg = _Regions()
    order = list(range(len(scene.objects)))
    rng.shuffle(order)
    turns = [Turn(rng.choice(PHRASE_TEMPLATES).format(r=reg.mention(i, scene.objects[i])),
                  phrase_text(scene.objects[i]), "phrase") for i in order]
    return Sample(scene.image, reg.boxes, _with_prefix(turns), scene.scene_id)


def _stage2_sample(scene: Scene, rng: random.Random, n_turns: tuple[int, int]) -> Sample:
    reg = _Regions()
    target = rng.randint(*n_turns)
    turns: list[Turn] = []
    seen: set[tuple] = set()
    for _ in range(target * 10):
        if len(turns) >= target:
            break
        kind = rng.choices(_STAGE2_KINDS, _STAGE2_WEIGHTS)[0]
        # Work on a copy of the region namer so a rejected turn leaves no region behind.
        trial = _Regions()
        trial.index, trial.boxes = dict(reg.index), list(reg.boxes)
        made = _make_turn(kind, scene, rng, trial)
        if made is None or made[1] in seen:
            continue
        turn, about = made
        seen.add(about)
        turns.append(turn)
        reg = trial
    return Sample(scene.image, reg.boxes, _with_prefix(turns), scene.scene_id)


def _check_share(mask_share: float) -> float:
    if not 0.0 <= mask_share <= 1.0:
        raise ValueError(f"mask_share must be between 0 and 1, not {mask_share!r}")
    return float(mask_share)


def with_masks(sample: Sample, scene: Scene, mask_share: float, seed: int | str) -> Sample:
    """The sample with each region given its object's visible mask with probability `mask_share` (the others stay
    boxes). The draw has its own random stream (seed, scene_id), so the conversation itself does not change."""
    if not mask_share:
        return sample
    rng = random.Random(f"{seed}:mask:{scene.scene_id}")
    by_box = {obj.box: obj.mask for obj in scene.objects}
    sample.masks = [by_box.get(tuple(box)) if rng.random() < mask_share else None for box in sample.boxes]
    return sample


def iter_samples(scenes: list[Scene], stage: int, seed: int = 0, turns: tuple[int, int] = (3, 6),
                 mask_share: float = 0.0) -> Iterator[Sample]:
    """One conversation per scene. Stage 1: one region→phrase turn per object, in random order. Stage 2: a
    multi-turn conversation of `turns` (inclusive range) turns mixing captions, detailed captions, attributes,
    relations (axis, yes/no, text) and multi-region reasoning. Each scene's conversation depends only on
    (seed, stage, scene_id). `mask_share`: the chance that a region comes with its object's visible mask
    (`with_masks`); 0 (all boxes) leaves the samples exactly as without masks."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, not {stage!r}")
    _check_share(mask_share)
    for scene in scenes:
        rng = random.Random(f"{seed}:{stage}:{scene.scene_id}")
        sample = _stage1_sample(scene, rng) if stage == 1 else _stage2_sample(scene, rng, turns)
        yield with_masks(sample, scene, mask_share, f"{seed}:{stage}")


def check_axes(axes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The relation axes named, as a tuple; ValueError naming any that RELATION_AXES does not have."""
    unknown = [a for a in axes if a not in RELATION_AXES]
    if unknown:
        raise ValueError(f"unknown relation axes {unknown}; known: {', '.join(RELATION_AXES)}")
    return tuple(axes)


def relation_samples(scenes: list[Scene], axes: tuple[str, ...] | list[str], seed: int = 0,
                     mask_share: float = 0.0) -> Iterator[Sample]:
    """Single-turn relation questions only (the relation drill of regionscribe.training.stages): per scene every ordered pair and
    every unambiguous axis among `axes`, with paraphrased templates, in a shuffled order. `mask_share` as in
    `iter_samples` (per question: the same region may be a box in one and a mask in another)."""
    check_axes(axes)
    _check_share(mask_share)
    for scene in scenes:
        rng = random.Random(f"{seed}:drill:{scene.scene_id}")
        out = []
        for i, a in enumerate(scene.objects):
            for j, b in enumerate(scene.objects):
                if i == j:
                    continue
                for axis, label in relations(a, b, scene.image_size).items():
                    if axis in axes:
                        q = IMAGE_PREFIX + rng.choice(RELATION_TEMPLATES[axis]).format(a=f"region1 {BBOX}",
                                                                                      b=f"region2 {BBOX}")
                        out.append(Sample(scene.image, [a.box, b.box],
                                          [Turn(q, label, "relation", RELATION_AXES[axis], axis)], scene.scene_id))
        rng.shuffle(out)
        if mask_share:
            out = [with_masks(sample, scene, mask_share, f"{seed}:drill:{k}") for k, sample in enumerate(out)]
        yield from out


def eval_samples(scenes: list[Scene]) -> Iterator[Sample]:
    """Single-turn samples with canonical templates, each with exactly the boxes it mentions: per object a short
    caption and every attribute (canonical word); per ordered pair every unambiguous relation axis."""
    for scene in scenes:
        objs = scene.objects
        for obj in objs:
            r = f"region1 {BBOX}"
            yield Sample(scene.image, [obj.box],
                         [Turn(IMAGE_PREFIX + CAPTION_TEMPLATES[0].format(r=r), caption_text(obj), "caption")],
                         scene.scene_id)
            for attr in ATTRIBUTES:
                q = IMAGE_PREFIX + ATTRIBUTE_TEMPLATES[0].format(word=ATTRIBUTE_WORDS[attr][0], r=r)
                yield Sample(scene.image, [obj.box],
                             [Turn(q, getattr(obj, attr), "attribute", tuple(ATTRIBUTE_VALUES[attr]), attr)],
                             scene.scene_id)
        for i, a in enumerate(objs):
            for j, b in enumerate(objs):
                if i == j:
                    continue
                for axis, label in relations(a, b, scene.image_size).items():
                    q = IMAGE_PREFIX + RELATION_TEMPLATES[axis][0].format(a=f"region1 {BBOX}", b=f"region2 {BBOX}")
                    yield Sample(scene.image, [a.box, b.box],
                                 [Turn(q, label, "relation", RELATION_AXES[axis], axis)], scene.scene_id)


def vocabulary_text() -> list[str]:
    """Every template (filled with example regions), every concept word (base and withheld), every answer form,
    region1..region16 and the number words: the text a byte-level BPE tokenizer should be trained on."""
    r, a, b = f"region1 {BBOX}", f"region1 {BBOX}", f"region2 {BBOX}"
    out: list[str] = [IMAGE_PREFIX, IMAGE, BBOX]
    out += [t.format(r=r) for t in PHRASE_TEMPLATES + CAPTION_TEMPLATES + DETAILED_TEMPLATES]
    out += [t.format(word=w, r=r) for t in ATTRIBUTE_TEMPLATES for ws in ATTRIBUTE_WORDS.values() for w in ws]
    out += [t.format(a=a, b=b) for ts in RELATION_TEMPLATES.values() for t in ts]
    out += [YESNO_TEMPLATE.format(a=a, label=LABEL_PHRASES[label], b=b) for label in RELATION_LABELS]
    out += [t.format(a=a, b=b) for t in RELATION_TEXT_TEMPLATES]
    group = f"region1 {BBOX}, region2 {BBOX} and region3 {BBOX}"
    out += [t.format(group=group, value=v) for attr, t in WHICH_TEMPLATES.items() for v in ATTRIBUTE_VALUES[attr]]
    out += [COUNT_TEMPLATES["color"].format(group=group, value=v) for v in ATTRIBUTE_VALUES["color"]]
    out += [COUNT_TEMPLATES["shape"].format(group=group, value=_PLURALS[v]) for v in ATTRIBUTE_VALUES["shape"]]
    out += [t.format(group=group) for t in EXTREME_TEMPLATES.values()]
    for attr in ATTRIBUTES:
        out += ATTRIBUTE_WORDS[attr] + ATTRIBUTE_VALUES[attr]
    out += list(_PLURALS.values())
    out += RELATION_LABELS + list(LABEL_PHRASES.values())
    out += [p for row in POSITIONS for p in row]
    out += [f"region{k}" for k in range(1, MAX_REGIONS + 1)]
    out += NUMBER_WORDS + ["yes", "no"]
    for size in SIZES:
        for color in ATTRIBUTE_VALUES["color"]:
            for texture in TEXTURES:
                for shape in ATTRIBUTE_VALUES["shape"]:
                    obj = SceneObject((0.0, 0.0, 1.0, 1.0), color, shape, size, texture)
                    out.append(caption_text(obj))
    for pos in [p for row in POSITIONS for p in row]:
        out.append(f"a large red circle with a striped pattern in the {pos} of the image")
        out.append(f"a small solid purple star in the {pos} of the image")
    out.append("region1 is left of, above, bigger than, the same colour as and overlapping region2")
    out.append("region2 is right of, below and smaller than region1")
    return list(dict.fromkeys(out))
