"""Polygon and brush corrections reach the training run as masks: webhook → store (shape kept) → image cached →
regionscribe.backend.feedback.retrain.records_to_images → regionscribe.training.annotation_samples.RegionAnnotation(box = the mask's bounding box, mask)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.feedback.image_cache import cache_image
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.labelstudio.shapes import Shape
from regionscribe.backend.feedback.retrain import records_to_images

ROOT = Path(__file__).resolve().parents[2]
SEGMENTS_XML = (ROOT / "labeling_configs" / "region_segments.xml").read_text()
W, H = 64, 48


class Fetcher:
    def __init__(self, files):
        self.files = files

    def fetch(self, ref, task_id=None) -> bytes:
        return self.files[ref]


def test_polygon_and_brush_regions_train_with_their_masks(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    painted = np.zeros((H, W), bool)
    painted[5:20, 30:60] = True
    common = {"to_name": "image", "original_width": W, "original_height": H, "image_rotation": 0}
    shapes = {"p1": ("outline", "polygonlabels", {"points": [[10, 10], [40, 10], [25, 90]], "closed": True}),
              "b1": ("paint", "brushlabels", {"format": "rle", "rle": list(Shape.from_mask(painted).rle)}),
              "bad": ("outline", "polygonlabels", {"points": [[10, 10], [40, 10]], "closed": True})}
    result = []
    for rid, (name, type_, geometry) in shapes.items():
        result.append({**common, "id": rid, "from_name": name, "type": type_, "value": {**geometry, type_: ["Object"]}})
        result.append({**common, "id": rid, "from_name": "caption", "type": "textarea",
                       "value": {**geometry, "text": [f"caption of {rid}"]}})
    result.append({"type": "relation", "from_id": "p1", "to_id": "b1", "direction": "right", "labels": ["left of"]})
    payload = ls.annotation_event(p, t, a, result, image="/data/upload/1/shapes.png", label_config=SEGMENTS_XML)
    handle_event(Settings(), payload, store=store, connection=None)
    cached = cache_image(store, Fetcher({"/data/upload/1/shapes.png": ls.png((W, H))}), "/data/upload/1/shapes.png",
                         t, 64_000_000)
    assert "error" not in cached, cached
    records = {r.region_id: r for r in store.records(p)}
    assert set(records) == {"p1", "b1"}  # the 2-point polygon cannot be a region: left out, the event kept whole
    assert records["p1"].shape == {"kind": "polygon", "points": [[10.0, 10.0], [40.0, 10.0], [25.0, 90.0]]}
    assert [e["payload"]["annotation"]["result"] for e in store.events()] == [result]

    [item] = records_to_images(store.records(p))
    by_caption = {r.caption: r for r in item.regions}
    polygon, brush = by_caption["caption of p1"], by_caption["caption of b1"]
    assert (brush.mask == painted).all() and brush.box == (30.0, 5.0, 60.0, 20.0)
    want = Shape.from_json(records["p1"].shape).mask(W, H)
    assert (polygon.mask == want).all()
    ys, xs = np.nonzero(want)
    assert polygon.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert polygon.relations == [(item.regions.index(brush), "left of")]
