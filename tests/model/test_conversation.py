import pytest

from regionscribe.model.conversation import IGNORE, IMAGE_PREFIX, encode, prefix_ids, question_ids
from regionscribe.model.errors import PlaceholderError
from regionscribe.model.prompts import BBOX, IM_PATCH


def test_labels_decode_to_exactly_the_answers(tokenizer):
    turns = [
        (IMAGE_PREFIX + f"Give a short description of region1 {BBOX}.", "a small red striped circle"),
        (f"How is region1 related to region2 {BBOX}?", "region1 is left of region2"),
        ("Is region2 bigger or smaller than region1?", "smaller than"),
    ]
    enc = encode(tokenizer, turns, n_image_tokens=16, n_boxes=2)
    assert len(enc.input_ids) == len(enc.labels)
    target = [t for t in enc.labels if t != IGNORE]
    eos = tokenizer.eos_token
    assert tokenizer.decode(target) == "".join(f" {a}{eos}" for _, a in turns)
    # every label that is not ignored equals the input token at that position
    assert all(lab in (IGNORE, tok) for lab, tok in zip(enc.labels, enc.input_ids))
    # questions, image patches and <bbox> tokens are never targets
    ids = tokenizer.convert_tokens_to_ids([IM_PATCH, BBOX])
    assert not any(lab in ids for lab in enc.labels)
    assert enc.input_ids.count(tokenizer.convert_tokens_to_ids(IM_PATCH)) == 16


def test_unicode_answers_survive(tokenizer):
    turns = [(IMAGE_PREFIX + f"Describe region1 {BBOX}.", "ein grüner Würfel — 緑の立方体")]
    enc = encode(tokenizer, turns, n_image_tokens=4, n_boxes=1)
    assert tokenizer.decode([t for t in enc.labels if t != IGNORE], skip_special_tokens=True) == \
        " ein grüner Würfel — 緑の立方体"


@pytest.mark.parametrize("n_boxes", [0, 1, 3])
def test_placeholder_count_mismatch_raises(tokenizer, n_boxes):
    turns = [(IMAGE_PREFIX + f"Is region1 {BBOX} left of region2 {BBOX}?", "yes")]
    with pytest.raises(PlaceholderError, match="2 <bbox> placeholder"):
        encode(tokenizer, turns, n_image_tokens=4, n_boxes=n_boxes)


def test_prompt_is_a_prefix_of_the_training_sequence(tokenizer):
    """Inference (prefix + question, answer open) tokenises exactly like training up to the answer."""
    q = f"What is the color of region1 {BBOX}?"
    train = encode(tokenizer, [(IMAGE_PREFIX + q, "red")], n_image_tokens=16, n_boxes=1).input_ids
    prompt = prefix_ids(tokenizer, 16) + question_ids(tokenizer, q, first=True)
    assert train[: len(prompt)] == prompt
    assert encode(tokenizer, [(IMAGE_PREFIX + q, None)], n_image_tokens=16, n_boxes=1).input_ids == prompt


def test_first_question_must_carry_the_image(tokenizer):
    with pytest.raises(ValueError, match="must start with"):
        encode(tokenizer, [(f"What is region1 {BBOX}?", "x")], n_image_tokens=4, n_boxes=1)


def test_demonstrations_answers_after_the_first_are_labels_when_asked(tokenizer):
    """An episode learns from every demonstrated answer after the first (each read off the lines before it), and the
    tokens stay those inference sees."""
    shown = [("a large dovek", "shape: dovek"), ("a small red circle", "shape: circle"), ("a small dovek", "shape: dovek")]
    block = "Answers accepted in this project:\n" + "".join(
        f"regionD{n} {BBOX}: {c}; {a}\n" for n, (c, a) in enumerate(shown, 1))
    turns = [(IMAGE_PREFIX + block + f"What is the shape of region1 {BBOX}?", "dovek")]
    plain = encode(tokenizer, turns, n_image_tokens=4, n_boxes=4)
    enc = encode(tokenizer, turns, n_image_tokens=4, n_boxes=4, shown_answers=True)
    assert enc.input_ids == plain.input_ids
    target = [t for t in enc.labels if t != IGNORE]
    eos = tokenizer.eos_token
    assert tokenizer.decode(target) == "".join(f" {c}; {a}\n" for c, a in shown[1:]) + f" dovek{eos}"
    assert all(lab in (IGNORE, tok) for lab, tok in zip(enc.labels, enc.input_ids))
    assert tokenizer.decode([t for t in plain.labels if t != IGNORE]) == f" dovek{eos}"
