"""The `vg` format: Visual Genome's region_descriptions.json and image_data.json per split, and attributes.json /
relationships.json when the exported regions have attributes / relations."""
from __future__ import annotations

from pathlib import Path

from regionscribe.backend.export.exported_regions import _flat_attributes, _Image, _Region
from regionscribe.backend.export.writer import _JsonArray, _Writer


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
