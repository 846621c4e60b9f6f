"""Mask-aware region features: regions given as a box plus a boolean mask (issue 21, item 2)."""
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from regionscribe.training.annotation_samples import AnnotatedImage, RegionAnnotation, training_samples
from regionscribe.model.asks import Asks
from regionscribe.model.config import ModelConfig
from regionscribe.model.conversation import IMAGE_PREFIX, Sample, Turn, in_relations
from regionscribe.training.batches import batches, collate, encode_sample
from regionscribe.model.describer import RegionDescriber
from regionscribe.model.errors import MaskError, PlaceholderError
from regionscribe.model.images import check_masks
from regionscribe.model.tensors import mask_grid, normalise_boxes, pixel_values
from regionscribe.model.region_encoder import RegionEncoder

BOXES = [(10.0, 12.0, 70.0, 60.0), (40.0, 30.0, 110.0, 100.0), (5.0, 80.0, 40.0, 120.0)]


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8), "RGB")


def _disc(box, shape=(128, 128)) -> np.ndarray:
    """A filled ellipse inscribed in `box` (integer pixel box)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def _tokens(model, image, boxes, masks=None):
    cfg = model.config
    feats = model.encode_images(pixel_values(image, cfg.image_size, cfg.image_mean, cfg.image_std)[None])
    grids = None if masks is None else [[None if m is None else mask_grid(m, cfg.image_size) for m in masks]]
    return model.region_tokens(feats, [normalise_boxes(boxes, *image.size)], grids)[0]


def test_a_region_without_mask_keeps_exactly_its_box_token(untrained):
    image = _image()
    plain = _tokens(untrained, image, BOXES)
    with_none = _tokens(untrained, image, BOXES, [None, None, None])
    mixed = _tokens(untrained, image, BOXES, [None, _disc(BOXES[1]), None])
    assert torch.equal(plain, with_none)
    assert torch.equal(plain[[0, 2]], mixed[[0, 2]])  # bitwise: the other regions are untouched


@pytest.mark.parametrize("pooling", ["filled", "weighted"])
def test_a_mask_changes_the_token_and_its_shape_matters(tokenizer, pooling):
    from regionscribe.model.config import tiny
    from regionscribe.model.modeling import RegionScribeModel

    torch.manual_seed(0)
    model = RegionScribeModel(tiny(mask_pooling=pooling), tokenizer).eval()
    image = _image()
    box = BOXES[1]
    disc = _disc(box)
    left = np.zeros((128, 128), bool)
    left[int(box[1]):int(box[3]), int(box[0]):int(box[0]) + 20] = True
    with torch.no_grad():
        plain = _tokens(model, image, [box])[0]
        a = _tokens(model, image, [box], [disc])[0]
        b = _tokens(model, image, [box], [left])[0]
    assert (a - plain).abs().max() > 1e-3
    assert (a - b).abs().max() > 1e-3


def test_mask_weights_are_the_masks_coverage_of_each_bin():
    """The RoI grid of a mask that covers the left half of its box: ones on the left bins, zeros on the right."""
    enc = RegionEncoder(16, 32, 112, 2, 16, 1, 4, 4, 2, 32, 16)
    mask = np.zeros((112, 112), bool)
    mask[20:60, 20:40] = True
    box = torch.tensor([[20, 20, 60, 60]], dtype=torch.float32) / 112
    at, w = enc.mask_weights([box], [[mask_grid(mask, 112)]])
    assert at.tolist() == [0] and w.shape == (1, 1, 4, 4)
    assert torch.allclose(w[0, 0, :, :2], torch.ones(4, 2), atol=1e-6)
    assert torch.allclose(w[0, 0, :, 2:], torch.zeros(4, 2), atol=1e-6)
    f = torch.randn(2, 16, 4, 4)
    at = torch.tensor([1])
    filled = RegionEncoder.apply_mask(f, at, w, "filled")
    weighted = RegionEncoder.apply_mask(f, at, w, "weighted")
    assert torch.equal(filled[0], f[0]) and torch.equal(weighted[0], f[0])
    assert torch.allclose(weighted[1, :, :, 2:], torch.zeros(16, 4, 2))
    mean = f[1, :, :, :2].mean((1, 2))
    assert torch.allclose(filled[1, :, :, 2:], mean[:, None, None].expand(16, 4, 2), atol=1e-5)
    assert torch.allclose(filled[1, :, :, :2], f[1, :, :, :2])


@pytest.fixture(scope="module")
def describer(untrained):
    return RegionDescriber(untrained, "test")


@pytest.mark.parametrize("masks, message", [
    (lambda: [np.ones((64, 64), bool), None, None], r"mask 0 has shape \(64, 64\).*must be \(128, 128\)"),
    (lambda: [None, np.zeros((128, 128), bool), None], "mask 1 is empty"),
    (lambda: [None, None, _disc(BOXES[0])], "mask 2 has .* pixels outside its box"),
    (lambda: [_disc(BOXES[0]).astype(np.uint8), None, None], "mask 0 must be a boolean numpy array, not a uint8"),
    (lambda: [[[True]], None, None], "mask 0 must be a boolean numpy array, not list"),
    (lambda: [_disc(BOXES[0])], "one entry .* per box: 3 boxes, 1 masks"),
])
def test_bad_masks_are_refused_with_a_clear_error(describer, masks, message):
    with pytest.raises(MaskError, match=message):
        describer.describe(_image(), BOXES, Asks(), masks=masks())
    with pytest.raises(MaskError, match=message):
        describer.ask(_image(), BOXES, [("What is the color of region1 <bbox>?", [0], ["red", "blue"])],
                      masks=masks())


def test_describe_and_ask_take_masks(describer):
    masks = [_disc(BOXES[0]), None, None]
    out = describer.describe(_image(), BOXES, Asks(attributes={"color": ["red", "blue"]}), masks=masks)
    assert len(out.regions) == 3 and all(r.caption is not None for r in out.regions)
    plain = describer.ask(_image(), BOXES, [("What is the color of region1 <bbox>?", [0], ["red", "blue"])])
    masked = describer.ask(_image(), BOXES, [("What is the color of region1 <bbox>?", [0], ["red", "blue"])],
                           masks=masks)
    assert dict(plain[0]) != dict(masked[0])  # the mask changed the region token the answer is ranked from
    naive = describer.describe(_image(), BOXES, Asks(attributes={"color": ["red", "blue"]}), masks=masks, naive=True)
    got, want = naive.regions[0].attributes["color"], out.regions[0].attributes["color"]
    assert [v for v, _ in got] == [v for v, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-4)


def _relation_and_colour(describer, masks):
    return describer.ask(_image(), BOXES, [
        ("Is region1 <bbox> bigger than region2 <bbox>?", [0, 1], ["yes", "no"]),
        ("What is the color of region1 <bbox>?", [0], ["red", "blue"]),
    ], masks=masks)


def test_a_relation_question_sees_the_boxes_unless_the_config_says_masks(describer):
    masks = [_disc(BOXES[0]), _disc(BOXES[1]), None]
    plain_relation, plain_colour = _relation_and_colour(describer, None)
    relation, colour = _relation_and_colour(describer, masks)
    assert describer.model.config.relation_regions == "box"
    assert dict(relation) == pytest.approx(dict(plain_relation), abs=1e-6)  # the boxes' tokens
    assert dict(colour) != pytest.approx(dict(plain_colour), abs=1e-6)  # the region's own question: its mask
    describer.model.config.relation_regions = "mask"
    try:
        masked_relation, masked_colour = _relation_and_colour(describer, masks)
    finally:
        describer.model.config.relation_regions = "box"
    assert dict(masked_relation) != pytest.approx(dict(plain_relation), abs=1e-6)
    assert dict(masked_colour) == pytest.approx(dict(colour), abs=1e-6)
    with pytest.raises(ValueError, match="relation_regions must be one of"):
        ModelConfig.from_dict({**describer.model.config.to_dict(), "relation_regions": "both"})


def test_training_gives_relation_questions_the_boxes_as_serving_does(untrained):
    disc0, disc1 = _disc(BOXES[0]), _disc(BOXES[1])
    turns = [Turn(IMAGE_PREFIX + "Describe region1 <bbox>.", "x", "caption"),
             Turn("Is region1 <bbox> left of region2 <bbox>?", "yes", "yesno"),
             Turn("What colour is region1 <bbox>?", "red", "attribute")]
    sample = Sample(_image(), [BOXES[0], BOXES[0], BOXES[1], BOXES[1]], turns, "img", [disc0, disc0, disc1, disc1])
    grid = partial(mask_grid, size=untrained.config.image_size)
    got = encode_sample(untrained, sample)["masks"]
    assert [m is None for m in got] == [False, True, True, False]
    assert torch.equal(got[0], grid(disc0)) and torch.equal(got[3], grid(disc1))
    untrained.config.relation_regions = "mask"
    try:
        assert all(m is not None for m in encode_sample(untrained, sample)["masks"])
    finally:
        untrained.config.relation_regions = "box"
    # a demonstration's placeholders come first and are not the question's own
    assert in_relations(["Answers: regionD1 <bbox>: x\nDescribe region1 <bbox>.", "Is region1 <bbox> left of "
                         "region2 <bbox>?"], skip=1) == [False, True, True]


def test_check_masks_passes_boxes_and_masks_through():
    disc = _disc(BOXES[0])
    assert check_masks(None, BOXES, 128, 128) == [None, None, None]
    got = check_masks([disc, None, None], BOXES, 128, 128)
    assert got[0] is disc and got[1:] == [None, None]


def test_annotation_masks_reach_the_training_batch_and_the_encoder_learns_from_them(untrained):
    image = _image(1)
    disc = _disc(BOXES[1])
    item = AnnotatedImage(image, [RegionAnnotation(BOXES[0], caption="a red square"),
                                  RegionAnnotation(BOXES[1], caption="a blue circle", mask=disc)], "img")
    samples = list(training_samples([item], seed=0))
    assert len(samples) == 1
    by_box = dict(zip(samples[0].boxes, samples[0].masks))
    assert by_box[BOXES[0]] is None and by_box[BOXES[1]] is disc
    batch = next(batches(untrained, samples, 4))
    masks = batch["masks"][0]
    k = samples[0].boxes.index(BOXES[1])
    assert masks[1 - k] is None
    assert torch.equal(masks[k], mask_grid(disc, untrained.config.image_size))
    untrained.zero_grad(set_to_none=True)
    loss = untrained(**batch)
    loss.backward()
    assert torch.isfinite(loss)
    grad = untrained.region_encoder.flatten_linear.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    untrained.zero_grad(set_to_none=True)
    # a batch whose samples have no masks at all carries none
    plain = Sample(image, [BOXES[0]], [Turn(IMAGE_PREFIX + "Describe region1 <bbox>.", "x", "caption")], "img")
    assert plain.masks == [None]
    assert collate([encode_sample(untrained, plain)], untrained.tokenizer.pad_token_id)["masks"] is None
    with pytest.raises(PlaceholderError, match="2 masks for 1 boxes"):
        Sample(image, [BOXES[0]], plain.turns, "img", [None, None])


def test_corpus_objects_carry_their_visible_pixels():
    from regionscribe.training.corpus import make_scenes

    for scene in make_scenes("test", 25, seed=3):
        w, h = scene.image_size
        arr = np.asarray(scene.image, dtype=np.int16)
        union = np.zeros((h, w), bool)
        for k, obj in enumerate(scene.objects):
            m = obj.mask
            assert m.shape == (h, w) and m.dtype == np.bool_ and m.any()
            assert not (m & union).any()  # visible pixels belong to one object
            union |= m
            check_masks([m], [obj.box], w, h)  # inside its box
            later = scene.objects[k + 1:]
            if not any(o.box[0] < obj.box[2] and obj.box[0] < o.box[2] and o.box[1] < obj.box[3]
                       and obj.box[1] < o.box[3] for o in later):
                ys, xs = np.nonzero(m)  # nothing drawn over it: the mask spans its whole box
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box
        background = arr[~union]
        assert np.ptp(background[:, 0] - background[:, 2]) == 0  # grey + the same noise on every channel: no object


def test_mask_share_gives_regions_their_masks_without_changing_the_conversations():
    from regionscribe.training.corpus import iter_samples, make_scenes, relation_samples

    scenes = make_scenes("train", 12, seed=4)
    boxes_only = list(iter_samples(scenes, 2, seed=1))
    half = list(iter_samples(scenes, 2, seed=1, mask_share=0.5))
    again = list(iter_samples(scenes, 2, seed=1, mask_share=0.5))
    assert all(m is None for s in boxes_only for m in s.masks)
    assert [[t.question for t in s.turns] for s in half] == [[t.question for t in s.turns] for s in boxes_only]
    assert [s.boxes for s in half] == [s.boxes for s in boxes_only]
    flags = [m is not None for s in half for m in s.masks]
    assert 0 < sum(flags) < len(flags)
    assert flags == [m is not None for s in again for m in s.masks]  # deterministic per seed
    for scene, sample in zip(scenes, half):
        by_box = {o.box: o.mask for o in scene.objects}
        assert all(m is None or m is by_box[tuple(b)] for b, m in zip(sample.boxes, sample.masks))
    drill = list(relation_samples(scenes, ("overlap",), seed=0, mask_share=1.0))
    assert drill and all(m is not None for s in drill for m in s.masks)
    with pytest.raises(ValueError, match="mask_share"):
        next(iter_samples(scenes, 2, mask_share=1.5))


def test_overlapping_pairs_share_most_of_their_boxes():
    import random

    from regionscribe.training.corpus import render_overlapping_pair

    for i in range(10):
        scene = render_overlapping_pair(random.Random(f"t:{i}"))
        a, b = scene.objects
        inter = max(0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])) * \
            max(0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
        smaller = min((a.box[2] - a.box[0]) * (a.box[3] - a.box[1]), (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]))
        assert inter >= 0.5 * smaller and a.color != b.color
        assert 0 < a.mask.sum() < (a.box[2] - a.box[0]) * (a.box[3] - a.box[1])
    same = render_overlapping_pair(random.Random("t:0"))
    assert np.array_equal(np.asarray(same.image), np.asarray(render_overlapping_pair(random.Random("t:0")).image))


def test_training_with_a_mask_share_runs_stage2_and_drills_on_masks(tmp_path):
    from regionscribe.training.stages import StageConfig, TrainConfig, train
    from regionscribe.training.streams import relation_stream, synthetic_stream

    stream = synthetic_stream(2, 0, chunk=4, mask_share=0.5)
    assert any(m is not None for s in [next(stream) for _ in range(4)] for m in s.masks)
    stream = relation_stream(("overlap",), 0, mask_share=0.5)
    assert any(m is not None for s in [next(stream) for _ in range(8)] for m in s.masks)
    stream = synthetic_stream(2, 0, chunk=4, overlap_share=0.5)
    first = [next(stream) for _ in range(4)]
    assert sum(s.scene_id.startswith("train-pair-") for s in first) == 2  # half of every chunk of 4 scenes
    with pytest.raises(ValueError, match="overlap_share must be between 0 and 1"):
        TrainConfig(overlap_share=2.0)
    cfg = TrainConfig(out=str(tmp_path / "run"), seed=1, stage0=StageConfig(steps=0, lr=1e-3),
                      stage1=StageConfig(steps=0, lr=1e-3), stage2=StageConfig(steps=2, lr=1e-3, batch_size=2),
                      drills=[(("overlap",), 2)], drill_batch=2, mask_share=1.0, overlap_share=0.5)
    result = train(cfg, progress=False)
    assert [len(result.history[k]) for k in ("drill1", "stage2")] == [2, 2]
    assert all(np.isfinite(v) for v in result.history["stage2"])
