"""Label Studio result lists, read: the one place that knows how the `result` of an annotation, a draft, a prediction
or an interactive context says what a region is (labelstudio.md §2).

Results that share an `id` are ONE region. Its shape is its rectangle, polygon, ellipse, brush or keypoint result
(regionscribe.backend.labelstudio.shapes); its labels are the values of its *Labels results; the caption, detailed
caption and relation text are the TextAreas the labeling config names for them (`ProjectConfig`); without a config, a
TextArea whose name says "relation"/"detail" takes that role and the region's first other TextArea is its caption.
Every Choices/Taxonomy result of the region is an attribute (control name → values; Taxonomy values are paths).
Relations `{"type": "relation", "from_id", "to_id", "labels"}` are kept on the `from_id` region as
`{"to", "labels", "direction"}`.

Two readings of the same lists:
- `regions_from_results` / `regions_from_task`: the regions to describe (`Region`: what was drawn and where it came
  from), for a describe request;
- `read_annotation_regions`: everything the results say per region (`RegionResults`: geometry, shape, `RegionContent`,
  relations), what ingest stores; `read_content` reads one region's labels, texts and attributes, and is also what
  a prediction's suggestions are read with (regionscribe.backend.labelstudio.predictions).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from regionscribe.backend.labelstudio.shapes import LABEL_KEYS, REGION_TAGS, Shape, ShapeError, positive_int

if TYPE_CHECKING:
    from regionscribe.backend.labelstudio.labeling_config import ProjectConfig

log = logging.getLogger(__name__)

CAPTION_WORDS = ("caption", "description", "describe")  # a TextArea whose name holds one of these is a caption
MAX_SIZE = 2 ** 31 - 1  # image sizes, as 32-bit INTEGER (the store's columns)


# ---------------------------------------------------------------------------------------- the regions to describe


@dataclass(frozen=True)
class Region:
    """One region on the task, in Label Studio's units: `shape` is what was drawn (see
    regionscribe.backend.labelstudio.shapes), and x, y, width, height its axis-aligned bounding box in percent of the
    image (a rectangle's own geometry, rotation in degrees). `error`: why the region cannot be described (a polygon
    with too few points, self-intersecting...); such a region is reported, not sent to the model."""

    id: str
    from_name: str
    type: str
    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    labels: tuple[str, ...] = ()
    original_width: int | None = None
    original_height: int | None = None
    image_rotation: float = 0.0
    source: dict | None = None  # the result dict it came from (echoed back in interactive mode)
    # the results it came with already fill one of the project's per-region controls regionscribe fills (caption,
    # attributes...): an answer the annotator accepted, or what they typed. Interactive mode leaves such a region alone.
    filled: bool = False
    shape: Shape | None = None  # None: a rectangle with the geometry above
    error: str | None = None

    @property
    def geometry(self) -> dict:
        """The geometry part of this region's Label Studio `value` (repeated in its per-region results)."""
        if self.shape is not None and self.shape.kind != "rectangle":
            return self.shape.value()
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height, "rotation": self.rotation}

    def to_job(self) -> dict:
        job = {"id": self.id, "x": self.x, "y": self.y, "width": self.width, "height": self.height,
               "rotation": self.rotation, "labels": list(self.labels)}
        if self.shape is not None and self.shape.kind != "rectangle":
            job["shape"] = self.shape.to_json()  # the worker rasterises it once it knows the image size
        return job


def regions_from_results(config: ProjectConfig, results: list) -> list[Region]:
    """The regions among a list of Label Studio results (an annotation's, a draft's, a prediction's or an
    interactive context's), in order, one per region id: rectangles, polygons, ellipses, brush masks, keypoints
    of the config's region tools. A region whose id also carries a result of one of `filled_controls` is marked
    `filled`. A region whose shape cannot be described keeps its place with `error` set (see
    regionscribe.backend.labelstudio.shapes)."""
    regions: list[Region] = []
    seen: set[str] = set()
    if not isinstance(results, list):
        return regions
    filled_controls = config.filled_controls
    filled_ids = {str(item["id"]) for item in results
                  if isinstance(item, dict) and item.get("id") is not None and item.get("type") != "relation"
                  and isinstance(item.get("from_name"), str) and item["from_name"] in filled_controls}
    for item in results:
        if not isinstance(item, dict):
            continue
        type_ = str(item.get("type", "")).lower()
        if type_ not in REGION_TAGS:
            continue
        if item.get("from_name") not in config.region_controls or item.get("to_name") != config.image_name:
            continue
        rid = str(item.get("id") or _region_id(item))
        if rid in seen:
            continue
        value = item.get("value") if isinstance(item.get("value"), dict) else {}
        labels = tuple(label_values(type_, value))
        ow, oh = positive_int(item.get("original_width")), positive_int(item.get("original_height"))
        common = dict(id=rid, from_name=item["from_name"], type=type_, labels=labels, original_width=ow,
                      original_height=oh, image_rotation=_finite_or_zero(item.get("image_rotation")),
                      source=item, filled=rid in filled_ids)
        try:
            shape = Shape.from_result(item)
            x, y, w, h = shape.percent_box(ow, oh)
        except ShapeError as exc:
            if type_ in ("rectanglelabels", "rectangle"):  # as before shapes: a broken box is skipped
                log.warning("skipping a rectangle without usable geometry (id %r): %s", item.get("id"), exc)
                continue
            seen.add(rid)
            regions.append(Region(x=0.0, y=0.0, width=0.0, height=0.0, error=f"region {rid}: {exc}", **common))
            continue
        seen.add(rid)
        if shape.kind == "rectangle":
            regions.append(Region(x=shape.x, y=shape.y, width=shape.width, height=shape.height,
                                  rotation=shape.rotation, **common))
        else:
            regions.append(Region(x=x, y=y, width=w, height=h, shape=shape, **common))
    return regions


def regions_from_task(config: ProjectConfig, task: dict) -> tuple[list[Region], str]:
    """The regions already on a task, for batch prefill: the latest annotation with regions, else the latest draft,
    else the latest prediction. Returns (regions, where they came from)."""
    for kind in ("annotations", "drafts", "predictions"):
        listed = task.get(kind)
        items = [item for item in listed if isinstance(item, dict)] if isinstance(listed, list) else []
        if kind == "annotations":
            items = [a for a in items if not a.get("was_cancelled")]
        items.sort(key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                  _int_or_none(a.get("id")) or 0), reverse=True)
        for item in items:
            regions = regions_from_results(config, item.get("result") or [])
            if regions:
                return regions, kind[:-1]
    return [], ""


# ------------------------------------------------------------------------------ everything the results say per region


@dataclass
class RegionContent:
    """What one region's results say besides its shape: labels, texts by role, Choices/Taxonomy values (control name
    → values; Taxonomy: list of paths), and the image size the results were drawn on."""

    labels: tuple[str, ...] = ()
    caption: str | None = None
    detailed_caption: str | None = None
    relation_text: str | None = None
    attributes: dict[str, list] = field(default_factory=dict)
    original_width: int | None = None
    original_height: int | None = None

    @property
    def has_content(self) -> bool:
        return bool(self.caption or self.detailed_caption or self.relation_text
                    or any(values for values in self.attributes.values()))


@dataclass
class RegionResults:
    """One region as its results say it: percent geometry (a shape's bounding box), the shape when it is not a box
    (`Shape.to_json()`), its content, and the relations it is the subject of."""

    region_id: str
    x: float
    y: float
    width: float
    height: float
    rotation: float
    shape: dict | None
    content: RegionContent
    relations: list[dict] = field(default_factory=list)  # [{"to": region id, "labels": [...], "direction": ...}]


def read_annotation_regions(results: list, config: ProjectConfig | None) -> list[RegionResults]:
    """Label Studio results (an annotation's or a prediction's) → one RegionResults per region id with a shape: a
    box, or a polygon, ellipse, brush mask or keypoint (kept in `shape`, its bounding box in x..height). A shape that
    cannot be described (a polygon with 2 points...) is skipped with a log line."""
    groups: dict[str, list[dict]] = {}
    relations: list[dict] = []
    for item in results or []:
        if not isinstance(item, dict):
            continue
        kind = str(item.get("type", "")).lower()
        if kind == "relation":
            relations.append(item)
            continue
        if item.get("id") in (None, ""):
            continue  # a result without id is not linked to any region
        if config is not None and item.get("to_name") not in (None, config.image_name):
            continue
        groups.setdefault(str(item["id"]), []).append(item)
    textarea_names = list(dict.fromkeys(str(i.get("from_name")) for items in groups.values() for i in items
                                        if str(i.get("type", "")).lower() == "textarea"))
    roles = text_roles(config, textarea_names)

    regions: dict[str, RegionResults] = {}
    for rid, items in groups.items():
        box = next((i for i in items if str(i.get("type", "")).lower() in REGION_TAGS
                    and (config is None or i.get("from_name") in config.region_controls)), None)
        shape = None
        if box is not None and str(box.get("type", "")).lower() not in ("rectanglelabels", "rectangle"):
            try:
                parsed = Shape.from_result(box)
                sizes = [(finite_float(i.get("original_width")), finite_float(i.get("original_height"))) for i in items]
                ow, oh = next(((int(w), int(h)) for w, h in sizes if w and h), (None, None))
                x, y, w, h = parsed.percent_box(ow, oh)
            except ShapeError as exc:
                log.info("region %r: %s; skipped", rid, exc)
                continue
            shape = parsed.to_json()
            geometry = (x, y, w, h, 0.0)
        else:
            geometry = _geometry((box or {}).get("value"))
        if geometry is None:  # the OCR pattern: per-region results repeat the box
            geometry = next((g for g in (_geometry(i.get("value")) for i in items) if g is not None), None)
        if geometry is None:
            log.info("region %r has no usable box; skipped", rid)
            continue
        x, y, w, h, rotation = geometry
        regions[rid] = RegionResults(region_id=rid, x=x, y=y, width=w, height=h, rotation=rotation, shape=shape,
                                     content=read_content(items, roles, config))
    for rel in relations:
        src, dst = str(rel.get("from_id") or ""), str(rel.get("to_id") or "")
        if src in regions and dst:
            labels = rel.get("labels") if isinstance(rel.get("labels"), list) else []
            regions[src].relations.append({"to": dst, "labels": [str(v) for v in labels],
                                           "direction": str(rel.get("direction") or "right")})
    return list(regions.values())


def read_content(items: list[dict], roles: dict[str, str], config: ProjectConfig | None) -> RegionContent:
    """One region's results (those sharing its id) → its labels, texts (by `roles`, see text_roles), Choices and
    Taxonomy values and original image size. Without a config, the region's first TextArea without a role is its
    caption."""
    labels: list[str] = []
    texts: dict[str, str | None] = {"caption": None, "detailed": None, "relation_text": None}
    attributes: dict[str, list] = {}
    original = (None, None)
    for item in items:
        kind = str(item.get("type", "")).lower()
        value = item.get("value") if isinstance(item.get("value"), dict) else {}
        name = str(item.get("from_name"))
        if original == (None, None) and item.get("original_width") and item.get("original_height"):
            ow, oh = finite_float(item.get("original_width")), finite_float(item.get("original_height"))
            if ow and oh and 1 <= ow <= MAX_SIZE and 1 <= oh <= MAX_SIZE:
                original = (int(ow), int(oh))
        if kind in LABEL_KEYS or kind == "labels":
            labels += label_values(kind, value)
        elif kind == "textarea":
            role = roles.get(name)
            if role is None and config is None and texts["caption"] is None:
                role = "caption"  # no config: the region's first other TextArea is its caption
            if role and texts[role] is None:
                texts[role] = text_of(value)
        elif kind == "choices":
            values = value.get("choices")
            if isinstance(values, list):
                attributes[name] = [str(v) for v in values if isinstance(v, (str, int, float))]
        elif kind == "taxonomy":
            paths = value.get("taxonomy")
            if isinstance(paths, list):
                attributes[name] = [[str(p) for p in path] if isinstance(path, list) else [str(path)]
                                    for path in paths]
    return RegionContent(labels=tuple(dict.fromkeys(labels)), caption=texts["caption"],
                         detailed_caption=texts["detailed"], relation_text=texts["relation_text"],
                         attributes=attributes, original_width=original[0], original_height=original[1])


def text_roles(config: ProjectConfig | None, names: list[str]) -> dict[str, str]:
    """TextArea name → "caption" | "detailed" | "relation_text" (names without a role are ignored): the config's,
    else guessed from the `names` seen."""
    if config is not None:
        roles = {config.caption: "caption", config.detailed: "detailed", config.relation_text: "relation_text"}
        return {k: v for k, v in roles.items() if k}
    roles: dict[str, str] = {}
    for name in names:
        low = name.lower()
        if "relation" in low and "relation_text" not in roles.values():
            roles[name] = "relation_text"
        elif "detail" in low and "detailed" not in roles.values():
            roles[name] = "detailed"
    captions = [n for n in names if n not in roles and any(w in n.lower() for w in CAPTION_WORDS)]
    if captions:
        roles[captions[0]] = "caption"
    return roles


# ------------------------------------------------------------------------------------------------- values


def label_values(kind: str, value: dict) -> list[str]:
    """The labels a result of type `kind` carries (a *Labels tool's or a <Labels>'s), as strings."""
    values = value.get(kind) if kind in LABEL_KEYS or kind == "labels" else None
    return [str(v) for v in values if isinstance(v, (str, int, float))] if isinstance(values, list) else []


def text_of(value) -> str | None:
    """A TextArea result's text: its lines, stripped, joined by newlines (None when there is none)."""
    text = value.get("text") if isinstance(value, dict) else None
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list):
        return None
    # NUL is the one character PostgreSQL text cannot hold; nothing a person types
    parts = [str(t).replace("\x00", "").strip() for t in text
             if isinstance(t, (str, int, float)) and str(t).replace("\x00", "").strip()]
    return "\n".join(parts) if parts else None


def _geometry(value: dict) -> tuple[float, float, float, float, float] | None:
    if not isinstance(value, dict):
        return None
    x, y, w, h = (finite_float(value.get(k)) for k in ("x", "y", "width", "height"))
    rotation = finite_float(value.get("rotation") or 0.0)
    if None in (x, y, w, h, rotation) or w <= 0 or h <= 0:
        return None
    return x, y, w, h, rotation


def finite_float(value) -> float | None:
    """`value` as a finite float, or None (missing, not a number, NaN, infinite)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _finite_or_zero(value) -> float:
    return finite_float(value or 0.0) or 0.0


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _region_id(item: dict) -> str:
    """A stable id for a region that came without one (Label Studio always sends one; this is a fallback)."""
    value = item.get("value") or {}
    if str(item.get("type", "")).lower() in ("rectanglelabels", "rectangle"):
        key = f"{item.get('from_name')}|{value.get('x')}|{value.get('y')}|{value.get('width')}|{value.get('height')}"
    else:
        key = f"{item.get('from_name')}|{json.dumps(value, sort_keys=True, default=str)}"
    return "rs-" + hashlib.sha1(key.encode()).hexdigest()[:10]
