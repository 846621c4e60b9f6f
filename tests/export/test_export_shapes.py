"""Polygons, ellipses and brush masks through the store and every export, read back with each format's own reader
(the project's conversations loader, pycocotools, Hugging Face `datasets`): the same shape comes back, on SQLite
and PostgreSQL."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from regionscribe.backend.export import ExportOptions, export
from regionscribe.backend.export.reader import load_conversations
from regionscribe.model.masks import coco_rle_mask
from regionscribe.backend.feedback.image_cache import cache_image
from regionscribe.backend.labelstudio.shapes import Shape

ROOT = Path(__file__).resolve().parents[2]
SEGMENTS_XML = (ROOT / "labeling_configs" / "region_segments.xml").read_text()
W, H = 200, 100
POLYGON = [[10.0, 10.0], [45.0, 12.0], [40.0, 80.0], [12.5, 60.0]]


def brush_mask() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[40:70, 120:150] = True
    mask[50:60, 130:140] = False  # a hole: a polygon could not say this, the RLE does
    return mask


def shaped_results() -> list[dict]:
    common = {"to_name": "image", "original_width": W, "original_height": H, "image_rotation": 0}
    rle = list(Shape.from_mask(brush_mask()).rle)
    shapes = {
        "p1": ("outline", "polygonlabels", {"points": POLYGON, "closed": True}),
        "e1": ("ellipse", "ellipselabels", {"x": 75.0, "y": 30.0, "radiusX": 10.0, "radiusY": 15.0, "rotation": 30.0}),
        "b1": ("paint", "brushlabels", {"format": "rle", "rle": rle}),
    }
    out = []
    for rid, (name, type_, geometry) in shapes.items():
        out.append({**common, "id": rid, "from_name": name, "type": type_, "value": {**geometry, type_: ["Object"]}})
        out.append({**common, "id": rid, "from_name": "caption", "type": "textarea",
                    "value": {**geometry, "text": [f"the {rid} region"]}})
        out.append({**common, "id": rid, "from_name": "color", "type": "choices",
                    "value": {**geometry, "choices": ["red"]}})
    return out


@pytest.fixture
def shaped_export(any_store, tmp_path, lab):
    p, t, a = lab.new_id(), lab.new_id(), lab.new_id()
    ref = f"/data/upload/{p}/shapes-{uuid.uuid4().hex[:6]}.png"
    payload = lab.event(p, t, a, shaped_results(), image=ref)
    payload["project"]["label_config"] = SEGMENTS_XML
    answer = lab.apply(any_store, payload)
    assert answer["result"]["regions"] == 3
    fetcher = lab.Fetcher()
    fetcher.files[ref] = lab.png((W, H))
    assert "error" not in cache_image(any_store, fetcher, ref, t, 64_000_000)
    out = tmp_path / "out"
    export(any_store, out, ExportOptions(formats=("conversations", "coco", "hf"), images="copy", split=(1.0, 0.0, 0.0)))
    records = {r.region_id: r for r in any_store.records(p)}
    return records, out


def expected_mask(record) -> np.ndarray:
    return Shape.from_json(record.shape).mask(W, H)


def test_the_store_keeps_each_shape(shaped_export):
    records, _out = shaped_export
    assert {rid: r.shape["kind"] for rid, r in records.items()} == {"p1": "polygon", "e1": "ellipse", "b1": "brush"}
    assert records["p1"].shape["points"] == POLYGON
    assert (expected_mask(records["b1"]) == brush_mask()).all()
    for r in records.values():  # the pixel box is the mask's bounding box on the cached image
        ys, xs = np.nonzero(expected_mask(r))
        assert r.pixel_box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert r.caption == f"the {r.region_id} region"


def test_conversations_read_back_with_the_same_masks(shaped_export):
    records, out = shaped_export
    item = json.loads((out / "conversations" / "train.json").read_text())[0]
    samples = load_conversations(out / "conversations" / "train.json")
    assert len(samples) == 1 and len(samples[0].masks) == 3
    by_region = {r["region_id"]: k for k, r in enumerate(item["regions"])}
    for rid, k in by_region.items():
        assert samples[0].masks[k] is not None
        assert (samples[0].masks[k] == expected_mask(records[rid])).all(), rid
    polygon = item["segmentation"][by_region["p1"]]["polygon"]
    assert np.allclose(np.array(polygon) * 100.0, POLYGON)  # normalised polygons
    assert "rle" in item["segmentation"][by_region["b1"]]


def test_coco_segmentation_reads_back_with_pycocotools(shaped_export):
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO

    records, out = shaped_export
    coco = COCO(str(out / "coco" / "train.json"))
    anns = {a["ls_region_id"]: a for a in coco.dataset["annotations"]}
    assert {rid: a["ls_shape"] for rid, a in anns.items()} == {"p1": "polygon", "e1": "ellipse", "b1": "brush"}
    rle = anns["b1"]["segmentation"]
    assert (coco_rle_mask(rle) == brush_mask()).all()  # RLE: exactly the brush, hole included
    assert int(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(brush_mask().sum())
    points = np.array(anns["p1"]["segmentation"][0]).reshape(-1, 2)
    assert np.allclose(points, np.array(POLYGON) / 100.0 * [W, H], atol=0.01)
    ellipse = np.array(anns["e1"]["segmentation"][0]).reshape(-1, 2)  # its outline, on the ellipse
    centre, radii = np.array([0.75 * W, 0.30 * H]), np.array([0.10 * W, 0.15 * H])
    angle = np.radians(-30.0)
    rot = (ellipse - centre) @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    assert np.allclose(((rot / radii) ** 2).sum(axis=1), 1.0, atol=0.01)
    for rid, ann in anns.items():
        assert ann["area"] == int(expected_mask(records[rid]).sum())
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w, y + h) == records[rid].pixel_box


def test_coco_rle_reader_matches_pycocotools_encoder():
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(0)
    for shape in ((1, 1), (7, 13), (64, 48)):
        mask = rng.random(shape) > 0.6
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert (coco_rle_mask({"size": rle["size"], "counts": rle["counts"].decode()}) == mask).all()


def test_hugging_face_mask_column_reads_back_with_datasets(shaped_export, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    records, out = shaped_export
    ds = datasets.load_dataset(str(out / "hf"), cache_dir=str(tmp_path / "hf-cache"))["train"]
    regions = {r["ls_region_id"]: r for row in ds for r in row["regions"]}
    assert set(regions) == {"p1", "e1", "b1"}
    for rid, r in regions.items():
        assert r["shape"] == records[rid].shape["kind"]
        assert (np.array(r["mask"]) > 0).shape == (H, W)
        assert ((np.array(r["mask"]) > 0) == expected_mask(records[rid])).all(), rid
    assert np.allclose(np.array(regions["p1"]["polygon"]), np.array(POLYGON) / 100.0 * [W, H])
    assert regions["b1"]["polygon"] is None


def test_training_from_the_conversations_export_keeps_the_masks(shaped_export):
    """`regionscribe train --stage2-data export-conversations:DIR` trains on the polygons, ellipses and brushes, not
    only their boxes: the training reader's samples carry the same masks as the export's own reader."""
    from regionscribe.training.datasets import Source

    _records, out = shaped_export
    reference = load_conversations(out / "conversations" / "train.json")
    samples = list(Source.parse(f"export-conversations:{out}").samples(stage=2))
    assert len(samples) == len(reference) == 1
    assert len(samples[0].masks) == 3 and all(m is not None for m in samples[0].masks)
    for got, want in zip(samples[0].masks, reference[0].masks):
        assert got.shape == want.shape and (got == want).all()
