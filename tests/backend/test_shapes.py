"""regionscribe.backend.labelstudio.shapes: Label Studio's region shapes read, checked and rasterised; brush RLE through label-studio-sdk's
own converter; the labeling config reading every region tool. No Redis, no worker."""
from __future__ import annotations

import math

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from regionscribe.backend.inference.answers import region_pixels
from regionscribe.backend.labelstudio.labeling_config import ProjectConfig
from regionscribe.backend.labelstudio.shapes import Shape, ShapeError


def result(type_, value, **extra):
    return {"id": "r", "type": type_, "from_name": "x", "to_name": "image", "value": value, **extra}


@pytest.mark.parametrize("points, message", [
    ([], "has 0 point"),
    ([[1, 1], [5, 5]], "needs at least 3"),
    ([[1, 1], [5, 5], [1, 1]], "needs at least 3"),  # closed explicitly: still two points
    ([[10, 10], [50, 50], [50, 10], [10, 50]], "self-intersecting"),  # a bow tie
    ([[0, 0], [40, 0], [40, 40], [20, 0], [0, 40]], "self-intersecting"),  # a vertex on another edge
    ([[1, 1], [2, "x"], [3, 1]], "not a number"),
    ([[1, 1], [2], [3, 1]], r"not \[x, y\]"),
])
def test_polygons_that_cannot_be_described_are_clear_errors(points, message):
    with pytest.raises(ShapeError, match=message):
        Shape.from_result(result("polygonlabels", {"points": points}))


def test_a_polygon_rasterises_inside_its_outline():
    shape = Shape.from_result(result("polygonlabels", {"points": [[10, 10], [60, 10], [60, 60], [10, 60]]}))
    mask = shape.mask(100, 50)
    assert mask.shape == (50, 100) and mask.dtype == np.bool_
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min()) == (10, 5) and abs(xs.max() - 60) <= 1 and abs(ys.max() - 30) <= 1
    assert shape.pixel_box(100, 50) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    closed = Shape.from_result(result("polygon", {"points": [[10, 10], [60, 10], [60, 60], [10, 60], [10, 10]]}))
    assert closed.points == shape.points


def test_an_ellipse_covers_its_area_and_rotates_about_its_centre():
    flat = Shape.from_result(result("ellipselabels", {"x": 50, "y": 50, "radiusX": 30, "radiusY": 10}))
    mask = flat.mask(200, 200)
    assert mask.sum() == pytest.approx(math.pi * 60 * 20, rel=0.05)
    x1, y1, x2, y2 = flat.pixel_box(200, 200)
    assert (x2 - x1, y2 - y1) == pytest.approx((121, 41), abs=2)
    turned = Shape.from_result(result("ellipse", {"x": 50, "y": 50, "radiusX": 30, "radiusY": 10, "rotation": 90}))
    x1, y1, x2, y2 = turned.pixel_box(200, 200)
    assert (x2 - x1, y2 - y1) == pytest.approx((41, 121), abs=2)
    with pytest.raises(ShapeError, match="no area"):
        Shape.from_result(result("ellipse", {"x": 50, "y": 50, "radiusX": 0, "radiusY": 10}))


def test_brush_rle_is_label_studios_own_both_ways():
    mask = np.zeros((30, 40), bool)
    mask[5:25, 10:20] = True
    mask[12:15, 12:15] = False
    shape = Shape.from_mask(mask)
    # the RLE is what label-studio-sdk's converter reads back (RGBA, the alpha channel holds the mask)
    decoded = brush.decode_rle(list(shape.rle)).reshape(30, 40, 4)[:, :, 3]
    assert ((decoded > 0) == mask).all()
    read = Shape.from_result(result("brushlabels", {"format": "rle", "rle": list(shape.rle)},
                                    original_width=40, original_height=30))
    assert (read.mask(40, 30) == mask).all()
    assert read.pixel_box(40, 30) == (10.0, 5.0, 20.0, 25.0)
    assert read.percent_box() == pytest.approx((25.0, 100 / 6, 25.0, 200 / 3))


def test_brush_problems_are_clear_errors():
    mask = np.zeros((30, 40), bool)
    mask[1, 1] = True
    rle = list(Shape.from_mask(mask).rle)
    with pytest.raises(ShapeError, match=r"RLE holds 4800 values .*40×30.*20×30 image needs 2400"):
        Shape.from_result(result("brush", {"format": "rle", "rle": rle}, original_width=40,
                                 original_height=30)).mask(20, 30)
    with pytest.raises(ShapeError, match="mask is empty"):
        Shape.from_mask(np.zeros((30, 40), bool)).mask(40, 30)
    with pytest.raises(ShapeError, match="format"):
        Shape.from_result(result("brush", {"format": "png", "rle": rle}))
    with pytest.raises(ShapeError, match="byte values"):
        Shape.from_result(result("brush", {"format": "rle", "rle": [1, 2, 300]}))
    with pytest.raises(ShapeError, match="original_width"):
        Shape.from_result(result("brush", {"format": "rle", "rle": rle})).percent_box()


def test_a_keypoint_is_a_small_box_round_the_point():
    point = Shape.from_result(result("keypointlabels", {"x": 50, "y": 25, "width": 0.5}))
    assert not point.has_mask and point.mask(200, 100) is None
    x1, y1, x2, y2 = point.pixel_box(200, 100)
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == (100.0, 25.0) and x2 - x1 == pytest.approx(4.0)
    corner = Shape.from_result(result("keypoint", {"x": 0, "y": 100}))
    x1, y1, x2, y2 = corner.pixel_box(200, 100)
    assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 100  # inside the image, at least one pixel


def test_shapes_travel_as_json_unchanged():
    for item in (result("polygonlabels", {"points": [[1, 2], [30, 4], [5, 60]]}),
                 result("ellipselabels", {"x": 50, "y": 40, "radiusX": 5, "radiusY": 7, "rotation": 12}),
                 result("keypointlabels", {"x": 3, "y": 4, "width": 1}),
                 result("rectanglelabels", {"x": 3, "y": 4, "width": 10, "height": 20, "rotation": 5})):
        shape = Shape.from_result(item)
        assert Shape.from_json(shape.to_json()) == shape
    mask = np.eye(8, dtype=bool)
    assert Shape.from_json(Shape.from_mask(mask).to_json()) == Shape.from_mask(mask)


def test_the_worker_turns_a_payload_region_into_a_box_and_a_mask():
    box, mask = region_pixels({"id": "r", "x": 10, "y": 20, "width": 50, "height": 25, "rotation": 0}, 200, 100)
    assert box == (20.0, 20.0, 120.0, 45.0) and mask is None  # a rectangle: as before shapes
    shape = Shape.polygon([(10, 10), (60, 10), (60, 60)]).to_json()
    box, mask = region_pixels({"id": "p", "x": 10, "y": 10, "width": 50, "height": 50, "shape": shape}, 100, 100)
    ys, xs = np.nonzero(mask)
    assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) and mask.shape == (100, 100)


SEGMENTS = """<View><Image name="image" value="$image"/>
  <PolygonLabels name="outline" toName="image"><Label value="Object"/></PolygonLabels>
  <BrushLabels name="paint" toName="image"><Label value="Object"/></BrushLabels>
  <Ellipse name="ellipse" toName="image"/>
  <KeyPointLabels name="point" toName="image"><Label value="Object"/></KeyPointLabels>
  <Rectangle name="box" toName="image"/>
  <TextArea name="caption" toName="image" perRegion="true"/></View>"""


def test_every_region_tool_is_read_and_broken_shapes_keep_their_place():
    config = ProjectConfig.parse(SEGMENTS)
    assert config.region_controls == ("outline", "paint", "ellipse", "point", "box")
    mask = np.zeros((10, 20), bool)
    mask[2:5, 4:10] = True
    results = [
        {"id": "p", "type": "polygonlabels", "from_name": "outline", "to_name": "image",
         "value": {"points": [[10, 10], [50, 10], [30, 60]], "polygonlabels": ["Object"]}},
        {"id": "bad", "type": "polygonlabels", "from_name": "outline", "to_name": "image",
         "value": {"points": [[10, 10], [50, 10]], "polygonlabels": ["Object"]}},
        {"id": "b", "type": "brushlabels", "from_name": "paint", "to_name": "image", "original_width": 20,
         "original_height": 10, "value": {"format": "rle", "rle": list(Shape.from_mask(mask).rle),
                                          "brushlabels": ["Object"]}},
        {"id": "e", "type": "ellipse", "from_name": "ellipse", "to_name": "image",
         "value": {"x": 50, "y": 50, "radiusX": 10, "radiusY": 20}},
        {"id": "k", "type": "keypointlabels", "from_name": "point", "to_name": "image",
         "value": {"x": 5, "y": 5, "keypointlabels": ["Object"]}},
        {"id": "r", "type": "rectangle", "from_name": "box", "to_name": "image",
         "value": {"x": 1, "y": 2, "width": 3, "height": 4}},
        {"id": "p", "type": "textarea", "from_name": "caption", "to_name": "image",
         "value": {"points": [[10, 10], [50, 10], [30, 60]], "text": ["typed"]}},
    ]
    regions = config.regions_from_results(results)
    assert [(r.id, r.type) for r in regions] == [("p", "polygonlabels"), ("bad", "polygonlabels"),
                                                ("b", "brushlabels"), ("e", "ellipse"), ("k", "keypointlabels"),
                                                ("r", "rectangle")]
    by_id = {r.id: r for r in regions}
    assert by_id["p"].filled and by_id["p"].labels == ("Object",) and by_id["p"].error is None
    assert (by_id["p"].x, by_id["p"].y) == (10.0, 10.0)
    assert by_id["bad"].error == "region bad: the polygon has 2 point(s); it needs at least 3"
    assert (by_id["b"].x, by_id["b"].y, by_id["b"].width, by_id["b"].height) == (20.0, 20.0, 30.0, 30.0)
    assert by_id["r"].shape is None and by_id["r"].to_job().get("shape") is None  # rectangles travel as before
    assert by_id["p"].to_job()["shape"]["kind"] == "polygon"
    assert by_id["p"].geometry == {"points": [[10.0, 10.0], [50.0, 10.0], [30.0, 60.0]], "closed": True}


@pytest.mark.parametrize("told", [-1, 0, "wide", 10 ** 9])
def test_a_polygon_with_an_image_size_that_cannot_be_is_still_read(told):
    """original_width as no image has it (found by tests/service/test_fuzz.py: -1 made PIL refuse the canvas, a 500):
    the size is not kept and the box comes out as without one; a huge one is rasterised on a smaller grid."""
    config = ProjectConfig.parse(SEGMENTS)
    polygon = {"id": "p", "type": "polygonlabels", "from_name": "outline", "to_name": "image", "original_height": 64,
               "value": {"points": [[10, 10], [50, 10], [30, 60]], "polygonlabels": ["Object"]}}
    [region] = config.regions_from_results([{**polygon, "original_width": told}])
    [plain] = config.regions_from_results([{**polygon, "original_width": 96}])
    assert region.error is None and region.original_width == (told if told == 10 ** 9 else None)
    for r in (region, plain):  # the outline's extent, to a pixel of the grid it was rasterised on (64 px: 1.6%)
        assert abs(r.x - 10) < 1.6 and abs(r.x + r.width - 50) < 1.6, r
        assert abs(r.y - 10) < 1.6 and abs(r.y + r.height - 60) < 1.6, r


def test_worker_errors_become_region_errors_and_the_rest_is_filled():
    config = ProjectConfig.parse(SEGMENTS)
    results = [{"id": i, "type": "polygonlabels", "from_name": "outline", "to_name": "image",
                "value": {"points": [[10, 10], [50, 10], [30, 60]], "polygonlabels": ["Object"]}} for i in ("a", "b")]
    regions = config.regions_from_results(results)
    answer = {"width": 100, "height": 100, "model_version": "v", "relations": [],
              "regions": [{"id": "a", "caption": "a thing", "confidence": 0.5},
                          {"id": "b", "error": "region b: the polygon's mask is empty"}]}
    prediction = config.build_prediction(regions, answer, interactive=False)
    assert prediction["region_errors"] == [{"id": "b", "error": "region b: the polygon's mask is empty"}]
    assert {r["id"] for r in prediction["result"]} == {"a"}
    assert config.validate(prediction) == []
