"""A Label Studio project's labeling config, read with label-studio-sdk's LabelInterface, and the two translations the
backend needs: Label Studio regions → what to ask the model (`Asks`), and the model's answer → Label Studio results.

The id rule (labelstudio.md §2): results that share an `id` are ONE region in Label Studio. Every per-region result
(caption textarea, choices, taxonomy) carries the id of its box, and repeats the box geometry in its `value`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface

from regionscribe.model.asks import Asks

from regionscribe.backend.labelstudio.shapes import LABEL_KEYS, REGION_TAGS, Shape, ShapeError, rectangle_pixels

log = logging.getLogger(__name__)

CAPTION_WORDS = ("caption", "description", "describe")


class ConfigError(ValueError):
    """The labeling config has nothing regionscribe can fill (no region tool on an image, no per-region control)."""


@dataclass(frozen=True)
class AttributeControl:
    """A per-region Choices or Taxonomy control: the model ranks `candidates` for the question `question`."""

    name: str  # the control's name (from_name)
    tag: str  # "choices" or "taxonomy"
    question: str  # key in Asks.attributes
    candidates: tuple[str, ...]  # answers offered to the model
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)  # taxonomy: candidate → path from the root
    multiple: bool = False  # choice="multiple"
    when_labels: frozenset[str] | None = None  # whenLabelValue: only regions carrying one of these labels


@dataclass(frozen=True)
class Region:
    """One region on the task, in Label Studio's units: `shape` is what was drawn (regionscribe.backend.labelstudio.shapes), and x, y, width,
    height its axis-aligned bounding box in percent of the image (a rectangle's own geometry, rotation in degrees).
    `error`: why the region cannot be described (a polygon with too few points, self-intersecting...); such a region
    is reported, not sent to the model."""

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


def percent_box_to_pixels(box: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """Label Studio percent geometry → pixel xyxy of its axis-aligned bounding box (rotation is about the top-left
    corner, clockwise, in degrees), clamped to the image."""
    return rectangle_pixels(box["x"], box["y"], box["width"], box["height"], float(box.get("rotation") or 0.0),
                            width, height)


def _readable(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip().lower()


def _taxonomy_paths(node, prefix=()) -> list[tuple[str, ...]]:
    """Leaf paths under a <Taxonomy> (or <Choice>) XML node."""
    paths = []
    for child in node:
        if not isinstance(child.tag, str) or child.tag != "Choice":
            continue
        value = child.attrib.get("value") or child.attrib.get("alias")
        if value is None:
            continue
        path = prefix + (value,)
        sub = _taxonomy_paths(child, path)
        paths.extend(sub or [path])
    return paths


@dataclass(frozen=True)
class ProjectConfig:
    """What regionscribe reads from one labeling config."""

    xml: str
    interface: LabelInterface
    image_name: str  # <Image name=...>: every result's to_name
    image_key: str  # the task data key holding the image ($image → "image")
    region_controls: tuple[str, ...]  # names of the region tools on that image (RectangleLabels, PolygonLabels...)
    caption: str | None  # per-region TextArea for the caption
    detailed: str | None  # per-region TextArea for a detailed caption
    relation_text: str | None  # per-region TextArea for a free-text relation
    attributes: tuple[AttributeControl, ...]
    relation_labels: tuple[str, ...]  # <Relations> vocabulary; empty when the config has none
    has_relations: bool

    @classmethod
    def parse(cls, xml: str) -> "ProjectConfig":
        return _parse_cached(xml)

    # -- asks

    def asks(self, max_new_tokens: int = 32, interactive: bool = False) -> Asks:
        """What to ask the model. Interactive answers carry no <Relations> (see build_prediction), so they are not
        asked for."""
        return Asks(
            caption=self.caption is not None,
            detailed=self.detailed is not None,
            attributes={a.question: list(a.candidates) for a in self.attributes},
            relation_labels=[] if interactive else list(self.relation_labels),
            relation_text=self.relation_text is not None,
            max_new_tokens=max_new_tokens,
        )

    # -- regions in, from Label Studio

    @property
    def filled_controls(self) -> frozenset[str]:
        """The per-region controls regionscribe fills: caption, detailed caption, relation text, Choices, Taxonomy."""
        names = {self.caption, self.detailed, self.relation_text} | {a.name for a in self.attributes}
        return frozenset(n for n in names if n)

    def regions_from_results(self, results: list) -> list[Region]:
        """The regions among a list of Label Studio results (an annotation's, a draft's, a prediction's or an
        interactive context's), in order, one per region id: rectangles, polygons, ellipses, brush masks, keypoints
        of the config's region tools. A region whose id also carries a result of one of `filled_controls` is marked
        `filled`. A region whose shape cannot be described keeps its place with `error` set (see regionscribe.backend.labelstudio.shapes)."""
        regions: list[Region] = []
        seen: set[str] = set()
        if not isinstance(results, list):
            return regions
        filled_controls = self.filled_controls
        filled_ids = {str(item["id"]) for item in results
                      if isinstance(item, dict) and item.get("id") is not None and item.get("type") != "relation"
                      and isinstance(item.get("from_name"), str) and item["from_name"] in filled_controls}
        for item in results:
            if not isinstance(item, dict):
                continue
            type_ = str(item.get("type", "")).lower()
            if type_ not in REGION_TAGS:
                continue
            if item.get("from_name") not in self.region_controls or item.get("to_name") != self.image_name:
                continue
            rid = str(item.get("id") or _region_id(item))
            if rid in seen:
                continue
            value = item.get("value") if isinstance(item.get("value"), dict) else {}
            labels = value.get(type_) if type_ in LABEL_KEYS else None
            labels = tuple(str(v) for v in labels if isinstance(v, (str, int, float))) \
                if isinstance(labels, list) else ()
            ow, oh = _int_or_none(item.get("original_width")), _int_or_none(item.get("original_height"))
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

    def regions_from_task(self, task: dict) -> tuple[list[Region], str]:
        """The regions already on a task, for batch prefill: the latest annotation with regions, else the latest draft,
        else the latest prediction. Returns (regions, where they came from)."""
        for kind in ("annotations", "drafts", "predictions"):
            listed = task.get(kind)
            items = [item for item in listed if isinstance(item, dict)] if isinstance(listed, list) else []
            if kind == "annotations":
                items = [a for a in items if not a.get("was_cancelled")]
            items.sort(key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), _int_or_none(a.get("id")) or 0),
                       reverse=True)
            for item in items:
                regions = self.regions_from_results(item.get("result") or [])
                if regions:
                    return regions, kind[:-1]
        return [], ""

    # -- results out, to Label Studio

    def build_prediction(self, regions: list[Region], answer: dict, *, interactive: bool,
                         multiple_threshold: float = 0.3, relation_threshold: float = 0.5,
                         describe: Collection[int] | None = None) -> dict:
        """Label Studio prediction for `regions` from a worker's answer (see regionscribe.backend.inference.jobs.describe_job).
        `describe`: indices of the regions the prediction is about (None: all); the others are left out, and so
        are the relations to them."""
        width, height = answer.get("width"), answer.get("height")
        described = answer["regions"]
        if len(described) != len(regions):
            raise ValueError(f"the worker described {len(described)} regions, {len(regions)} were asked")
        wanted = set(range(len(regions)) if describe is None else describe)
        result: list[dict] = []
        confidences = []
        errors: list[dict] = []
        for i, (region, got) in enumerate(zip(regions, described)):
            if i not in wanted:
                continue
            if got.get("error"):  # the worker could not describe this one (an empty mask...): reported, not filled
                errors.append({"id": region.id, "error": str(got["error"])})
                continue
            ow = region.original_width or width
            oh = region.original_height or height
            common = {"to_name": self.image_name, "original_width": ow, "original_height": oh,
                      "image_rotation": region.image_rotation}
            geometry = region.geometry
            confidence = _unit(got.get("confidence", 0.0))
            confidences.append(confidence)

            if interactive and region.source is not None:
                box = copy.deepcopy(region.source)  # the annotator's own box, same id: accepting keeps it
                box.setdefault("original_width", ow)
                box.setdefault("original_height", oh)
                box.setdefault("image_rotation", region.image_rotation)
            else:
                value = dict(geometry)
                if region.type in LABEL_KEYS:
                    value[region.type] = list(region.labels)
                box = {"id": region.id, "from_name": region.from_name, "type": region.type, **common, "value": value}
            box["score"] = confidence
            result.append(box)

            def per_region(from_name: str, type_: str, key: str, payload, score: float | None = None) -> None:
                item = {"id": region.id, "from_name": from_name, "type": type_, **common,
                        "value": {**geometry, key: payload}}
                if score is not None:
                    item["score"] = _unit(score)
                result.append(item)

            if self.caption and (got.get("caption") or "").strip():
                per_region(self.caption, "textarea", "text", [got["caption"].strip()], got.get("caption_confidence"))
            if self.detailed and (got.get("detailed") or "").strip():
                per_region(self.detailed, "textarea", "text", [got["detailed"].strip()])
            if self.relation_text and (got.get("relation_text") or "").strip():
                per_region(self.relation_text, "textarea", "text", [got["relation_text"].strip()])
            ranked_all = got.get("attributes") or {}
            for control in self.attributes:
                if control.when_labels is not None and not control.when_labels.intersection(region.labels):
                    continue
                ranked = [(str(v), float(p)) for v, p in ranked_all.get(control.question) or []
                          if v in control.candidates]
                if not ranked:
                    continue
                ranked.sort(key=lambda vp: vp[1], reverse=True)
                top_value, top_p = ranked[0]
                if control.tag == "taxonomy":
                    per_region(control.name, "taxonomy", "taxonomy", [list(control.paths[top_value])], top_p)
                    continue
                chosen = [top_value]
                if control.multiple:
                    chosen += [v for v, p in ranked[1:] if p >= multiple_threshold]
                per_region(control.name, "choices", "choices", chosen, top_p)

        # Interactive answers carry no <Relations> results. Label Studio 1.23.2's editor loads a suggestion's relation
        # as a reference to `<from_id>#<annotation id>`, while a box drawn in the open annotation has the bare id:
        # once the suggestion is accepted the reference dangles, MobX-state-tree throws "Failed to resolve
        # reference", and the labeling page goes blank with the unsaved annotation (seen in headless Chromium with
        # labeling_configs/region_relations.xml). Batch predictions load ids and relations alike, and keep them.
        if self.has_relations and self.relation_labels and not interactive:
            pairs: dict[tuple[int, int], list[str]] = {}
            for rel in answer.get("relations") or []:
                s, o, label, p = rel["subject"], rel["object"], rel["label"], float(rel["score"])
                if label not in self.relation_labels or p < relation_threshold or s == o:
                    continue
                if s not in wanted or o not in wanted:  # both in this prediction, or Label Studio refuses it
                    continue
                pairs.setdefault((s, o), []).append(label)
            for (s, o), labels in pairs.items():
                result.append({"type": "relation", "from_id": regions[s].id, "to_id": regions[o].id,
                               "direction": "right", "labels": labels})

        score = sum(confidences) / len(confidences) if confidences else 0.0
        prediction = {"result": result, "score": round(_unit(score), 6),
                      "model_version": str(answer.get("model_version"))}
        if errors:
            prediction["region_errors"] = errors
        return prediction

    def validate(self, prediction: dict) -> list[str]:
        """Every reason Label Studio's own validator (and the <Relations> vocabulary) would refuse `prediction`."""
        errors = _flat(self.interface.validate_prediction(prediction, return_errors=True) or [])
        for i, item in enumerate(prediction.get("result") or []):
            if item.get("type") == "relation" and self.relation_labels:
                unknown = [label for label in item.get("labels") or [] if label not in self.relation_labels]
                if unknown:
                    errors.append(f"Relation {i}: labels {unknown} not in the config's <Relations>")
            elif item.get("type") != "relation":
                value = item.get("value") or {}
                for key in ("x", "y", "width", "height"):
                    if key in value and not 0.0 <= float(value[key]) <= 100.0:
                        errors.append(f"Region {i}: {key}={value[key]} outside [0, 100]")
        return errors


def _flat(errors) -> list[str]:
    """label-studio-sdk 2.1 lists a relation's errors as one nested list among the other (string) errors."""
    out: list[str] = []
    for error in errors:
        out += _flat(error) if isinstance(error, (list, tuple)) else [str(error)]
    return out


def _unit(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if not math.isfinite(v) else min(max(v, 0.0), 1.0)


def _finite_or_zero(value) -> float:
    try:
        v = float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


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


@lru_cache(maxsize=64)
def _parse_cached(xml: str) -> ProjectConfig:
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several exception types for malformed XML
        raise ConfigError(f"the labeling config does not parse: {exc}") from None

    controls = list(interface.controls)
    images = {o.name: o for o in interface.objects if o.tag.lower() == "image"}
    rect_by_image: dict[str, list[str]] = {}
    for c in controls:
        if c.tag.lower() in REGION_TAGS:
            for target in c.to_name or []:
                if target in images:
                    rect_by_image.setdefault(target, []).append(c.name)
    if not rect_by_image:
        raise ConfigError("the labeling config has no region tool on an <Image> (<RectangleLabels>/<Rectangle>, "
                          "<PolygonLabels>/<Polygon>, <EllipseLabels>/<Ellipse>, <BrushLabels>/<Brush> or "
                          "<KeyPointLabels>/<KeyPoint>): regionscribe describes regions")
    image_name = next(iter(rect_by_image))
    image_value = images[image_name].value or ""
    if not image_value.startswith("$"):
        raise ConfigError(f"<Image name={image_name!r}> has value {image_value!r}; it must name a task field ($image)")

    def per_region(c) -> bool:
        return (str(c.attr.get("perRegion", "")).lower() == "true" and image_name in (c.to_name or []))

    textareas = [c.name for c in controls if c.tag.lower() == "textarea" and per_region(c)]
    relation_text = next((n for n in textareas if "relation" in n.lower()), None)
    detailed = next((n for n in textareas if "detail" in n.lower() and n != relation_text), None)
    rest = [n for n in textareas if n not in (relation_text, detailed)]
    caption = next((n for n in rest if any(w in n.lower() for w in CAPTION_WORDS)), rest[0] if rest else None)

    attributes: list[AttributeControl] = []
    used_questions: set[str] = set()
    for c in controls:
        tag = c.tag.lower()
        if tag not in ("choices", "taxonomy") or not per_region(c):
            continue
        question = _readable(c.name)
        if question in used_questions:
            question = c.name
        used_questions.add(question)
        when = c.attr.get("whenLabelValue")
        when_labels = frozenset(v.strip() for v in when.split(",")) if when else None
        if tag == "choices":
            values = tuple(dict.fromkeys(c.labels or []))
            if not values:
                continue
            attributes.append(AttributeControl(name=c.name, tag="choices", question=question, candidates=values,
                                               multiple=c.attr.get("choice") == "multiple", when_labels=when_labels))
        else:
            node = next((n for n in interface._tree.iter("Taxonomy") if n.attrib.get("name") == c.name), None)
            leaf_paths = _taxonomy_paths(node) if node is not None else []
            if not leaf_paths:
                continue
            leaf_counts: dict[str, int] = {}
            for p in leaf_paths:
                leaf_counts[p[-1]] = leaf_counts.get(p[-1], 0) + 1
            paths = {}
            for p in leaf_paths:
                candidate = p[-1] if leaf_counts[p[-1]] == 1 else " ".join(p)
                paths[candidate] = p
            attributes.append(AttributeControl(name=c.name, tag="taxonomy", question=question,
                                               candidates=tuple(paths), paths=paths, when_labels=when_labels))

    relations_nodes = list(interface._tree.iter("Relations"))
    relation_labels = tuple(dict.fromkeys(
        r.attrib["value"] for node in relations_nodes for r in node.iter("Relation") if r.attrib.get("value")))

    if not (caption or detailed or relation_text or attributes or relation_labels):
        raise ConfigError("the labeling config has no per-region <TextArea>, <Choices> or <Taxonomy> "
                          "(perRegion=\"true\") and no <Relations>: there is nothing for regionscribe to fill in")
    return ProjectConfig(xml=xml, interface=interface, image_name=image_name, image_key=image_value[1:],
                         region_controls=tuple(rect_by_image[image_name]), caption=caption, detailed=detailed,
                         relation_text=relation_text, attributes=tuple(attributes),
                         relation_labels=relation_labels, has_relations=bool(relations_nodes))
