"""Dataset records as GPT4RoI-format conversations (regionscribe.model.conversation.Sample), in GPT4RoI's prompt structure.

Every conversation starts with the overview prefix (`The <image> provides an overview of the picture.`), names
regions `regionK <bbox>` at first mention, and draws one paraphrase per question (the first of each list is
GPT4RoI's own first template). Stage 1 pairs each region with its phrase, after GPT4RoI's per-dataset instruction
(COCO: answer with a category name from the list; RefCOCO/RefCOCO+: describe the one object). Stage 2 asks for
region captions, a region's attributes, the relation between two regions, and for Flickr30k GPT4RoI's multi-region
turns: a description of several regions at once, then which part of it each region is.
"""
from __future__ import annotations

import random
from typing import Iterator

from regionscribe.model.conversation import Sample, Turn
from regionscribe.model.prompts import BBOX, IMAGE_PREFIX, RELATION_Q
from regionscribe.training.datasets.records import ImageRecord

MAX_REGIONS = 15  # regions per conversation, as GPT4RoI's RefCOCOG/VG datasets
MAX_TURNS = 15

COCO_INSTRUCTION = ("In the conversation below, you simply answer the category name based on what you see in the "
                    "imagery inside a particular region. I will give you only one region each time. Categories "
                    "Containing {categories}.\n")
REFCOCO_INSTRUCTION = ("I will provide you with only one region containing only one object, although there may be "
                       "other objects present in the image. It is recommended that you describe the object's "
                       "relative position with respect to other objects in the image, as well as its position within "
                       "the image and its basic attributes.\n")
REFCOCOP_INSTRUCTION = ("I will provide you with only one region containing only one object, although there may be "
                        "other objects present in the image. It is recommended that you describe the object's "
                        "relative position with respect to other objects in the image and its basic attributes, you "
                        "should not give its position within the image.\n")
DESCRIBE = [
    "Can you provide me with a detailed description of the region in the picture marked by {r}?",
    "I'm curious about the region represented by {r} in the picture. Could you describe it in detail?",
    "What can you tell me about the region indicated by {r} in the image?",
    "I'd like to know more about the area in the photo labeled {r}. Can you give me a detailed description?",
    "Could you describe the region shown as {r} in the picture in great detail?",
    "What details can you give me about the region outlined by {r} in the photo?",
    "Please provide me with a comprehensive description of the region marked with {r} in the image.",
    "Can you give me a detailed account of the region labeled as {r} in the picture?",
    "I'm interested in learning more about the region represented by {r} in the photo. Can you describe it?",
    "What is the region outlined by {r} in the picture like? Could you give me a detailed description?",
]
ATTRIBUTES = ["What are the attributes of {r}?", "List the attributes of the object in {r}.",
              "How would you characterise {r}? Answer with its attributes."]
RELATION = ["What is the relationship between {a} and {b}?", RELATION_Q,
            "Describe how {a} relates to {b}."]
CATEGORY = ["What is the category of {r}?", "Which category does {r} belong to?"]
FLICKR_ALL = ["Could you please give me a detailed description of these areas {rs}?",
              "Please describe the areas {rs} in one sentence.",
              "What is happening in the regions {rs}? Describe them together.",
              "Write one caption that covers {rs}."]
FLICKR_PART = [
    "Which part of your overall description corresponds to the specific area of the image {r} you are referring to?",
    "In your description, which words refer to {r}?",
    "What phrase of your description names {r}?",
]


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def stage1(record: ImageRecord, kind: str, rng: random.Random) -> Iterator[tuple[list, list[Turn]]]:
    """(boxes, turns) per conversation: each region as `regionK <bbox>`, answered with its phrase."""
    if kind == "coco":
        instruction = COCO_INSTRUCTION.format(categories=", ".join(record.choices or ()))
    elif kind == "refcoco+":
        instruction = REFCOCOP_INSTRUCTION
    else:
        instruction = REFCOCO_INSTRUCTION
    regions = [r for r in record.regions if r.phrase or r.caption]
    for chunk in _chunks(regions, MAX_REGIONS):
        turns = [Turn(f"region{k + 1} {BBOX}", reg.phrase or reg.caption, "phrase") for k, reg in enumerate(chunk)]
        turns[0] = Turn(IMAGE_PREFIX + instruction + turns[0].question, turns[0].answer, "phrase")
        yield [reg.box for reg in chunk], turns


def stage2(record: ImageRecord, kind: str, rng: random.Random) -> Iterator[tuple[list, list[Turn]]]:
    """(boxes, turns) per conversation: captions, attributes, relations; Flickr30k's multi-region turns."""
    if kind == "flickr30k" and record.caption:
        for chunk in _chunks(record.regions, MAX_REGIONS):
            rs = ",".join(f"region{k + 1} {BBOX}" for k in range(len(chunk)))
            turns = [Turn(IMAGE_PREFIX + rng.choice(FLICKR_ALL).format(rs=rs), record.caption, "multi")]
            turns += [Turn(rng.choice(FLICKR_PART).format(r=f"region {k + 1}"), reg.phrase or reg.caption or "",
                           "caption") for k, reg in enumerate(chunk)]
            yield [reg.box for reg in chunk], turns
        return
    pieces = []  # (region indices, template, fields, answer, kind)
    for i, reg in enumerate(record.regions):
        if reg.caption:
            pieces.append(([i], rng.choice(DESCRIBE), reg.caption, "caption"))
        elif reg.phrase and not reg.attributes and not reg.relations:
            pieces.append(([i], rng.choice(CATEGORY), reg.phrase, "phrase"))
        if reg.attributes:
            pieces.append(([i], rng.choice(ATTRIBUTES), ", ".join(reg.attributes), "attribute"))
        for j, predicate in reg.relations:
            other = record.regions[j]
            answer = f"{reg.phrase or 'it'} {predicate} {other.phrase or 'it'}"
            pieces.append(([i, j], rng.choice(RELATION), answer, "relation_text"))
    rng.shuffle(pieces)
    # each conversation mentions at most MAX_REGIONS distinct regions
    while pieces:
        names: dict[int, int] = {}
        boxes, turns, rest = [], [], []
        for regions, template, answer, turn_kind in pieces:
            new = [r for r in dict.fromkeys(regions) if r not in names]
            if len(turns) >= MAX_TURNS or len(names) + len(new) > MAX_REGIONS:
                rest.append((regions, template, answer, turn_kind))
                continue
            mentions = []
            for r in regions:
                if r not in names:
                    names[r] = len(names) + 1
                    boxes.append(record.regions[r].box)
                    mentions.append(f"region{names[r]} {BBOX}")
                else:
                    mentions.append(f"region{names[r]}")
            question = template.format(r=mentions[0]) if len(regions) == 1 else template.format(a=mentions[0],
                                                                                               b=mentions[1])
            turns.append(Turn(question, answer, turn_kind))
        turns[0] = Turn(IMAGE_PREFIX + turns[0].question, turns[0].answer, turns[0].kind)
        yield boxes, turns
        pieces = rest


def samples(record: ImageRecord, kind: str, stage: int, rng: random.Random, image) -> Iterator[Sample]:
    """Sample objects for one record; `image` is the loaded PIL image."""
    build = stage1 if stage == 1 else stage2
    for n, (boxes, turns) in enumerate(build(record, kind, rng)):
        yield Sample(image, list(boxes), turns, f"{record.key}#{n}" if n else record.key)
