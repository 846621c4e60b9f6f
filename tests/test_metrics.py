"""regionscribe.training.caption_metrics against pycocoevalcap, given the same tokenised strings."""

import random
import shutil

import pytest

from regionscribe.training import caption_metrics as metrics

pycoco_cider = pytest.importorskip("pycocoevalcap.cider.cider")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

CASES = {
    "varied": (
        {
            1: ["a small red solid circle", "a red circle that is small", "small red circle"],
            2: ["a large blue striped square"],
            3: ["a medium green dotted triangle", "a green triangle with dots", "the green dotted triangle"],
            4: ["a small black solid cross in the top left of the image"],
            5: ["the the the dog dog", "a dog sat on the the mat"],
        },
        {
            1: ["a small red circle"],
            2: ["a large blue square striped square"],
            3: ["green green green triangle"],
            4: ["a small black solid cross in the top left of the image"],
            5: ["the dog the dog the dog"],
        },
    ),
    "empty-ish": (
        {"a": ["a red circle", "red circle"], "b": ["a blue star"], "c": ["two yellow crosses"]},
        {"a": [""], "b": ["blue"], "c": ["a"]},
    ),
    "repeats": (
        {i: [" ".join(["red"] * (i + 1)), "red circle " * i + "end"] for i in range(1, 7)},
        {i: [" ".join(["red"] * (7 - i))] for i in range(1, 7)},
    ),
}


def _random_case(seed):
    rng = random.Random(seed)
    words = "a the red blue green small large circle square star of in top left image pattern".split()
    gts, res = {}, {}
    for k in range(12):
        gts[k] = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 5))]
        res[k] = [" ".join(rng.choices(words, k=rng.randint(1, 12)))]
    return gts, res


CASES.update({f"random{s}": _random_case(s) for s in range(3)})


@pytest.mark.parametrize("name", sorted(CASES))
def test_cider_d_matches_pycocoevalcap(name):
    gts, res = CASES[name]
    ref_score, ref_scores = Cider().compute_score(gts, res)
    score, scores = metrics.cider_d(gts, res)
    assert score == pytest.approx(ref_score, abs=1e-6)
    assert [scores[k] for k in gts] == pytest.approx(list(ref_scores), abs=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bleu_matches_pycocoevalcap(name):
    gts, res = CASES[name]
    ref_score, ref_scores = Bleu(4).compute_score(gts, res, verbose=0)
    score, scores = metrics.bleu(gts, res, n=4)
    assert score == pytest.approx(ref_score[3], abs=1e-6)
    assert [scores[k] for k in gts] == pytest.approx(ref_scores[3], abs=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rouge_l_matches_pycocoevalcap(name):
    gts, res = CASES[name]
    ref_score, ref_scores = Rouge().compute_score(gts, res)
    score, scores = metrics.rouge_l(gts, res)
    assert score == pytest.approx(ref_score, abs=1e-6)
    assert [scores[k] for k in gts] == pytest.approx(list(ref_scores), abs=1e-6)


def test_tokenize_lowercases_and_drops_punctuation():
    assert metrics.tokenize("A Red, top-left Circle!  region1.") == ["a", "red", "top", "left", "circle", "region1"]
    # raw text is tokenised before scoring, so case and punctuation do not matter
    gts = {1: ["a red circle"], 2: ["a blue star"]}
    raw = metrics.cider_d(gts, {1: ["A red circle."], 2: ["a BLUE star"]})
    assert raw == metrics.cider_d(gts, {1: ["a red circle"], 2: ["a blue star"]})


def _caption_sets():
    sizes, colors, shapes = ["small", "medium", "large"], ["red", "green", "blue", "black"], ["circle", "star", "cross"]
    captions = [f"a {s} {c} solid {sh}" for s in sizes for c in colors for sh in shapes]
    gts = {i: [c] for i, c in enumerate(captions)}
    perfect = {i: [c] for i, c in enumerate(captions)}
    shuffled_list = captions[1:] + captions[:1]
    shuffled = {i: [c] for i, c in enumerate(shuffled_list)}
    return gts, perfect, shuffled


def test_perfect_beats_shuffled():
    gts, perfect, shuffled = _caption_sets()
    good = metrics.caption_scores(gts, perfect, with_meteor=False)
    bad = metrics.caption_scores(gts, shuffled, with_meteor=False)
    assert good["exact_match"] == 1.0 and bad["exact_match"] == 0.0
    assert good["METEOR"] is None
    for name in ("CIDEr-D", "BLEU-4", "ROUGE-L"):
        assert good[name] > bad[name], name
    assert 100 <= good["CIDEr-D"] <= 1000
    assert good["BLEU-4"] == pytest.approx(100.0, abs=1e-3) and good["ROUGE-L"] == pytest.approx(100.0)


def test_key_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metrics.cider_d({1: ["a"]}, {2: ["a"]})


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")
def test_meteor_runs_the_jar():
    # one JVM start (~5 s): a set with one perfect and one unrelated hypothesis lands strictly between 0 and 1
    gts = {1: ["a small red solid circle"], 2: ["a large blue striped square"]}
    res = {1: ["a small red solid circle"], 2: ["two yellow crosses"]}
    score = metrics.meteor(gts, res)
    assert score is not None and 0.2 < score < 0.95
