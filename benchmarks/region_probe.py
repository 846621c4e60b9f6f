"""How much of each attribute the region tokens carry: a linear probe on a checkpoint's region tokens, trained on
train-split scenes and scored on val-split scenes, overall and broken down by the object's colour and size.

The LM reads attributes from these tokens, so the probe is the ceiling of what stage 2 can reach once the tower is
frozen (on tiny-default-v4, an earlier default, it explained the texture gap: 86.8 by the probe, 88.3 by the model's
answer ranking; it led to the longer stage 0 of tiny-default-v5 and v6, whose tokens it reads at 98.9 and 99.0).

    .venv/bin/python benchmarks/region_probe.py [--checkpoint DIR] [--train-scenes 600] [--val-scenes 300]

Prints JSON: accuracy per attribute, texture accuracy per colour and per size, and the seconds taken.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from regionscribe.training.corpus import BASE_VALUES, make_scenes
from regionscribe.model.checkpoints import DEFAULT_CHECKPOINT
from regionscribe.model.modeling import RegionScribeModel
from regionscribe.training.phases import scene_batch


@torch.no_grad()
def region_features(model: RegionScribeModel, split: str, n: int, seed: int, batch: int = 32):
    """[N, lm_hidden] region tokens of every object of n scenes, and the objects in the same order."""
    scenes = make_scenes(split, n, seed=seed)
    feats, objects = [], []
    for i in range(0, n, batch):
        chunk = scenes[i:i + batch]
        pv, boxes = scene_batch(model, chunk)
        image = model.encode_images(pv)
        feats.append(torch.cat(model.region_tokens(image, boxes)).float().cpu())
        objects += [o for s in chunk for o in s.objects]
    return torch.cat(feats), objects


def linear_probe(x_train, y_train, x_test, l2: float = 1e-3) -> torch.Tensor:
    """Multinomial logistic regression (L-BFGS) on standardised features; returns the test predictions."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    head = torch.nn.Linear(x_train.shape[1], int(y_train.max()) + 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x_train), y_train) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return head(x_test).argmax(1)


def breakdown(correct: list[bool], keys: list[str]) -> dict[str, float]:
    total, right = Counter(keys), Counter(k for k, ok in zip(keys, correct) if ok)
    return {k: round(100 * right[k] / total[k], 1) for k in sorted(total)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--train-scenes", type=int, default=600)
    ap.add_argument("--val-scenes", type=int, default=300)
    args = ap.parse_args()

    start = time.time()
    model = RegionScribeModel.from_pretrained(args.checkpoint).float().eval()
    if not model.uses_region_features:
        sys.exit(f"{args.checkpoint} writes boxes as text (coordinates-as-text baseline): it has no region tokens")
    x_train, train_objects = region_features(model, "train", args.train_scenes, seed=99)
    x_val, val_objects = region_features(model, "val", args.val_scenes, seed=1)
    out: dict = {"checkpoint": args.checkpoint, "version": model.metadata.get("version"),
                 "image_size": model.config.image_size,
                 "objects": {"train": len(train_objects), "val": len(val_objects)}, "accuracy": {}}
    for name, values in BASE_VALUES.items():
        y_train = torch.tensor([values.index(getattr(o, name)) for o in train_objects])
        y_val = torch.tensor([values.index(getattr(o, name)) for o in val_objects])
        correct = (linear_probe(x_train, y_train, x_val) == y_val).tolist()
        out["accuracy"][name] = round(100 * sum(correct) / len(correct), 1)
        if name == "texture":
            out["texture_by_color"] = breakdown(correct, [o.color for o in val_objects])
            out["texture_by_size"] = breakdown(correct, [o.size for o in val_objects])
    out["seconds"] = round(time.time() - start, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
