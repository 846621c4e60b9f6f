"""The project's own exports (backend `regionscribe export`) read back as training data, so a curated export trains
the next model directly. Formats and their files under an export folder, for a split (train, val, test):

    conversations/<split>.json    ready conversations: yielded as Samples, turns as written
    hf/data/<split>-*.parquet     one row per image, the image embedded (--images copy) or referenced
    vg/<split>/                   Visual Genome files: read by visual_genome.read
    coco/<split>.json             COCO region captions: read by coco.read_captions

Images are under <export>/images (--images copy) or at the absolute paths the export references. Coordinates are
those of the upright image (EXIF rotation applied), as the export writes them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from regionscribe.model.conversation import Turn
from regionscribe.model.prompts import BBOX
from regionscribe.training.datasets.coco import find_image
from regionscribe.training.datasets.jsonstream import iter_array
from regionscribe.training.datasets.records import (
    Deduper, FormatError, ImageRecord, RegionRecord, SkipReport, clean_text, xywh_box,
)


def conversation_units(path: str | Path, image_root: str | Path, report: SkipReport
                       ) -> Iterator[tuple[list, list[Turn], str, Path, list]]:
    """conversations/<split>.json as (boxes, turns, key, image file, segments), turns as written (boxes
    denormalised); segments: the `segmentation` entries, one per box (a polygon, an ellipse's outline or a brush;
    None for a box), empty without them, decoded into masks when the image is read (regionscribe.model.masks)."""
    path, root = Path(path), Path(image_root)
    if not path.is_file():
        raise FormatError(path, "no such file (an export's conversations/<split>.json)")
    for item in iter_array(path):
        key = str(item.get("id") or item.get("image_sha256")) if isinstance(item, dict) else "?"
        try:
            messages = item["conversations"]
            w, h = float(item["width"]), float(item["height"])
            boxes = [(b[0] * w, b[1] * h, b[2] * w, b[3] * h) for b in item["boxes"]]
            segments = list(item.get("segmentation") or [])
            if segments and len(segments) != len(boxes):
                raise ValueError("one segmentation entry per box")
        except (KeyError, TypeError, ValueError, IndexError):
            report.skip("bad_record", key)
            continue
        if not messages or len(messages) % 2 or any(
                not isinstance(m, dict) or m.get("from") != ("human" if i % 2 == 0 else "gpt")
                for i, m in enumerate(messages)):
            report.skip("bad_record", f"{key}: conversations must alternate human, gpt")
            continue
        info = item.get("turns") or [{}] * (len(messages) // 2)
        turns = [Turn(messages[2 * i]["value"], messages[2 * i + 1]["value"], info[i].get("kind") or "caption",
                      tuple(info[i]["candidates"]) if info[i].get("candidates") else None, info[i].get("key"))
                 for i in range(len(messages) // 2)]
        if sum(t.question.count(BBOX) for t in turns) != len(boxes):
            report.skip("bad_record", f"{key}: the <bbox> placeholders do not match the boxes")
            continue
        file = find_image(root, [str(item.get("image") or "")])
        if file is None:
            report.skip("missing_image", str(item.get("image")))
            continue
        report.images += 1
        report.regions += len(boxes)
        yield boxes, turns, key, file, segments


def _parquet_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted((path / "data").glob(f"{split}-*.parquet")) or sorted(path.glob(f"{split}-*.parquet"))
    if not files:
        raise FormatError(path, f"no {split}-*.parquet under it or its data/ folder (an export's hf/ folder)")
    return files


def read_hf(path: str | Path, image_root: str | Path, split: str = "train", report: SkipReport | None = None,
            source: str = "export-hf") -> Iterator[ImageRecord]:
    """The hf export's parquet files, one row group at a time: captions, attributes and relations per region."""
    import pyarrow.parquet as pq

    root = Path(image_root)
    report = report if report is not None else SkipReport(source)
    for file in _parquet_files(Path(path), split):
        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file that is not parquet
            raise FormatError(file, f"not a parquet file: {exc}") from None
        names = set(parquet.schema_arrow.names)
        missing = {"image", "width", "height", "regions"} - names
        if missing:
            raise FormatError(file, f"expected the hf export's columns; missing {', '.join(sorted(missing))}")
        for g in range(parquet.num_row_groups):
            for row in parquet.read_row_group(g).to_pylist():
                record = _hf_record(row, root, report, source)
                if record is not None:
                    yield record


def _hf_record(row: dict, root: Path, report: SkipReport, source: str) -> ImageRecord | None:
    key = f"{source}:{row.get('image_sha256') or row.get('image_id')}"
    w, h = int(row["width"] or 0), int(row["height"] or 0)
    image = row.get("image") or {}
    data = image.get("bytes")
    if not data:
        data = find_image(root, [str(image.get("path") or "")])
        if data is None:
            report.skip("missing_image", str(image.get("path")))
            return None
    regions, index, dedup = [], {}, Deduper()
    for reg in row["regions"] or []:
        box = xywh_box(reg.get("bbox"), w, h)
        if isinstance(box, str):
            report.skip(box, f"region {reg.get('id')}")
            continue
        try:
            attributes = json.loads(reg.get("attributes") or "{}")
        except ValueError:
            attributes = {}
        values = [clean_text(v if isinstance(v, str) else "/".join(v)) for vs in attributes.values()
                  for v in (vs or [])]
        caption = clean_text(reg.get("caption")) or clean_text(reg.get("detailed_caption"))
        labels = [clean_text(x) for x in reg.get("labels") or [] if clean_text(x)]
        if not caption and not values and not reg.get("relations"):
            report.skip("empty_text", f"region {reg.get('id')}")
            continue
        if dedup.seen_before(box, caption, tuple(values)):
            report.skip("duplicate", f"region {reg.get('id')}")
            continue
        index[reg.get("id")] = len(regions)
        regions.append(RegionRecord(box, phrase=labels[0] if labels else None, caption=caption or None,
                                    attributes=[v for v in values if v]))
        regions[-1].relations = [(rel.get("to"), clean_text(rel.get("label"))) for rel in reg.get("relations") or []]
    for reg in regions:  # region ids -> indices, dropping relations to regions that were skipped
        reg.relations = [(index[t], label) for t, label in reg.relations if t in index and label]
    if not regions:
        report.skip("no_regions", key)
        return None
    record = ImageRecord(data, w, h, regions, key)
    report.kept(record)
    return record
