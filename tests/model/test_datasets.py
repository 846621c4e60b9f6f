"""The public datasets' readers (model/datasets) on small fixtures written in each dataset's published schema
(../shared/research/datasets.md): the records and GPT4RoI-format conversations they produce, what they skip and
report, clear errors for files in the wrong format, and streaming (memory flat as the file grows)."""
from __future__ import annotations

import json
import pickle
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from regionscribe.model.conversation import IMAGE_PREFIX
from regionscribe.training.datasets import FormatError, Source, jsonstream
from regionscribe.training.datasets.flickr30k import parse_sentence
from regionscribe.model.prompts import BBOX


def jpg(path: Path, size=(64, 48), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def bboxes(sample) -> int:
    return sum(t.question.count(BBOX) for t in sample.turns)


# ------------------------------------------------------------------------------------------------ jsonstream
def test_iter_array_reads_elements_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonstream, "CHUNK", 7)  # every element straddles several reads
    items = [{"id": i, "phrase": f"a \"quoted\" [bracket] {{brace}} \\ {i}", "n": 12345.5 + i} for i in range(50)]
    dump(tmp_path / "list.json", items)
    assert list(jsonstream.iter_array(tmp_path / "list.json")) == items
    coco = {"info": {"nested": [1, {"x": "]}"}]}, "licenses": [], "images": [{"id": 1}, {"id": 2}],
            "annotations": items, "categories": []}
    dump(tmp_path / "coco.json", coco)
    assert jsonstream.top_level_keys(tmp_path / "coco.json") == list(coco)
    assert list(jsonstream.iter_array(tmp_path / "coco.json", "annotations")) == items
    assert list(jsonstream.iter_array(tmp_path / "coco.json", "images")) == coco["images"]
    assert list(jsonstream.iter_array(tmp_path / "coco.json", "absent")) == []


def test_iter_array_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1}, {"id": 2')
    with pytest.raises(FormatError, match="bad.json"):
        list(jsonstream.iter_array(bad))
    dump(tmp_path / "obj.json", {"images": []})
    with pytest.raises(FormatError, match="expected a JSON list"):
        list(jsonstream.iter_array(tmp_path / "obj.json"))


def test_streaming_memory_stays_flat_as_the_file_grows(tmp_path):
    """Peak Python memory while reading a VG-like list of 4 MB and of 16 MB: the same (a few chunks), not 4x."""
    def peak(n: int) -> tuple[int, int]:
        path = tmp_path / f"big{n}.json"
        with open(path, "w") as f:
            f.write("[")
            for i in range(n):
                f.write(("," if i else "") + json.dumps({"id": i, "regions": [
                    {"region_id": i * 10 + k, "phrase": "a green clock on a tall tower", "x": k, "y": k,
                     "width": 20, "height": 30} for k in range(5)]}))
            f.write("]")
        tracemalloc.start()
        count = sum(1 for _ in jsonstream.iter_array(path))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == n
        return top, path.stat().st_size

    small, small_size = peak(7000)
    big, big_size = peak(28000)
    assert big_size > 3.5 * small_size
    assert big < 1.5 * small + (1 << 20), (small, big)
    assert big < 6 * jsonstream.CHUNK, big  # a few read chunks, whatever the file's size


# ---------------------------------------------------------------------------------------------- Visual Genome
@pytest.fixture
def vg(tmp_path) -> Path:
    root = tmp_path / "visual_genome"
    jpg(root / "VG_100K_2" / "1.jpg", (800, 600))
    jpg(root / "VG_100K" / "2.jpg", (400, 300))
    dump(root / "image_data.json", [
        {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "width": 800, "height": 600,
         "coco_id": None, "flickr_id": None},
        {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg", "width": 400, "height": 300},
        {"image_id": 3, "url": "https://cs.stanford.edu/people/rak248/VG_100K/3.jpg", "width": 400, "height": 300}])
    dump(root / "region_descriptions.json", [
        {"id": 1, "regions": [
            {"region_id": 1382, "image_id": 1, "phrase": "the clock is green in colour", "x": 421, "y": 57,
             "width": 82, "height": 139},
            {"region_id": 1383, "image_id": 1, "phrase": "the clock is green in colour", "x": 421, "y": 57,
             "width": 82, "height": 139},
            {"region_id": 1384, "image_id": 1, "phrase": "far above", "x": 10, "y": -904, "width": 50,
             "height": 30},
            {"region_id": 1385, "image_id": 1, "phrase": "  ", "x": 10, "y": 10, "width": 50, "height": 30}]},
        {"image_id": 2, "regions": [{"id": 7, "phrase": "a sidewalk", "x": -5, "y": 200, "width": 300,
                                     "height": 150}]},
        {"id": 3, "regions": [{"region_id": 9, "phrase": "lost", "x": 1, "y": 1, "width": 5, "height": 5}]}])
    dump(root / "attributes.json", [
        {"image_id": 1, "attributes": [
            {"object_id": 1058498, "x": 421, "y": 91, "w": 79, "h": 339, "names": ["clock"],
             "synsets": ["clock.n.01"], "attributes": ["green", "tall"]},
            {"object_id": 5, "x": 0, "y": 0, "w": 10, "h": 10, "names": ["thing"]}]},
        {"image_id": 2, "attributes": []}, {"image_id": 3, "attributes": []}])
    dump(root / "relationships.json", [
        {"image_id": 1, "relationships": [
            {"relationship_id": 15927, "predicate": "ON", "synsets": ["along.r.01"],
             "subject": {"object_id": 1058498, "x": 421, "y": 91, "w": 79, "h": 339, "names": ["clock"]},
             "object": {"object_id": 1058534, "x": 78, "y": 308, "w": 722, "h": 290, "name": "sidewalk",
                        "merged_object_ids": [5046]}}]},
        {"image_id": 2, "relationships": []}, {"image_id": 3, "relationships": []}])
    return root


def test_visual_genome_records_and_report(vg):
    src = Source.parse(f"vg:{vg}")
    records = list(src.records())
    assert [r.key for r in records] == ["vg:1", "vg:2"]
    one = records[0]
    assert one.image == vg / "VG_100K_2" / "1.jpg" and (one.width, one.height) == (800, 600)
    captions = [r for r in one.regions if r.caption]
    assert [(r.caption, r.box) for r in captions] == [("the clock is green in colour", (421, 57, 503, 196))]
    clock = next(r for r in one.regions if r.phrase == "clock")
    assert clock.attributes == ["green", "tall"] and clock.box == (421, 91, 500, 430)
    sidewalk = one.regions.index(next(r for r in one.regions if r.phrase == "sidewalk"))
    assert clock.relations == [(sidewalk, "on")]
    assert one.regions[sidewalk].box == (78, 308, 800, 598)
    assert records[1].regions[0].box == (0, 200, 295, 300)  # negative x clipped
    counts = src.report.counts
    assert counts["duplicate"] == 1 and counts["box_outside"] == 1 and counts["empty_text"] == 1
    assert counts["missing_image"] == 1
    assert src.report.images == 2
    assert "missing_image" in str(src.report) and "VG_100K/3.jpg" in str(src.report)


def test_visual_genome_stage2_conversations(vg):
    samples = list(Source.parse(f"vg:{vg}").samples(stage=2, seed=0))
    first = samples[0]
    assert first.turns[0].question.startswith(IMAGE_PREFIX)
    assert bboxes(first) == len(first.boxes)
    kinds = {t.kind for s in samples for t in s.turns}
    assert {"caption", "attribute", "relation_text"} <= kinds
    answers = {t.answer for s in samples for t in s.turns}
    assert {"the clock is green in colour", "green, tall", "clock on sidewalk"} <= answers
    rel = next(t for s in samples for t in s.turns if t.kind == "relation_text")
    assert rel.question.count("region") == 2
    again = list(Source.parse(f"vg:{vg}").samples(stage=2, seed=0))
    assert [[t.question for t in s.turns] for s in again] == [[t.question for t in s.turns] for s in samples]


def test_visual_genome_files_out_of_order_is_a_format_error(vg):
    data = json.loads((vg / "attributes.json").read_text())
    dump(vg / "attributes.json", data[::-1])
    with pytest.raises(FormatError, match="attributes.json.*not in the same order"):
        list(Source.parse(f"vg:{vg}").records())
    (vg / "region_descriptions.json").write_text('{"not": "a list"}')
    with pytest.raises(FormatError, match="region_descriptions.json"):
        list(Source.parse(f"vg:{vg}").records())


# ------------------------------------------------------------------------------------------------------ COCO
@pytest.fixture
def coco_root(tmp_path) -> Path:
    root = tmp_path / "coco"
    jpg(root / "train2017" / "000000098304.jpg", (640, 424))
    dump(root / "annotations" / "instances_train2017.json", {
        "info": {}, "licenses": [],
        "images": [{"id": 98304, "file_name": "000000098304.jpg", "height": 424, "width": 640},
                   {"id": 5, "file_name": "000000000005.jpg", "height": 10, "width": 10}],
        "annotations": [
            {"id": 3007, "image_id": 98304, "category_id": 18, "bbox": [263.87, 216.88, 21.13, 15.17],
             "area": 197.3, "iscrowd": 0, "segmentation": [[263.87, 216.88, 285, 216.88, 285, 232]]},
            {"id": 3008, "image_id": 98304, "category_id": 1, "bbox": [10, 10, 0.5, 40], "area": 20, "iscrowd": 0},
            {"id": 3009, "image_id": 98304, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000,
             "iscrowd": 1, "segmentation": {"counts": [0, 5], "size": [424, 640]}},
            {"id": 3010, "image_id": 98304, "category_id": 1, "bbox": [700, 10, 50, 40], "area": 2000,
             "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}]})
    return root


def test_coco_instances_stage1(coco_root):
    src = Source.parse(f"coco:{coco_root / 'annotations' / 'instances_train2017.json'}")
    samples = list(src.samples(stage=1))
    assert len(samples) == 1
    s = samples[0]
    assert s.turns[0].question.startswith(IMAGE_PREFIX + "In the conversation below, you simply answer the category")
    assert "Categories Containing person, dog." in s.turns[0].question
    assert [t.answer for t in s.turns] == ["dog"] and s.turns[0].question.endswith(f"region1 {BBOX}")
    assert s.boxes[0] == pytest.approx((263.87, 216.88, 285.0, 232.05))
    assert src.report.counts == {"degenerate_box": 1, "crowd": 1, "box_outside": 1, "missing_image": 1}


def test_coco_file_without_annotations_is_a_format_error(tmp_path):
    path = dump(tmp_path / "captions.json", {"images": [], "categories": []})
    with pytest.raises(FormatError, match="captions.json.*no annotations"):
        list(Source.parse(f"coco:{path}").records())


# ------------------------------------------------------------------------------------------- refer (RefCOCO)
@pytest.fixture
def refer_data(tmp_path) -> Path:
    data = tmp_path / "data"
    jpg(data / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000581857.jpg", (427, 640))
    refs = [{"ref_id": 0, "ann_id": 1719310, "image_id": 581857, "category_id": 1, "split": "train",
             "file_name": "COCO_train2014_000000581857_16.jpg", "sent_ids": [0, 1, 2],
             "sentences": [{"tokens": ["the", "lady", "with", "the", "blue", "shirt"],
                            "raw": "THE LADY WITH THE BLUE SHIRT", "sent_id": 0,
                            "sent": "the lady with the blue shirt"},
                           {"tokens": ["lady"], "raw": "lady", "sent_id": 1, "sent": "lady"},
                           {"tokens": ["woman", "in", "blue"], "raw": "woman in blue", "sent_id": 2,
                            "sent": "woman in blue"}]},
            {"ref_id": 1, "ann_id": 1719310, "image_id": 581857, "category_id": 1, "split": "testA",
             "file_name": "COCO_train2014_000000581857_1.jpg", "sent_ids": [3],
             "sentences": [{"raw": "left lady in blue", "sent_id": 3, "sent": "left lady in blue"}]}]
    for name in ("refcoco", "refcocog"):
        folder = data / name
        folder.mkdir(parents=True)
        pickle.dump(refs, open(folder / ("refs(unc).p" if name == "refcoco" else "refs(umd).p"), "wb"), protocol=2)
        dump(folder / "instances.json", {
            "info": {}, "images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 640,
                                    "width": 427}],
            "licenses": [], "annotations": [{"id": 1719310, "image_id": 581857, "category_id": 1,
                                             "bbox": [103.93, 299.99, 134.22, 177.42], "area": 20000.1,
                                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}]})
    return data


def test_refcoco_one_record_per_sentence_and_split(refer_data):
    src = Source.parse(f"refcoco:{refer_data / 'refcoco'}")
    records = list(src.records())
    assert [r.regions[0].caption for r in records] == ["THE LADY WITH THE BLUE SHIRT", "woman in blue"]
    assert records[0].regions[0].box == pytest.approx((103.93, 299.99, 238.15, 477.41))
    assert src.report.counts == {"short_caption": 1}
    test = Source.parse(f"refcoco:{refer_data / 'refcoco'}", split="test")
    assert [r.regions[0].caption for r in test.records()] == ["left lady in blue"]
    s = next(Source.parse(f"refcoco:{refer_data / 'refcoco'}").samples(stage=1))
    assert "I will provide you with only one region containing only one object" in s.turns[0].question
    g = next(Source.parse(f"refcocog:{refer_data / 'refcocog'}").samples(stage=2))
    assert g.turns[0].kind == "caption" and bboxes(g) == 1


def test_refer_pickle_with_a_class_is_refused(refer_data):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))
    pickle.dump([Evil()], open(refer_data / "refcoco" / "refs(unc).p", "wb"))
    with pytest.raises(FormatError, match=r"refs\(unc\).p.*refusing"):
        list(Source.parse(f"refcoco:{refer_data / 'refcoco'}").records())


# ----------------------------------------------------------------------------------------- Flickr30k Entities
@pytest.fixture
def flickr(tmp_path) -> Path:
    root = tmp_path / "flickr30k_entities"
    jpg(root / "flickr30k-images" / "1000092795.jpg", (333, 500))
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Sentences" / "1000092795.txt").write_text(
        "[/EN#1/people Two young guys] with [/EN#2/bodyparts shaggy hair] look at [/EN#6/bodyparts their hands] "
        "while hanging out in [/EN#10/scene the yard] .\n"
        "[/EN#0/notvisual Nobody] is in [/EN#10/scene the yard] .\n")
    (root / "Annotations" / "1000092795.xml").write_text(
        "<annotation><filename>1000092795.jpg</filename><size><width>333</width><height>500</height>"
        "<depth>3</depth></size>"
        "<object><name>1</name><name>6</name><bndbox><xmin>197</xmin><ymin>110</ymin><xmax>261</xmax>"
        "<ymax>373</ymax></bndbox></object>"
        "<object><name>1</name><bndbox><xmin>21</xmin><ymin>100</ymin><xmax>90</xmax><ymax>300</ymax></bndbox>"
        "</object>"
        "<object><name>2</name><bndbox><xmin>200</xmin><ymin>111</ymin><xmax>240</xmax><ymax>150</ymax></bndbox>"
        "</object>"
        "<object><name>10</name><scene>0</scene><nobndbox>1</nobndbox></object></annotation>")
    (root / "train.txt").write_text("1000092795\n1000000000\n")
    return root


def test_flickr30k_sentences_boxes_and_conversation(flickr):
    caption, phrases = parse_sentence("[/EN#6729/vehicles/scene the subway] stops")
    assert caption == "the subway stops" and phrases == [("6729", 0, 10)]
    src = Source.parse(f"flickr30k:{flickr}")
    records = list(src.records())
    assert len(records) == 1  # the second sentence has no boxed phrase
    r = records[0]
    assert r.caption.startswith("Two young guys with shaggy hair look at their hands")
    assert [(x.phrase, x.box) for x in r.regions] == [
        ("Two young guys", (20, 99, 260, 372)),  # chain 1: union of its two boxes, 0-based
        ("shaggy hair", (199, 110, 239, 149)),
        ("their hands", (196, 109, 260, 372))]
    assert all(r.caption[x.span[0]:x.span[1]] == x.phrase for x in r.regions)
    assert src.report.counts["no_box"] == 3 and src.report.counts["missing_image"] == 1
    s = next(Source.parse(f"flickr30k:{flickr}").samples(stage=2))
    assert s.turns[0].kind == "multi" and s.turns[0].answer == r.caption
    assert s.turns[0].question.count(BBOX) == 3
    assert "region1 <bbox>,region2 <bbox>,region3 <bbox>" in s.turns[0].question
    assert [t.answer for t in s.turns[1:]] == ["Two young guys", "shaggy hair", "their hands"]
    assert "region 2" in s.turns[2].question and BBOX not in s.turns[2].question


# ------------------------------------------------------------------------------------- MDETR and GRiT files
def test_mdetr_refexp_and_flickr_files(tmp_path):
    data = tmp_path / "data"
    jpg(data / "coco_all" / "000000581857.jpg", (427, 640))
    jpg(data / "flickr30k-images" / "1000092795.jpg", (333, 500))
    refexp = dump(data / "mdetr_annotations" / "finetune_refcoco_train.json", {
        "images": [{"id": 0, "original_id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 640,
                    "width": 427, "caption": "the lady with the blue shirt", "dataset_name": "refcoco",
                    "tokens_negative": [[0, 3]]},
                   {"id": 1, "original_id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 640,
                    "width": 427, "caption": "lady", "dataset_name": "refcoco"}],
        "annotations": [{"id": 0, "image_id": 0, "original_id": 1719310, "category_id": 1,
                         "bbox": [103.93, 299.99, 134.22, 177.42], "area": 20000.1, "iscrowd": 0,
                         "tokens_positive": [[4, 8]]},
                        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 50, 50], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}]})
    src = Source.parse(f"mdetr-refcoco:{refexp}")
    records = list(src.records())
    assert [(r.regions[0].caption, r.image.name) for r in records] == [("the lady with the blue shirt",
                                                                         "000000581857.jpg")]
    assert src.report.counts == {"short_caption": 1}
    cap = "Two young guys with shaggy hair look at their hands"
    fl = dump(data / "mdetr_annotations" / "final_flickr_mergedGT_train.json", {
        "images": [{"file_name": "1000092795.jpg", "height": "500", "width": "333", "id": 0, "caption": cap,
                    "dataset_name": "flickr", "tokens_negative": [[0, 3]], "sentence_id": 0,
                    "original_img_id": 1000092795, "tokens_positive_eval": [[[0, 14]]]}],
        "annotations": [{"area": 100, "iscrowd": 0, "image_id": 0, "category_id": 1, "id": 0,
                         "bbox": [20, 99, 240, 273], "tokens_positive": [[0, 14]]},
                        {"area": 100, "iscrowd": 0, "image_id": 0, "category_id": 1, "id": 1,
                         "bbox": [199, 110, 40, 39], "tokens_positive": [[20, 31]]}],
        "categories": [{"supercategory": "object", "id": 1, "name": "object"}]})
    s = next(Source.parse(f"mdetr-flickr30k:{fl}").samples(stage=2))
    assert s.turns[0].answer == cap and [t.answer for t in s.turns[1:]] == ["Two young guys", "shaggy hair"]


def test_grit_vg_train_json(tmp_path):
    root = tmp_path / "visual_genome"
    jpg(root / "vg_all" / "1.jpg", (800, 600))
    path = dump(root / "train.json", {
        "images": [{"id": 1, "file_name": "1.jpg", "height": 600, "width": 800}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [421, 57, 82, 139], "caption": "the clock is green",
                         "area": 11398, "category_id": 1},
                        {"id": 2, "image_id": 1, "bbox": [1, 1, 20, 20], "caption": "", "area": 400,
                         "category_id": 1}],
        "categories": [{"id": 1, "name": "object"}]})
    src = Source.parse(f"grit-vg:{path}:2.5")
    assert src.weight == 2.5
    samples = list(src.samples(stage=2))
    assert [t.answer for s in samples for t in s.turns] == ["the clock is green"]
    assert src.report.counts == {"empty_text": 1}


def test_source_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data source 'imagenet'"):
        Source.parse(f"imagenet:{tmp_path}")
    with pytest.raises(FormatError, match="no such file or folder"):
        Source.parse(f"vg:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="SOURCE:PATH"):
        Source.parse("vg")
    with pytest.raises(FormatError, match="image_data.json"):
        list(Source.parse(f"vg:{tmp_path}").records())


def test_data_command_reports_counts_and_skips(vg, capsys):
    from regionscribe.backend.ops.cli import main

    assert main(["data", f"vg:{vg}", "--json", "--stage", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    report = out[f"vg:{vg}"]
    assert report["images"] == 2 and report["samples"] == 2
    assert report["skipped"] == {"box_outside": 1, "duplicate": 1, "empty_text": 1, "missing_image": 1}
    assert main(["data", f"vg:{vg / 'nowhere'}"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
