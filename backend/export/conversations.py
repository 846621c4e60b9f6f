"""The `conversations` format: conversations/<split>.json, one GPT4RoI/LLaVA conversation per image
(`conversation`), `regionK <bbox>` placeholders, normalised boxes, optional `segmentation`."""
from __future__ import annotations

from pathlib import Path

from regionscribe.backend.export.exported_regions import _coco_rle, _Image, _leaf, _Region
from regionscribe.backend.export.writer import _JsonArray, _Writer
from regionscribe.model.prompts import ATTRIBUTE_Q, BBOX, CAPTION_Q, DETAILED_Q, IMAGE_PREFIX, RELATION_TEXT_Q, YESNO_Q


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
