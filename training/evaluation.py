"""Evaluation on the synthetic corpus: attribute accuracy per attribute and relation accuracy (by ranking the
allowed answers), caption metrics (CIDEr-D, BLEU-4, ROUGE-L, METEOR when Java is present) and exact match, and how
often a served caption agrees with the served choices (`caption_agreement`).

Every test image is encoded once; all of its questions go through the describer in one batched pass.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from regionscribe.model.agreement import mentions
from regionscribe.model.asks import Asks
from regionscribe.model.describer import RegionDescriber
from regionscribe.model.prompts import IMAGE_PREFIX

AGREEMENT_ATTRIBUTES = ("color", "shape")  # the attributes every caption of the corpus names


def _group_by_scene(samples: Iterable) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for s in samples:
        groups[s.scene_id].append(s)
    return groups


def evaluate_samples(describer: RegionDescriber, samples: Iterable, progress: bool = False) -> dict[str, Any]:
    """Score single-turn samples (corpus.eval_samples or the same shape built from corrections)."""
    from tqdm import tqdm

    from regionscribe.training.caption_metrics import caption_scores

    correct: dict[str, list[int]] = defaultdict(list)
    gts: dict[str, list[str]] = {}
    res: dict[str, list[str]] = {}
    groups = _group_by_scene(samples)
    for scene_id, group in tqdm(groups.items(), desc="eval", disable=not progress, dynamic_ncols=True):
        boxes: list[tuple] = []
        questions = []
        for s in group:
            idx = []
            for b in s.boxes:
                b = tuple(b)
                if b not in boxes:
                    boxes.append(b)
                idx.append(boxes.index(b))
            turn = s.turns[0]
            text = turn.question[len(IMAGE_PREFIX):] if turn.question.startswith(IMAGE_PREFIX) else turn.question
            questions.append((text, idx, list(turn.candidates) if turn.candidates else None))
        answers = describer.ask(group[0].image, boxes, questions, image_key=f"eval:{scene_id}")
        for k, (s, a) in enumerate(zip(group, answers)):
            turn = s.turns[0]
            if turn.candidates:
                top = a[0][0]
                bucket = "relation" if turn.kind == "relation" else f"{turn.kind}:{turn.key}"
                correct[bucket].append(int(top == turn.answer))
                if turn.kind == "relation":
                    correct[f"relation:{turn.key}"].append(int(top == turn.answer))
            else:
                key = f"{scene_id}:{k}"
                gts[key] = [turn.answer]
                res[key] = [a[0]]
    out: dict[str, Any] = {k: round(100.0 * sum(v) / len(v), 2) for k, v in sorted(correct.items())}
    out["counts"] = {k: len(v) for k, v in sorted(correct.items())}
    if gts:
        out.update({f"caption:{k}": (round(v, 2) if isinstance(v, float) else v)
                    for k, v in caption_scores(gts, res).items()})
        out["counts"]["caption"] = len(gts)
    return out


def caption_agreement(describer: RegionDescriber, scenes: list, progress: bool = False,
                      margin: float = 0.0) -> dict[str, Any]:
    """Every object of `scenes` described as the backend describes a box (one describe() call per image, with a
    caption and the colour and shape choices of labeling_configs/region_attributes.xml), once as served and once
    with `agree_caption` off ("raw"): the share of captions that name the top colour and the top shape, the served
    top choices' accuracy (percent), and the captions' CIDEr-D against the corpus caption. `margin` > 0 grows every
    box by that share of its sides, as loosely as annotators draw them."""
    from tqdm import tqdm

    from regionscribe.training.corpus import ATTRIBUTE_VALUES, caption_text
    from regionscribe.training.corpus.samples import grown
    from regionscribe.training.caption_metrics import caption_scores

    asks = Asks(caption=True, attributes={a: list(ATTRIBUTE_VALUES[a]) for a in AGREEMENT_ATTRIBUTES})
    gts = {f"{s.scene_id}:{k}": [caption_text(o)] for s in scenes for k, o in enumerate(s.objects)}
    out: dict[str, Any] = {}
    served = describer.agree_caption
    try:
        for suffix, agree in (("_raw", False), ("", True)):
            describer.agree_caption = agree
            captions: dict[str, list[str]] = {}
            agreeing = right = 0
            for scene in tqdm(scenes, desc=f"agreement{suffix}", disable=not progress, dynamic_ncols=True):
                boxes = [grown(o.box, (margin,) * 4, scene.image_size) for o in scene.objects]
                got = describer.describe(scene.image, boxes, asks, image_key=f"eval:{scene.scene_id}")
                for k, (obj, region) in enumerate(zip(scene.objects, got.regions)):
                    captions[f"{scene.scene_id}:{k}"] = [region.caption or ""]
                    tops = {a: region.attributes[a][0][0] for a in AGREEMENT_ATTRIBUTES}
                    agreeing += all(mentions(region.caption or "", top) for top in tops.values())
                    right += sum(tops[a] == getattr(obj, a) for a in AGREEMENT_ATTRIBUTES)
            n = max(len(gts), 1)
            out[f"caption_agreement{suffix}"] = round(100.0 * agreeing / n, 2)
            out[f"caption_agreement{suffix}:choices"] = round(100.0 * right / (n * len(AGREEMENT_ATTRIBUTES)), 2)
            out[f"caption_agreement{suffix}:CIDEr-D"] = round(caption_scores(gts, captions, with_meteor=False)["CIDEr-D"], 2)
    finally:
        describer.agree_caption = served
    out["caption_agreement_regions"] = len(gts)
    return out


def evaluate(describer: RegionDescriber, split: str = "test", n_scenes: int = 200, seed: int = 0,
             progress: bool = False, agreement: bool = True) -> dict[str, Any]:
    """Metrics on a split of the synthetic corpus ("test" for base skills, "novel" for the withheld concepts);
    `agreement`: also caption_agreement on the same scenes."""
    from regionscribe.training.corpus import eval_samples, make_scenes

    scenes = make_scenes(split, n_scenes, seed=seed)
    result = evaluate_samples(describer, eval_samples(scenes), progress=progress)
    if agreement:
        result.update(caption_agreement(describer, scenes, progress=progress))
    result["split"], result["n_scenes"], result["model_version"] = split, n_scenes, describer.model_version
    return result


def evaluate_sources(describer: RegionDescriber, specs: list[str], limit: int = 500, images: str | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """Region-caption CIDEr-D and METEOR (as GPT4RoI reports them on VG) on held-out dataset sources
    ("SOURCE:PATH", training/datasets): each region with a caption, asked with the canonical caption prompt; at most
    `limit` regions per source."""
    from regionscribe.training.datasets import Source, caption_eval_samples

    out: dict[str, Any] = {}
    for spec in specs:
        src = Source.parse(spec, images=images)
        metrics = evaluate_samples(describer, caption_eval_samples(src, limit), progress=progress)
        out[spec] = {**{k: v for k, v in metrics.items() if k.startswith("caption:") or k == "counts"},
                     "skipped": dict(src.report.counts)}
    return out
