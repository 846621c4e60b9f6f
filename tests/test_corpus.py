"""The synthetic corpus: deterministic scenes, tight boxes, clean splits and well-formed GPT4RoI conversations."""

import random
import re

import numpy as np
import pytest

from regionscribe.training import corpus as C
from regionscribe.model.errors import PlaceholderError


@pytest.fixture(scope="module")
def train_scenes():
    return C.make_scenes("train", 60, seed=3)


@pytest.fixture(scope="module")
def novel_scenes():
    return C.make_scenes("novel", 40, seed=3)


def _turns(samples):
    return [[(t.question, t.answer, t.kind, t.candidates, t.key) for t in s.turns] for s in samples]


def test_same_seed_same_scenes_and_conversations():
    a, b = C.make_scenes("train", 8, seed=5), C.make_scenes("train", 8, seed=5)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [s.objects for s in a] == [s.objects for s in b]
    for stage in (1, 2):
        assert _turns(C.iter_samples(a, stage, seed=1)) == _turns(C.iter_samples(b, stage, seed=1))
    other = C.make_scenes("train", 8, seed=6)
    assert [s.image.tobytes() for s in a] != [s.image.tobytes() for s in other]
    val = C.make_scenes("val", 8, seed=5)
    assert not {s.image.tobytes() for s in a} & {s.image.tobytes() for s in val}
    rng1, rng2 = random.Random(9), random.Random(9)
    assert C.render_scene(rng1).image.tobytes() == C.render_scene(rng2).image.tobytes()


def _foreground(image):
    """Pixels that are not the grey background: coloured (chroma) or dark (black objects and their shades)."""
    arr = np.asarray(image).astype(int)
    chroma = arr.max(axis=2) - arr.min(axis=2)
    return (chroma > 25) | (arr.max(axis=2) < 120)


def test_boxes_are_tight_around_the_drawn_pixels(train_scenes, novel_scenes):
    checked_tight = 0
    for scene in train_scenes + novel_scenes:
        fg = _foreground(scene.image)
        inside = np.zeros_like(fg)
        for obj in scene.objects:
            x0, y0, x1, y1 = map(int, obj.box)
            assert obj.box == (x0, y0, x1, y1)
            assert 0 <= x0 < x1 <= scene.image.width and 0 <= y0 < y1 <= scene.image.height
            inside[y0:y1, x0:x1] = True
        assert not (fg & ~inside).any(), f"{scene.scene_id}: drawn pixels outside every box"
        for obj in scene.objects:
            others = [o for o in scene.objects if o is not obj]
            if any(C.relations(obj, o, scene.image_size)["overlap"] == "overlapping" for o in others):
                continue
            x0, y0, x1, y1 = map(int, obj.box)
            crop = fg[y0:y1, x0:x1]
            # every edge row/column of the box holds drawn pixels: the box is tight
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any(), scene.scene_id
            assert crop.mean() > 0.3   # the shape fills a good part of its box
            checked_tight += 1
    assert checked_tight > 50


def test_size_classes_follow_the_box(train_scenes):
    seen = set()
    for scene in train_scenes:
        for obj in scene.objects:
            frac = max(obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]) / max(scene.image_size)
            lo, hi = C.SIZE_RANGES[obj.size]
            assert lo - 0.02 <= frac <= hi + 0.02
            seen.add(obj.size)
    assert seen == set(C.SIZES)


def test_base_splits_never_hold_withheld_concepts_and_novel_always_does(novel_scenes):
    for split in ("train", "val", "test"):
        for scene in C.make_scenes(split, 60, seed=1):
            for obj in scene.objects:
                assert obj.color != C.WITHHELD_COLOR and obj.shape != C.WITHHELD_SHAPE
                assert obj.color in C.COLORS and obj.shape in C.SHAPES
            for sample in C.iter_samples([scene], 2):
                text = " ".join(t.question + " " + t.answer for t in sample.turns)
                assert C.WITHHELD_COLOR not in text and C.WITHHELD_SHAPE not in text
    kinds = set()
    for scene in novel_scenes:
        assert any(o.color == C.WITHHELD_COLOR or o.shape == C.WITHHELD_SHAPE for o in scene.objects)
        kinds |= {("color" if o.color == C.WITHHELD_COLOR else "") + ("shape" if o.shape == C.WITHHELD_SHAPE else "")
                  for o in scene.objects}
    assert {"color", "shape"} <= kinds


def test_every_sample_has_one_box_per_bbox(train_scenes, novel_scenes):
    scenes = train_scenes + novel_scenes
    for stage in (1, 2):
        for sample, scene in zip(C.iter_samples(scenes, stage), scenes):
            n = sum(t.question.count(C.BBOX) for t in sample.turns)
            assert n == len(sample.boxes) > 0
            assert sample.turns[0].question.startswith(C.IMAGE_PREFIX)
            assert all(C.IMAGE not in t.question for t in sample.turns[1:])
            boxes = [o.box for o in scene.objects]
            assert all(b in boxes for b in sample.boxes)
            # GPT4RoI convention: regionK is introduced with <bbox> once, in order, and named plainly afterwards
            text = " ".join(t.question for t in sample.turns)
            introduced = re.findall(r"region(\d+) <bbox>", text)
            assert introduced == [str(k) for k in range(1, len(sample.boxes) + 1)]
            for k, name in enumerate(re.findall(r"region(\d+)(?! <bbox>)", text)):
                first = text.index(f"region{name} <bbox>")
                assert first < [m.start() for m in re.finditer(rf"region{name}\b(?! <bbox>)", text)][0]
            if stage == 1:
                assert len(sample.turns) == len(scene.objects)
                assert {t.answer for t in sample.turns} == {f"{o.color} {o.shape}" for o in scene.objects}
            else:
                assert 3 <= len(sample.turns) <= 6
            for t in sample.turns:
                assert t.kind in C.TURN_KINDS
                if t.kind in ("attribute", "relation", "yesno"):
                    assert t.answer in t.candidates and t.key is not None
    with pytest.raises(PlaceholderError):
        C.Sample(scenes[0].image, [], [C.Turn("What is in region1 <bbox>?", "x", "phrase")], "bad")


def _box_of(sample, region):
    return sample.boxes[int(region[len("region"):]) - 1]


def _object(scene, box):
    return next(o for o in scene.objects if o.box == box)


def test_relation_answers_agree_with_geometry(train_scenes):
    n_checked = 0
    for scene, sample in zip(train_scenes, C.iter_samples(train_scenes, 2, turns=(6, 6))):
        regions = {}
        for turn in sample.turns:
            # map region names to boxes as the conversation introduces them
            for name in re.findall(r"(region\d+) <bbox>", turn.question):
                regions[name] = _box_of(sample, name)
            names = re.findall(r"region\d+", turn.question)
            if turn.kind in ("relation", "yesno", "relation_text"):
                a, b = (_object(scene, regions[n]) for n in names[:2])
                w, h = scene.image_size
                rels = C.relations(a, b, scene.image_size)
                acx, bcx = (a.box[0] + a.box[2]) / 2, (b.box[0] + b.box[2]) / 2
                acy, bcy = (a.box[1] + a.box[3]) / 2, (b.box[1] + b.box[3]) / 2
                if "horizontal" in rels:
                    assert abs(acx - bcx) >= 0.1 * w and (rels["horizontal"] == "left of") == (acx < bcx)
                if "vertical" in rels:
                    assert abs(acy - bcy) >= 0.1 * h and (rels["vertical"] == "above") == (acy < bcy)
                if turn.kind == "relation":
                    assert turn.answer == rels[turn.key]
                elif turn.kind == "yesno":
                    asked = [lab for lab in C.RELATION_AXES[turn.key]
                             if f" {C.LABEL_PHRASES[lab]} " in turn.question or f" {lab} " in turn.question]
                    label = max(asked, key=len)   # "not overlapping" contains "overlapping"
                    assert (turn.answer == "yes") == (rels[turn.key] == label)
                else:
                    assert turn.answer.startswith(names[0] + " is ") and turn.answer.endswith(" " + names[1])
                    for axis in ("horizontal", "vertical", "size"):
                        if axis in rels:
                            assert rels[axis] in turn.answer
                n_checked += 1
            elif turn.kind == "multi" and turn.answer.startswith("region"):
                assert turn.answer in names
    assert n_checked > 50
    # overlap is neither rare nor everywhere
    pairs = [C.relations(a, b, s.image_size)["overlap"] for s in train_scenes for a in s.objects for b in s.objects
             if a is not b]
    assert 0.05 < pairs.count("overlapping") / len(pairs) < 0.4


def test_yesno_is_balanced(train_scenes):
    answers = [t.answer for s in C.iter_samples(train_scenes * 3, 2, turns=(6, 6)) for t in s.turns
               if t.kind == "yesno"]
    assert len(answers) > 30 and 0.3 < answers.count("yes") / len(answers) < 0.7


def test_eval_samples_cover_every_attribute_and_axis(train_scenes):
    samples = list(C.eval_samples(train_scenes))
    assert all(len(s.turns) == 1 for s in samples)
    assert all(s.turns[0].question.count(C.BBOX) == len(s.boxes) for s in samples)
    attrs = {s.turns[0].key for s in samples if s.turns[0].kind == "attribute"}
    axes = {s.turns[0].key for s in samples if s.turns[0].kind == "relation"}
    assert attrs == set(C.ATTRIBUTES) and axes == set(C.RELATION_AXES)
    n_objects = sum(len(s.objects) for s in train_scenes)
    assert sum(s.turns[0].kind == "caption" for s in samples) == n_objects
    for s in samples:
        t = s.turns[0]
        if t.kind == "attribute":
            assert t.candidates == tuple(C.ATTRIBUTE_VALUES[t.key]) and t.answer in t.candidates
        if t.kind == "relation":
            assert t.candidates == C.RELATION_AXES[t.key] and len(s.boxes) == 2


def test_relation_samples_ask_only_the_given_axes_with_true_answers(train_scenes):
    samples = list(C.relation_samples(train_scenes, ("horizontal", "vertical"), seed=1))
    objects = {(s.scene_id, o.box): o for s in train_scenes for o in s.objects}
    sizes = {s.scene_id: s.image_size for s in train_scenes}
    asked = set()
    for s in samples:
        t = s.turns[0]
        assert t.kind == "relation" and t.key in ("horizontal", "vertical") and len(s.boxes) == 2
        assert t.question.count(C.BBOX) == 2 and t.candidates == C.RELATION_AXES[t.key]
        a, b = objects[(s.scene_id, s.boxes[0])], objects[(s.scene_id, s.boxes[1])]
        assert t.answer == C.relations(a, b, sizes[s.scene_id])[t.key]
        asked.add((s.scene_id, s.boxes[0], s.boxes[1], t.key))
    # every ordered pair on every unambiguous position axis, once
    expected = {(sc.scene_id, a.box, b.box, axis) for sc in train_scenes for a in sc.objects for b in sc.objects
                if a is not b for axis in C.relations(a, b, sc.image_size) if axis in ("horizontal", "vertical")}
    assert asked == expected and len(samples) == len(expected)
    # both answers of each axis occur (ordered pairs come both ways round)
    assert {s.turns[0].answer for s in samples} == {"left of", "right of", "above", "below"}
    with pytest.raises(ValueError, match="unknown relation axes"):
        list(C.relation_samples(train_scenes, ("diagonal",)))


def test_vocabulary_holds_every_concept():
    text = " ".join(C.vocabulary_text())
    for word in [C.WITHHELD_COLOR, C.WITHHELD_SHAPE, *C.COLORS, *C.SHAPES, *C.TEXTURES, *C.SIZES, "region16",
                 "sixteen", "colour", "material", *C.RELATION_LABELS, C.IMAGE_PREFIX.strip()]:
        assert word in text, word
    for template in C.CAPTION_TEMPLATES:
        assert template.format(r="region1 <bbox>") in C.vocabulary_text()


def test_loose_boxes_are_drawn_round_the_object_without_changing_the_conversations(train_scenes):
    """`loose_share` moves each side of a box region by its own draw from LOOSE_SIDES (as a hand draws a box), keeps
    it in the image, leaves masked regions and the questions alone, and is deterministic; 0 changes nothing."""
    from regionscribe.training.corpus.samples import LOOSE_SIDES

    scenes = train_scenes[:20]
    tight = list(C.iter_samples(scenes, 2, seed=5, mask_share=0.3))
    assert _turns(list(C.iter_samples(scenes, 2, seed=5, mask_share=0.3, loose_share=0.0))) == _turns(tight)
    loose = list(C.iter_samples(scenes, 2, seed=5, mask_share=0.3, loose_share=1.0))
    assert _turns(loose) == _turns(tight)
    assert [s.boxes for s in loose] == [s.boxes for s in C.iter_samples(scenes, 2, seed=5, mask_share=0.3,
                                                                       loose_share=1.0)]
    moved = 0
    for scene, t, s in zip(scenes, tight, loose):
        w_img, h_img = scene.image_size
        for (a1, b1, a2, b2), (x1, y1, x2, y2), mask in zip(t.boxes, s.boxes, s.masks):
            if mask is not None:
                assert (x1, y1, x2, y2) == (a1, b1, a2, b2)  # a mask keeps its object's box
                continue
            w, h = a2 - a1, b2 - b1
            lo, hi = LOOSE_SIDES
            assert 0 <= x1 and 0 <= y1 and x2 <= w_img and y2 <= h_img
            assert a1 - hi * w - 1e-6 <= x1 <= a1 - lo * w + 1e-6 and a2 + lo * w - 1e-6 <= x2 <= a2 + hi * w + 1e-6
            assert b1 - hi * h - 1e-6 <= y1 <= b1 - lo * h + 1e-6 and b2 + lo * h - 1e-6 <= y2 <= b2 + hi * h + 1e-6
            moved += (x1, y1, x2, y2) != (a1, b1, a2, b2)
    assert moved > 20
    drill = list(C.relation_samples(scenes, ("horizontal",), seed=0, loose_share=1.0))
    assert drill and [s.turns[0].answer for s in drill] == \
        [s.turns[0].answer for s in C.relation_samples(scenes, ("horizontal",), seed=0)]
    with pytest.raises(ValueError, match="loose_share must be between 0 and 1"):
        next(C.iter_samples(scenes, 2, loose_share=-0.1))
    from regionscribe.training.stages import TrainConfig

    with pytest.raises(ValueError, match="loose_share must be between 0 and 1"):
        TrainConfig(loose_share=2.0)
