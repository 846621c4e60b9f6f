"""A Label Studio project's labeling config, read with label-studio-sdk's LabelInterface: which image, which region
tools, which per-region controls regionscribe fills (caption, detailed caption and relation text TextAreas,
Choices/Taxonomy, <Relations>), and what to ask the model for them (`Asks`).

`ProjectConfig` is the handle the rest of the backend holds; its methods that read results
(regions_from_results, regions_from_task) and write predictions (build_prediction, validate) are those of
regionscribe.backend.labelstudio.results and regionscribe.backend.labelstudio.predictions, with this config.
"""
from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface

from regionscribe.model.asks import Asks

from regionscribe.backend.labelstudio import predictions, results as reading
from regionscribe.backend.labelstudio.results import CAPTION_WORDS, Region
from regionscribe.backend.labelstudio.shapes import REGION_TAGS

log = logging.getLogger(__name__)


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

    def asked_values(self, attributes: dict[str, list]) -> dict[str, str]:
        """A region's Choices/Taxonomy values as ingest stores them (control name → values; Taxonomy values are paths)
        → the answers to the questions `asks` puts to the model (question → candidate): what a demonstration shows
        the model. The first value the control offers is taken (choice="multiple" too); values the config does not
        offer, and controls it no longer has, are left out."""
        out: dict[str, str] = {}
        for control in self.attributes:
            values = attributes.get(control.name)
            for value in values if isinstance(values, list) else []:
                if control.tag == "taxonomy":
                    path = tuple(str(p) for p in value) if isinstance(value, (list, tuple)) else (str(value),)
                    candidate = next((c for c, p in control.paths.items() if p == path), None)
                else:
                    candidate = str(value) if str(value) in control.candidates else None
                if candidate is not None:
                    out[control.question] = candidate
                    break
        return out

    # -- regions in, from Label Studio

    @property
    def filled_controls(self) -> frozenset[str]:
        """The per-region controls regionscribe fills: caption, detailed caption, relation text, Choices, Taxonomy."""
        names = {self.caption, self.detailed, self.relation_text} | {a.name for a in self.attributes}
        return frozenset(n for n in names if n)

    def regions_from_results(self, results: list) -> list[Region]:
        """See regionscribe.backend.labelstudio.results.regions_from_results."""
        return reading.regions_from_results(self, results)

    def regions_from_task(self, task: dict) -> tuple[list[Region], str]:
        """See regionscribe.backend.labelstudio.results.regions_from_task."""
        return reading.regions_from_task(self, task)

    # -- results out, to Label Studio

    def build_prediction(self, regions: list[Region], answer: dict, *, interactive: bool,
                         multiple_threshold: float = 0.3, relation_threshold: float = 0.5,
                         describe: Collection[int] | None = None) -> dict:
        """See regionscribe.backend.labelstudio.predictions.build_prediction."""
        return predictions.build_prediction(self, regions, answer, interactive=interactive,
                                            multiple_threshold=multiple_threshold,
                                            relation_threshold=relation_threshold, describe=describe)

    def validate(self, prediction: dict) -> list[str]:
        """See regionscribe.backend.labelstudio.predictions.validate."""
        return predictions.validate(self, prediction)


def parsed_config(xml: str | None) -> ProjectConfig | None:
    """The labeling config as ingest reads it, or None when there is none or regionscribe cannot use it (results are
    then read by their types)."""
    if not xml:
        return None
    try:
        return ProjectConfig.parse(xml)
    except ConfigError as exc:
        log.info("labeling config not usable for ingest (%s); reading results by their types", exc)
        return None


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
