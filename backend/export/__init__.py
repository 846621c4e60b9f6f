"""Curated region-text datasets out of the feedback store, for training elsewhere (`regionscribe export`, POST /export).

    regionscribe export --format conversations,coco --out exports/v1 --project 3 --split 0.8,0.1,0.1 --seed 0

Formats (one sub-folder each; every format gets one file set per split: train, val, test):

    conversations/<split>.json   GPT4RoI/LLaVA conversations: one sample per image, `regionK <bbox>` placeholders,
                                 "boxes" normalised xyxy in [0, 1], "conversations": [{"from": "human"|"gpt", ...}];
                                 "segmentation" (when some region is not a box), one per box: null (a box),
                                 {"polygon": [[x, y], ...] normalised} (a polygon; an ellipse's outline) or
                                 {"rle": COCO RLE} (a brush mask); read back into regionscribe.model.conversation.Sample
                                 (boxes, turns, masks) by `load_conversations`
    vg/<split>/                  Visual Genome: region_descriptions.json, image_data.json, and attributes.json /
                                 relationships.json when the exported regions have attributes / relations
    coco/<split>.json            COCO region captions (images, annotations with bbox [x, y, w, h] + caption,
                                 categories from the region labels; a polygon, ellipse or brush region adds
                                 `segmentation`: pixel polygons, or RLE via pycocotools for a brush mask, its `area`
                                 the mask's): pycocotools.coco.COCO and COCO.loadRes
    hf/data/<split>-00000-of-00001.parquet
                                 a Hugging Face `datasets` parquet dataset, one row per image, an `Image` column
                                 (embedded bytes with --images copy) and a list of regions (with `shape`, `polygon`
                                 pixel points, and a `mask` Image column: the region's 1-bit mask, null for boxes);
                                 `load_dataset("parquet")`
    images/                      with --images copy: the cached image files, <sha256>.<ext>
    manifest.json                counts, filters, split, store state and selection id, sha256 of every file

What is exported. The store holds annotations only: the region records built from Label Studio's annotation webhooks
(what an annotator submitted, possibly after accepting or editing a model suggestion). The model's raw predictions
live apart (the `suggestions` table) and are never exported. Deleted and cancelled (skipped) annotations and regions
without any text or attribute are left out, as for training. `changed` tells what the annotator did with a
pre-filled region (True: edited the suggestion, False: confirmed it, None: no suggestion, written from scratch).

Coordinates are pixels of the upright image (EXIF rotation applied, as PIL's ImageOps.exif_transpose gives it);
`width`/`height` are that image's size (Label Studio's original size while the image is not cached yet).

Streaming. Records are read in one read-only transaction (a consistent snapshot) through a server-side cursor on
PostgreSQL and a stepped statement on SQLite, ordered by image, `chunk_size` rows at a time; each image's regions
are turned into output and written at once (JSON arrays are written incrementally, parquet in row groups), so
memory does not grow with the dataset. Everything is written into a hidden folder beside `out` and renamed into
place at the end: a failed export leaves nothing behind (a killed process leaves its `.<out>.partial-*` folder).

Split. By image: sha256("<seed>:<image sha256>") as a uniform number against the cumulative fractions, so an image
never lands in two splits, the same seed gives the same split, and an image keeps its split whatever else is
exported (split sizes are therefore close to, not exactly, the fractions). An image not cached yet is keyed by its
reference until it is.

HTTP. POST /export takes the same options as JSON and writes under <DATA_DIR>/exports/<name> only (see
`export_to_data_dir`); the dataset never travels in the answer.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from regionscribe.backend.core.settings import redacted_url
from regionscribe.backend.store import Store, parse_time_us
from regionscribe.model.prompts import ATTRIBUTE_Q, BBOX, CAPTION_Q, DETAILED_Q, IMAGE_PREFIX, RELATION_TEXT_Q, YESNO_Q

FORMATS = ("conversations", "vg", "coco", "hf")
SPLITS = ("train", "val", "test")
IMAGE_MODES = ("reference", "copy")
PREFILLED = ("any", "changed", "confirmed", "no")
MANIFEST_VERSION = 1



def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class ExportError(ValueError):
    """The export cannot be made as asked (bad option, empty selection, missing images); nothing was written."""


# ------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ExportFilters:
    projects: tuple[int, ...] = ()  # project ids (any of them); empty: every project
    annotators: tuple[str, ...] = ()  # Label Studio user ids or e-mail addresses (any of them)
    model_versions: tuple[str, ...] = ()  # only regions pre-filled by one of these model versions
    prefilled: str | None = None  # "any": changed or confirmed; "changed"; "confirmed"; "no": written from scratch
    since: str | None = None  # the annotation's updated_at (else created_at) >= since (ISO 8601 date or time, UTC)
    until: str | None = None  # ... < until
    min_caption_length: int = 0  # characters of the stripped caption; > 0 drops regions without a caption
    ground_truth_only: bool = False
    dedup: bool = True  # drop identical regions: same image, same box rounded to whole pixels, same text


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = ("conversations",)
    images: str = "reference"  # "copy": files into images/; "reference": paths to the cache (or Label Studio refs)
    split: tuple[float, float, float] = (1.0, 0.0, 0.0)  # train, val, test fractions (by image)
    seed: int = 0
    filters: ExportFilters = field(default_factory=ExportFilters)
    overwrite: bool = False
    chunk_size: int = 1000


def parse_formats(value: str | Iterable[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in FORMATS:
            raise ExportError(f"unknown format {name!r}: choose from {', '.join(FORMATS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ExportError(f"no format given: choose from {', '.join(FORMATS)}")
    return tuple(out)


def parse_split(value: str | Iterable[float]) -> tuple[float, float, float]:
    """"0.8,0.1,0.1" (train, val, test; missing parts are 0) → fractions that sum to 1."""
    try:
        parts = [float(p) for p in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise ExportError(f"bad split {value!r}: write train,val,test fractions, e.g. 0.8,0.1,0.1") from None
    if not 1 <= len(parts) <= 3 or any(not math.isfinite(p) or p < 0 for p in parts) or sum(parts) <= 0:
        raise ExportError(f"bad split {value!r}: one to three non-negative fractions (train,val,test), not all 0")
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def _check_time(name: str, value: str | None) -> int | None:
    if value in (None, ""):
        return None
    us = parse_time_us(value) if isinstance(value, str) else None
    if us is None:
        raise ExportError(f"bad {name} {value!r}: use an ISO 8601 date or time, e.g. 2024-05-01 or "
                          f"2024-05-01T12:00:00Z")
    return us


def validate(options: ExportOptions) -> None:
    parse_formats(options.formats)
    if options.images not in IMAGE_MODES:
        raise ExportError(f"bad images mode {options.images!r}: choose from {', '.join(IMAGE_MODES)}")
    parse_split(options.split)
    f = options.filters
    if f.prefilled not in (None, *PREFILLED):
        raise ExportError(f"bad prefilled filter {f.prefilled!r}: choose from {', '.join(PREFILLED)}")
    if f.min_caption_length < 0:
        raise ExportError("min caption length must be >= 0")
    since, until = _check_time("since", f.since), _check_time("until", f.until)
    if since is not None and until is not None and since >= until:
        raise ExportError(f"empty date range: since {f.since} is not before until {f.until}")
    if options.chunk_size < 1:
        raise ExportError("chunk size must be >= 1")


def options_from_mapping(data: dict) -> ExportOptions:
    """ExportOptions from a JSON object (the HTTP route): keys as the CLI options with underscores. Unknown keys,
    wrong types and bad values raise ExportError."""
    known = {"format", "formats", "images", "split", "seed", "project", "projects", "annotator", "annotators",
             "model_version", "model_versions", "prefilled", "since", "until", "min_caption_length",
             "ground_truth_only", "keep_duplicates", "name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ExportError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def many(*keys: str) -> list:
        out: list = []
        for key in keys:
            value = data.get(key)
            if value is None:
                continue
            out += value if isinstance(value, list) else [value]
        return out

    def integer(value, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
            raise ExportError(f"{what} must be an integer, not {value!r}")
        return int(value)

    def flag(key: str) -> bool:
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise ExportError(f"{key} must be true or false, not {value!r}")
        return value

    for key in ("since", "until", "prefilled", "images"):
        if data.get(key) is not None and not isinstance(data.get(key), str):
            raise ExportError(f"{key} must be a string, not {data.get(key)!r}")
    formats = many("format", "formats")
    if not formats:
        raise ExportError(f"'format' is missing: one of {', '.join(FORMATS)} (or a list)")
    filters = ExportFilters(
        projects=tuple(integer(p, "project") for p in many("project", "projects")),
        annotators=tuple(str(a) for a in many("annotator", "annotators")),
        model_versions=tuple(str(v) for v in many("model_version", "model_versions")),
        prefilled=data.get("prefilled"), since=data.get("since"), until=data.get("until"),
        min_caption_length=integer(data.get("min_caption_length", 0), "min_caption_length"),
        ground_truth_only=flag("ground_truth_only"), dedup=not flag("keep_duplicates"))
    options = ExportOptions(
        formats=parse_formats([str(f) for f in formats]), images=data.get("images") or "reference",
        split=parse_split(data["split"]) if data.get("split") is not None else (1.0, 0.0, 0.0),
        seed=integer(data.get("seed", 0), "seed"), filters=filters)
    validate(options)
    return options


# ------------------------------------------------------------------------------------------------- reading


def _where(filters: ExportFilters) -> tuple[str, list]:
    """The SQL side of the filters (the date range and caption length are applied in Python, exactly)."""
    where = ["r.deleted = 0", "r.was_cancelled = 0", "r.has_content = 1",
             "COALESCE(r.image_sha256, r.image_key) IS NOT NULL"]
    params: list = []
    if filters.projects:
        where.append(f"r.project_id IN ({', '.join('?' * len(filters.projects))})")
        params += [int(p) for p in filters.projects]
    if filters.annotators:
        ids = [int(a) for a in filters.annotators if str(a).strip().isdigit()]
        emails = [str(a).strip().lower() for a in filters.annotators if not str(a).strip().isdigit()]
        parts = []
        if ids:
            parts.append(f"r.completed_by IN ({', '.join('?' * len(ids))})")
            params += ids
        if emails:
            parts.append(f"LOWER(r.completed_by_email) IN ({', '.join('?' * len(emails))})")
            params += emails
        where.append("(" + " OR ".join(parts) + ")")
    if filters.model_versions:
        where.append(f"r.prefilled_by IN ({', '.join('?' * len(filters.model_versions))})")
        params += list(filters.model_versions)
    if filters.prefilled == "any":
        where.append("r.changed IS NOT NULL")
    elif filters.prefilled == "changed":
        where.append("r.changed = 1")
    elif filters.prefilled == "confirmed":
        where.append("r.changed = 0")
    elif filters.prefilled == "no":
        where.append("r.changed IS NULL")
    if filters.ground_truth_only:
        where.append("r.ground_truth = 1")
    return " AND ".join(where), params


@contextmanager
def _selection(store: Store, filters: ExportFilters, chunk_size: int) -> Iterator[tuple[dict, int, Iterator[dict]]]:
    """The filtered regions from one consistent read of the store (Store.read_regions), ordered by image."""
    where, params = _where(filters)
    with store.read_regions(where, params, [int(p) for p in filters.projects or []], chunk_size) as selection:
        yield selection


# ------------------------------------------------------------------------------------------ images, regions


@dataclass
class _Region:
    id: int  # unique in the export (VG region_id / object_id, COCO annotation id)
    rec: Any  # regionscribe.backend.store.RegionRecord
    box: tuple[float, float, float, float]  # pixel xyxy
    raw_relations: list[tuple[int, dict]] = field(default_factory=list)  # (annotation id, relation as stored)
    relations: list[tuple[int, str, str | None]] = field(default_factory=list)  # (target id, label, direction)
    _segment: Any = None

    @property
    def xywh(self) -> list[float]:
        x1, y1, x2, y2 = self.box
        return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]

    def segment(self, width: int, height: int) -> tuple[str, Any, Any] | None:
        """The region's shape on the `width`×`height` image: ("polygon", pixel points, mask) for a polygon (an
        ellipse: its outline), ("mask", None, mask) for a brush; None for a box or keypoint, or a shape with no
        pixels on this image (an RLE of another size)."""
        if self._segment is None:
            self._segment = (_segment_of(self.rec.shape, width, height),)
        return self._segment[0]


def _segment_of(shape: dict | None, width: int, height: int) -> tuple[str, Any, Any] | None:
    from regionscribe.backend.labelstudio.shapes import Shape, ShapeError

    if not shape:
        return None
    try:
        parsed = Shape.from_json(shape)
        if not parsed.has_mask:
            return None
        mask = parsed.mask(width, height)
    except ShapeError:
        return None
    if parsed.kind == "brush":
        return "mask", None, mask
    return "polygon", [(float(x), float(y)) for x, y in parsed.outline(width, height)], mask


def _coco_rle(mask) -> dict:
    """COCO's compressed RLE of a boolean mask ({"size": [h, w], "counts": str}), by pycocotools."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:  # pragma: no cover - depends on the install
        raise ExportError("exporting brush masks needs pycocotools (COCO RLE): pip install pycocotools") from None
    import numpy as np

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _mask_png(mask) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(mask).convert("1").save(out, format="PNG")
    return out.getvalue()


@dataclass
class _Image:
    id: int
    key: str  # sha256 of the content, or "ref-<image key>" while the image is not cached
    sha256: str | None
    image_ref: str | None
    path: Path | None  # the cached file
    width: int
    height: int
    split: str
    regions: list[_Region]
    file: str | None = None  # name under images/ (copy) or the reference (path of the cached file, else LS ref)


def _leaf(value) -> str:
    return str(value[-1]) if isinstance(value, (list, tuple)) and value else str(value)


def _flat_attributes(attributes: dict) -> list[str]:
    return [_leaf(v) for name in sorted(attributes) for v in attributes[name] or []]


def _dedup_key(rec, box) -> str:
    return _canonical([[round(v) for v in box], (rec.caption or "").strip(), (rec.detailed_caption or "").strip(),
                       (rec.relation_text or "").strip(), rec.attributes, list(rec.labels)])


def split_of(key: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """The split of an image: a uniform number from sha256(seed:key) against the cumulative fractions. Stateless,
    so the same image lands in the same split for the same seed whatever else is exported."""
    u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:13], 16) / float(16 ** 13)
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return name
    return next(name for name, fraction in reversed(list(zip(SPLITS, fractions))) if fraction > 0)


# -------------------------------------------------------------------------------------------------- writers


class _JsonArray:
    """A JSON array written one item at a time."""

    def __init__(self, path: Path, head: str = "[", tail: str = "]"):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "w", encoding="utf-8")
        self.file.write(head + "\n")
        self.tail = tail
        self.count = 0

    def add(self, item: Any) -> None:
        if self.count:
            self.file.write(",\n")
        self.file.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
        self.count += 1

    def close(self) -> None:
        if not self.file.closed:
            self.file.write(("\n" if self.count else "") + self.tail + "\n")
            self.file.close()


class _Writer:
    name = ""

    def __init__(self, root: Path, splits: list[str]):
        self.root = root
        self.splits = splits
        self.counts = {s: {"images": 0, "regions": 0} for s in splits}

    def add(self, image: _Image) -> None:
        raise NotImplementedError

    def close(self) -> dict:
        return self.counts

    def abort(self) -> None:
        pass


class _Conversations(_Writer):
    name = "conversations"

    def __init__(self, root: Path, splits: list[str]):
        super().__init__(root, splits)
        self.files = {s: _JsonArray(root / "conversations" / f"{s}.json") for s in splits}

    def add(self, image: _Image) -> None:
        sample = conversation(image)
        if sample is None:
            return
        self.files[image.split].add(sample)
        self.counts[image.split]["images"] += 1
        self.counts[image.split]["regions"] += len(sample["boxes"])
        self.counts[image.split]["turns"] = self.counts[image.split].get("turns", 0) + len(sample["turns"])

    def close(self) -> dict:
        for f in self.files.values():
            f.close()
        return self.counts

    def abort(self) -> None:
        for f in self.files.values():
            f.file.close()


def conversation(image: _Image) -> dict | None:
    """One image's regions as a GPT4RoI/LLaVA conversation (None when it has nothing to ask about)."""
    names: dict[int, int] = {}
    boxes: list[list[float]] = []
    regions: list[dict] = []
    segments: list[dict | None] = []
    by_id = {r.id: r for r in image.regions}

    def mention(reg: _Region) -> str:
        if reg.id in names:
            return f"region{names[reg.id]}"
        names[reg.id] = len(names) + 1
        x1, y1, x2, y2 = reg.box
        boxes.append([round(min(max(v / size, 0.0), 1.0), 6)
                      for v, size in ((x1, image.width), (y1, image.height), (x2, image.width), (y2, image.height))])
        regions.append({"id": reg.id, "annotation_id": reg.rec.annotation_id, "region_id": reg.rec.region_id})
        segment = reg.segment(image.width, image.height)
        if segment is None:
            segments.append(None)
        elif segment[0] == "polygon":
            segments.append({"polygon": [[x / image.width, y / image.height] for x, y in segment[1]]})
        else:
            segments.append({"rle": _coco_rle(segment[2])})
        return f"region{names[reg.id]} {BBOX}"

    turns: list[tuple[str, str, str, list | None, str | None]] = []
    for reg in image.regions:
        rec = reg.rec
        if (rec.caption or "").strip():
            turns.append((CAPTION_Q.format(r=mention(reg)), rec.caption.strip(), "caption", None, None))
        if (rec.detailed_caption or "").strip():
            turns.append((DETAILED_Q.format(r=mention(reg)), rec.detailed_caption.strip(), "detailed", None, None))
        for name in sorted(rec.attributes):
            values = [_leaf(v) for v in rec.attributes[name] or []]
            if values:
                turns.append((ATTRIBUTE_Q.format(name=name, r=mention(reg)), ", ".join(values), "attribute", None,
                              name))
        if (rec.relation_text or "").strip():
            turns.append((RELATION_TEXT_Q.format(r=mention(reg)), rec.relation_text.strip(), "relation_text", None,
                          None))
    for reg in image.regions:
        for target, label, _direction in reg.relations:
            if label and target in by_id:
                a = mention(reg)
                b = mention(by_id[target])
                turns.append((YESNO_Q.format(a=a, label=label, b=b), "yes", "yesno", ["yes", "no"], label))
    if not turns:
        return None
    messages = []
    for i, (question, answer, *_rest) in enumerate(turns):
        messages.append({"from": "human", "value": (IMAGE_PREFIX if i == 0 else "") + question})
        messages.append({"from": "gpt", "value": answer})
    shaped = {"segmentation": segments} if any(s is not None for s in segments) else {}
    return {"id": image.key, "image": image.file, "image_sha256": image.sha256, "width": image.width,
            "height": image.height, "boxes": boxes, **shaped, "regions": regions, "conversations": messages,
            "turns": [{"kind": kind, "key": key, "candidates": candidates}
                      for _q, _a, kind, candidates, key in turns]}


class _VisualGenome(_Writer):
    name = "vg"

    def __init__(self, root: Path, splits: list[str]):
        super().__init__(root, splits)
        self.files = {s: {name: _JsonArray(root / "vg" / s / f"{name}.json")
                          for name in ("region_descriptions", "image_data", "attributes", "relationships")}
                      for s in splits}
        self.relationship_id = 0
        self.any = {"attributes": False, "relationships": False}

    @staticmethod
    def _object(reg: _Region) -> dict:
        x, y, w, h = reg.xywh
        return {"object_id": reg.id, "x": x, "y": y, "w": w, "h": h, "names": list(reg.rec.labels) or ["object"],
                "synsets": []}

    def add(self, image: _Image) -> None:
        files, counts = self.files[image.split], self.counts[image.split]
        described = []
        attributes = []
        relationships = []
        by_id = {r.id: r for r in image.regions}
        for reg in image.regions:
            rec = reg.rec
            phrase = (rec.caption or "").strip() or (rec.detailed_caption or "").strip()
            x, y, w, h = reg.xywh
            if phrase:
                described.append({"region_id": reg.id, "image_id": image.id, "phrase": phrase, "x": x, "y": y,
                                  "width": w, "height": h, "annotation_id": rec.annotation_id,
                                  "task_id": rec.task_id, "ls_region_id": rec.region_id})
            if any(rec.attributes.values()):
                attributes.append({**self._object(reg), "attributes": _flat_attributes(rec.attributes),
                                   "by_control": rec.attributes})
            for target, label, direction in reg.relations:
                if target in by_id:
                    self.relationship_id += 1
                    relationships.append({"relationship_id": self.relationship_id, "predicate": label,
                                          "direction": direction, "subject": self._object(reg),
                                          "object": self._object(by_id[target]), "synsets": []})
        files["region_descriptions"].add({"id": image.id, "regions": described})
        files["image_data"].add({"image_id": image.id, "width": image.width, "height": image.height,
                                 "url": image.image_ref, "file_name": image.file, "sha256": image.sha256,
                                 "coco_id": None, "flickr_id": None})
        files["attributes"].add({"image_id": image.id, "attributes": attributes})
        files["relationships"].add({"image_id": image.id, "relationships": relationships})
        self.any["attributes"] |= bool(attributes)
        self.any["relationships"] |= bool(relationships)
        counts["images"] += 1
        counts["regions"] += len(described)
        counts["attributes"] = counts.get("attributes", 0) + len(attributes)
        counts["relationships"] = counts.get("relationships", 0) + len(relationships)

    def close(self) -> dict:
        for files in self.files.values():
            for name, f in files.items():
                f.close()
                if name in self.any and not self.any[name]:
                    f.path.unlink()  # "when present in the data"
        return self.counts

    def abort(self) -> None:
        for files in self.files.values():
            for f in files.values():
                f.file.close()


class _Coco(_Writer):
    name = "coco"

    def __init__(self, root: Path, splits: list[str], info: dict):
        super().__init__(root, splits)
        head = "{" + f'"info":{json.dumps(info, ensure_ascii=False)},"licenses":[],"images":['
        self.images = {s: _JsonArray(root / "coco" / f"{s}.json", head=head, tail="]") for s in splits}
        self.annotations = {s: _JsonArray(root / "coco" / f".{s}.annotations.part", head="", tail="")
                            for s in splits}
        self.categories: dict[str, int] = {}

    def add(self, image: _Image) -> None:
        anns = []
        for reg in image.regions:
            rec = reg.rec
            if not (rec.caption or "").strip():
                continue  # region captions: a region without a caption has nothing to score
            label = rec.labels[0] if rec.labels else "region"
            category = self.categories.setdefault(label, len(self.categories) + 1)
            x, y, w, h = reg.xywh
            ann = {"id": reg.id, "image_id": image.id, "category_id": category, "bbox": [x, y, w, h],
                   "area": round(w * h, 2), "iscrowd": 0, "caption": rec.caption.strip(),
                   "detailed_caption": (rec.detailed_caption or "").strip() or None,
                   "labels": list(rec.labels), "attributes": rec.attributes,
                   "annotation_id": rec.annotation_id, "task_id": rec.task_id, "ls_region_id": rec.region_id}
            segment = reg.segment(image.width, image.height)
            if segment is not None:  # a polygon (an ellipse's outline) as pixel coordinates, a brush mask as RLE
                kind, points, mask = segment
                ann["segmentation"] = ([[round(v, 2) for p in points for v in p]] if kind == "polygon"
                                       else _coco_rle(mask))
                ann["area"] = int(mask.sum())
                ann["ls_shape"] = rec.shape["kind"]
            anns.append(ann)
        if not anns:
            return
        self.images[image.split].add({"id": image.id, "file_name": image.file, "width": image.width,
                                      "height": image.height, "sha256": image.sha256, "image_ref": image.image_ref})
        for ann in anns:
            self.annotations[image.split].add(ann)
        self.counts[image.split]["images"] += 1
        self.counts[image.split]["regions"] += len(anns)

    def close(self) -> dict:
        categories = json.dumps([{"id": i, "name": name, "supercategory": "region"}
                                 for name, i in self.categories.items()], ensure_ascii=False)
        for split in self.splits:
            images, part = self.images[split], self.annotations[split]
            images.tail = "],\"annotations\":["
            images.close()
            part.close()
            with open(images.path, "a", encoding="utf-8") as out, open(part.path, encoding="utf-8") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.write(f'],"categories":{categories}}}\n')
            part.path.unlink()
        return self.counts

    def abort(self) -> None:
        for f in (*self.images.values(), *self.annotations.values()):
            f.file.close()


# Hugging Face features of the parquet dataset, and the matching Arrow types (built lazily: pyarrow is optional).
_HF_REGION = [("id", "int64"), ("annotation_id", "int64"), ("task_id", "int64"), ("project_id", "int64"),
              ("ls_region_id", "string"), ("bbox", ["float64"]), ("labels", ["string"]), ("caption", "string"),
              ("detailed_caption", "string"), ("relation_text", "string"), ("attributes", "string"),
              ("relations", [[("to", "int64"), ("label", "string"), ("direction", "string")]]),
              ("completed_by", "int64"), ("completed_by_email", "string"), ("updated_at", "string"),
              ("prefilled_by", "string"), ("changed", "bool"), ("ground_truth", "bool"),
              ("shape", "string"), ("polygon", [["float64"]]), ("mask", "Image")]
_HF_ROW = [("image", "Image"), ("image_id", "int64"), ("image_sha256", "string"), ("image_ref", "string"),
           ("width", "int64"), ("height", "int64"), ("regions", [_HF_REGION])]


def _hf_feature(spec) -> dict:
    if spec == "Image":
        return {"_type": "Image"}
    if isinstance(spec, str):
        return {"dtype": spec, "_type": "Value"}
    if isinstance(spec, list) and len(spec) == 1:  # a list of ...
        return {"feature": _hf_feature(spec[0]), "_type": "List"}
    return {name: _hf_feature(sub) for name, sub in spec}  # a struct


def _arrow_type(pa, spec):
    if spec == "Image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if isinstance(spec, str):
        return {"int64": pa.int64(), "string": pa.string(), "float64": pa.float64(), "bool": pa.bool_()}[spec]
    if isinstance(spec, list) and len(spec) == 1:
        return pa.list_(_arrow_type(pa, spec[0]))
    return pa.struct([(name, _arrow_type(pa, sub)) for name, sub in spec])


class _HuggingFace(_Writer):
    """Parquet files as `datasets` writes them (Arrow schema + the "huggingface" features metadata), one row per
    image, written in row groups of at most `rows` images or `max_bytes` of image data."""

    name = "hf"

    def __init__(self, root: Path, splits: list[str], embed: bool, rows: int = 64, max_bytes: int = 32 << 20):
        super().__init__(root, splits)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - depends on the install
            raise ExportError("the hf format needs pyarrow: pip install pyarrow") from None
        self.pa, self.pq = pa, pq
        features = {name: _hf_feature(spec) for name, spec in _HF_ROW}
        self.schema = pa.schema([(name, _arrow_type(pa, spec)) for name, spec in _HF_ROW],
                                metadata={"huggingface": json.dumps({"info": {"features": features}})})
        self.embed, self.rows, self.max_bytes = embed, rows, max_bytes
        self.writers = {}
        self.buffers: dict[str, list] = {s: [] for s in splits}
        self.buffered_bytes = {s: 0 for s in splits}
        for s in splits:
            path = root / "hf" / "data" / f"{s}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writers[s] = pq.ParquetWriter(str(path), self.schema)

    def add(self, image: _Image) -> None:
        data = image.path.read_bytes() if self.embed and image.path is not None else None
        regions = []
        for reg in image.regions:
            rec = reg.rec
            regions.append({
                "id": reg.id, "annotation_id": rec.annotation_id, "task_id": rec.task_id,
                "project_id": rec.project_id, "ls_region_id": rec.region_id, "bbox": reg.xywh,
                "labels": list(rec.labels), "caption": rec.caption, "detailed_caption": rec.detailed_caption,
                "relation_text": rec.relation_text, "attributes": _canonical(rec.attributes),
                "relations": [{"to": t, "label": label, "direction": d} for t, label, d in reg.relations],
                "completed_by": rec.completed_by, "completed_by_email": rec.completed_by_email,
                "updated_at": rec.updated_at, "prefilled_by": rec.prefilled_by, "changed": rec.changed,
                "ground_truth": rec.ground_truth, **self._shape(reg, image)})
        self.buffers[image.split].append({
            "image": {"bytes": data, "path": image.file}, "image_id": image.id, "image_sha256": image.sha256,
            "image_ref": image.image_ref, "width": image.width, "height": image.height, "regions": regions})
        self.buffered_bytes[image.split] += len(data or b"")
        self.counts[image.split]["images"] += 1
        self.counts[image.split]["regions"] += len(regions)
        if len(self.buffers[image.split]) >= self.rows or self.buffered_bytes[image.split] >= self.max_bytes:
            self._flush(image.split)

    @staticmethod
    def _shape(reg: _Region, image: _Image) -> dict:
        """shape: the Label Studio shape kind (None: a rectangle); polygon: pixel [x, y] points of a polygon (an
        ellipse's outline); mask: the region's mask as a 1-bit PNG of the image's size (None for boxes)."""
        segment = reg.segment(image.width, image.height)
        kind = reg.rec.shape["kind"] if reg.rec.shape else None
        if segment is None:
            return {"shape": kind, "polygon": None, "mask": None}
        points = [[x, y] for x, y in segment[1]] if segment[0] == "polygon" else None
        return {"shape": kind, "polygon": points, "mask": {"bytes": _mask_png(segment[2]), "path": None}}

    def _flush(self, split: str) -> None:
        if self.buffers[split]:
            self.writers[split].write_table(self.pa.Table.from_pylist(self.buffers[split], schema=self.schema))
        self.buffers[split], self.buffered_bytes[split] = [], 0

    def close(self) -> dict:
        for split in self.splits:
            self._flush(split)
            self.writers[split].close()
        return self.counts

    def abort(self) -> None:
        for writer in self.writers.values():
            try:
                writer.close()
            except Exception:
                pass


# --------------------------------------------------------------------------------------------------- export


def export(store: Store, out: str | Path, options: ExportOptions, progress: bool = False,
           callback: Callable[[int], None] | None = None) -> dict:
    """Write the selected regions as `options.formats` into the folder `out` (created; an existing non-empty folder
    needs `overwrite`). Returns the manifest. Raises ExportError (bad options, nothing selected, images missing
    with images="copy"); on any error nothing is left behind. `callback(regions_read)` is called after every
    chunk of rows (the benchmark samples memory with it)."""
    validate(options)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not options.overwrite:
        raise ExportError(f"{out} exists and is not empty: choose another --out, or --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = _write(store, tmp, options, progress, callback)
        if out.exists() and options.overwrite:
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)  # onto nothing or an empty folder; fails if another export got there first
            except OSError as exc:
                raise ExportExists(f"{out} appeared while exporting ({exc.strerror}); nothing was replaced") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write(store: Store, root: Path, options: ExportOptions, progress: bool,
           callback: Callable[[int], None] | None) -> dict:
    from tqdm import tqdm

    formats = parse_formats(options.formats)
    fractions = parse_split(options.split)
    splits = [s for s, f in zip(SPLITS, fractions) if f > 0]
    filters = options.filters
    since, until = _check_time("since", filters.since), _check_time("until", filters.until)
    copy = options.images == "copy"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    writers: list[_Writer] = []
    counts: dict[str, Any] = {"regions_read": 0, "regions": 0, "images": 0, "duplicates": 0,
                              "skipped": {"date_range": 0, "caption_length": 0, "no_image_size": 0},
                              "splits": {s: {"images": 0, "regions": 0} for s in splits}}
    missing: list[str] = []
    missing_count = 0
    collect = _Collector(store, filters, since, until, counts)
    next_image = 0
    try:
        for name in formats:
            if name == "conversations":
                writers.append(_Conversations(root, splits))
            elif name == "vg":
                writers.append(_VisualGenome(root, splits))
            elif name == "coco":
                # no date in the data files: the same selection gives byte-identical files (the date is in the
                # manifest)
                writers.append(_Coco(root, splits, {"description": "regionscribe region captions", "version": "1"}))
            elif name == "hf":
                writers.append(_HuggingFace(root, splits, embed=copy))
        if copy:
            (root / "images").mkdir()
        with _selection(store, filters, options.chunk_size) as (state, total, rows):
            bar = tqdm(total=total, unit="region", desc="export", disable=not progress, mininterval=0.5)
            read_since_callback = 0
            for key, group in _groups(rows):
                before = collect.read
                regions, first = collect.image_regions(group)
                read_since_callback += collect.read - before
                if read_since_callback >= options.chunk_size:
                    bar.update(read_since_callback)
                    if callback is not None:
                        callback(collect.read)
                    read_since_callback = 0
                if not regions:
                    continue
                rec0, row0 = first
                width = rec0.image_width or row0.get("original_width")
                height = rec0.image_height or row0.get("original_height")
                next_image += 1
                image = _Image(id=next_image, key=key, sha256=rec0.image_sha256, image_ref=rec0.image_ref,
                               path=rec0.image_path, width=int(width), height=int(height),
                               split=split_of(key, options.seed, fractions), regions=regions)
                if copy:
                    if image.path is None or image.sha256 is None:
                        missing_count += 1
                        if len(missing) < 5:
                            missing.append(image.image_ref or key)
                        continue
                    image.file = f"{image.sha256}{image.path.suffix}"
                    target_path = root / "images" / image.file
                    if not target_path.exists():
                        shutil.copyfile(image.path, target_path)
                else:
                    image.file = str(image.path) if image.path is not None else image.image_ref
                for writer in writers:
                    writer.add(image)
                counts["images"] += 1
                counts["regions"] += len(regions)
                counts["splits"][image.split]["images"] += 1
                counts["splits"][image.split]["regions"] += len(regions)
            bar.update(read_since_callback)
            bar.close()
            if callback is not None:
                callback(collect.read)
        counts["regions_read"] = collect.read
        if missing_count:
            raise ExportError(
                f"{missing_count} image(s) of the selection are not in the image cache ({store.images_dir}), e.g. "
                f"{', '.join(missing)}: fetch them first (the training sweep, regionscribe.backend.feedback.ingest.fetch_missing_images, "
                "or wait for the ingest queue), or export with --images reference")
        if not counts["regions"]:
            raise ExportError(
                f"no region matches the selection ({counts['regions_read']} read from the store; skipped: "
                + ", ".join(f"{k} {v}" for k, v in counts["skipped"].items()) + "): nothing exported")
        counts["formats"] = {}
        for writer in writers:
            counts["formats"][writer.name] = writer.close()
        writers = []
    finally:
        for writer in writers:
            writer.abort()

    head = {
        "manifest_version": MANIFEST_VERSION,
        "created_at": created,
        "tool": "regionscribe export",
        "formats": list(formats),
        "images": options.images,
        "image_folder": "images" if copy else None,
        "coordinates": "pixels of the upright image (EXIF rotation applied); conversations: boxes xyxy normalised "
                       "to [0, 1] by width/height; vg, coco, hf: x, y, width, height",
        "filters": {**asdict(filters), "projects": list(filters.projects), "annotators": list(filters.annotators),
                    "model_versions": list(filters.model_versions), "annotations_only": True,
                    "excluded": "deleted and cancelled annotations, regions without text or attributes, the "
                                "model's raw suggestions"},
        "split": {"by": "image", "seed": options.seed, "fractions": dict(zip(SPLITS, fractions)),
                  "method": "sha256('<seed>:<image sha256>') as a uniform number against the cumulative fractions"},
        "store": {"url": redacted_url(store.url), "dialect": store.dialect, **state},
        "selection_id": collect.selection.hexdigest()[:24],
        "selection_id_of": "sha256 of (annotation id, region id, updated_at) of every exported region, in export "
                           "order",
        "counts": counts,
    }
    _write_manifest(root, head)
    return head


class _Collector:
    """One image's rows → its exported regions: the filters applied in Python (date range, caption length), rows
    without a pixel box skipped, identical regions merged (the first kept; relations of the others move to it),
    export ids given, and relations resolved to export ids (a relation to a region not exported is dropped)."""

    def __init__(self, store: Store, filters: ExportFilters, since: int | None, until: int | None, counts: dict):
        self.store, self.filters, self.since, self.until = store, filters, since, until
        self.skipped = counts["skipped"]
        self.counts = counts
        self.read = 0
        self.next_region = 0
        self.selection = hashlib.sha256()  # of (annotation id, region id, updated_at) of what is exported

    def _wanted(self, rec) -> bool:
        if self.since is not None or self.until is not None:
            stamp = parse_time_us(rec.updated_at) or parse_time_us(rec.created_at)
            if stamp is None or (self.since is not None and stamp < self.since) or \
                    (self.until is not None and stamp >= self.until):
                self.skipped["date_range"] += 1
                return False
        if self.filters.min_caption_length and \
                len((rec.caption or "").strip()) < self.filters.min_caption_length:
            self.skipped["caption_length"] += 1
            return False
        if rec.pixel_box is None:
            self.skipped["no_image_size"] += 1
            return False
        return True

    def image_regions(self, rows: Iterable[dict]) -> tuple[list[_Region], tuple | None]:
        """(regions, (record, row) of the first one: the image's size and file)."""
        regions: list[_Region] = []
        kept: dict[str, _Region] = {}
        alias: dict[tuple[int, str], int] = {}  # (annotation id, LS region id) → export id (twins included)
        first = None
        for row in rows:
            self.read += 1
            rec = self.store.record_from_row(row)
            if not self._wanted(rec):
                continue
            box = tuple(float(v) for v in rec.pixel_box)
            relations = [(rec.annotation_id, rel) for rel in rec.relations or []]
            dkey = _dedup_key(rec, box) if self.filters.dedup else None
            if dkey is not None and dkey in kept:
                twin = kept[dkey]
                alias[(rec.annotation_id, rec.region_id)] = twin.id
                twin.raw_relations += relations
                self.counts["duplicates"] += 1
                continue
            if first is None:
                first = (rec, row)
            self.next_region += 1
            reg = _Region(self.next_region, rec, box, relations)
            regions.append(reg)
            alias[(rec.annotation_id, rec.region_id)] = reg.id
            if dkey is not None:
                kept[dkey] = reg
            self.selection.update(f"{rec.annotation_id}\t{rec.region_id}\t{rec.updated_at or ''}\n".encode())
        for reg in regions:
            seen = set()
            for annotation_id, rel in reg.raw_relations:
                target = alias.get((annotation_id, str(rel.get("to"))))
                if target is None or target == reg.id:
                    continue  # the other region is not exported (filtered out, no content, deleted)
                for label in rel.get("labels") or [""]:
                    if (target, label) not in seen:
                        seen.add((target, label))
                        reg.relations.append((target, str(label), rel.get("direction")))
        return regions, first


def _groups(rows: Iterator[dict]) -> Iterator[tuple[str, Iterator[dict]]]:
    from itertools import groupby

    def key(row: dict) -> str:
        return row["image_sha256"] or f"ref-{row['image_key']}"

    return groupby(rows, key=key)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> Iterator[Path]:
    """Every file under root but manifest.json, in a stable order (relative paths)."""
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root)
            if rel.as_posix() != "manifest.json":
                yield rel


def _write_manifest(root: Path, head: dict) -> None:
    """manifest.json: `head`, then "files": {relative path: {"bytes", "sha256"}} written one file at a time."""
    text = json.dumps(head, indent=2, ensure_ascii=False)
    assert text.endswith("\n}")
    with open(root / "manifest.json", "w", encoding="utf-8") as f:
        f.write(text[:-2] + ',\n  "files": {')
        for i, rel in enumerate(_files(root)):
            path = root / rel
            entry = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            f.write(("," if i else "") + f"\n    {json.dumps(rel.as_posix())}: {json.dumps(entry)}")
        f.write("\n  }\n}\n")


def verify_manifest(folder: str | Path) -> list[str]:
    """Problems with an export folder against its manifest (a missing, changed or unlisted file); [] if none."""
    root = Path(folder)
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"manifest.json unreadable: {exc}"]
    listed = manifest.get("files") or {}
    problems = []
    for rel, entry in listed.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.get("bytes") or _sha256(path) != entry.get("sha256"):
            problems.append(f"{rel}: checksum mismatch")
    for rel in _files(root):
        if rel.as_posix() not in listed:
            problems.append(f"{rel.as_posix()}: not in the manifest")
    return problems


# --------------------------------------------------------------------------------------------------- reader


def load_conversations(path: str | Path, image_root: str | Path | None = None,
                       load_images: bool = True) -> list:
    """Read conversations/<split>.json back into regionscribe.model.conversation.Sample objects, the project's training unit:
    boxes denormalised to pixel xyxy, turns as Turn(question, answer, kind, candidates, key). Images are loaded
    (EXIF rotation applied, as training does) from `image_root` (default: the export's images/ folder) for
    relative names, or from absolute paths (--images reference); `load_images=False` leaves Sample.image None."""
    from regionscribe.model.conversation import Sample, Turn
    from regionscribe.model.images import load_image

    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent.parent / "images"
    samples = []
    for item in json.loads(path.read_text(encoding="utf-8")):
        messages = item["conversations"]
        if len(messages) % 2 or any(m["from"] != ("human" if i % 2 == 0 else "gpt") for i, m in enumerate(messages)):
            raise ValueError(f"sample {item.get('id')}: conversations must alternate human, gpt")
        info = item.get("turns") or [{}] * (len(messages) // 2)
        turns = [Turn(messages[2 * i]["value"], messages[2 * i + 1]["value"], info[i].get("kind") or "caption",
                      tuple(info[i]["candidates"]) if info[i].get("candidates") else None, info[i].get("key"))
                 for i in range(len(messages) // 2)]
        w, h = float(item["width"]), float(item["height"])
        boxes = [(b[0] * w, b[1] * h, b[2] * w, b[3] * h) for b in item["boxes"]]
        masks = [segment_mask(s, int(w), int(h)) for s in item.get("segmentation") or [None] * len(boxes)]
        image = None
        if load_images:
            name = item.get("image")
            file = Path(name) if name and Path(name).is_absolute() else root / str(name)
            if not name or not file.is_file():
                raise FileNotFoundError(f"sample {item.get('id')}: image {name!r} is not a local file (export with "
                                        "--images copy, or pass image_root)")
            image = load_image(file)
        samples.append(Sample(image, boxes, turns, str(item.get("id") or item.get("image_sha256")), masks))
    return samples


def segment_mask(segment: dict | None, width: int, height: int):
    """A conversations export's `segmentation` entry → boolean (height, width) mask, None for a box: a normalised
    polygon rasterised as regionscribe.backend.labelstudio.shapes does it, a COCO RLE decoded by pycocotools."""
    if segment is None:
        return None
    if "polygon" in segment:
        from regionscribe.backend.labelstudio.shapes import Shape

        return Shape.polygon([(x * 100.0, y * 100.0) for x, y in segment["polygon"]]).mask(width, height)
    return coco_rle_mask(segment["rle"])


def coco_rle_mask(rle: dict):
    """COCO's compressed RLE ({"size": [h, w], "counts": str}, as pycocotools.mask.encode writes it) → boolean
    (h, w) mask. Read here rather than by pycocotools.mask.decode, which raises a DeprecationWarning under numpy 2
    (its __array__ lacks `copy`); the format is pycocotools' maskApi.c rleFrString."""
    import numpy as np

    height, width = (int(v) for v in rle["size"])
    text = rle["counts"]
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    if sum(counts) != width * height or any(c < 0 for c in counts):
        raise ValueError(f"the RLE's runs add up to {sum(counts)} pixels; its size says {width}x{height}")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)  # runs alternate 0, 1, 0... from 0
    return flat.reshape(width, height).T  # column-major, as COCO stores it


# ------------------------------------------------------------------------------------------------ HTTP route

EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ExportExists(ExportError):
    """The named export already exists (HTTP 409)."""


def export_to_data_dir(settings, data: dict, store: Store | None = None) -> dict:
    """POST /export: the options as a JSON object (see `options_from_mapping`), written under
    <DATA_DIR>/exports/<name> and nowhere else. `name` is optional (default: export-<UTC time>-<random>) and must be
    a plain folder name; an existing one is refused (ExportExists), never replaced. Returns what the route answers."""
    name = data.get("name")
    if name is None:
        name = f"export-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    if not isinstance(name, str) or not EXPORT_NAME.match(name) or ".." in name:
        raise ExportError(f"bad name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    options = options_from_mapping(data)
    folder = Path(settings.data_dir) / "exports" / name
    if folder.exists():
        raise ExportExists(f"export {name!r} already exists: choose another name")
    manifest = export(store or Store.shared(settings), folder, options)
    return {"name": name, "folder": f"exports/{name}", "formats": manifest["formats"],
            "selection_id": manifest["selection_id"], "counts": manifest["counts"]}
