"""The synthetic corpus written as a Visual Genome folder (JPEG files, image_data.json, region_descriptions.json in
the published field names): data for exercising the dataset path of training (tests, benchmarks/train_scaling.py)
with the same reader as the real dataset."""
from __future__ import annotations

import json
from pathlib import Path

from regionscribe.training.corpus import caption_text, make_scenes


def write_visual_genome(root: str | Path, n_scenes: int, seed: int = 5, split: str = "train") -> Path:
    root = Path(root)
    (root / "VG_100K").mkdir(parents=True, exist_ok=True)
    images, regions = [], []
    for i, scene in enumerate(make_scenes(split, n_scenes, seed=seed), start=1):
        scene.image.save(root / "VG_100K" / f"{i}.jpg", quality=95)
        w, h = scene.image.size
        images.append({"image_id": i, "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{i}.jpg", "width": w,
                       "height": h})
        regions.append({"id": i, "regions": [
            {"region_id": i * 100 + k, "image_id": i, "phrase": caption_text(o), "x": o.box[0], "y": o.box[1],
             "width": o.box[2] - o.box[0], "height": o.box[3] - o.box[1]} for k, o in enumerate(scene.objects)]})
    (root / "image_data.json").write_text(json.dumps(images))
    (root / "region_descriptions.json").write_text(json.dumps(regions))
    return root
