"""Caption metrics in pure Python: CIDEr-D, BLEU, ROUGE-L (and METEOR through the COCO jar when it is available).

Each metric reproduces the COCO caption evaluation code (pycocoevalcap) number for number when both are given the
same tokenised text; none of it imports pycocoevalcap, except `meteor`, which runs the reference Java
implementation when `java` and pycocoevalcap's jar are both present and returns None otherwise.

Inputs follow pycocoevalcap: ``gts`` maps a key to a list of reference strings, ``res`` maps the same keys to a
one-element list holding the hypothesis. Every string goes through `tokenize` first.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import defaultdict
from typing import Hashable, Mapping, Sequence

__all__ = ["tokenize", "cider_d", "bleu", "rouge_l", "meteor", "caption_scores"]

Captions = Mapping[Hashable, Sequence[str]]

_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """The documented tokenisation of every metric here: lower-case, then keep maximal runs of letters and digits.

    Punctuation and underscores separate tokens and are dropped ("Top-left, region1!" -> ["top", "left",
    "region1"]). It stands in for the PTB tokenizer that the COCO evaluation runs through Java; on this project's
    captions (plain lower-case words) both give the same tokens.
    """
    return _TOKEN.findall(text.lower())


def _prepare(gts: Captions, res: Captions) -> tuple[list[Hashable], list[list[str]], list[str]]:
    if set(gts) != set(res):
        raise ValueError("gts and res must have the same keys")
    keys = list(gts)
    refs, hyps = [], []
    for key in keys:
        if len(res[key]) != 1:
            raise ValueError(f"res[{key!r}] must hold exactly one hypothesis")
        if len(gts[key]) == 0:
            raise ValueError(f"gts[{key!r}] has no reference")
        refs.append([" ".join(tokenize(r)) for r in gts[key]])
        hyps.append(" ".join(tokenize(res[key][0])))
    return keys, refs, hyps


def _ngrams(sentence: str, n: int) -> dict[tuple[str, ...], int]:
    words = sentence.split()
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


# ------------------------------------------------------------------------------------------------------ CIDEr-D

def cider_d(gts: Captions, res: Captions, n: int = 4, sigma: float = 6.0) -> tuple[float, dict[Hashable, float]]:
    """CIDEr-D as pycocoevalcap's `Cider` computes it: tf-idf n-gram vectors (n = 1..4) with document frequency
    over the reference sets, hypothesis weights clipped by the reference's, a Gaussian length penalty
    (sigma = 6), averaged over n-gram orders and references, times 10. Returns (corpus mean, per-key scores).

    As in pycocoevalcap, the idf is log(number of keys) - log(df), so a single key always scores 0, and the
    "length" the penalty compares is the count of bigrams.
    """
    keys, refs, hyps = _prepare(gts, res)
    if not keys:
        return 0.0, {}
    crefs = [[_ngrams(r, n) for r in rs] for rs in refs]
    ctest = [_ngrams(h, n) for h in hyps]
    df: dict[tuple[str, ...], float] = defaultdict(float)
    for rs in crefs:
        for ngram in {g for r in rs for g in r}:
            df[ngram] += 1
    ref_len = math.log(float(len(crefs)))

    def vectorise(counts: dict[tuple[str, ...], int]):
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, tf in counts.items():
            k = len(ngram) - 1
            weight = float(tf) * (ref_len - math.log(max(1.0, df.get(ngram, 0.0))))
            vec[k][ngram] = weight
            norm[k] += weight ** 2
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores: dict[Hashable, float] = {}
    for key, test, rs in zip(keys, ctest, crefs):
        vec, norm, length = vectorise(test)
        total = [0.0] * n
        for ref in rs:
            vec_r, norm_r, length_r = vectorise(ref)
            penalty = math.exp(-(float(length - length_r) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                val = 0.0
                for ngram, weight in vec[k].items():
                    ref_weight = vec_r[k].get(ngram, 0.0)
                    val += min(weight, ref_weight) * ref_weight
                if norm[k] != 0 and norm_r[k] != 0:
                    val /= norm[k] * norm_r[k]
                total[k] += val * penalty
        scores[key] = sum(total) / n / len(rs) * 10.0
    return sum(scores.values()) / len(scores), scores


# --------------------------------------------------------------------------------------------------------- BLEU

def bleu(gts: Captions, res: Captions, n: int = 4) -> tuple[float, dict[Hashable, float]]:
    """Corpus BLEU-n as pycocoevalcap's `Bleu(4)` computes it (clipped n-gram precision, geometric mean of orders
    1..n, brevity penalty against the closest reference length). Returns (corpus BLEU-n, per-key BLEU-n)."""
    keys, refs, hyps = _prepare(gts, res)
    if not keys:
        return 0.0, {}
    small, tiny = 1e-9, 1e-15
    total_guess, total_correct = [0] * n, [0] * n
    total_test, total_ref = 0, 0
    per_key: dict[Hashable, float] = {}
    for key, rs, hyp in zip(keys, refs, hyps):
        ref_lens, max_counts = [], {}
        for r in rs:
            ref_lens.append(len(r.split()))
            for ngram, count in _ngrams(r, n).items():
                max_counts[ngram] = max(max_counts.get(ngram, 0), count)
        test_len = len(hyp.split())
        ref_len = min((abs(length - test_len), length) for length in ref_lens)[1]
        guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
        correct = [0] * n
        for ngram, count in _ngrams(hyp, n).items():
            correct[len(ngram) - 1] += min(max_counts.get(ngram, 0), count)
        total_test += test_len
        total_ref += ref_len
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
        product = 1.0
        for k in range(n):
            product *= (float(correct[k]) + tiny) / (float(guess[k]) + small)
        score = product ** (1.0 / n)
        ratio = (test_len + tiny) / (ref_len + small)
        if ratio < 1:
            score *= math.exp(1 - 1 / ratio)
        per_key[key] = score
    product = 1.0
    for k in range(n):
        product *= float(total_correct[k] + tiny) / (total_guess[k] + small)
    corpus = product ** (1.0 / n)
    ratio = (total_test + tiny) / (total_ref + small)
    if ratio < 1:
        corpus *= math.exp(1 - 1 / ratio)
    return corpus, per_key


# ------------------------------------------------------------------------------------------------------ ROUGE-L

def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(gts: Captions, res: Captions, beta: float = 1.2) -> tuple[float, dict[Hashable, float]]:
    """ROUGE-L as pycocoevalcap's `Rouge`: F-measure (beta = 1.2) of the best LCS precision and the best LCS
    recall over the references, averaged over keys. Returns (mean, per-key scores)."""
    keys, refs, hyps = _prepare(gts, res)
    if not keys:
        return 0.0, {}
    scores: dict[Hashable, float] = {}
    for key, rs, hyp in zip(keys, refs, hyps):
        cand = hyp.split(" ")      # split on single spaces, like pycocoevalcap: "" is one empty token
        precs, recs = [], []
        for r in rs:
            ref = r.split(" ")
            lcs = _lcs(ref, cand)
            precs.append(lcs / float(len(cand)))
            recs.append(lcs / float(len(ref)))
        p, rc = max(precs), max(recs)
        scores[key] = ((1 + beta ** 2) * p * rc) / float(rc + beta ** 2 * p) if p != 0 and rc != 0 else 0.0
    return sum(scores.values()) / len(scores), scores


# ------------------------------------------------------------------------------------------------------- METEOR

def _meteor_available() -> bool:
    if shutil.which("java") is None:
        return False
    try:
        import importlib.util
        spec = importlib.util.find_spec("pycocoevalcap.meteor.meteor")
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin is None:
        return False
    import os
    return os.path.exists(os.path.join(os.path.dirname(spec.origin), "meteor-1.5.jar"))


def meteor(gts: Captions, res: Captions) -> float | None:
    """METEOR 1.5 from pycocoevalcap's jar (starts a JVM: seconds). None when `java` or the jar is missing."""
    if not _meteor_available():
        return None
    keys, refs, hyps = _prepare(gts, res)
    if not keys:
        return 0.0
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score({k: r for k, r in zip(keys, refs)}, {k: [h] for k, h in zip(keys, hyps)})
    finally:
        proc = scorer.meteor_p
        proc.stdin.close()
        proc.kill()
        proc.wait()
    return float(score)


# -------------------------------------------------------------------------------------------------------- all

def caption_scores(gts: Captions, res: Captions, with_meteor: bool = True) -> dict[str, float | None]:
    """CIDEr-D, BLEU-4, ROUGE-L and METEOR x 100 (METEOR None when unavailable or `with_meteor` is False), and
    "exact_match": the fraction (0..1) of keys whose tokenised hypothesis equals one of its tokenised references."""
    keys, refs, hyps = _prepare(gts, res)
    m = meteor(gts, res) if with_meteor else None
    exact = sum(h in rs for rs, h in zip(refs, hyps)) / len(keys) if keys else 0.0
    return {
        "CIDEr-D": 100.0 * cider_d(gts, res)[0],
        "BLEU-4": 100.0 * bleu(gts, res, 4)[0],
        "ROUGE-L": 100.0 * rouge_l(gts, res)[0],
        "METEOR": None if m is None else 100.0 * m,
        "exact_match": exact,
    }
