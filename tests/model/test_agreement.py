"""A served caption agrees with the served choices: regionscribe.model.describer finds where they disagree (`disagreements`) and
writes the caption with the top-ranked values; eval measures how often they agree (regionscribe.training.evaluation.caption_agreement)."""
from __future__ import annotations

import pytest
from PIL import Image

from regionscribe.model.agreement import agree, disagreements
from regionscribe.model.asks import Asks
from regionscribe.model.describer import RegionDescriber
from regionscribe.training.evaluation import caption_agreement

SHAPE = [("circle", 0.64), ("cross", 0.30), ("square", 0.06)]


@pytest.mark.parametrize("caption,attributes,expected", [
    # the case: caption said cross, the shape choice circle (0.64)
    ("a medium red solid cross", {"shape": SHAPE, "color": [("red", 0.9), ("blue", 0.1)]},
     ["a medium red solid circle"]),
    ("a medium red solid cross", {"shape": SHAPE, "color": [("blue", 0.8), ("red", 0.2)]},
     ["a medium red solid circle", "a medium blue solid cross"]),
    ("A Red thing", {"color": [("blue", 0.9), ("red", 0.1)]}, ["A blue thing"]),
    ("a large dark grey bird", {"colour": [("red", 0.7), ("dark grey", 0.3)]}, ["a large red bird"]),  # a phrase
    # none: not a whole word, already agrees, no candidate named, several named, named twice
    ("a light-red circle", {"color": [("blue", 0.9), ("red", 0.1)]}, []),
    ("a medium red solid circle", {"shape": SHAPE}, []),
    ("a thing", {"shape": SHAPE}, []),
    ("a red car beside a green car", {"color": [("green", 0.9), ("red", 0.1)]}, []),
    ("a red car and a red bus", {"color": [("green", 0.9), ("red", 0.1)]}, []),
    # a word two attributes claim (a shape and a shape family) is left alone
    ("a cross", {"shape": SHAPE, "family": [("star", 0.7), ("cross", 0.3)]}, []),
])
def test_disagreements(caption, attributes, expected):
    assert [d.rewrite(caption) for d in disagreements(caption, attributes)] == expected


def test_agree_rewrites_every_disagreement():
    colour = [("blue", 0.8), ("red", 0.2)]
    assert agree("a medium red solid cross", {"shape": SHAPE, "color": colour}) == "a medium blue solid circle"
    assert agree("a medium red solid circle", {"shape": SHAPE}) == "a medium red solid circle"


def _scripted(describer: RegionDescriber, caption: str, ranked: dict[str, list[tuple[str, float]]]) -> None:
    """The describer's model answers `caption` to caption questions and `ranked[key]` to attribute questions."""
    def answer(enc, norm, questions, max_new_tokens, grids=None):
        return [(caption, 0.9) if q.kind == "caption" else list(ranked[q.key]) for q in questions]
    describer._answer = answer


ASKS = Asks(caption=True, attributes={"shape": ["circle", "cross", "square"], "color": ["red", "blue"]})
IMAGE = Image.new("RGB", (64, 64), (128, 128, 128))


@pytest.mark.parametrize("agree_caption,caption", [(True, "a medium red solid circle"),
                                                   (False, "a medium red solid cross")])
def test_describe_serves_a_caption_that_agrees_with_the_choices(untrained, agree_caption, caption):
    describer = RegionDescriber(untrained, "t", agree_caption=agree_caption)
    _scripted(describer, "a medium red solid cross", {"shape": SHAPE, "color": [("red", 1.0)]})
    region = describer.describe(IMAGE, [(4, 4, 40, 40)], ASKS).regions[0]
    assert region.caption == caption
    assert region.attributes["shape"] == SHAPE  # the choices are served as ranked


def test_caption_agreement_counts_before_and_after(untrained):
    from regionscribe.training.corpus import make_scenes

    scene = make_scenes("test", 1, seed=5)[0]
    obj = scene.objects[0]
    other_shape = next(s for s in ("circle", "square", "triangle", "cross") if s != obj.shape)
    describer = RegionDescriber(untrained, "t")
    # every caption names the wrong shape, the ranking the first object's shape
    _scripted(describer, f"a {obj.size} {obj.color} {obj.texture} {other_shape}",
              {"shape": [(obj.shape, 0.9), (other_shape, 0.1)], "color": [(obj.color, 1.0)]})
    result = caption_agreement(describer, [scene])
    assert result["caption_agreement_raw"] == 0.0
    assert result["caption_agreement"] == 100.0  # every caption now names the ranking's colour and shape
    assert result["caption_agreement_regions"] == len(scene.objects)
    assert result["caption_agreement:CIDEr-D"] > result["caption_agreement_raw:CIDEr-D"]
    assert result["caption_agreement:choices"] == result["caption_agreement_raw:choices"]
    assert describer.agree_caption  # put back
