"""The corpus' GPT4RoI-format conversations: per scene a stage-1 conversation (one region->phrase turn per object) or
a stage-2 one (captions, detailed captions, attributes, relations, multi-region reasoning), single-turn relation
drills, and the canonical single-turn evaluation samples. Each depends only on its seed and the scene's id.
"""
from __future__ import annotations

import random
from typing import Iterator

from regionscribe.model.conversation import Sample, Turn
from regionscribe.model.prompts import BBOX, IMAGE_PREFIX, REGION1, REGION2
from regionscribe.training.corpus.concepts import (
    _MIN_AREA_RATIO, _PLURALS, ATTRIBUTE_VALUES, ATTRIBUTE_WORDS, ATTRIBUTES, BASE_VALUES, LABEL_PHRASES, MAX_REGIONS,
    NUMBER_WORDS, RELATION_AXES,
)
from regionscribe.training.corpus.scenes import Box, Scene, SceneObject, _area, relations
from regionscribe.training.corpus.text import (
    _join, ATTRIBUTE_TEMPLATES, CAPTION_TEMPLATES, COUNT_TEMPLATES, DETAILED_TEMPLATES, EXTREME_TEMPLATES,
    PHRASE_TEMPLATES, RELATION_TEMPLATES, RELATION_TEXT_TEMPLATES, WHICH_TEMPLATES, YESNO_TEMPLATE, caption_text,
    detailed_text, phrase_text, relation_text,
)

TURN_KINDS = ("phrase", "caption", "detailed", "attribute", "relation", "yesno", "relation_text", "multi")


class _Regions:
    """Names objects in order of first mention: "region3 <bbox>" the first time, "region3" afterwards."""

    def __init__(self) -> None:
        self.index: dict[int, int] = {}
        self.boxes: list[Box] = []

    def name(self, i: int) -> str:
        return f"region{self.index[i] + 1}"

    def mention(self, i: int, obj: SceneObject) -> str:
        if i in self.index:
            return self.name(i)
        if len(self.boxes) >= MAX_REGIONS:
            raise ValueError(f"more than {MAX_REGIONS} regions in one conversation")
        self.index[i] = len(self.boxes)
        self.boxes.append(obj.box)
        return f"{self.name(i)} {BBOX}"


def _group_text(mentions: list[str]) -> str:
    return _join(mentions)


def _make_turn(kind: str, scene: Scene, rng: random.Random, reg: _Regions) -> tuple[Turn, tuple] | None:
    """One stage-2 turn of this kind and what it asks about (so a conversation asks each thing once), or None
    when the scene offers no valid question of that kind. Region mentions are only allocated once the turn is
    certain to be produced."""
    objs = scene.objects
    size = scene.image_size
    if kind in ("caption", "detailed", "attribute"):
        i = rng.randrange(len(objs))
        obj = objs[i]
        if kind == "caption":
            q = rng.choice(CAPTION_TEMPLATES).format(r=reg.mention(i, obj))
            return Turn(q, caption_text(obj), "caption"), ("caption", i)
        if kind == "detailed":
            q = rng.choice(DETAILED_TEMPLATES).format(r=reg.mention(i, obj))
            return Turn(q, detailed_text(obj, size), "detailed"), ("detailed", i)
        attr = rng.choice(ATTRIBUTES)
        word = rng.choice(ATTRIBUTE_WORDS[attr])
        q = rng.choice(ATTRIBUTE_TEMPLATES).format(word=word, r=reg.mention(i, obj))
        return Turn(q, getattr(obj, attr), "attribute", tuple(ATTRIBUTE_VALUES[attr]), attr), ("attribute", i, attr)

    if len(objs) < 2:
        return None
    if kind in ("relation", "yesno", "relation_text"):
        i, j = rng.sample(range(len(objs)), 2)
        rels = relations(objs[i], objs[j], size)
        if kind == "relation_text":
            if relation_text(rels, "A", "B") is None:
                return None
            template = rng.choice(RELATION_TEXT_TEMPLATES)
            q = template.format(a=reg.mention(i, objs[i]), b=reg.mention(j, objs[j]))
            answer = relation_text(rels, reg.name(i), reg.name(j))
            return Turn(q, answer, "relation_text"), ("relation_text", min(i, j), max(i, j))  # type: ignore
        axis = rng.choice(list(rels))
        if kind == "relation":
            template = rng.choice(RELATION_TEMPLATES[axis])
            q = template.format(a=reg.mention(i, objs[i]), b=reg.mention(j, objs[j]))
            return Turn(q, rels[axis], "relation", RELATION_AXES[axis], axis), ("relation", min(i, j), max(i, j), axis)
        true_label = rels[axis]
        ask_true = rng.random() < 0.5
        label = true_label if ask_true else next(x for x in RELATION_AXES[axis] if x != true_label)
        # half the time the bare label, as a Label Studio <Relations> value arrives at inference ("same colour as")
        phrase = LABEL_PHRASES[label] if rng.random() < 0.5 else label
        q = YESNO_TEMPLATE.format(a=reg.mention(i, objs[i]), label=phrase, b=reg.mention(j, objs[j]))
        turn = Turn(q, "yes" if ask_true else "no", "yesno", ("yes", "no"), axis)
        return turn, ("relation", min(i, j), max(i, j), axis)

    if kind == "multi":
        k = rng.randint(2, min(4, len(objs)))
        group = rng.sample(range(len(objs)), k)
        form = rng.choice(["which", "count", "extreme"])
        answer_index: int | None = None
        if form == "which":
            attr = rng.choice(["color", "shape"])
            values = [getattr(objs[g], attr) for g in group]
            unique = [v for v in dict.fromkeys(values) if values.count(v) == 1]
            if not unique:
                return None
            value = rng.choice(unique)
            answer_index = group[values.index(value)]
            template, fill, key = WHICH_TEMPLATES[attr], value, f"which-{attr}"
        elif form == "count":
            attr = rng.choice(["color", "shape"])
            values = [getattr(objs[g], attr) for g in group]
            pool = sorted(set(BASE_VALUES[attr]) | {getattr(o, attr) for o in objs})
            value = rng.choice(values) if rng.random() < 0.7 else rng.choice(pool)
            count = NUMBER_WORDS[values.count(value)]
            fill = _PLURALS[value] if attr == "shape" else value
            template, key = COUNT_TEMPLATES[attr], f"count-{attr}"
        else:
            which = rng.choice(["biggest", "smallest"])
            areas = sorted(((_area(objs[g].box), g) for g in group), reverse=(which == "biggest"))
            ratio = areas[0][0] / areas[1][0] if which == "biggest" else areas[1][0] / areas[0][0]
            if ratio < _MIN_AREA_RATIO:
                return None
            answer_index = areas[0][1]
            template, fill, key = EXTREME_TEMPLATES[which], None, which
        group_text = _group_text([reg.mention(g, objs[g]) for g in group])
        q = template.format(group=group_text, value=fill)
        answer = reg.name(answer_index) if answer_index is not None else count
        return Turn(q, answer, "multi", None, key), ("multi", key, fill, tuple(sorted(group)))
    raise ValueError(f"unknown turn kind {kind!r}")


_STAGE2_KINDS = ["caption", "detailed", "attribute", "relation", "yesno", "relation_text", "multi"]
_STAGE2_WEIGHTS = [2.0, 1.0, 3.0, 2.0, 1.5, 1.0, 1.5]


def _with_prefix(turns: list[Turn]) -> list[Turn]:
    if turns:
        turns[0].question = IMAGE_PREFIX + turns[0].question
    return turns


def _stage1_sample(scene: Scene, rng: random.Random) -> Sample:
    reg = _Regions()
    order = list(range(len(scene.objects)))
    rng.shuffle(order)
    turns = [Turn(rng.choice(PHRASE_TEMPLATES).format(r=reg.mention(i, scene.objects[i])),
                  phrase_text(scene.objects[i]), "phrase") for i in order]
    return Sample(scene.image, reg.boxes, _with_prefix(turns), scene.scene_id)


def _stage2_sample(scene: Scene, rng: random.Random, n_turns: tuple[int, int]) -> Sample:
    reg = _Regions()
    target = rng.randint(*n_turns)
    turns: list[Turn] = []
    seen: set[tuple] = set()
    for _ in range(target * 10):
        if len(turns) >= target:
            break
        kind = rng.choices(_STAGE2_KINDS, _STAGE2_WEIGHTS)[0]
        # Work on a copy of the region namer so a rejected turn leaves no region behind.
        trial = _Regions()
        trial.index, trial.boxes = dict(reg.index), list(reg.boxes)
        made = _make_turn(kind, scene, rng, trial)
        if made is None or made[1] in seen:
            continue
        turn, about = made
        seen.add(about)
        turns.append(turn)
        reg = trial
    return Sample(scene.image, reg.boxes, _with_prefix(turns), scene.scene_id)


def check_share(share: float, name: str) -> float:
    """A share of samples, scenes or regions (`name` says which, for the error): 0-1, else ValueError."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {share!r}")
    return float(share)


def with_masks(sample: Sample, scene: Scene, mask_share: float, seed: int | str) -> Sample:
    """The sample with each region given its object's visible mask with probability `mask_share` (the others stay
    boxes). The draw has its own random stream (seed, scene_id), so the conversation itself does not change."""
    if not mask_share:
        return sample
    rng = random.Random(f"{seed}:mask:{scene.scene_id}")
    by_box = {obj.box: obj.mask for obj in scene.objects}
    sample.masks = [by_box.get(tuple(box)) if rng.random() < mask_share else None for box in sample.boxes]
    return sample


# how far a hand-drawn box's side lies from the object's edge, as a share of the object's width or height: a little
# inside to well outside (the eval's loose boxes are 0.25 on every side: training.evaluation.caption_agreement)
LOOSE_SIDES = (-0.05, 0.3)


def grown(box: tuple, sides: tuple[float, float, float, float], size: tuple[int, int]) -> tuple:
    """`box` with its left, top, right and bottom sides moved out by those shares of its width and height (inward for
    a negative share), clamped to an image of `size` (a hand-drawn box)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    left, top, right, bottom = sides
    return (max(0.0, x1 - left * w), max(0.0, y1 - top * h), min(float(size[0]), x2 + right * w),
            min(float(size[1]), y2 + bottom * h))


def loose_box(box: tuple, size: tuple[int, int], rng: random.Random) -> tuple:
    """`box` as a hand draws it: every side moved by its own draw from LOOSE_SIDES of the object's size, kept in an
    image of `size`."""
    left, right, top, bottom = (rng.uniform(*LOOSE_SIDES) for _ in range(4))
    return grown(box, (left, top, right, bottom), size)


def with_loose_boxes(sample: Sample, scene: Scene, share: float, seed: int | str) -> Sample:
    """The sample with each box region (not a masked one) drawn loosely, as an annotator's hand draws it, with
    probability `share`: every side moved by its own draw from LOOSE_SIDES of the object's size, kept in the image.
    Its own random stream (seed, scene_id), so the conversation does not change; 0 leaves the sample as it is."""
    if not share:
        return sample
    rng = random.Random(f"{seed}:loose:{scene.scene_id}")
    boxes = []
    for box, mask in zip(sample.boxes, sample.masks):
        if mask is None and rng.random() < share:
            box = loose_box(box, scene.image_size, rng)
        boxes.append(box)
    sample.boxes = boxes
    return sample


def as_drawn(sample: Sample, scene: Scene, mask_share: float, loose_share: float, seed: str) -> Sample:
    """The sample's regions as annotators draw them: masks first (`with_masks`, matched by the object's box), then
    loose boxes for the regions left as boxes (`with_loose_boxes`); both shares 0 leave it as it is."""
    return with_loose_boxes(with_masks(sample, scene, mask_share, seed), scene, loose_share, seed)


def iter_samples(scenes: list[Scene], stage: int, seed: int = 0, turns: tuple[int, int] = (3, 6),
                 mask_share: float = 0.0, loose_share: float = 0.0) -> Iterator[Sample]:
    """One conversation per scene. Stage 1: one region→phrase turn per object, in random order. Stage 2: a
    multi-turn conversation of `turns` (inclusive range) turns mixing captions, detailed captions, attributes,
    relations (axis, yes/no, text) and multi-region reasoning. Each scene's conversation depends only on
    (seed, stage, scene_id). `mask_share`: the chance that a region comes with its object's visible mask
    (`with_masks`); 0 (all boxes) leaves the samples exactly as without masks. `loose_share`: the chance that a box
    region is drawn loosely (`with_loose_boxes`); 0 keeps the corpus' tight boxes."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, not {stage!r}")
    check_share(mask_share, "mask_share")
    check_share(loose_share, "loose_share")
    for scene in scenes:
        rng = random.Random(f"{seed}:{stage}:{scene.scene_id}")
        sample = _stage1_sample(scene, rng) if stage == 1 else _stage2_sample(scene, rng, turns)
        yield as_drawn(sample, scene, mask_share, loose_share, f"{seed}:{stage}")


def check_axes(axes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The relation axes named, as a tuple; ValueError naming any that RELATION_AXES does not have."""
    unknown = [a for a in axes if a not in RELATION_AXES]
    if unknown:
        raise ValueError(f"unknown relation axes {unknown}; known: {', '.join(RELATION_AXES)}")
    return tuple(axes)


def relation_samples(scenes: list[Scene], axes: tuple[str, ...] | list[str], seed: int = 0,
                     mask_share: float = 0.0, loose_share: float = 0.0) -> Iterator[Sample]:
    """Single-turn relation questions only (the relation drills of regionscribe.training.streams): per scene every
    ordered pair and every unambiguous axis among `axes`, with paraphrased templates, in a shuffled order.
    `mask_share` and `loose_share` as in `iter_samples` (per question: the same region may be a box in one and a mask
    in another; a model whose `relation_regions` is "box", the default, reads these masked regions as their boxes:
    training/batches.py)."""
    check_axes(axes)
    check_share(mask_share, "mask_share")
    check_share(loose_share, "loose_share")
    for scene in scenes:
        rng = random.Random(f"{seed}:drill:{scene.scene_id}")
        out = []
        for i, a in enumerate(scene.objects):
            for j, b in enumerate(scene.objects):
                if i == j:
                    continue
                for axis, label in relations(a, b, scene.image_size).items():
                    if axis in axes:
                        q = IMAGE_PREFIX + rng.choice(RELATION_TEMPLATES[axis]).format(a=REGION1, b=REGION2)
                        out.append(Sample(scene.image, [a.box, b.box],
                                          [Turn(q, label, "relation", RELATION_AXES[axis], axis)], scene.scene_id))
        rng.shuffle(out)
        yield from (as_drawn(sample, scene, mask_share, loose_share, f"{seed}:drill:{k}")
                    for k, sample in enumerate(out))


def eval_samples(scenes: list[Scene]) -> Iterator[Sample]:
    """Single-turn samples with canonical templates, each with exactly the boxes it mentions: per object a short
    caption and every attribute (canonical word); per ordered pair every unambiguous relation axis."""
    for scene in scenes:
        objs = scene.objects
        for obj in objs:
            r = REGION1
            yield Sample(scene.image, [obj.box],
                         [Turn(IMAGE_PREFIX + CAPTION_TEMPLATES[0].format(r=r), caption_text(obj), "caption")],
                         scene.scene_id)
            for attr in ATTRIBUTES:
                q = IMAGE_PREFIX + ATTRIBUTE_TEMPLATES[0].format(word=ATTRIBUTE_WORDS[attr][0], r=r)
                yield Sample(scene.image, [obj.box],
                             [Turn(q, getattr(obj, attr), "attribute", tuple(ATTRIBUTE_VALUES[attr]), attr)],
                             scene.scene_id)
        for i, a in enumerate(objs):
            for j, b in enumerate(objs):
                if i == j:
                    continue
                for axis, label in relations(a, b, scene.image_size).items():
                    q = IMAGE_PREFIX + RELATION_TEMPLATES[axis][0].format(a=REGION1, b=REGION2)
                    yield Sample(scene.image, [a.box, b.box],
                                 [Turn(q, label, "relation", RELATION_AXES[axis], axis)], scene.scene_id)
