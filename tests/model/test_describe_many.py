"""RegionDescriber.describe_many: several describe calls in one batched pass give each call's own answer, and a bad
request fails alone."""
import pytest
from PIL import Image

from regionscribe.model.asks import Asks
from regionscribe.model.describer import DescribeRequest, RegionDescriber
from regionscribe.model.errors import BoxError, MaskError

ASKS = Asks(caption=True, attributes={"color": ["red", "green", "blue"], "shape": ["circle", "square"]},
            relation_labels=["left of"], relation_text=True, max_new_tokens=6)


def _image(color, size=(128, 128)):
    img = Image.new("RGB", size, (150, 150, 150))
    img.paste(color, (5, 5, 40, 40))
    img.paste((30, 30, 200), (50, 10, 110, 70))
    return img


def _same(a, b):
    assert len(a.regions) == len(b.regions)
    for x, y in zip(a.regions, b.regions):
        assert x.caption == y.caption and x.relation_text == y.relation_text and x.box == y.box
        assert x.confidence == pytest.approx(y.confidence, abs=1e-4)
        for k in x.attributes:
            assert [v for v, _ in x.attributes[k]] == [v for v, _ in y.attributes[k]]
            assert [p for _, p in x.attributes[k]] == pytest.approx([p for _, p in y.attributes[k]], abs=1e-4)
    assert [(r.subject, r.object, r.label) for r in a.relations] == [(r.subject, r.object, r.label)
                                                                     for r in b.relations]


def test_many_requests_in_one_pass_answer_as_each_alone(untrained):
    red, green = _image((200, 30, 30)), _image((30, 200, 30), size=(96, 140))
    requests = [
        DescribeRequest(red, [(5, 5, 40, 40), (50, 10, 110, 70)], ASKS, image_key="red"),
        DescribeRequest(green, [(5, 5, 40, 40)], Asks(caption=False, attributes={"color": ["red", "green"]})),
        DescribeRequest(red, [(0, 0, 0, 0)], ASKS, image_key="red"),  # a bad box: this request alone fails
        DescribeRequest(red, [(5, 5, 40, 40), (50, 10, 110, 70), (20, 60, 90, 118)], Asks(max_new_tokens=3),
                        image_key="red", only=[2]),  # the same image again, another token limit, one box of three
        DescribeRequest(green, [(1, 1, 30, 30)], ASKS, only=[4]),  # names a box it does not have
    ]
    batched = RegionDescriber(untrained, "t").describe_many(requests)
    assert isinstance(batched[2], BoxError) and "inverted or has zero size" in str(batched[2])
    assert isinstance(batched[4], BoxError) and "there are 1 boxes" in str(batched[4])
    for i in (0, 1, 3):
        r = requests[i]
        alone = RegionDescriber(untrained, "t").describe(r.image, r.boxes, r.asks, image_key=r.image_key, only=r.only)
        _same(batched[i], alone)
        assert batched[i].timings["batch"] == 3.0
    assert [batched[i].cache_hit for i in (0, 1, 3)] == [False, False, True]  # one image, encoded once
    assert batched[3].regions[0].caption is None and batched[3].regions[2].caption is not None


def test_extra_keyword_arguments_go_to_describe_for_that_request(untrained):
    d = RegionDescriber(untrained, "t")
    image = _image((200, 30, 30))
    plain, naive = d.describe_many([DescribeRequest(image, [(5, 5, 40, 40)], ASKS),
                                    DescribeRequest(image, [(5, 5, 40, 40)], ASKS, extra={"naive": True})])
    assert naive.timings.get("batch") is None and plain.timings["batch"] == 1.0  # its own describe call
    _same(plain, naive)
    with pytest.raises(TypeError):
        d.describe_many([DescribeRequest(image, [(5, 5, 40, 40)], ASKS, extra={"no_such_argument": 1})])


def test_masked_regions_are_batched_with_the_others_and_answered_as_describe_answers_them(untrained):
    import numpy as np

    d = RegionDescriber(untrained, "t")
    image = _image((200, 30, 30))
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[5:40, 5:25] = True  # the left half of the box
    masked = DescribeRequest(image, [(5, 5, 40, 40), (45, 45, 60, 60)], ASKS, masks=[mask, None])
    plain = DescribeRequest(_image((30, 30, 200)), [(5, 5, 40, 40)], ASKS)
    batched = d.describe_many([masked, plain])
    assert batched[0].timings["batch"] == 2.0  # one pass for both
    _same(batched[0], RegionDescriber(untrained, "t").describe(image, masked.boxes, ASKS, masks=[mask, None]))
    _same(batched[1], RegionDescriber(untrained, "t").describe(plain.image, plain.boxes, ASKS))
    wrong = np.ones((3, 3), dtype=bool)
    assert isinstance(d.describe_many([DescribeRequest(image, [(5, 5, 40, 40)], ASKS, masks=[wrong])])[0], MaskError)
