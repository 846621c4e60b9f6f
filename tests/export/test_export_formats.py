"""Store → export → read back with each format's own reader (the project's training loader, json for Visual Genome,
pycocotools, Hugging Face `datasets`) → the same regions, boxes within 1 px, identical text, unicode intact; on
SQLite and PostgreSQL. Plus the manifest's checksums, and that chunked reading changes nothing."""
from __future__ import annotations

import json
import re

import pytest

from regionscribe.backend.export import ExportOptions, export, verify_manifest
from regionscribe.backend.export.reader import load_conversations

UNI = "a red square — ünïcode 🚀 \"quoted\" {braces}"


def expected(store) -> dict:
    """(annotation id, region id) → record of every region an export should hold (the duplicate s1 is dropped)."""
    return {(r.annotation_id, r.region_id): r for r in store.records()
            if not r.was_cancelled and r.region_id != "s1"}


def close(box, other, tol=1.0) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(box, other, strict=True))


def xyxy(xywh) -> tuple:
    x, y, w, h = xywh
    return (x, y, x + w, y + h)


@pytest.fixture
def exported(any_store, tmp_path, lab):
    filled = lab.fill(any_store)
    out = tmp_path / "out"
    manifest = export(any_store, out, ExportOptions(formats=("conversations", "vg", "coco", "hf"), images="copy"))
    return any_store, filled, out, manifest


def test_conversations_read_back_by_the_training_loader(exported, tokenizer):
    from regionscribe.model.conversation import IMAGE_PREFIX, encode

    store, filled, out, manifest = exported
    want = expected(store)
    samples = load_conversations(out / "conversations" / "train.json")
    raw = json.loads((out / "conversations" / "train.json").read_text(encoding="utf-8"))
    assert len(samples) == len(raw) == 4 and manifest["counts"]["images"] == 4
    seen = {}
    for sample, item in zip(samples, raw):
        assert sample.image.size == (item["width"], item["height"])  # the copied file, decoded as training does
        assert sample.turns[0].question.startswith(IMAGE_PREFIX)
        enc = encode(tokenizer, [(t.question, t.answer) for t in sample.turns], 4, len(sample.boxes))
        assert enc.n_boxes == len(sample.boxes) == len(item["regions"])
        for k, (box, ref) in enumerate(zip(sample.boxes, item["regions"]), start=1):
            rec = want[(ref["annotation_id"], ref["region_id"])]
            assert close(box, rec.pixel_box)
            answers = {t.kind: t.answer for t in sample.turns
                       if re.search(rf"\bregion{k}\b", t.question) and t.kind != "yesno"}
            seen[(ref["annotation_id"], ref["region_id"])] = answers
            assert answers.get("caption") == rec.caption
            assert answers.get("detailed") == rec.detailed_caption
            assert answers.get("relation_text") == rec.relation_text
    assert set(seen) == set(want)
    assert seen[filled.by_caption[UNI]]["caption"] == UNI  # unicode, quotes and braces intact
    yesno = [t for s in samples for t in s.turns if t.kind == "yesno"]
    assert len(yesno) == 1 and yesno[0].key == "left of" and yesno[0].answer == "yes"
    assert re.fullmatch(r"Is region\d+ left of region\d+\?", yesno[0].question)
    attributes = {(t.key, t.answer) for s in samples for t in s.turns if t.kind == "attribute"}
    assert {("color", "red"), ("shape_family", "square"), ("color", "green")} <= attributes


def test_visual_genome_files(exported):
    store, filled, out, manifest = exported
    want = expected(store)
    folder = out / "vg" / "train"
    regions = json.loads((folder / "region_descriptions.json").read_text(encoding="utf-8"))
    images = {i["image_id"]: i for i in json.loads((folder / "image_data.json").read_text(encoding="utf-8"))}
    got = {}
    for entry in regions:
        assert entry["id"] in images
        for r in entry["regions"]:
            assert r["image_id"] == entry["id"]
            got[(r["annotation_id"], r["ls_region_id"])] = r
    captioned = {k: r for k, r in want.items() if r.caption}
    assert set(got) == set(captioned)
    for key, r in got.items():
        assert r["phrase"] == captioned[key].caption
        assert close(xyxy((r["x"], r["y"], r["width"], r["height"])), captioned[key].pixel_box)
    attributes = [a for e in json.loads((folder / "attributes.json").read_text(encoding="utf-8"))
                  for a in e["attributes"]]
    assert sorted(sorted(a["attributes"]) for a in attributes) == [["blue"], ["green"], ["red", "square", "square"]]
    relationships = [r for e in json.loads((folder / "relationships.json").read_text(encoding="utf-8"))
                     for r in e["relationships"]]
    assert len(relationships) == 1 and relationships[0]["predicate"] == "left of"
    subject, obj = relationships[0]["subject"], relationships[0]["object"]
    r1, r2 = want[filled.by_caption[UNI]], want[filled.by_caption["a blue circle"]]
    assert close(xyxy((subject["x"], subject["y"], subject["w"], subject["h"])), r1.pixel_box)
    assert close(xyxy((obj["x"], obj["y"], obj["w"], obj["h"])), r2.pixel_box)


def test_coco_loads_and_scores_with_pycocotools(exported, capsys):
    from pycocotools.coco import COCO

    store, filled, out, manifest = exported
    want = {k: r for k, r in expected(store).items() if r.caption}
    gt = COCO(str(out / "coco" / "train.json"))
    anns = gt.loadAnns(gt.getAnnIds())
    assert {(a["annotation_id"], a["ls_region_id"]) for a in anns} == set(want)
    for a in anns:
        rec = want[(a["annotation_id"], a["ls_region_id"])]
        assert a["caption"] == rec.caption and close(xyxy(a["bbox"]), rec.pixel_box)
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3], abs=0.01) and a["iscrowd"] == 0
        image = gt.loadImgs(a["image_id"])[0]
        assert (out / "images" / image["file_name"]).is_file()
        assert gt.loadCats(a["category_id"])[0]["name"] == rec.labels[0]
    assert {c["name"] for c in gt.loadCats(gt.getCatIds())} == {"Object", "Plant"}
    # a GRiT/GLaMM-style results file: one predicted box + caption per region, scored against the ground truth
    results = [{"image_id": a["image_id"], "bbox": a["bbox"], "caption": a["caption"], "score": 1.0} for a in anns]
    (out.parent / "results.json").write_text(json.dumps(results, ensure_ascii=False), encoding="utf-8")
    res = gt.loadRes(str(out.parent / "results.json"))
    assert len(res.getAnnIds()) == len(anns)
    for image_id in gt.getImgIds():
        truth = {a["caption"] for a in gt.imgToAnns[image_id]}
        predicted = {a["caption"] for a in res.imgToAnns[image_id]}
        assert truth == predicted
    from pycocoevalcap.bleu.bleu import Bleu

    refs = {a["id"]: [a["caption"]] for a in anns}
    hyps = {a["id"]: [a["caption"]] for a in anns}
    score, _ = Bleu(1).compute_score(refs, hyps)
    assert score[0] == pytest.approx(1.0)


def test_hugging_face_parquet_loads_with_datasets(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")

    store, filled, out, manifest = exported
    want = expected(store)
    # the folder as a Hub repository would hold it: data/<split>-00000-of-00001.parquet, splits found by name
    ds = datasets.load_dataset(str(out / "hf"), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert isinstance(ds.features["image"], datasets.Image) and len(ds) == 4
    got = {}
    for row in ds:
        assert row["image"].size == (row["width"], row["height"])  # embedded bytes decode
        for r in row["regions"]:
            got[(r["annotation_id"], r["ls_region_id"])] = r
    assert set(got) == set(want)
    for key, r in got.items():
        rec = want[key]
        assert close(xyxy(r["bbox"]), rec.pixel_box)
        assert (r["caption"], r["detailed_caption"], r["relation_text"]) == (rec.caption, rec.detailed_caption,
                                                                            rec.relation_text)
        assert json.loads(r["attributes"]) == rec.attributes and r["changed"] == rec.changed
    r1 = got[filled.by_caption[UNI]]
    assert r1["caption"] == UNI and [x["label"] for x in r1["relations"]] == ["left of"]
    assert r1["relations"][0]["to"] == got[filled.by_caption["a blue circle"]]["id"]


def test_manifest_checksums_verify_and_catch_changes(exported):
    store, filled, out, manifest = exported
    written = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert verify_manifest(out) == []
    assert set(written["files"]) >= {"conversations/train.json", "coco/train.json", "vg/train/image_data.json",
                                     "hf/data/train-00000-of-00001.parquet"}
    assert sum(1 for name in written["files"] if name.startswith("images/")) == 4
    assert written["counts"]["regions"] == 6 and written["counts"]["duplicates"] == 1
    assert written["store"]["dialect"] == store.dialect and str(filled.p1) in written["store"]["projects"]
    assert len(written["selection_id"]) == 24 and written["filters"]["annotations_only"] is True
    with open(out / "coco" / "train.json", "a", encoding="utf-8") as f:
        f.write(" ")
    (out / "stray.txt").write_text("x")
    (out / "images" / next(iter((out / "images").iterdir())).name).unlink()
    problems = verify_manifest(out)
    assert any(p.startswith("coco/train.json: checksum") for p in problems)
    assert "stray.txt: not in the manifest" in problems
    assert any(p.startswith("images/") and p.endswith("missing") for p in problems)


def test_reference_mode_and_chunked_reading_give_the_same_data(sqlite_store, tmp_path, lab):
    lab.fill(sqlite_store)
    options = dict(formats=("conversations", "vg", "coco", "hf"), images="reference")
    a = export(sqlite_store, tmp_path / "a", ExportOptions(**options, chunk_size=1000))
    b = export(sqlite_store, tmp_path / "b", ExportOptions(**options, chunk_size=1))
    files_a = json.loads((tmp_path / "a" / "manifest.json").read_text())["files"]
    files_b = json.loads((tmp_path / "b" / "manifest.json").read_text())["files"]
    assert not (tmp_path / "a" / "images").exists()
    assert files_a == files_b  # the same selection gives byte-identical data files, whatever the chunk size
    assert a["selection_id"] == b["selection_id"] and a["counts"] == b["counts"]
    sample = json.loads((tmp_path / "a" / "conversations" / "train.json").read_text())[0]
    assert sample["image"].startswith(str(sqlite_store.images_dir))  # referenced: the cached file's path
    samples = load_conversations(tmp_path / "a" / "conversations" / "train.json")  # absolute paths load too
    assert samples[0].image.size == (sample["width"], sample["height"])
