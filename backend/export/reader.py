"""Reading an export back: `load_conversations` (conversations/<split>.json into
regionscribe.model.conversation.Sample objects), `segment_mask` and `coco_rle_mask` (a `segmentation` entry, a COCO
RLE into a boolean mask). torch is imported only when images are loaded (regionscribe.model.images)."""
from __future__ import annotations

import json
from pathlib import Path


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
