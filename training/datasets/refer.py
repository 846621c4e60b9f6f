"""RefCOCO, RefCOCO+ and RefCOCOg from the `refer` toolkit's files: `refs(<split_by>).p` with COCO `instances.json`.

    data/refcoco/instances.json  refs(unc).p  refs(google).p      data/refcocog/  instances.json  refs(umd).p ...
    data/images/mscoco/images/train2014/COCO_train2014_%012d.jpg   (or 2017-style %012d.jpg in one folder)

Each ref names one COCO annotation (`ann_id`: the box, xywh, from instances.json) and carries several sentences;
every sentence becomes one record with that one region (as MDETR's converted files and GPT4RoI do), and expressions
of fewer than 3 words are skipped (GPT4RoI's rule). The pickle has no box. The pickles are Python 2 pickles of
plain lists and dicts: they are loaded whole (tens of MB) with an unpickler that refuses any class, so a tampered
file cannot run code. `split` picks refs as refer.py does: "test" matches every split containing it, "testA" one.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterator

from regionscribe.training.datasets.coco import CocoFile, coco2017_name, locate
from regionscribe.training.datasets.records import (
    FormatError, ImageRecord, RegionRecord, SkipReport, clean_text, xywh_box,
)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a refs pickle holds only lists, dicts and strings")


def load_refs(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "no such file (refer's refs(<split_by>).p)")
    try:
        with open(path, "rb") as f:
            refs = _PlainUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise FormatError(path, f"not a refer refs pickle: {exc}") from None
    if not isinstance(refs, list) or any(not isinstance(r, dict) for r in refs[:1]):
        raise FormatError(path, "expected a list of ref dicts")
    return refs


def _in_split(ref_split: str, split: str | None) -> bool:
    if split is None:
        return True
    if split in ("testA", "testB", "testC"):
        return ref_split == split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


def read(refs_path: str | Path, instances_path: str | Path, image_root: str | Path, split: str | None = "train",
         report: SkipReport | None = None, source: str = "refcoco") -> Iterator[ImageRecord]:
    report = report if report is not None else SkipReport(source)
    root = Path(image_root)
    by_image: dict = {}
    for ref in load_refs(refs_path):
        if "image_id" not in ref or "ann_id" not in ref:
            report.skip("bad_record", f"ref {ref.get('ref_id')}")
            continue
        if _in_split(str(ref.get("split")), split):
            by_image.setdefault(ref["image_id"], []).append(ref)
    with CocoFile(instances_path, require=("images", "annotations")) as coco:
        for image, anns in coco:
            refs = by_image.get(image["id"])
            if not refs:
                continue
            found = locate(image, root, report, alias=coco2017_name)
            if found is None:
                continue
            size, path = found
            boxes = {a.get("id"): a.get("bbox") for a in anns}
            for ref in refs:
                if ref["ann_id"] not in boxes:
                    report.skip("bad_record", f"ref {ref.get('ref_id')}: annotation {ref['ann_id']} not in "
                                              f"{Path(instances_path).name}")
                    continue
                box = xywh_box(boxes[ref["ann_id"]], *size)
                if isinstance(box, str):
                    report.skip(box, f"ref {ref.get('ref_id')}")
                    continue
                seen = set()
                for sent in ref.get("sentences") or []:
                    text = clean_text(sent.get("raw") or sent.get("sent")) if isinstance(sent, dict) else ""
                    if not text:
                        report.skip("empty_text", f"ref {ref.get('ref_id')}")
                        continue
                    if len(text.split(" ")) < 3:
                        report.skip("short_caption", text)
                        continue
                    if text.lower() in seen:
                        report.skip("duplicate", f"ref {ref.get('ref_id')}: {text}")
                        continue
                    seen.add(text.lower())
                    record = ImageRecord(path, size[0], size[1], [RegionRecord(box, caption=text)],
                                         f"{source}:{ref.get('ref_id')}:{sent.get('sent_id')}")
                    report.kept(record)
                    yield record
