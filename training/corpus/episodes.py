"""Demonstration episodes: conversations whose answer only the demonstrations can give (Cheetah's demonstrative
instructions on the synthetic corpus, model/demonstrations.py).

Each episode is a project with a convention of its own, shown by accepted regions of other images before the question:
- a *name*: one concept (a shape or a colour, the withheld star and purple among them) goes by a made-up word in
  that project alone ("a small red solid blicket", "shape: blicket"); the withheld concepts appear under no other
  name (`Convention.hides_withheld`);
- a *caption style*: the fields of the caption in another order, joined another way ("circle, red, small"); long
  space-joined styles drawn more often (`draw_style`).
The regions may be drawn as annotators draw them (masks, loose boxes: `episode`'s shares). The word and the style
are drawn afresh for every episode, so no weight can hold them: the model learns to read them from the
demonstrations. The held-out styles and fresh words of `project` are what benchmarks/demonstrations.py
measures with.
"""
from __future__ import annotations

import itertools
import random
import zlib
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image

from regionscribe.model.conversation import Sample, Turn
from regionscribe.model.demonstrations import DemoRegion, block
from regionscribe.model.prompts import ATTRIBUTE_Q, CAPTION_Q, IMAGE_PREFIX, REGION1
from regionscribe.training.corpus.concepts import (
    ATTRIBUTES, BASE_VALUES, SHAPES, WITHHELD_COLOR, WITHHELD_SHAPE,
)
from regionscribe.training.corpus.samples import as_drawn, loose_box
from regionscribe.training.corpus.scenes import Scene, SceneObject, render_scene

_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
# caption fields in the default caption's order ("a {size} {color} {texture} {shape}": corpus.text.caption_text)
FIELDS = ("size", "color", "texture", "shape")
DEFAULT_STYLE = (FIELDS, " ", "a ")
_SEPARATORS = (", ", " ", " / ", " - ", "; ")
_LEADS = ("", "a ", "the ", "one ")
# the share of episodes that rename a concept (the others show a caption style): copying a made-up word of several
# tokens from the nearest demonstration is what the tiny LM learns slowest
NAME_SHARE = 0.65
# the share of name episodes that ask about the renamed concept itself (the others ask about another object of the
# scene, which keeps its own name). When the others asked about any object, the renamed one among them, 62% of
# name episodes asked about it, and the models gave the word to other shapes (these kept their names 52-77%
# of the time at k=4 in benchmarks/demonstrations.py; when 85% asked about it, 17%)
TARGET_SHARE = 0.5
# the share of the other name episodes whose demonstrations show the renamed concept next to the question (the most
# alike place, where a nearest-neighbour lookup puts a look-alike): the word must be read off the demonstration of
# the same concept, not copied from the nearest line. Without it 17% of them had the concept last
CONTRAST_SHARE = 0.5
# the attributes' withheld values, which an episode names only by a project's own word
_WITHHELD = {"color": WITHHELD_COLOR, "shape": WITHHELD_SHAPE}
# how a style episode draws its style: how many fields, then whether they are joined by spaces, then one of the
# split's styles with both. Long styles joined by spaces, whose field boundaries only the words' kinds show, are
# drawn more often than their share of the styles (4 fields: 40%, spaces: 20%), as they are where the models read
# least: v12, trained on a uniform draw, followed 4-field space-joined held-out styles exactly 72.7% of the time at
# k=4 (32 of 44, most by dropping the texture after the colour) and the others 97.0% (192 of 198), on 40 held-out
# styles; 900 episode steps from v12 with this draw took the first to 97.7% (43 of 44), but not the styles overall
# (benchmarks/demonstrations.py, 8 projects: 85.2% against v12's 84.7): a colour written late in a caption is read
# off the demonstrations (README, "Demonstrations after v12")
STYLE_FIELDS = {2: 0.15, 3: 0.3, 4: 0.55}
SPACE_SHARE = 0.4


def nonsense_name(rng: random.Random) -> str:
    """A made-up word of two or three syllables ("blicket"-like): a name no concept has outside its project."""
    word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 2, 3))))
    return word + (rng.choice(_CONSONANTS) if rng.random() < 0.5 else "")


@lru_cache(maxsize=None)
def caption_styles(split: str | None = None) -> tuple[tuple[tuple[str, ...], str, str], ...]:
    """Every caption style: 2-4 of the fields in any order, a separator and a lead word; not the default one. With
    `split`, those of that split (`style_split`). Computed once: every style episode draws from them."""
    if split is not None:
        return tuple(s for s in caption_styles() if style_split(s) == split)
    styles = [(order, sep, lead) for n in (2, 3, 4) for order in itertools.permutations(FIELDS, n)
              for sep in _SEPARATORS for lead in _LEADS]
    return tuple(s for s in styles if s != DEFAULT_STYLE)


@lru_cache(maxsize=None)
def _styles_with(split: str, n: int, spaced: bool) -> tuple[tuple[tuple[str, ...], str, str], ...]:
    return tuple(s for s in caption_styles(split) if len(s[0]) == n and (s[1] == " ") == spaced)


def draw_style(rng: random.Random, split: str = "train") -> tuple[tuple[str, ...], str, str]:
    """A caption style of the split, its number of fields drawn by STYLE_FIELDS and spaces by SPACE_SHARE."""
    n = rng.choices(tuple(STYLE_FIELDS), weights=tuple(STYLE_FIELDS.values()))[0]
    return rng.choice(_styles_with(split, n, rng.random() < SPACE_SHARE))


def style_split(style: tuple[tuple[str, ...], str, str]) -> str:
    """"held_out" for one style in five (by a stable hash of the style), "train" for the others."""
    return "held_out" if zlib.crc32(repr(style).encode()) % 5 == 0 else "train"


@dataclass(frozen=True)
class Convention:
    """A project's way of answering: a concept renamed (`attribute`, `value` -> `name`) and a caption style."""

    attribute: str | None = None
    value: str | None = None
    name: str | None = None
    style: tuple[tuple[str, ...], str, str] = DEFAULT_STYLE

    def answer(self, obj: SceneObject, attribute: str) -> str:
        value = getattr(obj, attribute)
        return self.name if attribute == self.attribute and value == self.value else value

    def caption(self, obj: SceneObject) -> str:
        order, sep, lead = self.style
        return lead + sep.join(self.answer(obj, f) for f in order)

    def shows(self, obj: SceneObject) -> bool:
        """Whether the convention's renamed concept is this object's."""
        return self.attribute is not None and getattr(obj, self.attribute) == self.value

    def hides_withheld(self, obj: SceneObject) -> bool:
        """Whether no answer about the object names a withheld concept (purple, star) by its own name: the withheld
        concepts are what a project teaches by its corrections (the feedback loop), so an episode may show them only
        under a project's own word."""
        return all(getattr(obj, a) != w or (a, w) == (self.attribute, self.value) for a, w in _WITHHELD.items())


def project(rng: random.Random, kind: str, split: str = "train", value: str | None = None) -> Convention:
    """A convention of `kind` "name" (a concept renamed: `value`, or one drawn, the withheld ones half the time) or
    "style" (a caption style of the split)."""
    if kind == "name":
        attribute = "shape" if value in (*SHAPES, WITHHELD_SHAPE) or (value is None and rng.random() < 0.75) \
            else "color"
        if value is None:
            value = _WITHHELD[attribute] if rng.random() < 0.5 else rng.choice(BASE_VALUES[attribute])
        return Convention(attribute, value, nonsense_name(rng))
    if kind == "style":
        return Convention(style=draw_style(rng, split))
    raise ValueError(f"unknown convention kind {kind!r}: 'name' or 'style'")


def scene_with(rng: random.Random, convention: Convention, split: str, scene_id: str, tries: int = 60) -> Scene:
    """A scene of `split`'s kind where the convention's concept appears on an object that names no other withheld
    concept (drawn again until it does)."""
    withheld = convention.value in _WITHHELD.values()
    for _ in range(tries):
        scene = render_scene(rng, require_withheld=withheld, allow_withheld=withheld or split == "novel",
                             scene_id=scene_id)
        if any(convention.shows(o) and convention.hides_withheld(o) for o in scene.objects):
            return scene
    raise RuntimeError(f"no scene with {convention.attribute} {convention.value} in {tries} tries")


def answers_of(convention: Convention, obj: SceneObject, rng: random.Random | None = None,
               attributes: tuple[str, ...] = tuple(ATTRIBUTES)) -> tuple[str, dict[str, str]]:
    """What a project's annotators accepted for an object: its caption and attribute values (with `rng`, a random
    subset of the attributes, as projects ask different ones; the renamed one mostly among them)."""
    shown = [a for a in attributes if rng is None or rng.random() < (0.5 if convention.attribute and
                                                                      a != convention.attribute else 0.8)]
    return convention.caption(obj), {a: convention.answer(obj, a) for a in shown}


def _pick(rng: random.Random, query: SceneObject, pool: list[tuple[Scene, SceneObject]], k: int,
          convention: Convention, contrast: bool = False) -> list[tuple[Scene, SceneObject]]:
    """k demonstrations from the pool: half the time the most alike (shared attributes, as a nearest-neighbour lookup
    of region tokens would find), otherwise at random; one at least of the renamed concept when the query is one.
    With `contrast` (a query of another concept), one or more of the renamed concept, one of them the most alike.
    In prompt order, as the describer writes a lookup's answer: the most alike last, next to the question."""
    alike = {id(o): sum(getattr(o, a) == getattr(query, a) for a in ATTRIBUTES) + rng.random() for _, o in pool}
    if rng.random() < 0.5:
        chosen = sorted(pool, key=lambda so: -alike[id(so[1])])[:k]
    else:
        chosen = rng.sample(pool, min(k, len(pool)))
    same = [so for so in pool if convention.shows(so[1])]
    if convention.shows(query) and not any(convention.shows(o) for _, o in chosen) and same:
        chosen[rng.randrange(len(chosen))] = rng.choice(same)
    if contrast and same and not convention.shows(query):
        shown = rng.sample(same, min(len(same), rng.randint(1, max(1, len(chosen) // 2))))
        kept = [so for so in chosen if not convention.shows(so[1])]
        spare = [so for so in pool if not convention.shows(so[1]) and all(so[1] is not o for _, o in kept)]
        kept += rng.sample(spare, max(0, min(len(spare), len(chosen) - len(shown) - len(kept))))
        chosen = rng.sample(kept, min(len(kept), len(chosen) - len(shown))) + shown
        nearest = id(shown[0][1])
        return sorted(chosen, key=lambda so: (id(so[1]) == nearest, alike[id(so[1])]))
    return sorted(chosen, key=lambda so: alike[id(so[1])])


def induction_text(rng: random.Random) -> str:
    """Text for the LM's induction pretraining (training.phases.pretrain_induction): 3-10 made-up words, then the
    same line once to three times more. Only copying predicts the repeats."""
    words = " ".join(nonsense_name(rng) for _ in range(rng.randint(3, 10)))
    return "\n".join([words] * rng.randint(2, 4))


COPY_IMAGE_SIZE = (112, 112)
COPY_Q = "Write these words again: {words}"
RECALL_Q = "Which word goes with {key}?"


def copy_drill(rng: random.Random, key: str) -> Sample:
    """A text-only drill of what reading demonstrations needs most and a language model learns in pretraining, which
    the tiny LM never had: copying made-up words from earlier in the text (induction), and finding the word paired
    with another one (recall). "Write these words again: kofu dax" -> "kofu dax", or lines of pairs "dax: kofu"
    and "Which word goes with dax?" -> "kofu". The words are drawn afresh, so only copying answers; the picture is
    blank and there are no regions."""
    image = Image.new("RGB", COPY_IMAGE_SIZE, tuple(rng.randrange(256) for _ in range(3)))
    words = list(dict.fromkeys(nonsense_name(rng) for _ in range(rng.randint(2, 8))))
    if rng.random() < 0.5:
        chosen = words[: rng.randint(1, min(5, len(words)))]
        turn = Turn(IMAGE_PREFIX + COPY_Q.format(words=" ".join(chosen)), " ".join(chosen), "copy")
    else:
        pairs = list(zip(words, rng.sample(words, len(words))))
        asked = rng.choice(pairs)
        lines = "".join(f"{a}: {b}\n" for a, b in pairs)
        turn = Turn(IMAGE_PREFIX + lines + RECALL_Q.format(key=asked[0]), asked[1], "copy")
    return Sample(image, [], [turn], f"copy-{key}")


def episode(rng: random.Random, key: str, ks: tuple[int, ...] = (1, 2, 3, 4, 4, 6, 8), mask_share: float = 0.0,
            loose_share: float = 0.0) -> Sample:
    """One training episode: a project's convention, a query region on one image, k demonstrations on others, and
    one question (the caption, or an attribute) whose answer follows the convention. The regions as annotators draw
    them: the query region with its object's mask with probability `mask_share`, else (and every demonstration's
    box) loosely drawn with probability `loose_share` (corpus.samples.as_drawn), from a random stream of their own,
    so the episode is otherwise the same; a demonstration's region is always a box, as DemoRegion holds no mask."""
    convention = project(rng, "name" if rng.random() < NAME_SHARE else "style")
    named = convention.attribute is not None
    query_scene = scene_with(rng, convention, "train", f"episode-{key}") if named else \
        render_scene(rng, scene_id=f"episode-{key}")
    others = [scene_with(rng, convention, "train", f"episode-{key}-{i}") if named and i % 2 == 0 else
              render_scene(rng, allow_withheld=rng.random() < 0.3, scene_id=f"episode-{key}-{i}") for i in range(4)]
    pool = [(s, o) for s in others for o in s.objects if convention.hides_withheld(o)]
    visible = [o for o in query_scene.objects if convention.hides_withheld(o)]
    concept, rest = [o for o in visible if convention.shows(o)], [o for o in visible if not convention.shows(o)]
    if named and (rng.random() < TARGET_SHARE or not rest):
        query, contrast = rng.choice(concept), False
    else:
        query, contrast = rng.choice(rest), named and rng.random() < CONTRAST_SHARE
    chosen = _pick(rng, query, pool, rng.choice(ks), convention, contrast)
    text = block([answers_of(convention, o, rng) for _, o in chosen])
    if not named or rng.random() < 0.5:
        turn = Turn(CAPTION_Q.format(r=REGION1), convention.caption(query), "caption")
    else:
        attribute = convention.attribute if rng.random() < 0.6 else rng.choice(ATTRIBUTES)
        turn = Turn(ATTRIBUTE_Q.format(name=attribute, r=REGION1), convention.answer(query, attribute), "attribute",
                    key=attribute)
    turn.question = IMAGE_PREFIX + text + turn.question
    drawn = random.Random(f"{key}:drawn")
    boxes = [loose_box(o.box, s.image_size, drawn) if drawn.random() < loose_share else o.box for s, o in chosen]
    sample = Sample(query_scene.image, [query.box], [turn], query_scene.scene_id,
                    demonstrations=[DemoRegion(s.image, box) for (s, _), box in zip(chosen, boxes)], learn_shown=True)
    return as_drawn(sample, query_scene, mask_share, loose_share, f"episode:{key}")

