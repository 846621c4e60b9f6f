"""Labeling configs ↔ Asks ↔ Label Studio results, without Redis or workers.

The worker answers used here are hand-written dicts in the shape regionscribe.backend.inference.answers returns (a pure
protocol-shape check); the end-to-end tests in test_protocol.py use the real tiny model."""
from __future__ import annotations

import pytest
from label_studio_sdk.label_interface import LabelInterface

from regionscribe.backend.labelstudio.labeling_config import ConfigError, ProjectConfig
from regionscribe.backend.labelstudio.shapes import percent_box_to_pixels

from pathlib import Path

CONFIG_NAMES = ["region_captioning", "region_attributes", "region_relations"]
CONFIGS = Path(__file__).resolve().parents[2] / "labeling_configs"


def config_xml(name: str) -> str:
    return (CONFIGS / f"{name}.xml").read_text()


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_configs_parse_with_label_interface(name):
    xml = config_xml(name)
    interface = LabelInterface(xml)
    tags = {c.tag.lower() for c in interface.controls}
    assert "rectanglelabels" in tags and "textarea" in tags
    rect = next(c for c in interface.controls if c.tag.lower() == "rectanglelabels")
    assert rect.attr.get("smart") == "true"
    config = ProjectConfig.parse(xml)
    assert config.image_name == "image" and config.image_key == "image" and config.region_controls == ("bbox",)
    assert config.caption == "caption"


def test_attribute_config_asks_every_choice_and_taxonomy_leaf():
    config = ProjectConfig.parse(config_xml("region_attributes"))
    asks = config.asks()
    assert asks.caption and not asks.relation_labels and not asks.relation_text
    assert asks.attributes["color"] == ["red", "green", "blue", "yellow", "orange", "brown", "black", "purple"]
    assert asks.attributes["shape"] == ["circle", "square", "triangle", "cross", "star"]
    assert asks.attributes["size"] == ["small", "medium", "large"]
    assert asks.attributes["texture"] == ["solid", "striped", "dotted"]
    taxonomy = next(a for a in config.attributes if a.tag == "taxonomy")
    assert taxonomy.question == "shape family"
    assert taxonomy.paths["triangle"] == ("polygon", "triangle")
    assert next(a for a in config.attributes if a.name == "texture").multiple


def test_relations_config_asks_relations_and_relation_text():
    config = ProjectConfig.parse(config_xml("region_relations"))
    asks = config.asks()
    assert asks.relation_text and config.relation_text == "relation_text"
    assert asks.relation_labels == ["left of", "right of", "above", "below", "bigger than", "smaller than",
                                    "same colour as", "overlapping"]


def test_control_names_come_from_the_config_not_hard_coded():
    xml = """<View>
      <Image name="img" value="$photo"/>
      <Rectangle name="box" toName="img" smart="true"/>
      <TextArea name="notes" toName="img" perRegion="true"/>
      <TextArea name="long_detail" toName="img" perRegion="true"/>
      <TextArea name="whole_image_comment" toName="img"/>
      <Choices name="Material" toName="img" perRegion="true" whenLabelValue="Thing">
        <Choice value="metal"/><Choice value="wood"/>
      </Choices>
    </View>"""
    config = ProjectConfig.parse(xml)
    assert (config.image_name, config.image_key, config.region_controls) == ("img", "photo", ("box",))
    assert config.caption == "notes" and config.detailed == "long_detail" and config.relation_text is None
    assert config.attributes[0].when_labels == frozenset({"Thing"})
    assert config.asks().attributes == {"material": ["metal", "wood"]}


@pytest.mark.parametrize("xml, message", [
    ("<View><Image name='i' value='$image'/><Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
     "no region tool on an <Image>"),
    ("<View><Image name='i' value='$image'/><RectangleLabels name='b' toName='i'><Label value='x'/>"
     "</RectangleLabels></View>", "nothing for regionscribe"),
    ("<View><Image name='i' value='$image'", "does not parse"),
])
def test_unusable_configs_are_clear_errors(xml, message):
    with pytest.raises(ConfigError, match=message):
        ProjectConfig.parse(xml)


def test_percent_to_pixels_with_rotation_and_clamping():
    assert percent_box_to_pixels({"x": 10, "y": 20, "width": 50, "height": 25}, 200, 100) == (20, 20, 120, 45)
    # 90° about the top-left corner: the box swings to the left of its corner
    x1, y1, x2, y2 = percent_box_to_pixels({"x": 50, "y": 10, "width": 10, "height": 20, "rotation": 90}, 100, 100)
    assert (round(x1), round(y1), round(x2), round(y2)) == (30, 10, 50, 20)
    assert percent_box_to_pixels({"x": 90, "y": 90, "width": 50, "height": 50}, 100, 100) == (90, 90, 100, 100)


def box(rid, x, y, w, h, label="Object"):
    return {"id": rid, "type": "rectanglelabels", "from_name": "bbox", "to_name": "image", "original_width": 96,
            "original_height": 64, "image_rotation": 0, "origin": "manual",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


def hand_written_answer(n, relations=()):
    """The shape of a worker's answer (regionscribe.backend.inference.answers), written by hand."""
    return {"width": 96, "height": 64, "model_version": "v-test", "regions": [
        {"id": f"r{i}", "caption": f"a red square {i}", "caption_confidence": 0.8, "detailed": None,
         "attributes": {"color": [["red", 0.7], ["blue", 0.2], ["green", 0.1]],
                        "texture": [["solid", 0.5], ["striped", 0.4], ["dotted", 0.1]],
                        "shape family": [["square", 0.6], ["circle", 0.4]]},
         "relation_text": "left of the blue square", "relation_partner": 1 - i if n == 2 else None,
         "confidence": 0.75} for i in range(n)],
        "relations": list(relations)}


def test_interactive_prediction_links_every_result_to_the_drawn_box_by_id():
    config = ProjectConfig.parse(config_xml("region_attributes"))
    drawn = [box("userBox01", 10, 10, 30, 40), box("userBox02", 60, 30, 30, 50)]
    regions = config.regions_from_results(drawn)
    prediction = config.build_prediction(regions, hand_written_answer(2), interactive=True,
                                         multiple_threshold=0.3)
    assert config.validate(prediction) == []
    result = prediction["result"]
    echoed = [r for r in result if r["type"] == "rectanglelabels"]
    for original, echo in zip(drawn, echoed):
        assert echo["id"] == original["id"] and echo["value"] == original["value"]
    for rid, original in (("userBox01", drawn[0]), ("userBox02", drawn[1])):
        mine = [r for r in result if r.get("id") == rid]
        # shape and size were not answered in this hand-written answer: nothing is sent for them
        assert {r["from_name"] for r in mine} == {"bbox", "caption", "color", "texture", "shape_family"}
        for r in mine:
            for key in ("x", "y", "width", "height", "rotation"):
                assert r["value"][key] == original["value"][key]
            assert r["to_name"] == "image" and r["original_width"] == 96
    color = next(r for r in result if r["from_name"] == "color")
    assert color["value"]["choices"] == ["red"]  # choice="single": the top value
    texture = next(r for r in result if r["from_name"] == "texture")
    assert texture["value"]["choices"] == ["solid", "striped"]  # choice="multiple": above the threshold
    taxonomy = next(r for r in result if r["from_name"] == "shape_family")
    assert taxonomy["value"]["taxonomy"] == [["polygon", "square"]]
    assert 0 <= prediction["score"] <= 1 and prediction["model_version"] == "v-test"


def test_relations_between_region_ids_only_with_known_labels():
    config = ProjectConfig.parse(config_xml("region_relations"))
    regions = config.regions_from_results([box("a", 10, 10, 30, 40), box("b", 60, 30, 30, 50)])
    answer = hand_written_answer(2, relations=[
        {"subject": 0, "object": 1, "label": "left of", "score": 0.9},
        {"subject": 0, "object": 1, "label": "smaller than", "score": 0.8},
        {"subject": 1, "object": 0, "label": "right of", "score": 0.2},  # below the threshold
        {"subject": 1, "object": 0, "label": "eats", "score": 0.99},  # not in <Relations>
    ])
    prediction = config.build_prediction(regions, answer, interactive=False, relation_threshold=0.5)
    assert config.validate(prediction) == []
    relations = [r for r in prediction["result"] if r["type"] == "relation"]
    assert relations == [{"type": "relation", "from_id": "a", "to_id": "b", "direction": "right",
                          "labels": ["left of", "smaller than"]}]
    relation_text = [r for r in prediction["result"] if r.get("from_name") == "relation_text"]
    assert [r["id"] for r in relation_text] == ["a", "b"]


def test_interactive_answers_carry_no_relations_but_keep_relation_text():
    """Label Studio 1.23.2's editor cannot take a <Relations> result in an interactive answer (the page goes blank on
    a dangling region reference), so none is asked for or sent; batch predictions keep them."""
    config = ProjectConfig.parse(config_xml("region_relations"))
    assert config.asks(interactive=True).relation_labels == []
    assert config.asks(interactive=True).relation_text is True
    assert config.asks().relation_labels == list(config.relation_labels)
    regions = config.regions_from_results([box("a", 10, 10, 30, 40), box("b", 60, 30, 30, 50)])
    answer = hand_written_answer(2, relations=[{"subject": 0, "object": 1, "label": "left of", "score": 0.9}])
    interactive = config.build_prediction(regions, answer, interactive=True)
    assert config.validate(interactive) == []
    assert [r for r in interactive["result"] if r["type"] == "relation"] == []
    assert sorted(r["id"] for r in interactive["result"] if r.get("from_name") == "relation_text") == ["a", "b"]
    batch = config.build_prediction(regions, answer, interactive=False)
    assert [(r["from_id"], r["to_id"]) for r in batch["result"] if r["type"] == "relation"] == [("a", "b")]


def test_validation_catches_what_label_studio_would_refuse():
    config = ProjectConfig.parse(config_xml("region_attributes"))
    regions = config.regions_from_results([box("a", 10, 10, 30, 40)])
    prediction = config.build_prediction(regions, hand_written_answer(1), interactive=False)
    bad_choice = {**prediction, "result": [dict(r) for r in prediction["result"]]}
    color = next(r for r in bad_choice["result"] if r["from_name"] == "color")
    color["value"] = {**color["value"], "choices": ["magenta"]}
    assert any("color" in e for e in config.validate(bad_choice))
    assert config.validate({**prediction, "score": 1.5})
    bad_relation = {**prediction, "result": prediction["result"] + [
        {"type": "relation", "from_id": "a", "to_id": "nope", "direction": "right", "labels": []}]}
    errors = config.validate(bad_relation)
    # one message per problem, all strings (the SDK nests a relation's errors in a list; /predict joins them)
    assert errors and all(isinstance(e, str) for e in errors), errors
    assert any("'nope' not found" in e for e in errors), errors


def test_batch_regions_come_from_latest_annotation_then_draft_then_prediction():
    config = ProjectConfig.parse(config_xml("region_captioning"))
    task = {"annotations": [
        {"id": 1, "updated_at": "2026-01-01T00:00:00Z", "result": [box("old", 1, 1, 5, 5)]},
        {"id": 2, "updated_at": "2026-02-01T00:00:00Z", "result": [box("new", 1, 1, 5, 5)]},
        {"id": 3, "updated_at": "2026-03-01T00:00:00Z", "was_cancelled": True, "result": [box("skip", 1, 1, 5, 5)]}],
        "drafts": [{"result": [box("draft", 1, 1, 5, 5)]}]}
    regions, source = config.regions_from_task(task)
    assert [r.id for r in regions] == ["new"] and source == "annotation"
    regions, source = config.regions_from_task({"drafts": task["drafts"],
                                                "predictions": [{"result": [box("p", 1, 1, 5, 5)]}]})
    assert [r.id for r in regions] == ["draft"] and source == "draft"
    regions, source = config.regions_from_task({"predictions": [{"result": [box("p", 1, 1, 5, 5)]}]})
    assert [r.id for r in regions] == ["p"] and source == "prediction"
    assert config.regions_from_task({"annotations": []}) == ([], "")


def test_foreign_and_degenerate_boxes_are_ignored():
    config = ProjectConfig.parse(config_xml("region_captioning"))
    results = [box("ok", 1, 1, 5, 5), {**box("other", 1, 1, 5, 5), "from_name": "elsewhere"},
               box("flat", 1, 1, 0, 5), {"id": "t", "type": "textarea", "from_name": "caption", "to_name": "image",
                                         "value": {"text": ["hi"]}}, "junk", None]
    assert [r.id for r in config.regions_from_results(results)] == ["ok"]
