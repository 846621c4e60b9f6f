"""Demonstrations: accepted regions of other images that come before a question (Cheetah's demonstrative
instructions), so that a project's own names and caption style steer the answer without a weight update.

    Demonstration(token, caption, attributes)   one accepted region at inference: its region token (computed by the
                                                same model version, RegionDescriber.region_tokens) and its answers
    DemoRegion(image, box)                      one at training: the model pools its token in the same pass
    block(answers) -> text                      the lines before the question, one `<bbox>` per demonstration

A question with demonstrations reads

    Answers accepted in this project:
    regionD1 <bbox>: shape: blicket; caption: a small red solid blicket
    regionD2 <bbox>: ...
    Give a short description of region1 <bbox>.

and its `<bbox>` placeholders take, in order, the demonstrations' region tokens and then the question's own. The
describer takes a box's demonstrations nearest first (as a lookup returns them) and writes the nearest last, next to
the question; training episodes are written in the same order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from regionscribe.model.errors import DemonstrationError
from regionscribe.model.prompts import BBOX, DEMONSTRATION_REGION, DEMONSTRATIONS_HEAD

CAPTION_FIELD = "caption"  # a demonstration line's last field
MAX_TEXT = 200  # characters of one demonstrated answer: a demonstration is a hint, not a document
_MARKERS = re.compile("###|" + re.escape(BBOX))  # the turn marker and the placeholder would break the format


@dataclass
class Demonstration:
    token: Any  # float32 [hidden]: numpy array or tensor
    caption: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)  # attribute name -> the accepted value
    source: str = ""  # where it came from, recorded with the prediction


@dataclass
class DemoRegion:
    """A demonstration's region while training: the model computes its token from the image in the same pass."""

    image: Any  # PIL image
    box: tuple[float, float, float, float]  # pixel xyxy


def clean(text: str) -> str:
    """An accepted answer as one line of the block: whitespace runs (newlines too) become one space, the turn
    marker `###` and `<bbox>` go, and it is cut at MAX_TEXT characters."""
    text = " ".join(_MARKERS.sub(" ", str(text)).split())
    return text[:MAX_TEXT].rstrip()


def line(n: int, caption: str | None, attributes: dict[str, str] | Sequence[tuple[str, str]]) -> str:
    """`regionD{n} <bbox>: name: value; ...; caption: the caption` (without its line break). The caption comes last,
    so that it ends where the line does: a project's captions may hold "; " themselves ("green; circle"), and a
    caption written first could not be told from the attributes after it (a model trained on caption-first lines
    went on "green; circle; color: green" on such a project: 1 caption in 23 exact)."""
    items = attributes.items() if isinstance(attributes, dict) else attributes
    caption = clean(caption) if caption else ""
    pairs = [(clean(k), clean(v)) for k, v in items]
    parts = [f"{k}: {v}" for k, v in pairs if k and v] + ([f"{CAPTION_FIELD}: {caption}"] if caption else [])
    if not parts:
        raise DemonstrationError(f"demonstration {n} has neither a caption nor an attribute value")
    return DEMONSTRATION_REGION.format(n=n) + ": " + "; ".join(parts)


def block(answers: Sequence[tuple[str | None, dict[str, str] | Sequence[tuple[str, str]]]]) -> str:
    """The text before the question for demonstrations with these (caption, attributes); "" for none."""
    if not answers:
        return ""
    return DEMONSTRATIONS_HEAD + "".join(line(n + 1, c, a) + "\n" for n, (c, a) in enumerate(answers))
