"""What /predict remembers it suggested: the Suggestion rows built straight from the regions and the worker's answer
(regionscribe.backend.feedback.suggestions) are the rows the prediction sent to Label Studio gives when it is read
back like an annotation (what the backend did before) — boxes with Choices, Taxonomy and choice="multiple",
polygons, ellipses and brush masks, relations, regions the worker could not describe, interactive and batch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regionscribe.backend.feedback.events import parse_results
from regionscribe.backend.feedback.suggestions import suggestions_from_answer
from regionscribe.backend.labelstudio.labeling_config import ProjectConfig
from regionscribe.backend.labelstudio.shapes import Shape
from regionscribe.backend.store import Suggestion

CONFIGS = Path(__file__).resolve().parents[2] / "labeling_configs"


def read_back(prediction: dict, config: ProjectConfig, task_id: int) -> list[Suggestion]:
    """The prediction as Label Studio gets it, read like an annotation: what the suggestions were built from before."""
    version = str(prediction.get("model_version") or "unknown")
    return [Suggestion(task_id=task_id, region_id=r.region_id, model_version=version, caption=r.caption,
                       detailed_caption=r.detailed_caption, relation_text=r.relation_text, attributes=r.attributes)
            for r in parse_results(prediction.get("result") or [], config) if r.has_content]


def item(rid, from_name, type_, geometry, size=(96, 64), **extra):
    return {"id": rid, "type": type_, "from_name": from_name, "to_name": "image", "original_width": size[0],
            "original_height": size[1], "image_rotation": 0, "value": {**geometry, type_: ["Object"]}, **extra}


def box(rid, x, y, w=20.0, h=20.0):
    return item(rid, "bbox", "rectanglelabels", {"x": x, "y": y, "width": w, "height": h, "rotation": 0})


MASK = np.zeros((16, 24), bool)
MASK[3:9, 5:15] = True

CASES = {
    "boxes": ("region_attributes", [box("b1", 10, 10), box("b2", 50, 30), box("b3", 5, 60)], {
        "regions": [
            {"caption": " a red square ", "caption_confidence": 0.7, "confidence": 0.9, "attributes": {
                "color": [["red", 0.9], ["blue", 0.1]], "shape family": [["square", 0.8], ["circle", 0.2]],
                "texture": [["solid", 0.6], ["striped", 0.35], ["dotted", 0.1]]}},
            {"caption": "", "confidence": 0.4, "attributes": {"size": [["large", 0.5]]}},  # attributes only
            {"caption": "   ", "confidence": 0.2, "attributes": {}}]}),  # nothing to suggest: left out
    "shapes": ("region_segments", [
        item("p1", "outline", "polygonlabels", {"points": [[10, 10], [60, 12], [40, 70]], "closed": True}),
        item("m1", "paint", "brushlabels", {"format": "rle", "rle": list(Shape.from_mask(MASK).rle)}, size=(24, 16)),
        item("e1", "ellipse", "ellipselabels", {"x": 40, "y": 40, "radiusX": 10, "radiusY": 5, "rotation": 30})], {
        "regions": [
            {"caption": "a polygon", "confidence": 0.8, "attributes": {"color": [["green", 0.7]]}},
            {"caption": "a painted blob\x00", "confidence": 0.6, "attributes": {"shape": [["circle", 0.4]]}},
            {"error": "the mask is empty"}]}),  # a region the worker could not describe: left out
    "relations": ("region_relations", [box("a", 10, 10), box("b", 60, 10)], {
        "regions": [
            {"caption": "a red square", "relation_text": "left of the blue square", "confidence": 0.9,
             "attributes": {"color": [["red", 0.8]]}},
            {"caption": "a blue square", "confidence": 0.7, "attributes": {"color": [["blue", 0.9]]}}],
        "relations": [{"subject": 0, "object": 1, "label": "left of", "score": 0.9},
                      {"subject": 1, "object": 0, "label": "right of", "score": 0.8}]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("interactive", [False, True])
@pytest.mark.parametrize("describe", [None, [0]])
def test_the_rows_built_from_the_answer_are_the_rows_read_back_from_the_prediction(case, interactive, describe):
    config_name, results, answer = CASES[case]
    config = ProjectConfig.parse((CONFIGS / f"{config_name}.xml").read_text())
    regions = config.regions_from_results(results)
    assert [r.error for r in regions] == [None] * len(results)
    answer = {"width": 96, "height": 64, "model_version": "tiny-v3", **answer}
    prediction = config.build_prediction(regions, answer, interactive=interactive, multiple_threshold=0.3,
                                         describe=describe)
    assert not config.validate(prediction)
    if case == "relations" and not interactive and describe is None:
        assert any(r.get("type") == "relation" for r in prediction["result"])

    direct = suggestions_from_answer(config, regions, answer, 7, multiple_threshold=0.3, describe=describe)
    assert direct == read_back(prediction, config, 7)
    assert direct and all(s.model_version == "tiny-v3" for s in direct)
