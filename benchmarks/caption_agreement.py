"""How often a served caption names the served colour and shape choices, as served and without agreement ("raw"),
with the choices' accuracy and the captions' CIDEr-D, on tight boxes (the corpus') and on loose boxes grown by a
margin of their sides, as annotators draw them. Prints JSON.

    .venv/bin/python benchmarks/caption_agreement.py [--checkpoint DIR] [--scenes 200] [--margins 0,0.25]
"""
from __future__ import annotations

import argparse
import json
import time

from regionscribe.training.corpus import make_scenes
from regionscribe.model.describer import DEFAULT_CHECKPOINT, RegionDescriber
from regionscribe.training.evaluation import caption_agreement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--split", default="test")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--margins", default="0,0.25", help="comma list of box margins (share of each side)")
    args = parser.parse_args(argv)
    describer = RegionDescriber.from_pretrained(args.checkpoint)
    scenes = make_scenes(args.split, args.scenes, seed=args.seed)
    out = {"checkpoint": args.checkpoint, "model_version": describer.model_version, "split": args.split,
           "scenes": args.scenes, "seed": args.seed, "margins": {}}
    for margin in (float(m) for m in args.margins.split(",")):
        started = time.perf_counter()
        result = caption_agreement(describer, scenes, margin=margin)
        result["seconds"] = round(time.perf_counter() - started, 1)
        out["margins"][str(margin)] = result
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
