from PIL import Image

from regionscribe.training.annotation_samples import AnnotatedImage, RegionAnnotation, eval_samples, training_samples
from regionscribe.model.conversation import IMAGE_PREFIX, encode
from regionscribe.model.prompts import BBOX


def _item():
    regions = [
        RegionAnnotation((1, 1, 20, 20), "a purple {odd} star — ünïcode", {"color": ["purple"], "shape": ["star"]},
                         [(1, "left of")]),
        RegionAnnotation((30, 5, 60, 40), "a red circle", {"color": ["red"]}),
        RegionAnnotation((5, 50, 25, 60), None, {"size": ["small"]}),
    ]
    return AnnotatedImage(Image.new("RGB", (64, 64)), regions, "img-1")


def test_training_samples_cover_every_answer_with_consistent_boxes(tokenizer):
    samples = list(training_samples([_item()], seed=1, max_turns=3))
    answers = [t.answer for s in samples for t in s.turns]
    assert sorted(answers) == sorted(["a purple {odd} star — ünïcode", "purple", "star", "yes", "a red circle", "red",
                                      "small"])
    for s in samples:
        assert s.turns[0].question.startswith(IMAGE_PREFIX) and len(s.turns) <= 3
        enc = encode(tokenizer, [(t.question, t.answer) for t in s.turns], 4, len(s.boxes))  # counts match
        assert enc.n_boxes == len(s.boxes)
    relation = next(t for s in samples for t in s.turns if t.kind == "yesno")
    assert " left of " in relation.question and relation.question.count("region") == 2


def test_eval_samples_rank_over_the_vocabulary():
    samples = list(eval_samples([_item()], {"color": ["red", "purple", "green"], "shape": ["star", "circle"]}))
    kinds = sorted((s.turns[0].kind, s.turns[0].key) for s in samples)
    assert kinds == [("attribute", "color"), ("attribute", "color"), ("attribute", "shape"), ("caption", None),
                     ("caption", None)]  # "size" has no vocabulary: not scored
    assert all(len(s.boxes) == 1 and s.turns[0].question.count(BBOX) == 1 for s in samples)
