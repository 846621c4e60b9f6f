"""Public region-text datasets and the project's own exports, read from local files as training conversations.

    from regionscribe.training.datasets import Source
    src = Source.parse("vg:/data/visual_genome:2")          # SOURCE:PATH[:WEIGHT]
    for sample in src.samples(stage=2, seed=0): ...          # regionscribe.model.conversation.Sample, GPT4RoI's format
    print(src.report)                                        # what was skipped, by reason

Sources and what PATH is (the default image folder in brackets; `images=` overrides it):

    coco            annotations/instances_<split>.json             [../<split>/]
    refcoco         refer's data/refcoco/ folder: refs(unc).p + instances.json   [../images/mscoco/images/train2014]
    refcoco+        data/refcoco+/: refs(unc).p                     [same]
    refcocog        data/refcocog/: refs(umd).p                     [same]
    mdetr-refcoco   MDETR's finetune_refcoco_train.json (also mdetr-refcoco+, mdetr-refcocog)   [../coco_all/]
    flickr30k       Flickr30k Entities folder: Sentences/, Annotations/, <split>.txt            [flickr30k-images/]
    mdetr-flickr30k MDETR's final_flickr_mergedGT_train.json                                    [../flickr30k-images/]
    vg              Visual Genome folder: image_data.json, region_descriptions.json, attributes.json,
                    relationships.json                               [the folder itself: VG_100K/, VG_100K_2/, flat]
    grit-vg         GRiT's VG train.json                             [vg_all/ beside it]
    export-conversations, export-hf, export-vg, export-coco
                    a `regionscribe export` folder (its <split> files) [its images/ folder]

Stage 1 turns each region into `regionK <bbox>` -> phrase; stage 2 into captions, attributes, relations and
multi-region questions (instructions.py). Every reader streams (jsonstream.py, a temporary SQLite for COCO-format joins):
memory does not grow with the dataset. refer's pickles are the exception; they are loaded whole (tens of MB).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from regionscribe.training.datasets import coco, exports, flickr30k, mdetr, instructions, refer, visual_genome
from regionscribe.model.masks import segment_mask
from regionscribe.training.datasets.records import FormatError, ImageRecord, SkipReport

__all__ = ["Source", "SOURCES", "Unit", "FormatError", "SkipReport", "ImageRecord", "caption_eval_samples"]


def _coco_images(p: Path, split: str) -> Path:
    name = p.stem.split("instances_")[-1] if p.stem.startswith("instances_") else split
    return p.parent.parent / name


# name -> (records(path, images, split, report, name), default image folder(path, split), prompt kind, upright)
SOURCES: dict[str, tuple[Callable, Callable[[Path, str], Path], str, bool]] = {
    "coco": (lambda p, i, s, r, n: coco.read_instances(p, i, r, n), _coco_images, "coco", False),
    **{name: (lambda p, i, s, r, n, pickle=pickle: refer.read(p / pickle, p / "instances.json", i, s, r, n),
              lambda p, s: p.parent / "images" / "mscoco" / "images" / "train2014", name, False)
       for name, pickle in (("refcoco", "refs(unc).p"), ("refcoco+", "refs(unc).p"), ("refcocog", "refs(umd).p"))},
    **{f"mdetr-{name}": (lambda p, i, s, r, n: mdetr.read_refexp(p, i, r, n), lambda p, s: p.parent.parent / "coco_all",
                         name, False) for name in ("refcoco", "refcoco+", "refcocog")},
    "flickr30k": (lambda p, i, s, r, n: flickr30k.read(p, s, i, r, n), lambda p, s: p / "flickr30k-images",
                  "flickr30k", False),
    "mdetr-flickr30k": (lambda p, i, s, r, n: mdetr.read_flickr(p, i, r, n),
                        lambda p, s: p.parent.parent / "flickr30k-images", "flickr30k", False),
    "vg": (lambda p, i, s, r, n: visual_genome.read(p, i, r, n), lambda p, s: p, "vg", False),
    "grit-vg": (lambda p, i, s, r, n: coco.read_captions(p, i, r, n), lambda p, s: p.parent / "vg_all", "vg", False),
    "export-hf": (lambda p, i, s, r, n: exports.read_hf(p / "hf", i, s, r, n), lambda p, s: p / "images", "vg", True),
    "export-vg": (lambda p, i, s, r, n: visual_genome.read(p / "vg" / s, i, r, n), lambda p, s: p / "images", "vg",
                  True),
    "export-coco": (lambda p, i, s, r, n: coco.read_captions(p / "coco" / f"{s}.json", i, r, n),
                    lambda p, s: p / "images", "vg", True),
    "export-conversations": (None, lambda p, s: p / "images", "vg", True),
}


@dataclass
class Source:
    name: str
    path: Path
    weight: float = 1.0
    images: Path | None = None
    split: str = "train"
    report: SkipReport = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.name not in SOURCES:
            raise ValueError(f"unknown data source {self.name!r}; known: {', '.join(SOURCES)}")
        self.path = Path(self.path)
        if not self.path.exists():
            raise FormatError(self.path, f"no such file or folder (data source {self.name})")
        if not self.weight > 0:
            raise ValueError(f"data source {self.name}: the weight must be positive, not {self.weight}")
        self.report = SkipReport(self.name)
        self._passes = 0

    @classmethod
    def parse(cls, spec: str, images: str | Path | None = None, split: str = "train") -> "Source":
        """SOURCE:PATH[:WEIGHT]; a PATH containing ':' is fine when no weight follows it."""
        name, sep, rest = spec.partition(":")
        if not sep or not rest:
            raise ValueError(f"expected SOURCE:PATH[:WEIGHT], not {spec!r}")
        path, weight = rest, 1.0
        head, sep, tail = rest.rpartition(":")
        if sep and head:
            try:
                path, weight = head, float(tail)
            except ValueError:
                pass
        return cls(name, Path(path), weight, Path(images) if images else None, split)

    @property
    def kind(self) -> str:
        return SOURCES[self.name][2]

    @property
    def image_root(self) -> Path:
        return self.images if self.images is not None else SOURCES[self.name][1](self.path, self.split)

    def records(self, report: SkipReport | None = None) -> Iterator[ImageRecord]:
        """The source's image records; what is skipped counts into `report` (default: self.report)."""
        read = SOURCES[self.name][0]
        if read is None:
            raise ValueError(f"{self.name} holds finished conversations, not records: use samples()")
        return read(self.path, self.image_root, self.split, report or self.report, self.name)

    def units(self, stage: int, seed: int = 0) -> Iterator["Unit"]:
        """The conversations this source gives, not yet with their image: cheap to make and to skip, so that each
        training process loads only the images of its own share (training/mixture.py). Each call is a new pass; the
        first pass counts into `self.report` (later passes meet the same records again)."""
        report = self.report if not self._passes else SkipReport(self.name)
        self._passes += 1
        upright = SOURCES[self.name][3]
        if self.name == "export-conversations":
            for boxes, turns, key, image, segments in exports.conversation_units(
                    self.path / "conversations" / f"{self.split}.json", self.image_root, report):
                yield Unit(image, True, boxes, turns, key, report, segments)
            return
        rng = random.Random(f"{seed}:{self.name}:{stage}")
        build = instructions.stage1 if stage == 1 else instructions.stage2
        for record in self.records(report):
            for n, (boxes, turns) in enumerate(build(record, self.kind, rng)):
                yield Unit(record.image, upright, list(boxes), turns, f"{record.key}#{n}" if n else record.key,
                           report)

    def samples(self, stage: int, seed: int = 0) -> Iterator:
        """GPT4RoI-format conversations (regionscribe.model.conversation.Sample), each image loaded when its sample is made;
        an image that cannot be read is skipped and reported."""
        for unit in self.units(stage, seed):
            sample = unit.load()
            if sample is not None:
                yield sample


@dataclass
class Unit:
    """One conversation before its image is read."""

    image: Path | bytes
    upright: bool
    boxes: list
    turns: list
    key: str
    report: SkipReport | None = None
    # an export's `segmentation` entries, one per box (None: the box itself), or empty: boxes only; decoded by load()
    segments: list = field(default_factory=list)

    def load(self):
        """The Sample, or None (reported) when the image cannot be read."""
        from regionscribe.model.conversation import Sample

        try:
            image = _open(self.image, self.upright)
        except OSError as exc:
            if self.report is not None:
                self.report.skip("missing_image", f"{self.key}: {exc}")
            return None
        try:
            masks = [segment_mask(seg, image.width, image.height) for seg in self.segments]
        except (ValueError, KeyError, TypeError) as exc:
            if self.report is not None:
                self.report.skip("bad_record", f"{self.key}: segmentation: {exc}")
            return None
        return Sample(image, self.boxes, self.turns, self.key, masks)


def caption_eval_samples(source: Source, limit: int = 500) -> Iterator:
    """Single-turn caption questions (the canonical caption prompt) for at most `limit` captioned regions of a
    held-out source, one scene per image: what regionscribe.training.evaluation scores with CIDEr-D and METEOR."""
    from regionscribe.model.conversation import Sample, Turn
    from regionscribe.model.prompts import CAPTION_PROMPT, IMAGE_PREFIX

    upright, n = SOURCES[source.name][3], 0
    for record in source.records():
        captioned = [r for r in record.regions if r.caption][:max(0, limit - n)]
        if not captioned:
            if n >= limit:
                return
            continue
        try:
            image = _open(record.image, upright)
        except OSError as exc:
            source.report.skip("missing_image", f"{record.key}: {exc}")
            continue
        for reg in captioned:
            yield Sample(image, [reg.box], [Turn(IMAGE_PREFIX + CAPTION_PROMPT, reg.caption, "caption")], record.key)
        n += len(captioned)


def _open(image, upright: bool):
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
        im = ImageOps.exif_transpose(im) if upright else im
        return im.convert("RGB")
