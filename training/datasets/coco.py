"""COCO-format files: COCO instances (category phrases, stage 1), GRiT's Visual Genome train.json and the project's own
`coco` export (a caption per annotation, stage 2).

`CocoFile` streams a COCO-format JSON (see jsonstream) into a temporary SQLite file and hands out each image with its
annotations, in the order of the file's `images`, so memory does not grow with the number of annotations. MDETR's
converted RefCOCO and Flickr30k files use it too (mdetr.py).
"""
from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from regionscribe.training.datasets.jsonstream import iter_array, top_level_keys
from regionscribe.training.datasets.records import (
    Deduper, FormatError, ImageRecord, RegionRecord, SkipReport, clean_text, xywh_box,
)


class CocoFile:
    """A COCO-format file opened for streaming: `categories` in memory (small), images and annotations spilled to
    SQLite. Use as a context manager, or call close()."""

    def __init__(self, path: str | Path, require: tuple[str, ...] = ("images", "annotations")):
        self.path = Path(path)
        if not self.path.is_file():
            raise FormatError(self.path, "no such file")
        keys = top_level_keys(self.path)
        missing = [k for k in require if k not in keys]
        if missing:
            raise FormatError(self.path, f"expected a COCO-format JSON object with {', '.join(require)}; "
                                         f"it has no {', '.join(missing)} (keys: {', '.join(keys) or 'none'})")
        self.categories = {}
        for c in iter_array(self.path, "categories"):
            if isinstance(c, dict) and "id" in c:
                self.categories[c["id"]] = c
        self._dir = tempfile.TemporaryDirectory(prefix="regionscribe-coco-")
        self.db = sqlite3.connect(Path(self._dir.name) / "coco.sqlite")
        self.db.execute("CREATE TABLE images (seq INTEGER PRIMARY KEY, id TEXT, json TEXT)")
        self.db.execute("CREATE TABLE annotations (image_id TEXT, json TEXT)")
        self._spill("images", "id", "INSERT INTO images (id, json) VALUES (?, ?)")
        self._spill("annotations", "image_id", "INSERT INTO annotations VALUES (?, ?)")
        self.db.execute("CREATE INDEX annotations_image ON annotations (image_id)")
        self.db.commit()

    def _spill(self, key: str, id_field: str, sql: str, chunk: int = 10000) -> None:
        """Stream the file's `key` list into SQLite, `chunk` rows at a time, keyed by each entry's `id_field`."""
        batch = []
        for entry in iter_array(self.path, key):
            if not isinstance(entry, dict) or id_field not in entry:
                raise FormatError(self.path, f"an {key!r} entry without an {id_field}: {str(entry)[:80]}")
            batch.append((json.dumps(entry[id_field]), json.dumps(entry)))
            if len(batch) == chunk:
                self.db.executemany(sql, batch)
                batch = []
        self.db.executemany(sql, batch)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def __iter__(self) -> Iterator[tuple[dict, list[dict]]]:
        """(image, its annotations in file order) for every image, in file order."""
        images = self.db.cursor()
        for key, text in images.execute("SELECT id, json FROM images ORDER BY seq"):
            anns = [json.loads(a) for (a,) in
                    self.db.execute("SELECT json FROM annotations WHERE image_id = ? ORDER BY rowid", (key,))]
            yield json.loads(text), anns

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def __enter__(self) -> "CocoFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_size(image: dict) -> tuple[int, int] | None:
    """(width, height) of a COCO image entry; MDETR's Flickr file writes them as strings."""
    try:
        w, h = int(float(image["width"])), int(float(image["height"]))
    except (KeyError, TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def find_image(root: Path, names: list[str]) -> Path | None:
    for name in names:
        if name:
            p = Path(name) if Path(name).is_absolute() else root / name
            if p.is_file():
                return p
    return None


def coco2017_name(name: str) -> str:
    """refer's and MDETR's `COCO_train2014_000000581857.jpg` as GPT4RoI's flat coco_all folder names it."""
    return name.split("_")[-1]


def locate(image: dict, root: Path, report: SkipReport, alias: Callable[[str], str] = lambda name: name
           ) -> tuple[tuple[int, int], Path] | None:
    """A COCO image entry's (width, height) and its file under `root`, found by its file_name or by
    alias(file_name); None, with the skip reported, when it has no size (bad_record) or no file (missing_image)."""
    size = image_size(image)
    if size is None:
        report.skip("bad_record", f"image {image.get('id')} has no width/height")
        return None
    name = str(image.get("file_name") or "")
    path = find_image(root, [name, alias(name)])
    if path is None:
        report.skip("missing_image", str(root / name))
        return None
    return size, path


def read_instances(path: str | Path, image_root: str | Path, report: SkipReport | None = None,
                   source: str = "coco") -> Iterator[ImageRecord]:
    """COCO instances_*.json: each non-crowd object's category name as its phrase (GPT4RoI's CocoDet, stage 1)."""
    report = report if report is not None else SkipReport(source)
    root = Path(image_root)
    with CocoFile(path, require=("images", "annotations", "categories")) as coco:
        names = tuple(dict.fromkeys(clean_text(c.get("name")) for c in coco.categories.values() if c.get("name")))
        for image, anns in coco:
            record = _record(image, anns, root, report, source, lambda a: _category(coco, a), "phrase")
            if record is not None:
                record.choices = names
                yield record


def read_captions(path: str | Path, image_root: str | Path, report: SkipReport | None = None,
                  source: str = "grit-vg") -> Iterator[ImageRecord]:
    """A COCO-format file with a `caption` per annotation: GRiT's VG train.json (category "object") and the project's
    `coco` export. Each annotation is one region caption (stage 2)."""
    report = report if report is not None else SkipReport(source)
    root = Path(image_root)
    with CocoFile(path) as coco:
        for image, anns in coco:
            record = _record(image, anns, root, report, source, lambda a: clean_text(a.get("caption")), "caption")
            if record is not None:
                yield record


def _category(coco: CocoFile, ann: dict) -> str:
    cat = coco.categories.get(ann.get("category_id"))
    return clean_text(cat.get("name")) if cat else ""


def _record(image: dict, anns: list[dict], root: Path, report: SkipReport, source: str, text_of, field: str
            ) -> ImageRecord | None:
    key = f"{source}:{image.get('id')}"
    found = locate(image, root, report, alias=lambda name: name.split("/")[-1])
    if found is None:
        return None
    size, path = found
    regions, dedup = [], Deduper()
    for ann in anns:
        if ann.get("iscrowd"):
            report.skip("crowd", f"annotation {ann.get('id')}")
            continue
        box = xywh_box(ann.get("bbox"), *size)
        text = "" if isinstance(box, str) else text_of(ann)
        if dedup.admit(box, text, report, f"annotation {ann.get('id')} {ann.get('bbox')}"):
            regions.append(RegionRecord(box, **{field: text}))
    if not regions:
        report.skip("no_regions", key)
        return None
    record = ImageRecord(path, size[0], size[1], regions, key)
    report.kept(record)
    return record
