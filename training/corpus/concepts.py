"""The synthetic corpus' concepts: the colours, shapes, sizes and textures an object can have (with the withheld colour
and shape), the relation axes of an ordered pair and their labels, positions, number words, the splits. Plain data.
"""
from __future__ import annotations

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
