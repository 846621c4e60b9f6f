"""Flickr30k Entities from its published files (BryanPlummer/flickr30k_entities).

    <root>/Sentences/<id>.txt     five captions, phrases marked `[/EN#<chain>/<type>... words]`
    <root>/Annotations/<id>.xml   PASCAL-VOC-like: <size>, <object> with one or more <name> chain ids and a 1-based
                                  xyxy <bndbox>, or <nobndbox>1</nobndbox> for a phrase with no box
    <root>/<split>.txt            the image ids of a split (train.txt, val.txt, test.txt)
    <image_root>/<id>.jpg         flickr30k-images/, distributed separately

Each caption of each image becomes one record: the caption without markup, and one region per marked phrase whose
chain has boxes. A chain with several boxes gets their union (MDETR's "mergedGT", which GPT4RoI trains on). Boxes
are made 0-based as the official utility does. Chain 0 ("notvisual") and chains without boxes are skipped as
`no_box`. Files are read one image at a time.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from regionscribe.training.datasets.records import (
    Deduper, FormatError, ImageRecord, RegionRecord, SkipReport, clean_text, clip_box,
)


def parse_sentence(line: str) -> tuple[str, list[tuple[str, int, int]]]:
    """A marked-up caption -> (plain caption, [(chain id, start, end) of each phrase in it]).

    Splits on whitespace as the official get_sentence_data does: a phrase opens at a token starting with "[" (whose
    first token is the "/EN#..." tag) and closes at a token ending with "]"."""
    words: list[str] = []
    phrases = []
    chain, start = None, None
    for token in line.split():
        if chain is None and token.startswith("[/EN#"):
            chain = token[len("[/EN#"):].split("/")[0]
            start = len(" ".join(words)) + (1 if words else 0)
            continue
        closing = chain is not None and token.endswith("]")
        words.append(token[:-1] if closing else token)
        if closing:
            phrases.append((chain, start, len(" ".join(words))))
            chain = None
    return " ".join(words), phrases


def parse_boxes(path: Path) -> tuple[tuple[int, int], dict[str, list[tuple[float, float, float, float]]]]:
    """(width, height) and chain id -> 0-based xyxy boxes from an Annotations/<id>.xml."""
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise FormatError(path, f"expected a Flickr30k Entities annotation with <size><width><height>: {exc}") from None
    chains: dict[str, list] = {}
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            xyxy = tuple(float(box.findtext(k)) - 1 for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise FormatError(path, "a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
        for name in obj.findall("name"):
            chains.setdefault((name.text or "").strip(), []).append(xyxy)
    return (width, height), chains


def read(root: str | Path, split: str | None = "train", image_root: str | Path | None = None,
         report: SkipReport | None = None, source: str = "flickr30k") -> Iterator[ImageRecord]:
    root = Path(root)
    report = report if report is not None else SkipReport(source)
    images = Path(image_root) if image_root is not None else root / "flickr30k-images"
    for sub in ("Sentences", "Annotations"):
        if not (root / sub).is_dir():
            raise FormatError(root / sub, "missing: a Flickr30k Entities folder has Sentences/ and Annotations/")
    if split is not None:
        split_file = root / f"{split}.txt"
        if not split_file.is_file():
            raise FormatError(split_file, f"missing: the image ids of split {split!r}")
        ids = (line.strip() for line in open(split_file, encoding="utf-8"))
    else:
        ids = (p.stem for p in sorted((root / "Sentences").glob("*.txt")))
    for image_id in ids:
        if not image_id:
            continue
        path = images / f"{image_id}.jpg"
        if not path.is_file():
            report.skip("missing_image", str(path))
            continue
        sentences, xml = root / "Sentences" / f"{image_id}.txt", root / "Annotations" / f"{image_id}.xml"
        if not sentences.is_file() or not xml.is_file():
            missing = "Sentences" if not sentences.is_file() else "Annotations"
            report.skip("bad_record", f"{image_id}: no {missing} file")
            continue
        (width, height), chains = parse_boxes(xml)
        for n, line in enumerate(sentences.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            caption, phrases = parse_sentence(line)
            regions, dedup = [], Deduper()
            for chain, s, e in phrases:
                boxes = chains.get(chain) if chain != "0" else None
                if not boxes:
                    report.skip("no_box", f"{image_id}: {caption[s:e]!r}")
                    continue
                union = clip_box(min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                                 max(b[3] for b in boxes), width, height)
                phrase = clean_text(caption[s:e])
                if dedup.admit(union, phrase, report, f"{image_id}: chain {chain} {phrase!r}"):
                    regions.append(RegionRecord(union, phrase=phrase, span=(s, e)))
            if not regions:
                report.skip("no_regions", f"{source}:{image_id}#{n}")
                continue
            record = ImageRecord(path, width, height, regions, f"{source}:{image_id}#{n}", caption=caption)
            report.kept(record)
            yield record
