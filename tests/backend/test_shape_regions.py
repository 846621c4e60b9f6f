"""Polygons, ellipses, brush masks and keypoints through /predict, against a real Redis and a real inference worker
(the untrained tiny model): each region is described under its own id in interactive and batch mode, and a region
whose shape cannot be described gets its own clear error while the task's other regions are described."""
from __future__ import annotations

import numpy as np
from label_studio_sdk.label_interface import LabelInterface

from regionscribe.backend.labelstudio.shapes import Shape

W, H = 96, 64  # scene.png: a red square at (8..40, 8..40), a blue one at (56..88, 20..52)
KEYPOINT_XML_TAG = '<KeyPointLabels name="point" toName="image" smart="true"><Label value="Object"/></KeyPointLabels>'


def segments_xml(h) -> str:
    return h.config_xml("region_segments").replace("</View>", KEYPOINT_XML_TAG + "</View>")


def ls_region(rid, from_name, type_, geometry, ow=W, oh=H):
    return {"id": rid, "type": type_, "from_name": from_name, "to_name": "image", "original_width": ow,
            "original_height": oh, "image_rotation": 0, "origin": "manual",
            "value": {**geometry, type_: ["Object"]}}


def polygon(rid, points):
    return ls_region(rid, "outline", "polygonlabels", {"points": points, "closed": True})


def brush(rid, mask):
    return ls_region(rid, "paint", "brushlabels", {"format": "rle", "rle": list(Shape.from_mask(mask).rle)},
                     ow=mask.shape[1], oh=mask.shape[0])


def ellipse(rid, x, y, rx, ry, rotation=0.0):
    return ls_region(rid, "ellipse", "ellipselabels", {"x": x, "y": y, "radiusX": rx, "radiusY": ry,
                                                       "rotation": rotation})


def keypoint(rid, x, y):
    return ls_region(rid, "point", "keypointlabels", {"x": x, "y": y, "width": 1.0})


def blue_mask(shape=(H, W)):
    """The blue square's pixels, on an image of `shape` scaled from the 96x64 scene."""
    mask = np.zeros(shape, bool)
    sy, sx = shape[0] / H, shape[1] / W
    mask[round(20 * sy):round(52 * sy), round(56 * sx):round(88 * sx)] = True
    return mask


def body(xml, tasks, context=None):
    return {"tasks": tasks, "project": "1.1716200000", "label_config": xml,
            "params": {"login": None, "password": None, "context": context}}


def task(tid, annotations=None):
    return {"id": tid, "data": {"image": "/data/upload/1/scene.png"}, "annotations": annotations or [],
            "drafts": [], "predictions": [], "meta": {}, "project": 1}


def test_setup_accepts_a_config_without_rectangles(client, h):
    answer = client.post("/setup", json={"project": "1.1716200000", "schema": h.config_xml("region_segments")})
    assert answer.status_code == 200 and "warning" not in answer.get_json()


def test_interactive_shapes_are_described_under_their_own_ids(client, h):
    xml = segments_xml(h)
    drawn = [polygon("poly1", [[8.3, 12.5], [41.7, 12.5], [41.7, 62.5], [8.3, 62.5]]),
             brush("brush1", blue_mask()),
             ellipse("ell1", 25.0, 37.5, 10.0, 15.0, 30.0),
             keypoint("kp1", 75.0, 55.0)]
    response = client.post("/predict", json=body(xml, [task(7)], {"result": drawn}))
    assert response.status_code == 200
    prediction = response.get_json()["results"][0]
    assert "error" not in prediction and "region_errors" not in prediction, prediction
    assert LabelInterface(xml).validate_prediction(prediction, return_errors=True) == []
    for original in drawn:
        mine = [r for r in prediction["result"] if r.get("id") == original["id"]]
        echo = next(r for r in mine if r["type"] == original["type"])
        assert {k: v for k, v in echo.items() if k != "score"} == original  # the annotator's own shape, unchanged
        caption = next(r for r in mine if r["from_name"] == "caption")
        assert caption["type"] == "textarea" and isinstance(caption["value"]["text"][0], str)
        assert {r["from_name"] for r in mine} >= {"caption", "color", "shape"}
        for r in mine:  # per-region results repeat the shape's own geometry
            geometry = {k: v for k, v in original["value"].items() if k != original["type"]}
            assert all(r["value"][k] == v for k, v in geometry.items() if k != "closed"), r


def test_batch_prefill_describes_the_shapes_of_the_latest_annotation(client, h):
    xml = h.config_xml("region_segments")
    annotation = {"id": 11, "updated_at": "2026-11-22T00:00:00Z",
                  "result": [polygon("a1", [[8.3, 12.5], [41.7, 12.5], [41.7, 62.5]]), brush("a2", blue_mask())]}
    results = client.post("/predict", json=body(xml, [task(1, [annotation])])).get_json()["results"]
    prediction = results[0]
    assert "error" not in prediction, prediction
    assert LabelInterface(xml).validate_prediction(prediction, return_errors=True) == []
    result = prediction["result"]
    assert {r["id"] for r in result} == {"a1", "a2"}
    poly = next(r for r in result if r["id"] == "a1" and r["type"] == "polygonlabels")
    assert poly["value"]["points"] == [[8.3, 12.5], [41.7, 12.5], [41.7, 62.5]]
    assert poly["value"]["polygonlabels"] == ["Object"]
    painted = next(r for r in result if r["id"] == "a2" and r["type"] == "brushlabels")
    assert (Shape.from_result(painted).mask(W, H) == blue_mask()).all()  # the same mask goes back
    for rid in ("a1", "a2"):
        assert any(r["id"] == rid and r["from_name"] == "caption" for r in result)


def test_each_broken_shape_gets_its_own_error_and_the_others_are_described(client, h):
    xml = segments_xml(h)
    empty = np.zeros((H, W), bool)
    drawn = [polygon("two", [[10, 10], [50, 50]]),
             polygon("bowtie", [[10, 10], [50, 50], [50, 10], [10, 50]]),
             brush("small", blue_mask((32, 48))),  # an RLE of a 48x32 image on the 96x64 one
             brush("empty", empty),
             polygon("outside", [[150, 150], [180, 150], [180, 190]]),  # no pixel on the image
             polygon("good", [[8.3, 12.5], [41.7, 12.5], [41.7, 62.5]]),
             keypoint("kp", 75.0, 55.0)]
    prediction = client.post("/predict", json=body(xml, [task(3)], {"result": drawn})).get_json()["results"][0]
    assert "error" not in prediction, prediction
    errors = {e["id"]: e["error"] for e in prediction["region_errors"]}
    assert set(errors) == {"two", "bowtie", "small", "empty", "outside"}
    assert "needs at least 3" in errors["two"]
    assert "self-intersecting" in errors["bowtie"]
    assert "RLE" in errors["small"] and "96×64" in errors["small"]
    assert "empty" in errors["empty"] and "empty" in errors["outside"]
    described = {r["id"] for r in prediction["result"] if r["from_name"] == "caption"}
    assert described == {"good", "kp"}
    assert LabelInterface(xml).validate_prediction(prediction, return_errors=True) == []


def test_a_task_whose_every_region_is_broken_is_a_task_error(client, h):
    xml = segments_xml(h)
    drawn = [polygon("two", [[10, 10], [50, 50]])]
    prediction = client.post("/predict", json=body(xml, [task(4)], {"result": drawn})).get_json()["results"][0]
    assert prediction["result"] == [] and "needs at least 3" in prediction["error"]
    drawn = [brush("small", blue_mask((32, 48)))]  # found by the worker only
    prediction = client.post("/predict", json=body(xml, [task(4)], {"result": drawn})).get_json()["results"][0]
    assert prediction["result"] == [] and "RLE" in prediction["error"]
