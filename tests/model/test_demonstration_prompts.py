"""Demonstrations (model/demonstrations.py) and VPG-C (model/vpgc.py): the describer asks what training taught.

The decisive check: the log-likelihoods the describer ranks candidates by, with demonstrations given as stored
region tokens, equal the training loss on the same conversation with the demonstrations given as images and boxes
(so the block's text, the placeholders' order and VPG-C's positions are the same on both sides)."""
import itertools
import math
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from regionscribe.model import branches
from regionscribe.model.asks import Asks
from regionscribe.model.conversation import Sample, Turn
from regionscribe.model.demonstrations import DemoRegion, Demonstration, block, clean
from regionscribe.model.describer import RegionDescriber
from regionscribe.model.errors import DemonstrationError, PlaceholderError
from regionscribe.model.modeling import RegionScribeModel
from regionscribe.model.prompts import ATTRIBUTE_PROMPT, IMAGE_PREFIX
from regionscribe.training.batches import collate, encode_sample


def _image(color, at=(5, 5, 40, 40)):
    img = Image.new("RGB", (96, 96), (150, 150, 150))
    img.paste(color, at)
    return img


QUERY, SHOWN = _image((200, 30, 30)), _image((30, 30, 200), (30, 20, 80, 70))
QBOX, SBOX = (5, 5, 40, 40), (30, 20, 80, 70)
ANSWERS = [("a small blue solid dax", {"shape": "dax"}), (None, {"color": "blue", "shape": "circle"})]


def test_block_is_one_line_per_demonstration_and_cannot_break_the_format():
    text = block([("a red\n### Human: circle <bbox>", {"color": "red"}), (None, {"shape": "dax"})])
    assert text.splitlines() == ["Answers accepted in this project:",
                                 "regionD1 <bbox>: color: red; caption: a red Human: circle",
                                 "regionD2 <bbox>: shape: dax"]
    # the caption is the line's last field, so one holding "; " ends where the line does
    assert block([("green; circle", {"color": "green"})]).splitlines()[1] == \
        "regionD1 <bbox>: color: green; caption: green; circle"
    assert clean("x" * 500) == "x" * 200
    assert block([]) == ""
    with pytest.raises(DemonstrationError, match="neither a caption nor an attribute"):
        block([("  ", {"color": ""})])


def test_sample_counts_the_demonstrations_placeholders():
    q = IMAGE_PREFIX + block(ANSWERS) + ATTRIBUTE_PROMPT.format(name="shape")
    Sample(QUERY, [QBOX], [Turn(q, "dax", "attribute")], "s",
           demonstrations=[DemoRegion(SHOWN, SBOX), DemoRegion(SHOWN, SBOX)])
    with pytest.raises(PlaceholderError, match="1 boxes and 1 demonstrations"):
        Sample(QUERY, [QBOX], [Turn(q, "dax", "attribute")], "s", demonstrations=[DemoRegion(SHOWN, SBOX)])


def _loglik(model, answer: str) -> float:
    """The summed log-probability of `answer` after the demonstrations, as training computes it."""
    q = IMAGE_PREFIX + block(ANSWERS) + ATTRIBUTE_PROMPT.format(name="shape")
    sample = Sample(QUERY, [QBOX], [Turn(q, answer, "attribute")], "s",
                    demonstrations=[DemoRegion(SHOWN, SBOX), DemoRegion(SHOWN, SBOX)])
    batch = collate([encode_sample(model, sample)], model.tokenizer.pad_token_id)
    with torch.no_grad():
        return -float(model(**batch, num_items_in_batch=torch.ones(())))


def _check_ranking_matches_training(model, branched: bool):
    d = RegionDescriber(model, "t")
    token = d.region_tokens(SHOWN, [SBOX])[0]
    demos = [Demonstration(token, c, a) for c, a in ANSWERS][::-1]  # nearest first: written nearest last
    asks = Asks(caption=False, attributes={"shape": ["dax", "circle"]})
    with mock.patch.object(branches, "supported", lambda lm, longest: branched):
        got = dict(d.describe(QUERY, [QBOX], asks, demonstrations=[demos]).regions[0].attributes["shape"])
        plain = dict(d.describe(QUERY, [QBOX], asks).regions[0].attributes["shape"])
    assert math.log(got["dax"] / got["circle"]) == pytest.approx(_loglik(model, "dax") - _loglik(model, "circle"),
                                                                  abs=2e-3)
    # the demonstrations were read: the odds differ from those without
    assert math.log(got["dax"] / got["circle"]) != pytest.approx(math.log(plain["dax"] / plain["circle"]), abs=1e-3)


@pytest.mark.parametrize("branched", [True, False])
def test_describer_ranks_as_training_scores(untrained, branched):
    _check_ranking_matches_training(untrained, branched)


@pytest.fixture(scope="module")
def with_vpgc(tokenizer):
    torch.manual_seed(1)
    from regionscribe.model.config import tiny
    model = RegionScribeModel(tiny(), tokenizer).eval()
    model.add_vpgc()
    torch.nn.init.normal_(model.vpgc.out.weight, std=0.5)  # a trained VPG-C is not zero; this one must act
    return model


@pytest.mark.parametrize("branched", [True, False])
def test_vpgc_prompts_the_same_positions_in_training_and_serving(with_vpgc, branched):
    _check_ranking_matches_training(with_vpgc, branched)


def test_vpgc_is_a_switch_and_starts_as_a_no_op(tokenizer, tmp_path):
    torch.manual_seed(2)
    from regionscribe.model.config import tiny
    model = RegionScribeModel(tiny(), tokenizer).eval()
    before = _loglik(model, "dax")
    model.add_vpgc()
    assert _loglik(model, "dax") == pytest.approx(before, abs=1e-5)  # zero-initialised output
    params = sum(p.numel() for p in model.vpgc.parameters())
    assert params <= 0.02 * sum(p.numel() for p in model.parameters())
    torch.nn.init.normal_(model.vpgc.out.weight, std=0.5)
    on = _loglik(model, "dax")
    assert abs(on - before) > 1e-4
    model.config.use_vpgc = False
    assert _loglik(model, "dax") == pytest.approx(before, abs=1e-5)
    model.config.use_vpgc = True
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RegionScribeModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.vpgc == model.config.vpgc
    assert _loglik(loaded, "dax") == pytest.approx(on, abs=1e-4)


def test_vpgc_prompts_the_question_when_the_shown_answers_are_learned_too(with_vpgc):
    """An episode learns every shown answer after the first (Sample.learn_shown): VPG-C still prompts the question's
    region token at the question's end, as serving does. Before, the instruction ended at the first learned token, a
    shown answer with no question region before it, so VPG-C never acted on an episode and a batch of episodes gave
    it no gradient at all. Causal: what VPG-C changes is the question's answer alone, whichever answers are learned."""
    from regionscribe.model.vpgc import instruction_end

    ids = torch.tensor([5, 3, 7, 8, 3, 9, 10, 11])  # bbox = 3: a demonstration's, then the question's
    labels = torch.tensor([-100, -100, -100, 8, -100, -100, 10, 11])  # the shown answer (8) and the question's
    assert instruction_end(ids, labels, 3, skip=1) == 5
    assert instruction_end(ids, labels, 3, skip=0) == 2
    assert instruction_end(ids, torch.full_like(labels, -100), 3, skip=1) is None

    q = IMAGE_PREFIX + block(ANSWERS) + ATTRIBUTE_PROMPT.format(name="shape")

    def loss(learn_shown: bool, vpgc: bool) -> float:
        sample = Sample(QUERY, [QBOX], [Turn(q, "dax", "attribute")], "s", learn_shown=learn_shown,
                        demonstrations=[DemoRegion(SHOWN, SBOX), DemoRegion(SHOWN, SBOX)])
        batch = collate([encode_sample(with_vpgc, sample)], with_vpgc.tokenizer.pad_token_id)
        with_vpgc.config.use_vpgc = vpgc
        try:
            with torch.no_grad():
                return float(with_vpgc(**batch, num_items_in_batch=torch.ones(())))
        finally:
            with_vpgc.config.use_vpgc = True

    question_only = loss(False, True) - loss(False, False)
    assert abs(question_only) > 1e-3
    assert loss(True, True) - loss(True, False) == pytest.approx(question_only, abs=1e-4)


def test_bad_demonstrations_get_clear_errors(untrained):
    d = RegionDescriber(untrained, "t")
    hidden = untrained.lm.config.hidden_size
    with pytest.raises(DemonstrationError, match="one list per box"):
        d.describe(QUERY, [QBOX], Asks(), demonstrations=[[], []])
    with pytest.raises(DemonstrationError, match=r"shape \(3,\)"):
        d.describe(QUERY, [QBOX], Asks(), demonstrations=[[Demonstration(np.zeros(3), "a dax")]])
    with pytest.raises(DemonstrationError, match="finite"):
        d.describe(QUERY, [QBOX], Asks(), demonstrations=[[Demonstration(np.full(hidden, np.nan), "a dax")]])
    with pytest.raises(DemonstrationError, match="neither a caption"):
        d.describe(QUERY, [QBOX], Asks(), demonstrations=[[Demonstration(np.zeros(hidden))]])
    # no demonstrations for a box is the same as none at all
    a = d.describe(QUERY, [QBOX], Asks(max_new_tokens=4), demonstrations=[[]])
    b = d.describe(QUERY, [QBOX], Asks(max_new_tokens=4))
    assert a.regions[0].caption == b.regions[0].caption


def test_a_replay_share_of_one_or_more_is_refused_before_anything_is_built():
    from regionscribe.training.stages import TrainConfig
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="demonstration replay must be at least 0 and below 1"):
            TrainConfig(demonstration_replay=bad)
    for replay, copy in ((0.3, 0.7), (0.0, -0.1), (0.5, 0.6)):
        with pytest.raises(ValueError, match="copy share must be at least 0 and leave room for episodes"):
            TrainConfig(demonstration_replay=replay, demonstration_copy=copy)
    TrainConfig(demonstration_replay=0.2, demonstration_copy=0.4)


def test_an_episode_learns_from_its_demonstrations_answers_too(untrained):
    """training/corpus/episodes.py: every demonstrated answer after the first is a target as well as the question's
    own answer, so each episode holds several chances to read a convention off the lines before it."""
    import random

    from regionscribe.model.conversation import IGNORE
    from regionscribe.training.corpus.episodes import episode

    tok = untrained.tokenizer
    for key in range(6):
        sample = episode(random.Random(key), str(key))
        assert sample.learn_shown
        labels = encode_sample(untrained, sample)["labels"].tolist()
        target = tok.decode([t for t in labels if t != IGNORE], skip_special_tokens=True)
        lines = sample.turns[0].question.split("\n")
        shown = [line.split(": ", 1)[1] for line in lines if line.startswith("regionD")]
        assert target == "".join(f" {a}\n" for a in shown[1:]) + f" {sample.turns[0].answer}"


def test_name_episodes_ask_about_other_objects_with_the_renamed_one_shown_next_to_them():
    """corpus.episodes: half the name episodes ask about another object than the renamed one, and half of those show
    the renamed concept in the most alike place (last, next to the question), so that the word is read off the
    demonstration of the same concept and not copied from the nearest line; those answer with their own names. No
    episode names a withheld concept by its own name."""
    import random
    import re

    from regionscribe.training.corpus import WITHHELD_COLOR, WITHHELD_SHAPE, episodes

    picks = []

    def recorded(rng, query, pool, k, convention, contrast=False):
        chosen = pick(rng, query, pool, k, convention, contrast)
        assert len(chosen) == min(k, len(pool))
        picks.append((query, convention, [o for _, o in chosen]))
        return chosen

    pick = episodes._pick
    with mock.patch.object(episodes, "_pick", recorded):
        samples = [episodes.episode(random.Random(f"names:{key}"), str(key)) for key in range(160)]
    named = [(s, q, c, shown) for s, (q, c, shown) in zip(samples, picks) if c.attribute]
    target = [shown for _, q, c, shown in named if c.shows(q)]
    other = [(s, q, c, shown) for s, q, c, shown in named if not c.shows(q)]
    assert 0.38 < len(target) / len(named) < 0.62
    assert all(any(c.shows(o) for o in shown) for _, q, c, shown in named if c.shows(q))
    last = [c.shows(shown[-1]) for _, _, c, shown in other]
    assert 0.4 < sum(last) / len(other) < 0.85
    for sample, query, convention, _ in other:
        [turn] = sample.turns
        assert convention.name not in turn.answer.split()
        if turn.key == convention.attribute:
            assert turn.answer == getattr(query, convention.attribute)
    # the withheld concepts appear (renamed: 40% of the name episodes), but never under their own names, which only
    # a project's corrections teach (the feedback loop's new concept); an earlier run of v12's chain (README,
    # Demonstrations), trained before this held, named 27 of 35 purple regions "purple" and 15 of 38 stars "star" with
    # no correction
    withheld = {WITHHELD_COLOR, WITHHELD_SHAPE}
    assert 0.25 < sum(c.value in withheld for _, _, c, _ in named) / len(named) < 0.55
    for sample in samples:
        [turn] = sample.turns
        words = set(re.findall(r"[a-z]+", turn.question + " " + turn.answer))
        assert not words & withheld, (turn.question, turn.answer)


def test_style_episodes_draw_long_space_joined_styles_more_often_than_their_share():
    """corpus.episodes.draw_style: the number of fields by STYLE_FIELDS and spaces by SPACE_SHARE, so 4-field
    space-joined styles (8% of the train styles, where v12 dropped a field) are about 22% of the style episodes;
    every drawn style is of the asked split."""
    import collections
    import random

    from regionscribe.training.corpus.episodes import (
        SPACE_SHARE, STYLE_FIELDS, caption_styles, draw_style, style_split,
    )

    styles = [draw_style(random.Random(f"style:{i}")) for i in range(3000)]
    assert all(style_split(s) == "train" for s in styles)
    fields = collections.Counter(len(order) for order, _, _ in styles)
    for n, share in STYLE_FIELDS.items():
        assert abs(fields[n] / len(styles) - share) < 0.04, (n, fields)
    assert abs(sum(sep == " " for _, sep, _ in styles) / len(styles) - SPACE_SHARE) < 0.04
    train = caption_styles("train")
    assert sum(len(o) == 4 and sep == " " for o, sep, _ in train) / len(train) < 0.1
    assert 0.18 < sum(len(o) == 4 and sep == " " for o, sep, _ in styles) / len(styles) < 0.26
    assert all(style_split(draw_style(random.Random(i), "held_out")) == "held_out" for i in range(50))


def test_episode_regions_are_drawn_as_annotators_draw_them_without_changing_the_episode():
    """corpus.episodes.episode with mask_share and loose_share: the query region comes with its object's mask or as a
    loosely drawn box, and the demonstrations' boxes loosely drawn, at those shares; the conversation, the image and
    which regions are shown stay those of the same episode drawn with no shares."""
    import random

    from regionscribe.training.corpus.episodes import episode

    masked = loose_query = loose_demos = demos = 0
    n = 120
    for key in range(n):
        plain = episode(random.Random(key), str(key))
        drawn = episode(random.Random(key), str(key), mask_share=0.3, loose_share=0.4)
        assert [t.question for t in drawn.turns] == [t.question for t in plain.turns]
        assert [t.answer for t in drawn.turns] == [t.answer for t in plain.turns]
        assert plain.masks == [None] and len(drawn.masks) == 1
        mask = drawn.masks[0]
        if mask is not None:
            masked += 1
            x1, y1, x2, y2 = (int(v) for v in plain.boxes[0])
            assert mask.any() and not mask[:y1].any() and not mask[y2 + 1:].any() and not mask[:, x2 + 1:].any()
            assert drawn.boxes == plain.boxes
        else:
            loose_query += drawn.boxes != plain.boxes
        demos += len(plain.demonstrations)
        for a, b in zip(plain.demonstrations, drawn.demonstrations):
            assert a.image is b.image or a.image.tobytes() == b.image.tobytes()
            loose_demos += a.box != b.box
    assert 0.18 < masked / n < 0.42
    assert 0.25 < loose_query / (n - masked) < 0.55
    assert 0.3 < loose_demos / demos < 0.5


def test_copy_drills_are_answered_only_by_copying_from_the_question(untrained):
    """corpus.episodes.copy_drill: made-up words written again, or the word paired with another one; fresh words
    every time, no regions, the answer the only target."""
    import random

    from regionscribe.model.conversation import IGNORE
    from regionscribe.training.corpus.episodes import COPY_Q, RECALL_Q, copy_drill
    from regionscribe.training.streams import demonstration_stream

    kinds = set()
    for key in range(40):
        sample = copy_drill(random.Random(key), str(key))
        [turn] = sample.turns
        assert sample.boxes == [] and turn.question.startswith(IMAGE_PREFIX)
        body = turn.question[len(IMAGE_PREFIX):]
        if body.startswith(COPY_Q.format(words="")):
            kinds.add("copy")
            assert body == COPY_Q.format(words=turn.answer)
        else:
            kinds.add("recall")
            *pairs, question = body.split("\n")
            asked = dict(p.split(": ") for p in pairs)
            key_word = question[len(RECALL_Q.format(key="")) - 1:-1]
            assert question == RECALL_Q.format(key=key_word) and asked[key_word] == turn.answer
        labels = encode_sample(untrained, sample)["labels"].tolist()
        assert untrained.tokenizer.decode([t for t in labels if t != IGNORE], skip_special_tokens=True) == \
            f" {turn.answer}"
    assert kinds == {"copy", "recall"}
    drawn = [s.turns[0].kind for s in itertools.islice(demonstration_stream(1, 0.2, copy=0.4), 200)]
    assert 0.3 < drawn.count("copy") / 200 < 0.5


def test_induction_pretraining_trains_the_lm_alone_on_text_only_copying_predicts(tokenizer):
    """training.phases.pretrain_induction: made-up words, then the same line again (corpus.episodes.induction_text);
    the loss on every token but the first and the padding; only the LM's parameters move."""
    import random
    from statistics import mean
    from types import SimpleNamespace

    from regionscribe.model.config import tiny
    from regionscribe.training.corpus.episodes import induction_text
    from regionscribe.training.phases import StageConfig, copied_share, induction_batch, pretrain_induction

    texts = [induction_text(random.Random(key)) for key in range(20)]
    for text in texts:
        first, *again = text.split("\n")
        assert 1 <= len(again) <= 3 and all(line == first for line in again) and 3 <= len(first.split()) <= 10
    ids, mask, labels = induction_batch(tokenizer, ["kofu dax", "kofu dax\nkofu dax"], "cpu")
    assert ids[0, 0] == tokenizer.bos_token_id and mask[0].sum() < mask[1].sum() == ids.shape[1]
    assert (labels[:, 0] == -100).all() and (labels[0][mask[0] == 0] == -100).all()
    assert torch.equal(labels[1, 1:], ids[1, 1:])

    torch.manual_seed(0)
    model = RegionScribeModel(tiny(), tokenizer).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = pretrain_induction(model, StageConfig(steps=30, lr=3e-3, batch_size=8), seed=0, progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("lm.") for k in changed)
    assert mean(losses[-5:]) < mean(losses[:5]) - 1.0
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    # copied_share scores the tokens after the first line break, line breaks left out: an LM that always predicts
    # the true next token copies all of them, one that predicts a constant copies none
    ids, mask, _ = induction_batch(tokenizer, texts, "cpu")
    vocab = len(tokenizer)

    class Oracle(torch.nn.Module):
        def __init__(self, right: bool):
            super().__init__()
            self.right = right

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, vocab)
            if self.right:
                logits[:, :-1].scatter_(2, input_ids[:, 1:, None], 1.0)
            return SimpleNamespace(logits=logits)

    model.lm = Oracle(right=True)
    assert copied_share(model, texts) == 1.0
    model.lm = Oracle(right=False)  # always token 0, the padding
    assert copied_share(model, texts) == 0.0


def test_induction_pretraining_with_replay_keeps_learning_the_ordinary_samples(tokenizer):
    """pretrain_induction's keep/keep_batch: each step also learns ordinary samples, so the LM keeps its answers
    (without them the default forgot the corpus in this phase); only the LM moves either way."""
    from regionscribe.model.config import tiny
    from regionscribe.training.corpus import iter_samples, make_scenes
    from regionscribe.training.phases import StageConfig, pretrain_induction

    kept = list(iter_samples(make_scenes("train", 2, seed=3), 2, seed=3))

    def answer_loss(model):
        mb = collate([encode_sample(model, s) for s in kept], model.tokenizer.pad_token_id)
        with torch.no_grad():
            return float(model(**mb, num_items_in_batch=torch.ones(())) / (mb["labels"][:, 1:] != -100).sum())

    after = {}
    for keep_batch in (0, 2):
        torch.manual_seed(0)
        model = RegionScribeModel(tiny(), tokenizer).eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        start = answer_loss(model)
        pretrain_induction(model, StageConfig(steps=12, lr=3e-3, batch_size=4), seed=0, progress=False,
                           keep=itertools.cycle(kept), keep_batch=keep_batch)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert changed and all(k.startswith("lm.") for k in changed)
        after[keep_batch] = answer_loss(model)
    assert after[2] < start - 1.0 and after[2] < after[0] - 1.0, (start, after)


def test_replay_stream_mixes_balanced_relation_questions_into_the_stage2_conversations():
    from collections import Counter

    from regionscribe.training.corpus import RELATION_AXES
    from regionscribe.training.streams import replay_stream, synthetic_stream

    plain = [s.turns for s in itertools.islice(replay_stream(5), 20)]
    assert plain == [s.turns for s in itertools.islice(synthetic_stream(2, 5), 20)]
    mixed = list(itertools.islice(replay_stream(5, relations=0.4), 4000))
    questions = [s for s in mixed if len(s.turns) == 1 and s.turns[0].key in RELATION_AXES]
    assert 0.37 < len(questions) / len(mixed) < 0.43
    answers = Counter((s.turns[0].key, s.turns[0].answer) for s in questions)
    for axis, values in RELATION_AXES.items():  # unbalanced, "overlapping" is 19% of overlap questions (1:4.3)
        counts = [answers[(axis, v)] for v in values]
        assert min(counts) >= 0.6 * max(counts) > 0, (axis, counts)
    with pytest.raises(ValueError, match="relations"):
        next(replay_stream(5, relations=1.5))
