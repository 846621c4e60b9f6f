"""Visual Genome v1.2 from its published JSON files (and the project's own `vg` export, which writes the same files).

    <root>/image_data.json           [{"image_id", "url", "width", "height", ...}]      one element per image
    <root>/region_descriptions.json  [{"id"|"image_id", "regions": [{"region_id"|"id", "phrase", "x", "y",
                                       "width", "height"}]}]
    <root>/attributes.json           [{"image_id", "attributes": [{"object_id", "x", "y", "w", "h", "names",
                                       "attributes"?}]}]                                  optional
    <root>/relationships.json        [{"image_id", "relationships": [{"predicate", "subject": {...}, "object":
                                       {...}}]}]                                           optional (name or names)

Every file lists the images in image_data.json's order; they are read in lockstep, one image at a time, and a
mismatch of ids is a FormatError. Images are found under `image_root` (default <root>) by the folder in their URL
(VG_100K/ or VG_100K_2/), by a `file_name` field (the project's export), or flat as <image_id>.jpg (GPT4RoI's vg_all).
Boxes are clipped to the image; the few with negative or far-outside coordinates are skipped as `box_outside`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from regionscribe.training.datasets.coco import find_image
from regionscribe.training.datasets.jsonstream import iter_array
from regionscribe.training.datasets.records import (
    Deduper, FormatError, ImageRecord, RegionRecord, SkipReport, clean_text, xywh_box,
)

URL = re.compile(r"/(VG_100K(?:_2)?)/([0-9]+\.jpg)$")


def _image_id(element: dict, path: Path):
    if not isinstance(element, dict):
        raise FormatError(path, f"expected one object per image, found {str(element)[:80]}")
    key = element.get("image_id", element.get("id"))
    if key is None:
        raise FormatError(path, "an element has neither 'image_id' nor 'id'")
    return key


def _names(obj: dict) -> str:
    names = obj.get("names")
    if isinstance(names, list) and names:
        return clean_text(names[0])
    return clean_text(obj.get("name"))


def _xywh(obj: dict) -> list:
    return [obj.get("x"), obj.get("y"), obj.get("w", obj.get("width")), obj.get("h", obj.get("height"))]


def read(root: str | Path, image_root: str | Path | None = None, report: SkipReport | None = None,
         source: str = "vg") -> Iterator[ImageRecord]:
    root = Path(root)
    report = report if report is not None else SkipReport(source)
    images_dir = Path(image_root) if image_root is not None else root
    for name in ("image_data.json", "region_descriptions.json"):
        if not (root / name).is_file():
            raise FormatError(root / name, "missing: a Visual Genome folder needs image_data.json and "
                                           "region_descriptions.json (attributes.json, relationships.json optional)")
    streams = {name: iter(iter_array(root / f"{name}.json")) for name in ("region_descriptions", "attributes",
                                                                          "relationships")
               if (root / f"{name}.json").is_file()}
    for info in iter_array(root / "image_data.json"):
        image_id = _image_id(info, root / "image_data.json")
        parts = {}
        for name, stream in streams.items():
            element = next(stream, None)
            if element is None:
                raise FormatError(root / f"{name}.json", f"ends before image {image_id} of image_data.json")
            if _image_id(element, root / f"{name}.json") != image_id:
                raise FormatError(root / f"{name}.json", f"image {_image_id(element, root / name)} where "
                                                         f"image_data.json has {image_id}: the files are not in "
                                                         "the same order")
            parts[name] = element
        record = _record(info, image_id, parts, images_dir, report, source)
        if record is not None:
            yield record
    for name, stream in streams.items():
        if next(stream, None) is not None:
            raise FormatError(root / f"{name}.json", "has more images than image_data.json")


def _record(info: dict, image_id, parts: dict, images_dir: Path, report: SkipReport, source: str
            ) -> ImageRecord | None:
    key = f"{source}:{image_id}"
    try:
        width, height = int(info["width"]), int(info["height"])
    except (KeyError, TypeError, ValueError):
        report.skip("bad_record", f"image {image_id} has no width/height")
        return None
    names = []
    if info.get("file_name"):
        names.append(str(info["file_name"]))
    m = URL.search(str(info.get("url") or ""))
    if m:
        names += [f"{m.group(1)}/{m.group(2)}", m.group(2)]
    names.append(f"{image_id}.jpg")
    path = find_image(images_dir, names)
    if path is None:
        report.skip("missing_image", str(images_dir / names[0]))
        return None
    regions: list[RegionRecord] = []
    dedup = Deduper()
    for reg in (parts.get("region_descriptions") or {}).get("regions") or []:
        box = xywh_box([reg.get("x"), reg.get("y"), reg.get("width"), reg.get("height")], width, height)
        phrase = clean_text(reg.get("phrase"))
        if dedup.admit(box, phrase, report, f"region {reg.get('region_id', reg.get('id'))}"):
            regions.append(RegionRecord(box, caption=phrase))
    objects: dict = {}  # object_id -> index in regions

    def add_object(obj: dict) -> int | None:
        oid = obj.get("object_id")
        if oid in objects:
            return objects[oid]
        box = xywh_box(_xywh(obj), width, height)
        if isinstance(box, str):
            report.skip(box, f"object {oid}")
            return None
        name = _names(obj)
        if not name:
            report.skip("empty_text", f"object {oid}")
            return None
        regions.append(RegionRecord(box, phrase=name))
        objects[oid] = len(regions) - 1
        return objects[oid]

    for obj in (parts.get("attributes") or {}).get("attributes") or []:
        values = [clean_text(a) for a in obj.get("attributes") or [] if clean_text(a)]
        if not values:
            continue  # VG objects without attributes: nothing to teach here
        i = add_object(obj)
        if i is not None:
            regions[i].attributes = list(dict.fromkeys(regions[i].attributes + values))
    for rel in (parts.get("relationships") or {}).get("relationships") or []:
        predicate = clean_text(rel.get("predicate")).lower()
        subject, obj = rel.get("subject"), rel.get("object")
        if not predicate or not isinstance(subject, dict) or not isinstance(obj, dict):
            report.skip("empty_text" if isinstance(subject, dict) and isinstance(obj, dict) else "bad_record",
                        f"relationship {rel.get('relationship_id')}")
            continue
        a, b = add_object(subject), add_object(obj)
        if a is None or b is None or a == b:
            continue
        if (b, predicate) in regions[a].relations:
            report.skip("duplicate", f"relationship {rel.get('relationship_id')}")
            continue
        regions[a].relations.append((b, predicate))
    if not regions:
        report.skip("no_regions", key)
        return None
    record = ImageRecord(path, width, height, regions, key)
    report.kept(record)
    return record
