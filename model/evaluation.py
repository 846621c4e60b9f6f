"""Evaluation on the synthetic corpus: attribute accuracy per attribute and relation accuracy (by ranking the
allowed answers), caption metrics (CIDEr-D, BLEU-4, ROUGE-L, METEOR when Java is present) and exact match.

Every test image is encoded once; all of its questions go through the describer in one batched pass.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from model.conversation import IMAGE_PREFIX
from model.describer import RegionDescriber


def _group_by_scene(samples: Iterable) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for s in samples:
        groups[s.scene_id].append(s)
    return groups


def evaluate_samples(describer: RegionDescriber, samples: Iterable, progress: bool = False) -> dict[str, Any]:
    """Score single-turn samples (corpus.eval_samples or the same shape built from corrections)."""
    from tqdm import tqdm

    from model.metrics import caption_scores

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


def evaluate(describer: RegionDescriber, split: str = "test", n_scenes: int = 200, seed: int = 0,
             progress: bool = False) -> dict[str, Any]:
    """Metrics on a split of the synthetic corpus ("test" for base skills, "novel" for the withheld concepts)."""
    from model.corpus import eval_samples, make_scenes

    scenes = make_scenes(split, n_scenes, seed=seed)
    result = evaluate_samples(describer, eval_samples(scenes), progress=progress)
    result["split"], result["n_scenes"], result["model_version"] = split, n_scenes, describer.model_version
    return result
