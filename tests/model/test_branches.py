"""model/branches.py: the questions, answers and candidates about one image packed into that image's batch row give
what one row per question gives (model/generation.py), for the describer and for each LM family served."""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from regionscribe.model import branches
from regionscribe.model.asks import Asks
from regionscribe.model.describer import DescribeRequest, RegionDescriber
from regionscribe.model.generation import State, extend, greedy, last_logits, rank
from regionscribe.model.prompts import BBOX
from tests.builders import TINY_LM
from tests.model.test_describe_many import ASKS, _image  # the same asks and scenes as describe_many's tests



def _close(a, b):
    assert len(a.regions) == len(b.regions)
    for x, y in zip(a.regions, b.regions):
        assert (x.caption, x.detailed, x.relation_text) == (y.caption, y.detailed, y.relation_text)
        assert x.caption_confidence == pytest.approx(y.caption_confidence, abs=1e-5)
        assert x.attributes.keys() == y.attributes.keys()
        for k in x.attributes:
            assert [v for v, _ in x.attributes[k]] == [v for v, _ in y.attributes[k]]
            assert [p for _, p in x.attributes[k]] == pytest.approx([p for _, p in y.attributes[k]], abs=1e-5)
    assert [(r.subject, r.object, r.label) for r in a.relations] == [(r.subject, r.object, r.label)
                                                                     for r in b.relations]
    assert [r.score for r in a.relations] == pytest.approx([r.score for r in b.relations], abs=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_branches_answer_as_one_row_per_question(untrained, attention, monkeypatch):
    monkeypatch.setattr(untrained.lm.config, "_attn_implementation", attention)
    red, green = _image((200, 30, 30)), _image((30, 200, 30), size=(96, 140))
    requests = [
        DescribeRequest(red, [(5, 5, 40, 40), (50, 10, 110, 70), (20, 60, 90, 118)], ASKS, image_key="red"),
        DescribeRequest(green, [(5, 5, 40, 40)], Asks(caption=False, detailed=True, max_new_tokens=4,
                                                      attributes={"color": ["red", "dark green"]})),
        DescribeRequest(red, [(20, 60, 90, 118)], Asks(max_new_tokens=2), image_key="red"),  # the same image's row
    ]
    describer = RegionDescriber(untrained, "t")
    packed = describer.describe_many(requests)
    again = describer.describe_many(requests)  # the question openings' keys and values kept from the first pass
    assert all(d.cache_hit for d in again) and describer._cache["red"].heads
    with mock.patch.object(branches, "supported", lambda lm, longest: False):
        rows = RegionDescriber(untrained, "t").describe_many(requests)
    for a, b, c in zip(packed, again, rows):
        _close(a, c)
        _close(b, c)
    assert packed[2].regions[0].caption is not None and len(packed[2].regions[0].caption.split()) <= 2


def test_free_questions_with_and_without_regions_answer_as_in_rows(untrained):
    """A question with no <bbox> has no opening of its own: it is one branch after the prefix."""
    questions = [("What is in the picture?", [], None), (f"Is region1 {BBOX} red?", [0], ["yes", "no", "maybe not"]),
                 (f"Is region1 {BBOX} left of region2 {BBOX}?", [1, 0], ["yes", "no"]),
                 (f"Describe region1 {BBOX}.", [1], None)]
    image, boxes = _image((200, 30, 30)), [(5, 5, 40, 40), (50, 10, 110, 70)]
    packed = RegionDescriber(untrained, "t").ask(image, boxes, questions)
    with mock.patch.object(branches, "supported", lambda lm, longest: False):
        rows = RegionDescriber(untrained, "t").ask(image, boxes, questions)
    for a, b in zip(packed, rows):
        if isinstance(a, tuple):
            assert a[0] == b[0] and a[1] == pytest.approx(b[1], abs=1e-5)
        else:
            assert [v for v, _ in a] == [v for v, _ in b]
            assert [p for _, p in a] == pytest.approx([p for _, p in b], abs=1e-5)


def test_supported_needs_a_4d_mask_and_no_shorter_window(untrained, monkeypatch):
    assert branches.supported(untrained.lm, 100)
    monkeypatch.setattr(untrained.lm.config, "_attn_implementation", "flash_attention_2")
    assert not branches.supported(untrained.lm, 100)
    monkeypatch.setattr(untrained.lm.config, "_attn_implementation", "sdpa")
    monkeypatch.setattr(untrained.lm.config, "sliding_window", 64, raising=False)
    assert branches.supported(untrained.lm, 63) and not branches.supported(untrained.lm, 64)


def test_growing_layer_appends_in_place():
    """Appending writes the new tokens into room made before (doubling when full): what came before is not copied
    again, and the keys and values are those a concatenation gives."""
    layer = branches.GrowingLayer()
    parts = [torch.randn(2, 3, n, 4) for n in (5, 1, 1, 2, 1, 7, 1)]
    buffers = []
    for k, p in enumerate(parts):
        keys, values = layer.update(p, -p)
        assert torch.equal(keys, torch.cat(parts[: k + 1], 2)) and torch.equal(values, -keys)
        buffers.append(layer._keys.data_ptr())
    assert layer.get_seq_length() == 18
    assert buffers[1] == buffers[2] == buffers[3] == buffers[4] and buffers[4] != buffers[5]  # 5 -> room for 10 -> 20
    tree_rows = branches.GrowingLayer()
    tree_rows.lazy_initialization(parts[0], parts[0])
    tree_rows.reserve(parts[0], 32)
    start = tree_rows._keys.data_ptr()
    for p in parts:
        tree_rows.update(p, p)
    assert tree_rows._keys.data_ptr() == start and tree_rows._keys.shape[2] == 32


def _lm(family):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    cls, cfg = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config),
                "qwen3": (Qwen3ForCausalLM, Qwen3Config), "mistral": (MistralForCausalLM, MistralConfig)}[family]
    torch.manual_seed(0)
    extra = {"head_dim": 16} if family == "qwen3" else {}
    return cls(cfg(vocab_size=120, **TINY_LM, **extra)).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_each_lm_family_decodes_and_ranks_in_branches_as_in_rows(family):
    lm = _lm(family)
    assert branches.supported(lm, 200)
    emb = lm.get_input_embeddings()
    g = torch.Generator().manual_seed(1)
    prefixes = [torch.randint(3, 120, (9,), generator=g) for _ in range(2)]
    questions = [[torch.randint(3, 120, (n,), generator=g) for n in ns] for ns in ([3, 5, 2], [4])]
    limits = {(0, 0): 5, (1, 0): 3}  # generated; the others ranked
    candidates = {(0, 1): [[7, 8, 2], [9, 2]], (0, 2): [[11, 2], [12, 13, 14, 2], [15, 2]]}

    def prefix_state(ids):
        state, _ = extend(lm, State.empty(1, torch.device("cpu")), emb(ids[None]), torch.tensor([len(ids)]))
        return state

    states = [prefix_state(p) for p in prefixes]
    # one row per question, each with a copy of its prefix (model/generation.py)
    expected = {}
    for (r, j), q in ((key, questions[key[0]][key[1]]) for key in [(0, 0), (0, 1), (0, 2), (1, 0)]):
        state, logits = extend(lm, states[r].select(torch.tensor([0])), emb(q[None]), torch.tensor([len(q)]))
        first = last_logits(logits, torch.tensor([len(q)]))
        if (r, j) in limits:
            out = greedy(lm, emb, state, first, {2}, limits[r, j])
            expected[r, j] = (out.tokens[0], out.mean_logprob[0], out.stopped[0])
        else:
            expected[r, j] = rank(lm, emb, state, first, [candidates[r, j]])[0]
    # every question of an image in its one row
    tree = branches.Tree.start(states)
    names, ends, width = [], {}, max(sum(len(q) for q in qs) for qs in questions)
    embeds = torch.zeros(2, width, TINY_LM["hidden_size"])
    for r, qs in enumerate(questions):
        row, col = [], 0
        for j, q in enumerate(qs):
            b = tree.branch(r)
            row += [b] * len(q)
            embeds[r, col: col + len(q)] = emb(q)
            col += len(q)
            ends[r, j] = (b, r, col - 1)
        names.append(row)
    logits = branches.feed(lm, tree, embeds, names)
    keys = list(ends)
    first = torch.stack([logits[ends[k][1], ends[k][2]] for k in keys])
    got = branches.decode(lm, emb, tree, first,
                          [(ends[k][0], keys.index(k), limits[k]) for k in limits],
                          [(ends[k][0], keys.index(k), candidates[k]) for k in candidates], {2})
    for n, k in enumerate(limits):
        tokens, mean, stopped = expected[k]
        assert got.tokens[n] == tokens and got.stopped[n] == stopped
        assert got.mean_logprob[n] == pytest.approx(mean, abs=1e-5)
    for n, k in enumerate(candidates):
        assert got.scores[n] == pytest.approx(expected[k], abs=1e-4)
