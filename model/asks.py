"""What a caller wants to know about a set of regions, and what it gets back.

These plain dataclasses are the narrow interface between the backend and the model: the backend turns a
Label Studio config into `Asks`, the describer answers with a `Description`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the (EXIF-corrected) image


@dataclass
class Asks:
    caption: bool = True  # a short caption per region (generation)
    detailed: bool = False  # a detailed caption per region (generation)
    # question word -> allowed answers; each region gets every candidate scored by log-likelihood
    # e.g. {"color": ["red", "green", "blue"], "material": ["metal", "wood"]}
    attributes: dict[str, list[str]] = field(default_factory=dict)
    # relation vocabulary for pairs of regions (e.g. Label Studio <Relations>); each ordered pair gets a yes-probability
    relation_labels: list[str] = field(default_factory=list)
    relation_text: bool = False  # a free-text relation sentence from each region to its nearest other region
    max_new_tokens: int = 32


@dataclass
class RegionDescription:
    box: Box  # the box as used (clamped to the image)
    caption: str | None = None
    caption_confidence: float = 0.0  # exp(mean token log-probability) of the generated caption, in [0, 1]
    detailed: str | None = None
    # question word -> [(answer, probability)] sorted by probability, probabilities sum to 1 over the candidates
    attributes: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    relation_text: str | None = None
    relation_partner: int | None = None  # index of the region that relation_text talks about
    confidence: float = 0.0  # overall confidence in [0, 1]: geometric mean of the parts that were asked


@dataclass
class Relation:
    subject: int  # region index
    object: int  # region index
    label: str
    score: float  # probability that "subject <label> object" holds


@dataclass
class Description:
    regions: list[RegionDescription]
    relations: list[Relation]  # only those with score >= the describer's relation threshold
    model_version: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds: encode, regions, generate, rank
    cache_hit: bool = False  # image features came from the describer's cache
