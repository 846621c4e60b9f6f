"""Reading an export back: `load_conversations` (conversations/<split>.json into
regionscribe.model.conversation.Sample objects, masks from `segmentation` by regionscribe.model.masks)."""
from __future__ import annotations

import json
from pathlib import Path

from regionscribe.model.masks import segment_mask


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
