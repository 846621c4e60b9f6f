"""Predictions out, to Label Studio: a worker's answer for a task's regions → a Label Studio prediction
(`build_prediction`), checked the way Label Studio's own validator checks it (`validate`), and what that prediction
suggests per region (`suggested`), read straight from the answer instead of from the prediction.

The id rule (labelstudio.md §2): results that share an `id` are ONE region in Label Studio. Every per-region result
(caption textarea, choices, taxonomy) carries the id of its box, and repeats the box geometry in its `value`.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Collection
from typing import TYPE_CHECKING

from regionscribe.backend.labelstudio.results import Region, RegionContent, read_content, text_roles
from regionscribe.backend.labelstudio.shapes import LABEL_KEYS

if TYPE_CHECKING:
    from regionscribe.backend.labelstudio.labeling_config import ProjectConfig


def build_prediction(config: ProjectConfig, regions: list[Region], answer: dict, *, interactive: bool,
                     multiple_threshold: float = 0.3, relation_threshold: float = 0.5,
                     describe: Collection[int] | None = None) -> dict:
    """Label Studio prediction for `regions` from a worker's answer (see
    regionscribe.backend.inference.answers). `describe`: indices of the regions the prediction is about
    (None: all); the others are left out, and so are the relations to them. Regions the worker showed demonstrations
    (DEMONSTRATIONS) are listed in the prediction's `demonstrations` (region id → [{"task_id", "region_id",
    "annotation_id", "similarity", "caption", "attributes"}])."""
    width, height = answer.get("width"), answer.get("height")
    wanted = _wanted(regions, answer, describe)
    result: list[dict] = []
    confidences = []
    errors: list[dict] = []
    shown: dict[str, list] = {}
    for i, (region, got) in enumerate(zip(regions, answer["regions"])):
        if i not in wanted:
            continue
        if got.get("error"):  # the worker could not describe this one (an empty mask...): reported, not filled
            errors.append({"id": region.id, "error": str(got["error"])})
            continue
        if got.get("demonstrations"):
            shown[region.id] = list(got["demonstrations"])
        ow = region.original_width or width
        oh = region.original_height or height
        common = {"to_name": config.image_name, "original_width": ow, "original_height": oh,
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
        result += _per_region_results(config, region, got, common, geometry, multiple_threshold)

    # Interactive answers carry no <Relations> results. Label Studio 1.23.2's editor loads a suggestion's relation
    # as a reference to `<from_id>#<annotation id>`, while a box drawn in the open annotation has the bare id:
    # once the suggestion is accepted the reference dangles, MobX-state-tree throws "Failed to resolve
    # reference", and the labeling page goes blank with the unsaved annotation (seen in headless Chromium with
    # labeling_configs/region_relations.xml). Batch predictions load ids and relations alike, and keep them.
    if config.has_relations and config.relation_labels and not interactive:
        pairs: dict[tuple[int, int], list[str]] = {}
        for rel in answer.get("relations") or []:
            s, o, label, p = rel["subject"], rel["object"], rel["label"], float(rel["score"])
            if label not in config.relation_labels or p < relation_threshold or s == o:
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
    if shown:
        prediction["demonstrations"] = shown
    return prediction


def suggested(config: ProjectConfig, regions: list[Region], answer: dict, *, multiple_threshold: float = 0.3,
              describe: Collection[int] | None = None) -> dict[str, RegionContent]:
    """Region id → what the prediction `build_prediction` makes of the same arguments suggests for that region
    (caption, detailed caption, relation text, Choices/Taxonomy values), read with the reader ingest reads an
    annotation with (results.read_content), so the two compare like for like. Regions with nothing suggested (box
    only) are left out; so are relations, which are not per-region suggestions."""
    roles = text_roles(config, [])
    wanted = _wanted(regions, answer, describe)
    out: dict[str, RegionContent] = {}
    for i, (region, got) in enumerate(zip(regions, answer["regions"])):
        if i not in wanted or got.get("error"):
            continue
        content = read_content(_per_region_results(config, region, got, {}, {}, multiple_threshold), roles, config)
        if content.has_content:
            out[region.id] = content
    return out


def validate(config: ProjectConfig, prediction: dict) -> list[str]:
    """Every reason Label Studio's own validator (and the <Relations> vocabulary) would refuse `prediction`."""
    errors = _flat(config.interface.validate_prediction(prediction, return_errors=True) or [])
    for i, item in enumerate(prediction.get("result") or []):
        if item.get("type") == "relation" and config.relation_labels:
            unknown = [label for label in item.get("labels") or [] if label not in config.relation_labels]
            if unknown:
                errors.append(f"Relation {i}: labels {unknown} not in the config's <Relations>")
        elif item.get("type") != "relation":
            value = item.get("value") or {}
            for key in ("x", "y", "width", "height"):
                if key in value and not 0.0 <= float(value[key]) <= 100.0:
                    errors.append(f"Region {i}: {key}={value[key]} outside [0, 100]")
    return errors


def _wanted(regions: list[Region], answer: dict, describe: Collection[int] | None) -> set[int]:
    described = answer["regions"]
    if len(described) != len(regions):
        raise ValueError(f"the worker described {len(described)} regions, {len(regions)} were asked")
    return set(range(len(regions)) if describe is None else describe)


def _per_region_results(config: ProjectConfig, region: Region, got: dict, common: dict, geometry: dict,
                        multiple_threshold: float) -> list[dict]:
    """The results one described region fills besides its box: the caption, detailed caption and relation text
    TextAreas, and each Choices/Taxonomy control (the top-ranked value; Choices with choice="multiple" also take every
    other value ranked at `multiple_threshold` or more). Each carries the region's id and repeats `geometry`."""
    result: list[dict] = []

    def per_region(from_name: str, type_: str, key: str, payload, score: float | None = None) -> None:
        item = {"id": region.id, "from_name": from_name, "type": type_, **common,
                "value": {**geometry, key: payload}}
        if score is not None:
            item["score"] = _unit(score)
        result.append(item)

    if config.caption and (got.get("caption") or "").strip():
        per_region(config.caption, "textarea", "text", [got["caption"].strip()], got.get("caption_confidence"))
    if config.detailed and (got.get("detailed") or "").strip():
        per_region(config.detailed, "textarea", "text", [got["detailed"].strip()])
    if config.relation_text and (got.get("relation_text") or "").strip():
        per_region(config.relation_text, "textarea", "text", [got["relation_text"].strip()])
    ranked_all = got.get("attributes") or {}
    for control in config.attributes:
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
    return result


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
