"""What every dataset reader yields, and the report of what it skipped.

A reader turns one dataset's files into `ImageRecord`s: an image file, its size, and its regions, each a pixel xyxy
box with the text the dataset attaches to it (a category or a referring phrase, a caption, attributes, relations to
other regions of the same record). Broken records are not fatal: `SkipReport.skip` counts them by reason (a missing
image, a box outside the image, an empty phrase, a duplicate, ...) and the report is printed at the end. A file in
the wrong format is fatal: `FormatError` names the file and what was expected.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

Box = tuple[float, float, float, float]


class FormatError(ValueError):
    """A dataset file is not in the format its reader expects."""

    def __init__(self, path: str | Path, what: str):
        super().__init__(f"{path}: {what}")
        self.path = Path(path)


@dataclass
class RegionRecord:
    box: Box  # pixel xyxy of the image as stored (no EXIF rotation: datasets annotate the stored pixels)
    phrase: str | None = None  # a category name or a short referring phrase (stage 1)
    caption: str | None = None  # a region description (stage 2)
    attributes: list[str] = field(default_factory=list)
    relations: list[tuple[int, str]] = field(default_factory=list)  # (other region's index, predicate)
    span: tuple[int, int] | None = None  # the part of the record's caption that names this region (Flickr30k)


@dataclass
class ImageRecord:
    image: Path | bytes  # the image file, or its bytes (a parquet export with embedded images)
    width: int
    height: int
    regions: list[RegionRecord]
    key: str  # a stable id: "<source>:<dataset id>"
    caption: str | None = None  # a caption of the whole image whose spans the regions refer to (Flickr30k)
    choices: tuple[str, ...] | None = None  # the answers a phrase is chosen from (COCO's category names)


SKIP_REASONS = {
    "missing_image": "the image file is missing",
    "box_outside": "the box does not overlap the image",
    "degenerate_box": "the box is narrower or shorter than 1 px",
    "empty_text": "the region has no phrase, caption, attribute or relation",
    "short_caption": "a referring expression of fewer than 3 words (GPT4RoI drops these)",
    "duplicate": "the same box with the same text again in the same image",
    "crowd": "a COCO crowd annotation (iscrowd=1)",
    "no_box": "the phrase has no box (Flickr30k 'nobndbox', or a chain without boxes)",
    "no_regions": "no usable region left in the image",
    "bad_record": "a record without the fields its format requires",
}


class SkipReport:
    """Counts of skipped regions and images by reason, with the first few examples of each."""

    def __init__(self, source: str = ""):
        self.source = source
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.images = 0
        self.regions = 0

    def skip(self, reason: str, example: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.counts[reason] += 1
        if example and len(self.examples.setdefault(reason, [])) < 3:
            self.examples[reason].append(example)

    def kept(self, record: ImageRecord) -> None:
        self.images += 1
        self.regions += len(record.regions)

    def merge(self, other: "SkipReport") -> None:
        self.counts.update(other.counts)
        for reason, ex in other.examples.items():
            self.examples.setdefault(reason, []).extend(ex[:3 - len(self.examples.get(reason, []))])
        self.images += other.images
        self.regions += other.regions

    def to_dict(self) -> dict:
        return {"source": self.source, "images": self.images, "regions": self.regions,
                "skipped": dict(sorted(self.counts.items())),
                "examples": {k: v for k, v in sorted(self.examples.items()) if v}}

    def __str__(self) -> str:
        lines = [f"{self.source or 'data'}: {self.images} images, {self.regions} regions kept"]
        for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            ex = f" (e.g. {', '.join(self.examples[reason])})" if self.examples.get(reason) else ""
            lines.append(f"  skipped {n} x {reason}: {SKIP_REASONS[reason]}{ex}")
        return "\n".join(lines)


def clip_box(x: float, y: float, x2: float, y2: float, width: int, height: int) -> Box | str:
    """The box clipped to the image, or the skip reason: "box_outside" when it does not overlap the image,
    "degenerate_box" when what is left is under 1 px wide or high (GPT4RoI's and mmdet's rules)."""
    if x2 <= 0 or y2 <= 0 or x >= width or y >= height or x2 <= x or y2 <= y:
        return "box_outside" if (x2 > x and y2 > y) else "degenerate_box"
    box = (max(0.0, float(x)), max(0.0, float(y)), min(float(width), float(x2)), min(float(height), float(y2)))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return "degenerate_box"
    return box


def xywh_box(bbox, width: int, height: int) -> Box | str:
    """A COCO/VG [x, y, w, h] box as clipped xyxy, or the skip reason."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "bad_record"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "bad_record"
    if w < 1 or h < 1:
        return "degenerate_box"
    return clip_box(x, y, x + w, y + h, width, height)


def clean_text(text) -> str:
    return " ".join(str(text).split()) if isinstance(text, str) else ""


class Deduper:
    """Drops a region whose rounded box and text were already seen in the same image."""

    def __init__(self) -> None:
        self.seen: set = set()

    def admit(self, box: Box | str, text: str, report: SkipReport, example: str) -> bool:
        """Whether a region is kept: its box (or the skip reason clip_box/xywh_box gave instead), some text, and not
        seen before in this image; otherwise the skip is reported with `example`."""
        reason = box if isinstance(box, str) else "empty_text" if not text else \
            "duplicate" if self.seen_before(box, text) else None
        if reason is not None:
            report.skip(reason, example)
        return reason is None

    def seen_before(self, box: Box, *text) -> bool:
        key = (tuple(round(v, 1) for v in box), *[t.lower() if isinstance(t, str) else t for t in text])
        if key in self.seen:
            return True
        self.seen.add(key)
        return False
