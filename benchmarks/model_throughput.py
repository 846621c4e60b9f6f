"""Per-region latency and regions/s of the describer: batched (all boxes of an image in one pass, image features
computed once) against the naive loop (one region per pass, image re-encoded), measured in the same run.

    .venv/bin/python benchmarks/model_throughput.py [--checkpoint DIR] [--boxes 16] [--images 6] [--repeats 3]

Prints JSON: medians over images x repeats, the speed-up ratio, and the process' peak RSS.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from regionscribe.model.asks import Asks
from regionscribe.training.corpus import make_scenes
from regionscribe.model.describer import DEFAULT_CHECKPOINT, RegionDescriber


def boxes_for(scene, n: int) -> list[tuple]:
    """n boxes on the image: the scene's objects, then a grid of extra boxes."""
    w, h = scene.image.size
    boxes = [o.box for o in scene.objects]
    k = 0
    while len(boxes) < n:
        i, j = k % 4, (k // 4) % 4
        boxes.append((i * w / 4, j * h / 4, (i + 1) * w / 4, (j + 1) * h / 4))
        k += 1
    return boxes[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--boxes", type=int, default=16)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--asks", choices=["caption", "full"], default="caption",
                    help="caption: short caption only; full: caption + 4 attributes")
    args = ap.parse_args()

    d = RegionDescriber.from_pretrained(args.checkpoint, cache_size=0)
    asks = Asks(caption=True, max_new_tokens=16)
    if args.asks == "full":
        from regionscribe.training.corpus import ATTRIBUTE_VALUES
        asks.attributes = {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}
    scenes = make_scenes("test", args.images, seed=123)
    d.describe(scenes[0].image, boxes_for(scenes[0], 2), asks)  # warm-up
    batched, naive = [], []
    for _ in range(args.repeats):
        for s in scenes:
            boxes = boxes_for(s, args.boxes)
            t = time.perf_counter()
            d.describe(s.image, boxes, asks)
            batched.append(time.perf_counter() - t)
            t = time.perf_counter()
            d.describe(s.image, boxes, asks, naive=True)
            naive.append(time.perf_counter() - t)
    # one new box on an image whose features are cached (the interactive case)
    d.cache_size = 8
    one_cold, one_warm = [], []
    for s in scenes:
        b = boxes_for(s, 1)
        t = time.perf_counter()
        d.describe(s.image, b, asks)
        one_cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        d.describe(s.image, b, asks)
        one_warm.append(time.perf_counter() - t)
    mb, mn = statistics.median(batched), statistics.median(naive)
    print(json.dumps({
        "benchmark": "model_throughput",
        "checkpoint": args.checkpoint,
        "model_version": d.model_version,
        "asks": args.asks,
        "boxes_per_image": args.boxes,
        "samples": len(batched),
        "batched": {"image_seconds_median": round(mb, 4), "per_region_ms": round(1000 * mb / args.boxes, 2),
                    "regions_per_s": round(args.boxes / mb, 1)},
        "naive": {"image_seconds_median": round(mn, 4), "per_region_ms": round(1000 * mn / args.boxes, 2),
                  "regions_per_s": round(args.boxes / mn, 1)},
        "speedup_batched_over_naive": round(mn / mb, 2),
        "single_new_box_ms": {"new_image_median": round(1000 * statistics.median(one_cold), 1),
                              "cached_image_median": round(1000 * statistics.median(one_warm), 1)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
