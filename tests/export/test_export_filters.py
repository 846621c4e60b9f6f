"""Filters, de-duplication and the split by image, on SQLite and PostgreSQL (see conftest.fill for the data)."""
from __future__ import annotations

import json

import pytest

from regionscribe.backend.export import ExportError, ExportFilters, ExportOptions, export, split_of


def exported_ids(store, tmp_path, name, **filters) -> tuple[set[str], dict]:
    """The Label Studio region ids an export with these filters holds, and its manifest counts."""
    out = tmp_path / name
    manifest = export(store, out, ExportOptions(formats=("hf",), filters=ExportFilters(**filters)))
    import pyarrow.parquet as pq

    table = pq.read_table(out / "hf" / "data" / "train-00000-of-00001.parquet").to_pylist()
    return {r["ls_region_id"] for row in table for r in row["regions"]}, manifest["counts"]


def test_filters_and_dedup(any_store, tmp_path, lab):
    f = lab.fill(any_store)
    cases = [
        ({}, {"r1", "r2", "b1", "b2", "c1", "d1"}),  # s1 repeats r1: dropped; cancelled x1, deleted y1: never
        ({"dedup": False}, {"r1", "r2", "s1", "b1", "b2", "c1", "d1"}),
        ({"projects": (f.p2,)}, {"d1"}),
        ({"projects": (f.p1, f.p2), "ground_truth_only": True}, {"r1", "r2"}),
        ({"annotators": ("7",)}, {"r1", "r2", "c1"}),
        ({"annotators": ("annotator8@example.com",)}, {"s1", "b1", "b2"}),  # r1 not selected: s1 is no duplicate
        ({"annotators": ("9", "ANNOTATOR7@example.com")}, {"r1", "r2", "c1", "d1"}),
        ({"model_versions": ("v1",)}, {"b1", "b2"}),
        ({"model_versions": ("v2", "v1"), "prefilled": "confirmed"}, {"b2", "c1"}),
        ({"prefilled": "any"}, {"b1", "b2", "c1"}),  # regions a human changed or confirmed
        ({"prefilled": "changed"}, {"b1"}),
        ({"prefilled": "confirmed"}, {"b2", "c1"}),
        ({"prefilled": "no"}, {"r1", "r2", "d1"}),  # written without a suggestion
        ({"since": "2024-05-02"}, {"c1"}),  # c1 was annotated a day after the rest (2024-05-01T12:00Z + 1 d)
        ({"until": "2024-05-02T00:00:00Z"}, {"r1", "r2", "b1", "b2", "d1"}),
        ({"since": "2024-05-01T12:00:15Z", "until": "2024-05-01T13:00:00+00:00"}, {"b1", "b2", "d1"}),
        ({"min_caption_length": 4}, {"r1", "r2", "b1", "d1"}),  # "cup" is 3 characters; b2 has no caption
        ({"min_caption_length": 4, "prefilled": "any", "projects": (f.p1,)}, {"b1"}),
    ]
    for i, (filters, want) in enumerate(cases):
        got, counts = exported_ids(any_store, tmp_path, f"e{i}", **filters)
        assert got == want, filters
        assert counts["regions"] == len(want)
    _, counts = exported_ids(any_store, tmp_path, "dates", until="2024-05-02")
    assert counts["skipped"]["date_range"] == 1 and counts["duplicates"] == 1
    _, counts = exported_ids(any_store, tmp_path, "lengths", min_caption_length=4)
    assert counts["skipped"]["caption_length"] == 2
    manifest = json.loads((tmp_path / "e3" / "manifest.json").read_text())
    assert manifest["filters"]["projects"] == [f.p1, f.p2] and manifest["filters"]["ground_truth_only"] is True


def test_dedup_keeps_the_first_and_merges_relations(sqlite_store, tmp_path, lab):
    """Identical regions (same image, same box to the pixel, same text) become one; a relation that pointed at the
    dropped twin points at the kept one; a box 2 px away or another caption is not a duplicate."""
    p, t, image = lab.new_id(), lab.new_id(), "/data/upload/1/dup.png"
    a1, a2 = lab.new_id(), lab.new_id()
    lab.apply(sqlite_store, lab.event(p, t, a1, lab.region("k", 10, 10, 20, 20, caption="a cat", size=(1000, 1000))
                                      + lab.region("n", 10.2, 10, 20, 20, caption="a cat", size=(1000, 1000))
                                      + lab.region("m", 10, 10, 20, 20, caption="a dog", size=(1000, 1000)),
                                      image=image))
    lab.apply(sqlite_store, lab.event(p, t, a2, lab.region("k2", 10.0004, 10, 20, 20, caption="a cat",
                                                           size=(1000, 1000))
                                      + lab.region("z", 60, 60, 10, 10, caption="a mat", size=(1000, 1000))
                                      + [lab.relation("z", "k2", "above")], image=image, updated=5))
    manifest = export(sqlite_store, tmp_path / "out", ExportOptions(formats=("vg",)))
    assert manifest["counts"]["regions"] == 4 and manifest["counts"]["duplicates"] == 1
    vg = tmp_path / "out" / "vg" / "train"
    regions = json.loads((vg / "region_descriptions.json").read_text())[0]["regions"]
    assert sorted(r["ls_region_id"] for r in regions) == ["k", "m", "n", "z"]
    rel = json.loads((vg / "relationships.json").read_text())[0]["relationships"]
    k = next(r["region_id"] for r in regions if r["ls_region_id"] == "k")
    assert [(r["predicate"], r["object"]["object_id"]) for r in rel] == [("above", k)]
    assert not (vg / "attributes.json").exists()  # no attributes in this data


def test_split_by_image_is_disjoint_and_deterministic_per_seed(any_store, tmp_path, lab):
    p = lab.new_id()
    for i in range(60):
        image = f"/data/upload/{p}/img{i}.png"
        lab.apply(any_store, lab.event(p, lab.new_id(), lab.new_id(),
                                       lab.region("a", 10, 10, 20, 20, caption=f"thing {i}", size=(100, 100))
                                       + lab.region("b", 50, 50, 20, 20, caption=f"other {i}", size=(100, 100)),
                                       image=image, updated=i))

    def assignment(name, seed):
        export(any_store, tmp_path / name, ExportOptions(formats=("conversations", "coco"), split=(0.6, 0.2, 0.2),
                                                       seed=seed))
        out = {}
        for split in ("train", "val", "test"):
            samples = json.loads((tmp_path / name / "conversations" / f"{split}.json").read_text())
            coco = json.loads((tmp_path / name / "coco" / f"{split}.json").read_text())
            assert sorted(s["image"] for s in samples) == sorted(i["image_ref"] for i in coco["images"])
            for s in samples:
                assert s["image"] not in out, "an image in two splits"
                assert len(s["boxes"]) == 2  # both regions of an image travel together
                out[s["image"]] = split
        return out

    first = assignment("s1", seed=1)
    assert len(first) == 60 and set(first.values()) == {"train", "val", "test"}
    assert sum(1 for s in first.values() if s == "train") > 20
    assert assignment("s1-again", seed=1) == first
    assert assignment("s2", seed=2) != first
    # stateless: an image's split depends only on the seed and the image, not on what else is exported
    assert split_of("abc", 1, (0.6, 0.2, 0.2)) == split_of("abc", 1, (0.6, 0.2, 0.2))
    with pytest.raises(ExportError, match="bad split"):
        export(any_store, tmp_path / "bad", ExportOptions(formats=("vg",), split=(-1.0, 1.0, 1.0)))


def test_regions_without_a_size_are_skipped_and_counted(sqlite_store, tmp_path, lab):
    """A region whose image is not cached and whose result has no original_width/height has no pixel box: it is
    skipped (counted), and the image's size comes from a region that has one."""
    p, t, image = lab.new_id(), lab.new_id(), "/data/upload/1/nosize.png"
    sizeless = lab.region("a", 10, 10, 20, 20, caption="no size")
    for result in sizeless:
        del result["original_width"], result["original_height"]
    lab.apply(sqlite_store, lab.event(p, t, lab.new_id(), sizeless, image=image))
    lab.apply(sqlite_store, lab.event(p, t, lab.new_id(), lab.region("b", 10, 10, 20, 20, caption="sized",
                                                                     size=(300, 200)), image=image, updated=1))
    manifest = export(sqlite_store, tmp_path / "out", ExportOptions(formats=("coco",)))
    assert manifest["counts"]["skipped"]["no_image_size"] == 1 and manifest["counts"]["regions"] == 1
    coco = json.loads((tmp_path / "out" / "coco" / "train.json").read_text())
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(300, 200)]
    assert coco["annotations"][0]["bbox"] == [30.0, 20.0, 60.0, 40.0]
