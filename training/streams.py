"""Where a training phase's samples come from: endless streams drawn from the synthetic corpus (stage 1 and stage 2,
and the relation drills: see regionscribe.training.stages), and mixtures of dataset sources ("SOURCE:PATH[:WEIGHT]",
regionscribe.training.datasets) with the named recipe that lists GPT4RoI's own.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Iterator

from regionscribe.training.corpus import (
    RELATION_AXES, check_axes, check_share, iter_samples, make_scenes, relation_samples, render_overlapping_pair,
)
from regionscribe.training.corpus.episodes import copy_drill, episode
from regionscribe.training.mixture import Mixture


def with_overlapping_pairs(scenes: list, share: float, key: str) -> list:
    """`scenes` with a `share` of them replaced by heavily overlapping pairs (corpus.render_overlapping_pair, drawn
    from `key`), in a shuffled order: occluders for masks to leave out."""
    if not share:
        return scenes
    n = round(check_share(share, "overlap_share") * len(scenes))
    pairs = [render_overlapping_pair(random.Random(f"{key}:pair:{i}"), scene_id=f"train-pair-{key}-{i}")
             for i in range(n)]
    out = scenes[:len(scenes) - n] + pairs
    random.Random(f"{key}:order").shuffle(out)
    return out


def synthetic_stream(stage: int, seed: int, chunk: int = 64, mask_share: float = 0.0,
                     overlap_share: float = 0.0, loose_share: float = 0.0) -> Iterator:
    """Endless fresh training samples from the synthetic corpus' train split (never val/test/novel scenes);
    `mask_share` of the regions come with their object's visible mask (corpus.with_masks), `overlap_share` of the
    scenes are heavily overlapping pairs (`with_overlapping_pairs`), `loose_share` of the box regions are drawn
    loosely (corpus.with_loose_boxes)."""
    k = 0
    while True:
        scenes = make_scenes("train", chunk, seed=seed * 1_000_003 + k)
        scenes = with_overlapping_pairs(scenes, overlap_share, f"{seed}:{stage}:{k}")
        yield from iter_samples(scenes, stage, seed=seed * 7919 + k, mask_share=mask_share, loose_share=loose_share)
        k += 1


def replay_stream(seed: int, relations: float = 0.0, mask_share: float = 0.0, overlap_share: float = 0.0,
                  loose_share: float = 0.0) -> Iterator:
    """Ordinary samples that keep what a trained model answers while a later phase teaches it something else:
    stage-2 conversations (`synthetic_stream`), with a `relations` share of single-turn relation questions on every
    axis, balanced (`relation_stream`). With relations=0 exactly `synthetic_stream(2, seed, ...)`."""
    check_share(relations, "relations")
    drawn = dict(mask_share=mask_share, overlap_share=overlap_share, loose_share=loose_share)
    conversations = synthetic_stream(2, seed, **drawn)
    if not relations:
        yield from conversations
        return
    questions = relation_stream(tuple(RELATION_AXES), seed + 13, balance=True, **drawn)
    rng = random.Random(f"{seed}:replay")
    while True:
        yield next(questions) if rng.random() < relations else next(conversations)


def demonstration_stream(seed: int, replay: float, mask_share: float = 0.0, copy: float = 0.0,
                         overlap_share: float = 0.0, loose_share: float = 0.0, relations: float = 0.0) -> Iterator:
    """Endless demonstration episodes (corpus.episodes: a project's own name or caption style, readable only from
    the demonstrations; their regions drawn with the run's mask and loose shares), with a `replay` share of ordinary
    stage-2 samples so that a question without demonstrations is answered as before (`replay_stream`, with its
    `relations` share of relation questions, drawn with the run's mask, overlap and loose shares), and a `copy` share
    of text-only copy drills (corpus.episodes.copy_drill). `replay + copy` is below 1 (TrainConfig checks it)."""
    ordinary = replay_stream(seed + 11, relations, mask_share=mask_share, overlap_share=overlap_share,
                             loose_share=loose_share)
    rng = random.Random(f"{seed}:episodes")
    k = 0
    while True:
        draw = rng.random()
        if draw < replay:
            yield next(ordinary)
        elif draw < replay + copy:
            yield copy_drill(random.Random(f"{seed}:copy:{k}"), f"{seed}-{k}")
            k += 1
        else:
            yield episode(random.Random(f"{seed}:episode:{k}"), f"{seed}-{k}", mask_share=mask_share,
                          loose_share=loose_share)
            k += 1


def relation_stream(axes: tuple[str, ...] | list[str], seed: int, chunk: int = 32, balance: bool = False,
                    mask_share: float = 0.0, overlap_share: float = 0.0, loose_share: float = 0.0) -> Iterator:
    """Endless single-turn relation questions on `axes` from the train split, shuffled across `chunk` scenes.

    balance: per axis, keep only as many questions with the more common answer as there are with the other one.
    Left/right, above/below and bigger/smaller are balanced already (every ordered pair is asked both ways round);
    "same colour as" is about 29% of colour questions and "overlapping" about 19% of overlap questions, and on
    unbalanced data the LM learned to always give the common answer (80.5% on overlap, its share of the test split).
    """
    check_axes(axes)  # unknown axes fail here, before any training
    k = 0
    while True:
        scenes = make_scenes("train", chunk, seed=seed * 1_000_003 + 700_000 + k)
        scenes = with_overlapping_pairs(scenes, overlap_share, f"{seed}:drill:{k}")
        samples = list(relation_samples(scenes, axes, seed=seed * 7919 + k, mask_share=mask_share,
                                        loose_share=loose_share))
        random.Random(f"{seed}:{k}").shuffle(samples)
        if balance:
            counts = Counter((s.turns[0].key, s.turns[0].answer) for s in samples)
            quota = {axis: min(counts[(axis, answer)] for answer in RELATION_AXES[axis]) for axis in axes}
            kept: Counter = Counter()
            for s in samples:
                key = (s.turns[0].key, s.turns[0].answer)
                if kept[key] < quota[key[0]]:
                    kept[key] += 1
                    yield s
        else:
            yield from samples
        k += 1


def data_mixture(specs: list[str], stage: int, seed: int, epochs: int | None, pad_to: int = 1,
                 images: str | None = None) -> tuple[Mixture, list]:
    """The stage's mixture of dataset sources ("SOURCE:PATH[:WEIGHT]", training/datasets) and the sources (whose
    .report says what was skipped)."""
    from regionscribe.training.datasets import Source

    sources = [Source.parse(spec, images=images) for spec in specs]
    streams = [(src.name, (lambda n, src=src: src.units(stage, seed=seed * 1000 + n)), src.weight)
               for src in sources]
    return Mixture(streams, seed=seed * 7919 + stage, epochs=epochs, pad_to=pad_to), sources


GPT4ROI_RECIPE = {  # GPT4RoI's configs/stage{1,2}.py, on its data layout (../shared/research/datasets.md, §5)
    1: ["coco:{root}/coco/annotations/instances_train2017.json",
        "mdetr-refcoco:{root}/mdetr_annotations/finetune_refcoco_train.json",
        "mdetr-refcoco+:{root}/mdetr_annotations/finetune_refcoco+_train.json"],
    2: ["mdetr-refcocog:{root}/mdetr_annotations/finetune_refcocog_train.json",
        "mdetr-flickr30k:{root}/mdetr_annotations/final_flickr_mergedGT_train.json",
        "grit-vg:{root}/visual_genome/train.json"],
}


def recipe(name: str, root: str | Path) -> dict[int, list[str]]:
    """A named recipe's data sources per stage under `root` (GPT4RoI's ./data folder)."""
    if name != "gpt4roi":
        raise ValueError(f"unknown recipe {name!r}; known: gpt4roi")
    return {stage: [spec.format(root=str(root).rstrip("/")) for spec in specs]
            for stage, specs in GPT4ROI_RECIPE.items()}
