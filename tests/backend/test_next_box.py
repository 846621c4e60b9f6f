"""The next box never overwrites what is on the page (issue 15, item 1).

Label Studio sends, with every box drawn with the smart tool, every other box of the same label on the page, with
whatever the annotator has in their caption and choices by then (labelstudio.md §3). An interactive answer must
describe only the boxes with nothing filled in yet and leave the others out: a box in the answer is a suggestion,
and accepting it replaces what the annotator typed. Batch prefill still describes every box.

The first tests are pure (no Redis); the protocol tests run the real untrained tiny model in a worker."""
from __future__ import annotations

from pathlib import Path

import pytest

from regionscribe.backend.inference.submit import inference_queue, make_payload, submit, wait_for
from regionscribe.backend.labelstudio.labeling_config import ProjectConfig
from regionscribe.model.asks import Asks

CONFIGS = Path(__file__).resolve().parents[2] / "labeling_configs"


def config_xml(name: str) -> str:
    return (CONFIGS / f"{name}.xml").read_text()


def ls_box(rid, x, y, w, h, **extra):
    """A rectangle as Label Studio's editor serializes it in an interactive context."""
    return {"id": rid, "type": "rectanglelabels", "from_name": "bbox", "to_name": "image", "original_width": 96,
            "original_height": 64, "image_rotation": 0, "origin": "manual",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Object"]}, **extra}


def per_region(box: dict, from_name: str, type_: str, payload) -> dict:
    """A per-region result under `box`'s id, as the editor serializes an accepted or typed caption/choice."""
    key = {"textarea": "text", "choices": "choices", "taxonomy": "taxonomy"}[type_]
    value = {k: box["value"][k] for k in ("x", "y", "width", "height", "rotation")}
    return {"id": box["id"], "type": type_, "from_name": from_name, "to_name": "image", "original_width": 96,
            "original_height": 64, "image_rotation": 0, "origin": "manual", "value": {**value, key: payload}}


def edited_page():
    """Box 1 accepted earlier, then its caption edited and its texture corrected; box 2 just drawn."""
    first = ls_box("box1", 8, 12, 34, 50, score=0.93)
    second = ls_box("box2", 58, 30, 34, 50)
    return [first,
            per_region(first, "caption", "textarea", ["a large red solid circle (edited)"]),
            per_region(first, "color", "choices", ["red"]),
            per_region(first, "texture", "choices", ["dotted"]),
            per_region(first, "shape_family", "taxonomy", [["round", "circle"]]),
            second]


def answer_for(n: int) -> dict:
    """A worker's answer (regionscribe.backend.inference.answers' shape) describing n boxes."""
    return {"width": 96, "height": 64, "model_version": "v-test", "relations": [
        {"subject": 1, "object": 0, "label": "right of", "score": 0.9},
        {"subject": 0, "object": 1, "label": "left of", "score": 0.9}], "regions": [
        {"id": f"r{i}", "caption": f"the model's caption {i}", "caption_confidence": 0.5 + i / 10,
         "attributes": {"color": [["blue", 0.8], ["red", 0.2]], "texture": [["solid", 0.9], ["dotted", 0.1]]},
         "confidence": 0.5 + i / 10} for i in range(n)]}


# ------------------------------------------------------------------------------------------ labeling, pure


def test_a_box_with_a_caption_or_choices_is_filled_a_bare_box_is_not():
    config = ProjectConfig.parse(config_xml("region_attributes"))
    page = edited_page()
    assert [(r.id, r.filled) for r in config.regions_from_results(page)] == [("box1", True), ("box2", False)]
    # one choice alone is enough, and the order of the results does not matter
    choice_only = [per_region(page[0], "size", "choices", ["large"]), page[0]]
    assert [r.filled for r in config.regions_from_results(choice_only)] == [True]
    # a result of a control regionscribe does not fill, or of another region, does not count
    other = [page[0], {**per_region(page[0], "caption", "textarea", ["x"]), "id": "elsewhere"},
             {**per_region(page[0], "notes", "textarea", ["x"])}]
    assert [r.filled for r in config.regions_from_results(other)] == [False]
    # junk beside the box is ignored, not an error (a list or dict is no control name)
    junk = [page[0], {"id": "box1", "from_name": ["caption"]}, {"id": "box1", "from_name": {"a": 1}}, 7, None]
    assert [r.filled for r in config.regions_from_results(junk)] == [False]


def test_the_prediction_describes_only_the_boxes_asked_and_leaves_the_rest_out():
    config = ProjectConfig.parse(config_xml("region_relations"))
    regions = config.regions_from_results([ls_box("box1", 8, 12, 34, 50), ls_box("box2", 58, 30, 34, 50)])
    prediction = config.build_prediction(regions, answer_for(2), interactive=False, describe=[1],
                                         relation_threshold=0.5)
    assert config.validate(prediction) == []
    ids = {r.get("id") for r in prediction["result"] if r["type"] != "relation"}
    assert ids == {"box2"}
    assert {r["from_name"] for r in prediction["result"] if r.get("id") == "box2"} >= {"bbox", "caption", "color"}
    # a relation to a box left out would point at nothing (Label Studio's validator refuses it)
    assert [r for r in prediction["result"] if r["type"] == "relation"] == []
    assert prediction["score"] == pytest.approx(0.6)  # box2's confidence alone
    full = config.build_prediction(regions, answer_for(2), interactive=False)
    assert config.validate(full) == []
    assert {r.get("id") for r in full["result"] if r["type"] != "relation"} == {"box1", "box2"}
    assert [(r["from_id"], r["to_id"]) for r in full["result"] if r["type"] == "relation"] == [
        ("box2", "box1"), ("box1", "box2")]


# ---------------------------------------------------------------------------------- the protocol, real worker


def interactive_body(xml: str, context: list[dict], task_id: int = 7) -> dict:
    return {"tasks": [{"id": task_id, "data": {"image": "/data/upload/1/scene.png"}, "annotations": [],
                       "drafts": [], "predictions": []}],
            "project": "1.1716200000", "label_config": xml,
            "params": {"login": None, "password": None, "context": {"result": context}}}


def test_the_next_box_leaves_the_edited_box_alone(client, redis_client):
    """The issue's case: box 1 with an edited caption and a corrected texture, box 2 just drawn. The answer holds
    box 2 described and nothing under box 1, so the editor neither re-suggests nor overwrites it."""
    xml = config_xml("region_attributes")
    config = ProjectConfig.parse(xml)
    response = client.post("/predict", json=interactive_body(xml, edited_page()))
    assert response.status_code == 200
    [prediction] = response.get_json()["results"]
    assert "error" not in prediction, prediction
    assert config.validate(prediction) == []
    result = prediction["result"]
    assert [r for r in result if r.get("id") == "box1"] == []
    mine = {r["from_name"]: r for r in result if r.get("id") == "box2"}
    assert {"bbox", "caption", "color", "shape", "size", "texture", "shape_family"} <= set(mine)
    assert {k: v for k, v in mine["bbox"].items() if k != "score"} == edited_page()[-1]  # the drawn box, unchanged
    assert isinstance(mine["caption"]["value"]["text"][0], str)


def test_only_the_new_box_is_described_but_all_boxes_reach_the_worker(redis_client, make_settings, worker):
    """The job carries every box (the new box's relation text may talk about any of them) and which to describe;
    the worker describes only that one."""
    settings = make_settings()
    boxes = [{"id": "box1", "x": 8, "y": 12, "width": 34, "height": 50, "rotation": 0, "labels": ["Object"]},
             {"id": "box2", "x": 58, "y": 30, "width": 34, "height": 50, "rotation": 0, "labels": ["Object"]}]
    asks = Asks(caption=True, attributes={"color": ["red", "blue"]}, relation_text=True, max_new_tokens=4)
    jobs = submit(inference_queue(redis_client, settings),
                  [make_payload(1, "scene.png", boxes, asks, True, describe=[1]),
                   make_payload(2, "scene.png", boxes, asks, True)], settings)
    only, every = wait_for(redis_client, jobs, timeout=30)
    assert only.ok and every.ok, (only.message, every.message)
    first, second = only.value["regions"]
    assert first["caption"] is None and first["attributes"] == {} and first["relation_text"] is None
    assert second["caption"] and set(second["attributes"]) == {"color"}
    assert second["relation_partner"] == 0  # box 1 is there as the partner
    assert second["caption"] == every.value["regions"][1]["caption"]  # same words as when every box is described
    assert all(r["caption"] for r in every.value["regions"])


def test_a_bad_describe_list_is_a_clear_task_error(redis_client, make_settings, worker):
    settings = make_settings()
    box = {"id": "b", "x": 8, "y": 12, "width": 34, "height": 50, "rotation": 0, "labels": ["Object"]}
    bad = [make_payload(1, "scene.png", [box], Asks(), True, describe=[3]),
           {**make_payload(2, "scene.png", [box], Asks(), True), "describe": "0"},
           make_payload(3, "scene.png", [box], Asks(), True, describe=[[0]])]
    outcomes = wait_for(redis_client, submit(inference_queue(redis_client, settings), bad, settings), timeout=30)
    assert not outcomes[0].ok and "there are 1 boxes" in outcomes[0].message
    assert not outcomes[1].ok and "list of box indices" in outcomes[1].message
    assert not outcomes[2].ok and "`describe` names boxes [[0]]" in outcomes[2].message


def test_nothing_new_on_the_page_is_an_empty_answer_without_a_job(make_settings):
    """Every box already filled (a box moved, a smart box deleted): an empty result, no error, and no worker asked
    (this app's queue has no worker: asking one would answer "no inference worker is running")."""
    from regionscribe.backend.web.app import create_app

    client = create_app(make_settings(inference_queue="inference-nobody")).test_client()
    xml = config_xml("region_attributes")
    page = edited_page()[:-1]  # box 1 only, filled
    [answer] = client.post("/predict", json=interactive_body(xml, page)).get_json()["results"]
    assert answer == {"result": [], "model_version": "tiny-untrained-0", "score": 0.0}


def test_batch_prefill_still_describes_every_box(client):
    """Data Manager → Retrieve predictions: the boxes of the latest annotation, captions and all, are all
    described (batch mode has no page to keep)."""
    xml = config_xml("region_attributes")
    task = {"id": 9, "data": {"image": "/data/upload/1/scene.png"}, "drafts": [], "predictions": [],
            "annotations": [{"id": 1, "updated_at": "2026-11-22T00:00:00Z", "result": edited_page()}]}
    body = {"tasks": [task], "project": "1.1716200000", "label_config": xml,
            "params": {"login": None, "password": None, "context": None}}
    [prediction] = client.post("/predict", json=body).get_json()["results"]
    assert "error" not in prediction, prediction
    captions = {r["id"]: r["value"]["text"][0] for r in prediction["result"] if r["from_name"] == "caption"}
    assert set(captions) == {"box1", "box2"}
    assert captions["box1"] != "a large red solid circle (edited)"  # the model's words, as a batch prediction
