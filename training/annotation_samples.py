"""Human region annotations as training and evaluation samples (the feedback loop's data).

An `AnnotatedImage` is one image with its annotated regions: a box, a caption, attribute values keyed by the question
word (a Label Studio control's name, e.g. "color"), relations to other regions by index, and free relation text.
`training_samples` turns them into GPT4RoI conversations with the same templates as the synthetic corpus;
`eval_samples` into single-turn questions scored like the corpus' test split.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from regionscribe.model.conversation import Sample, Turn
from regionscribe.model.prompts import BBOX, IMAGE_PREFIX, REGION1, YESNO_Q
from regionscribe.training.corpus.text import ATTRIBUTE_TEMPLATES, CAPTION_TEMPLATES as CORPUS_CAPTIONS

# four of the corpus' caption paraphrases (the canonical one first), in the order these samples have always drawn them
CAPTION_TEMPLATES = [CORPUS_CAPTIONS[k] for k in (0, 2, 1, 6)]
YESNO_TEMPLATE = YESNO_Q


@dataclass
class RegionAnnotation:
    box: tuple[float, float, float, float]  # pixel xyxy in the (EXIF-corrected) image
    caption: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)  # question word -> values (first is the answer)
    relations: list[tuple[int, str]] = field(default_factory=list)  # (other region's index, label)
    # the region's shape: None (the box itself) or a boolean (H, W) array of the image, `box` being its bounding box
    mask: np.ndarray | None = None


@dataclass
class AnnotatedImage:
    image: Image.Image
    regions: list[RegionAnnotation]
    key: str  # a stable id (e.g. the image's content hash)


def _pieces(item: AnnotatedImage, rng: random.Random) -> list[tuple[list[int], str, str, str, tuple | None, str | None]]:
    """(regions, question template, answer, kind, candidates, key) for everything one image teaches; the template's
    {word}/{label} are filled from `key` when the question is written (so braces in user text are safe)."""
    out = []
    for i, reg in enumerate(item.regions):
        if reg.caption:
            out.append(([i], rng.choice(CAPTION_TEMPLATES), reg.caption, "caption", None, None))
        for word, values in reg.attributes.items():
            if values:
                out.append(([i], rng.choice(ATTRIBUTE_TEMPLATES), values[0], "attribute", None, word))
        for j, label in reg.relations:
            if 0 <= j < len(item.regions) and j != i:
                out.append(([i, j], YESNO_TEMPLATE, "yes", "yesno", ("yes", "no"), label))
    return out


def training_samples(items: Iterable[AnnotatedImage], seed: int = 0, max_turns: int = 6) -> Iterator[Sample]:
    """Multi-turn conversations: each image's questions, shuffled, in chunks of at most `max_turns` turns;
    regions are introduced as `regionK <bbox>` at first mention and named plainly afterwards."""
    rng = random.Random(seed)
    for item in items:
        pieces = _pieces(item, rng)
        rng.shuffle(pieces)
        for start in range(0, len(pieces), max_turns):
            names: dict[int, int] = {}
            boxes, masks, turns = [], [], []
            for regions, template, answer, kind, candidates, key in pieces[start:start + max_turns]:
                mentions = []
                for r in regions:
                    if r not in names:
                        names[r] = len(names) + 1
                        boxes.append(item.regions[r].box)
                        masks.append(item.regions[r].mask)
                        mentions.append(f"region{names[r]} {BBOX}")
                    else:
                        mentions.append(f"region{names[r]}")
                if len(regions) == 1:
                    question = template.format(r=mentions[0], word=key)
                else:
                    question = template.format(a=mentions[0], b=mentions[1], label=key)
                turns.append(Turn(question, answer, kind, candidates, key))
            turns[0] = Turn(IMAGE_PREFIX + turns[0].question, turns[0].answer, turns[0].kind, turns[0].candidates,
                            turns[0].key)
            yield Sample(item.image, boxes, turns, item.key, masks)


def eval_samples(items: Iterable[AnnotatedImage], vocabularies: dict[str, list[str]]) -> Iterator[Sample]:
    """Single-turn samples: each region's caption (canonical template) and each attribute, ranked over
    `vocabularies[word]` (the allowed values, e.g. a control's choices plus every value seen)."""
    for item in items:
        for reg in item.regions:
            r = REGION1
            if reg.caption:
                yield Sample(item.image, [reg.box],
                             [Turn(IMAGE_PREFIX + CAPTION_TEMPLATES[0].format(r=r), reg.caption, "caption")], item.key,
                             [reg.mask])
            for word, values in reg.attributes.items():
                vocab = vocabularies.get(word) or []
                if values and values[0] in vocab and len(vocab) > 1:
                    q = IMAGE_PREFIX + ATTRIBUTE_TEMPLATES[0].format(word=word, r=r)
                    yield Sample(item.image, [reg.box], [Turn(q, values[0], "attribute", tuple(vocab), word)],
                                 item.key, [reg.mask])
