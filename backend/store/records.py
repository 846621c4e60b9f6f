"""What the store takes in and gives back, and the helpers that normalise it: `StoreError`, the inputs ingest
parses (`RegionInput`, `AnnotationInput`, `Suggestion`), the outputs (`RegionRecord`, `Snapshot`), event sources
(`SOURCES`), canonical JSON, time stamps, image keys, the suggestion comparison and a region's pixel box.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = ("webhook", "sync")  # the values of events.source, annotations.source and regions.source


class StoreError(RuntimeError):
    """The store cannot be opened or written (bad URL, unreachable database, failed migration)."""


# ------------------------------------------------------------------------------------------------ data types


@dataclass(frozen=True)
class RegionInput:
    """One region of an annotation, as ingest parsed it from Label Studio results (percent geometry)."""

    region_id: str
    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    labels: tuple[str, ...] = ()
    caption: str | None = None
    detailed_caption: str | None = None
    relation_text: str | None = None
    attributes: dict[str, list] = field(default_factory=dict)  # control name → values (taxonomy: list of paths)
    relations: list[dict] = field(default_factory=list)  # [{"to": region id, "labels": [...], "direction": ...}]
    original_width: int | None = None
    original_height: int | None = None
    shape: dict | None = None  # regionscribe.backend.labelstudio.shapes.Shape.to_json() of a polygon, ellipse, brush or keypoint; None: a box

    @property
    def has_content(self) -> bool:
        return bool(self.caption or self.detailed_caption or self.relation_text
                    or any(values for values in self.attributes.values()))

    def digest(self, was_cancelled: bool) -> str:
        body = [round(self.x, 6), round(self.y, 6), round(self.width, 6), round(self.height, 6),
                round(self.rotation, 6), list(self.labels), self.caption, self.detailed_caption, self.relation_text,
                self.attributes, self.relations, bool(was_cancelled)]
        if self.shape is not None:  # (rectangles keep the digest they had before shapes)
            body.append(self.shape)
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AnnotationInput:
    """An annotation as one ANNOTATION_CREATED/UPDATED event carries it, parsed by ingest."""

    project_id: int
    task_id: int
    annotation_id: int
    image_ref: str | None
    regions: tuple[RegionInput, ...]
    completed_by: int | None = None
    completed_by_email: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    lead_time: float | None = None
    was_cancelled: bool = False
    ground_truth: bool = False
    digest: str = ""  # of the annotation's meaningful content (result, flags, annotator)

    @property
    def version_us(self) -> int:
        """The annotation's version: its updated_at (else created_at) in microseconds since the epoch."""
        for stamp in (self.updated_at, self.created_at):
            us = parse_time_us(stamp)
            if us is not None:
                return us
        return 0


@dataclass(frozen=True)
class Suggestion:
    """What the model suggested for one region (remembered at /predict time), and the demonstrations it was shown
    (DEMONSTRATIONS: [{"task_id", "region_id", "annotation_id", "similarity", ...}], none when off)."""

    task_id: int
    region_id: str
    model_version: str
    caption: str | None = None
    detailed_caption: str | None = None
    relation_text: str | None = None
    attributes: dict[str, list] = field(default_factory=dict)
    demonstrations: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class AcceptedRegion:
    """A region the annotators accepted (live, not cancelled, with a caption or an attribute; the newest answer for
    its task and region id) and the digest of the content it has now: a demonstration's token is computed for it."""

    record: "RegionRecord"
    content_digest: str
    change_seq: int = 0  # the project's change counter when the region got this content (a refresh's cursor)


@dataclass(frozen=True)
class DemonstrationInput:
    """A region token a worker computed for an accepted region, with the answer it demonstrates: the caption and the
    attribute values by question (the keys of regionscribe.model.asks.Asks.attributes)."""

    task_id: int
    region_id: str
    annotation_id: int
    content_digest: str  # the AcceptedRegion's: the row is written only while the region still has this content
    token: bytes  # float32, native byte order
    caption: str | None
    attributes: dict[str, str]


@dataclass(frozen=True)
class DemonstrationRow:
    """One row of the demonstrations table. `token` None: the region is no longer accepted (retired)."""

    id: int
    project_id: int
    task_id: int
    region_id: str
    annotation_id: int
    model_version: str
    token: bytes | None
    caption: str | None
    attributes: dict[str, str]


@dataclass(frozen=True)
class RegionRecord:
    """One live (or deleted) region of an annotation: a region-text training pair and its provenance."""

    project_id: int
    task_id: int
    annotation_id: int
    region_id: str
    image_ref: str | None
    image_sha256: str | None  # None until the ingest job (or the sweep) cached the image
    image_width: int | None  # of the decoded (EXIF-rotated) image; None until cached
    image_height: int | None
    x: float  # percent of the image, top-left corner (Label Studio units)
    y: float
    width: float
    height: float
    rotation: float  # degrees, about the top-left corner
    pixel_box: tuple[float, float, float, float] | None  # xyxy in pixels of the decoded image (else LS's original size)
    labels: tuple[str, ...]  # the region tool's label values (RectangleLabels, PolygonLabels...)
    caption: str | None
    detailed_caption: str | None
    relation_text: str | None
    attributes: dict[str, list]  # control name → values; Taxonomy values are paths (lists)
    relations: list[dict]  # [{"to": region id, "labels": [...], "direction": "right"}]
    completed_by: int | None
    completed_by_email: str | None
    created_at: str | None  # the annotation's, as Label Studio sent it (ISO 8601)
    updated_at: str | None
    lead_time: float | None
    prefilled_by: str | None  # model version whose suggestion this region had, if any
    changed: bool | None  # True: the annotator changed the suggestion; False: confirmed it; None: not prefilled
    deleted: bool
    deleted_at: float | None
    ground_truth: bool
    was_cancelled: bool
    image_path: Path | None  # the cached image file, when it is on disk
    source: str = "webhook"  # "webhook" when a webhook delivered the region's current content, else "sync"
    shape: dict | None = None  # regionscribe.backend.labelstudio.shapes.Shape.to_json() when not a rectangle (x..height: its bounding box)


@dataclass(frozen=True)
class Snapshot:
    id: str
    records: list[RegionRecord]


# --------------------------------------------------------------------------------------------------- helpers


def _source(value: str) -> str:
    if value not in SOURCES:
        raise ValueError(f"unknown event source {value!r}: use one of {', '.join(SOURCES)}")
    return value


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text (stored payloads, duplicate keys)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def parse_time_us(value) -> int | None:
    """An ISO 8601 time (Label Studio's "2024-05-01T12:00:00.123456Z") or epoch seconds → microseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(round(float(value) * 1_000_000))
    try:
        stamp = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    delta = stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def image_key(image_ref: str | None) -> str | None:
    """The key of an image reference (references can be long data: URIs; keys index well)."""
    return hashlib.sha256(image_ref.encode()).hexdigest()[:32] if image_ref else None


def _norm_text(value: str | None) -> str:
    return " ".join((value or "").split())


def _norm_values(values) -> list:
    """An attribute's values, order-insensitive (taxonomy paths stay paths)."""
    out = []
    for v in values or []:
        out.append(canonical_json([str(p) for p in v]) if isinstance(v, (list, tuple)) else canonical_json(str(v)))
    return sorted(out)


def differs_from_suggestion(region: RegionInput, suggestion: Suggestion) -> bool:
    """Whether the annotator changed what the model pre-filled: the caption (whitespace-normalised), the detailed
    caption or relation text when suggested, or any attribute (over the union of the controls either side filled)."""
    if suggestion.caption is not None and _norm_text(region.caption) != _norm_text(suggestion.caption):
        return True
    if suggestion.detailed_caption is not None and \
            _norm_text(region.detailed_caption) != _norm_text(suggestion.detailed_caption):
        return True
    if suggestion.relation_text is not None and \
            _norm_text(region.relation_text) != _norm_text(suggestion.relation_text):
        return True
    for name in set(region.attributes) | set(suggestion.attributes):
        if _norm_values(region.attributes.get(name)) != _norm_values(suggestion.attributes.get(name)):
            return True
    return False


def pixel_box(x: float, y: float, width: float, height: float, rotation: float, image_w: int | None,
              image_h: int | None, shape: dict | None = None) -> tuple[float, float, float, float] | None:
    """The region's pixel box on a decoded `image_w`×`image_h` image: a shape's own (a mask's bounding box, a
    keypoint's small box), else the rectangle's bounding box. None when the size is unknown or the shape has no
    pixels on that image."""
    if not image_w or not image_h:
        return None
    if shape is not None:
        from regionscribe.backend.labelstudio.shapes import Shape, ShapeError

        try:
            return Shape.from_json(shape).pixel_box(int(image_w), int(image_h))
        except ShapeError as exc:
            log.info("no pixel box for a %s: %s", shape.get("kind"), exc)
            return None
    from regionscribe.backend.labelstudio.shapes import percent_box_to_pixels

    return percent_box_to_pixels({"x": x, "y": y, "width": width, "height": height, "rotation": rotation},
                                 int(image_w), int(image_h))
