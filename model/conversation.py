"""The conversation template (LLaVA v0 / GPT4RoI) and token-level encoding with assistant-only labels.

A conversation is a list of (question, answer) turns about one image. Regions appear in questions as
`regionK <bbox>`; the k-th `<bbox>` in the whole conversation is the k-th box. `<image>` in a question becomes
`<im_start> <im_patch>*N <im_end>`, whose N patch embeddings are later replaced by projected image features.

Labels are built by concatenating per-segment token spans, never by re-locating text in a joint tokenisation:

    [bos] SYSTEM "\n\n"                                   -> masked (-100)
    "### Human: " question "\n### Assistant:"              -> masked
    " " answer </s>                                        -> targets (the model learns to stop with </s>)
    "\n### Human: " question ...                           -> masked, and so on

Inference encodes the same segments up to the last "### Assistant:" and generates until </s> (the separator),
so train and test tokenisations are identical by construction.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from PIL import Image

from regionscribe.model.errors import PlaceholderError
from regionscribe.model.prompts import (
    BBOX, DEMONSTRATION_REGION, IM_END, IM_PATCH, IM_START, IMAGE, IMAGE_PREFIX, SYSTEM,
)

IGNORE = -100
# a demonstration's line in a question (model/demonstrations.py): its number, and its answer with the line break
_SHOWN_ANSWER = re.compile("^" + re.escape(DEMONSTRATION_REGION).replace(re.escape("{n}"), "([0-9]+)") + ":( [^\n]*\n)",
                           re.M)


@dataclass
class Turn:
    """One human question and its assistant answer.

    For the ranking kinds ("attribute", "relation", "yesno") `candidates` lists the allowed answers and `key` names
    the attribute ("color", ...) or the relation axis ("horizontal", ...).
    """

    question: str
    answer: str
    kind: str
    candidates: tuple[str, ...] | None = None
    key: str | None = None


@dataclass
class Sample:
    """A conversation about one image; `boxes[k]` (pixel xyxy) is the box of the (k+1)-th `<bbox>`, and `masks[k]`
    its mask (a boolean (H, W) array of the image, inside the box) or None (the box itself). `masks` defaults to
    None for every box. `demonstrations` (model/demonstrations.py: regions of other images with their accepted
    answers written before the first question) take the first `<bbox>` placeholders, in order, then `boxes` the
    rest."""

    image: Image.Image
    boxes: list[tuple[float, float, float, float]]
    turns: list[Turn]
    scene_id: str
    masks: list[np.ndarray | None] = field(default_factory=list)
    demonstrations: list = field(default_factory=list)  # DemoRegion
    # train on the demonstrations' answers too, each after the first (`encode`'s shown_answers): episodes do
    learn_shown: bool = False

    def __post_init__(self) -> None:
        n = sum(turn.question.count(BBOX) for turn in self.turns)
        if n != len(self.boxes) + len(self.demonstrations):
            shown = f" and {len(self.demonstrations)} demonstrations" if self.demonstrations else ""
            raise PlaceholderError(f"{n} {BBOX} placeholders but {len(self.boxes)} boxes{shown}")
        if not self.masks:
            self.masks = [None] * len(self.boxes)
        elif len(self.masks) != len(self.boxes):
            raise PlaceholderError(f"{len(self.masks)} masks for {len(self.boxes)} boxes (one entry, None or a mask, "
                                   f"per box)")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    n_boxes: int


def image_placeholder(n_image_tokens: int) -> str:
    return IM_START + IM_PATCH * n_image_tokens + IM_END


def box_as_text(box: Sequence[float]) -> str:
    """Coordinates-as-text baseline (Shikra/PVIT ablation): normalised xyxy with two decimals."""
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def _expand(question: str, n_image_tokens: int, boxes_text: list[str] | None, box_cursor: int) -> tuple[str, int]:
    q = question.replace(IMAGE, image_placeholder(n_image_tokens))
    n = q.count(BBOX)
    if boxes_text is not None:
        if box_cursor + n > len(boxes_text):
            raise PlaceholderError(f"conversation has more <bbox> placeholders than the {len(boxes_text)} boxes given")
        for k in range(n):
            q = q.replace(BBOX, boxes_text[box_cursor + k], 1)
    return q, n


def _tok(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prefix_ids(tokenizer, n_image_tokens: int, system: str = SYSTEM) -> list[int]:
    """The part every conversation about an image shares: system prompt and the image, up to its first question.

    Tokenised as its own spans, so inference can compute it once per image and reuse its KV cache.
    """
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids += _tok(tokenizer, system + "\n\n")
    ids += _tok(tokenizer, "### Human: " + IMAGE_PREFIX.replace(IMAGE, image_placeholder(n_image_tokens)))
    return ids


def question_ids(tokenizer, question: str, first: bool) -> list[int]:
    """A human turn after the shared prefix, up to and including "### Assistant:"."""
    return _tok(tokenizer, ("" if first else "\n### Human: ") + question + "\n### Assistant:")


def answer_ids(tokenizer, answer: str) -> list[int]:
    return _tok(tokenizer, " " + answer) + [tokenizer.eos_token_id]


def shown_answer_labels(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """A question's tokens, and labels that are the tokens of its demonstrations' answers after the first one
    (`regionD2 <bbox>: <answer>` onwards, the line break included) and IGNORE elsewhere: each such answer is
    predicted from the lines before it, the way the question's own answer is meant to be read off them. Tokenised
    as one text, as inference does; a token is labelled when it lies inside an answer."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [m.span(2) for m in _SHOWN_ANSWER.finditer(text) if int(m.group(1)) > 1]
    labels = [i if any(a <= s and e <= b for a, b in spans) else IGNORE
              for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), labels


def in_relations(questions: Sequence[str], skip: int = 0) -> list[bool]:
    """Per `<bbox>` of a conversation, after the first `skip` (a demonstration's: model/demonstrations.py), whether
    it stands in a question about two or more regions (config.relation_regions)."""
    owners = [t for t, q in enumerate(questions) for _ in range(q.count(BBOX))][skip:]
    counts = Counter(owners)
    return [counts[t] > 1 for t in owners]


def encode(tokenizer, turns: Sequence[tuple[str, str | None]], n_image_tokens: int, n_boxes: int,
           boxes_text: list[str] | None = None, system: str = SYSTEM, shown_answers: bool = False) -> Encoded:
    """Token ids and labels for a conversation. The last answer may be None (a prompt for generation).

    The first question must start with IMAGE_PREFIX. `n_boxes` is the number of boxes supplied with the
    conversation; a different placeholder count raises PlaceholderError. With `boxes_text` (the
    coordinates-as-text baseline) each `<bbox>` is replaced by that box's coordinates as text. `shown_answers`:
    the answers of the demonstration lines in the first question, after the first line, are labels too
    (`shown_answer_labels`); the ids are the same either way.
    """
    if not turns or not turns[0][0].startswith(IMAGE_PREFIX):
        raise ValueError(f"the first question must start with {IMAGE_PREFIX!r}")
    ids = prefix_ids(tokenizer, n_image_tokens, system)
    labels = [IGNORE] * len(ids)
    seen = 0
    for t, (question, answer) in enumerate(turns):
        if t == 0:
            question = question[len(IMAGE_PREFIX):]
        if IMAGE in question:
            raise ValueError(f"{IMAGE} may only appear once, at the start of the first question")
        q, n = _expand(question, 0, boxes_text, seen)
        seen += n
        if shown_answers and t == 0:
            human, shown = shown_answer_labels(tokenizer, q + "\n### Assistant:")
        else:
            human = question_ids(tokenizer, q, first=t == 0)
            shown = [IGNORE] * len(human)
        ids += human
        labels += shown
        if answer is None:
            if t != len(turns) - 1:
                raise ValueError("only the last turn may leave its answer open")
            break
        reply = answer_ids(tokenizer, answer)
        ids += reply
        labels += reply
    if seen != n_boxes:
        raise PlaceholderError(f"{seen} <bbox> placeholder(s) in the conversation but {n_boxes} box(es) given")
    return Encoded(ids, labels, seen)

