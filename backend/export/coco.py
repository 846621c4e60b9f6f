"""The `coco` format: coco/<split>.json, COCO region captions (images, annotations with bbox and caption, categories
from the region labels, `segmentation` for polygons, ellipses and brushes), readable by pycocotools."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from regionscribe.backend.export.exported_regions import _coco_rle, _Image
from regionscribe.backend.export.writer import _JsonArray, _Writer


class _Coco(_Writer):
    name = "coco"

    def __init__(self, root: Path, splits: list[str], info: dict):
        super().__init__(root, splits)
        head = "{" + f'"info":{json.dumps(info, ensure_ascii=False)},"licenses":[],"images":['
        self.images = {s: _JsonArray(root / "coco" / f"{s}.json", head=head, tail="]") for s in splits}
        self.annotations = {s: _JsonArray(root / "coco" / f".{s}.annotations.part", head="", tail="")
                            for s in splits}
        self.categories: dict[str, int] = {}

    @classmethod
    def for_export(cls, root: Path, splits: list[str], copy: bool) -> _Coco:
        # no date in the data files: the same selection gives byte-identical files (the date is in the
        # manifest)
        return cls(root, splits, {"description": "regionscribe region captions", "version": "1"})

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
