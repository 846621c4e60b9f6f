"""Caption and choices agree: where a served caption names another value of an attribute than the attribute's ranking
puts first, the caption is written with the top value (RegionDescriber's `agree_caption`, on by default).

The ranking scores every allowed value; the greedy caption commits to one word as it goes. Measured on the default's
disagreements (README, "Caption and choices agree"), the ranking was right 8 times and the caption once; weighing
both by the LM's likelihood of each caption as well did worse (it sided with the caption in cases the ranking had
right). Plain text work: no torch here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


def mentions(text: str, value: str) -> list[tuple[int, int]]:
    """Spans of `value` in `text` as a whole word or phrase, case-insensitive."""
    pattern = r"(?<![\w-])" + r"\s+".join(re.escape(w) for w in value.split()) + r"(?![\w-])"
    return [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


@dataclass(frozen=True)
class Disagreement:
    """The caption names `named` (at `span`) where the attribute `attribute` ranks `top` first."""

    attribute: str
    span: tuple[int, int]
    named: str
    top: str

    def rewrite(self, caption: str) -> str:
        return caption[:self.span[0]] + self.top + caption[self.span[1]:]


def disagreements(caption: str, attributes: dict[str, list[tuple[str, float]]]) -> list[Disagreement]:
    """Where `caption` names another value than an attribute's top-ranked one (ranked best first).

    Only clear cases count: the caption names exactly one candidate of the attribute, once. A caption naming several
    (it speaks of more than the region) or none says nothing about it, and a word that two attributes claim (a shape
    and a shape family) is left alone."""
    spans_of = {name: [span for value, _ in ranked for span in mentions(caption, value)]
                for name, ranked in attributes.items()}
    found = []
    for name, ranked in attributes.items():
        named = {value: spans for value, _ in ranked if (spans := mentions(caption, value))}
        if len(named) != 1:
            continue
        (value, spans), = named.items()
        if len(spans) != 1 or value.lower() == ranked[0][0].lower():
            continue
        start, end = spans[0]
        if any(s < end and start < e for other, spans in spans_of.items() if other != name for s, e in spans):
            continue
        found.append(Disagreement(name, spans[0], value, ranked[0][0]))
    return found


def agree(caption: str, attributes: dict[str, list[tuple[str, float]]]) -> str:
    """`caption` written with each attribute's top-ranked value where it names another one (`disagreements`)."""
    for d in sorted(disagreements(caption, attributes), key=lambda d: -d.span[0]):  # right to left: spans stay valid
        caption = d.rewrite(caption)
    return caption
