"""The COCO-format files MDETR converted and GPT4RoI trains on: `finetune_refcoco{,+,g}_train.json` and
`final_flickr_mergedGT_train.json`.

RefExp: one `images` entry per sentence (`caption`), its annotation the referred box; image names are refer's
`COCO_train2014_%012d.jpg`, looked up as given and 2017-style (GPT4RoI's flat coco_all folder). Expressions of fewer
than 3 words are skipped, as GPT4RoI does. Flickr30k: one entry per caption (width/height as strings), each
annotation an entity's box with `tokens_positive` character spans into the caption; the first span names the region.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from regionscribe.training.datasets.coco import CocoFile, coco2017_name, locate
from regionscribe.training.datasets.records import (
    Deduper, ImageRecord, RegionRecord, SkipReport, clean_text, xywh_box,
)


def read_refexp(path: str | Path, image_root: str | Path, report: SkipReport | None = None,
                source: str = "refcoco") -> Iterator[ImageRecord]:
    report = report if report is not None else SkipReport(source)
    yield from _read(path, image_root, report, source, flickr=False)


def read_flickr(path: str | Path, image_root: str | Path, report: SkipReport | None = None,
                source: str = "flickr30k") -> Iterator[ImageRecord]:
    report = report if report is not None else SkipReport(source)
    yield from _read(path, image_root, report, source, flickr=True)


def _read(path, image_root, report: SkipReport, source: str, flickr: bool) -> Iterator[ImageRecord]:
    root = Path(image_root)
    with CocoFile(path) as coco:
        for image, anns in coco:
            key = f"{source}:{image.get('id')}"
            caption = image.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                report.skip("empty_text", key)
                continue
            found = locate(image, root, report, alias=coco2017_name)
            if found is None:
                continue
            size, path_ = found
            if not flickr and len(clean_text(caption).split(" ")) < 3:
                report.skip("short_caption", caption)
                continue
            regions, dedup = [], Deduper()
            for ann in anns:
                box = xywh_box(ann.get("bbox"), *size)
                if isinstance(box, str):
                    report.skip(box, f"annotation {ann.get('id')}")
                    continue
                if not flickr:
                    regions.append(RegionRecord(box, caption=clean_text(caption)))
                    break  # one referred object per sentence
                spans = ann.get("tokens_positive") or []
                try:
                    s, e = int(spans[0][0]), int(spans[0][1])
                except (IndexError, TypeError, ValueError):
                    report.skip("empty_text", f"annotation {ann.get('id')} has no tokens_positive")
                    continue
                phrase = clean_text(caption[s:e]) if 0 <= s < e <= len(caption) else ""
                if dedup.admit(box, phrase, report, f"annotation {ann.get('id')}: span {s}:{e}"):
                    regions.append(RegionRecord(box, phrase=phrase, span=(s, e)))
            if not regions:
                report.skip("no_regions", key)
                continue
            record = ImageRecord(path_, size[0], size[1], regions, key, caption=caption if flickr else None)
            report.kept(record)
            yield record
