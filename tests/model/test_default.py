"""The embedded default checkpoint (model/default): present, small, trained, and it reads regions by their boxes."""
import pytest

from regionscribe.model.asks import Asks
from regionscribe.training.corpus import ATTRIBUTE_VALUES, eval_samples, make_scenes
from regionscribe.model.describer import DEFAULT_CHECKPOINT, RegionDescriber
from regionscribe.training.evaluation import evaluate_samples


@pytest.fixture(scope="module")
def default():
    return RegionDescriber.from_pretrained(DEFAULT_CHECKPOINT)


def test_checkpoint_is_small_and_versioned(default):
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir() if p.is_file())
    assert size <= 20 * 1024 * 1024, size
    assert default.model_version == "tiny-default-v12"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss_curve.png", "metrics.json"):
        assert (DEFAULT_CHECKPOINT / name).is_file(), name


def test_swapping_two_boxes_swaps_their_answers(default):
    """Placeholder order matters: the k-th <bbox> is the k-th box, so swapping the boxes swaps the answers."""
    scene = next(s for s in make_scenes("test", 50, seed=9)
                 if len(s.objects) >= 2 and s.objects[0].color != s.objects[1].color)
    a, b = scene.objects[0], scene.objects[1]
    asks = Asks(caption=True, attributes={"color": ATTRIBUTE_VALUES["color"]})
    ab = default.describe(scene.image, [a.box, b.box], asks)
    ba = default.describe(scene.image, [b.box, a.box], asks)
    assert ab.regions[0].caption == ba.regions[1].caption and ab.regions[1].caption == ba.regions[0].caption
    assert ab.regions[0].caption != ab.regions[1].caption
    top = [r.attributes["color"][0][0] for r in ab.regions]
    assert top == [a.color, b.color]
    assert [r.attributes["color"][0][0] for r in ba.regions] == [b.color, a.color]


def test_default_reads_attributes_from_pixels(default):
    """A guard on the shipped weights: colour, size and shape of a few unseen test scenes."""
    samples = [s for s in eval_samples(make_scenes("test", 12, seed=4)) if s.turns[0].kind == "attribute"]
    metrics = evaluate_samples(default, samples)
    assert metrics["attribute:color"] >= 90, metrics
    assert metrics["attribute:size"] >= 75, metrics
    assert metrics["attribute:shape"] >= 75, metrics


def test_default_compares_the_positions_of_two_regions(default):
    """A guard on the relation drills: before them the default answered left/right and above/below at exactly 50%."""
    samples = [s for s in eval_samples(make_scenes("test", 12, seed=4))
               if s.turns[0].kind == "relation" and s.turns[0].key in ("horizontal", "vertical")]
    metrics = evaluate_samples(default, samples)
    assert metrics["counts"]["relation"] >= 60, metrics
    assert metrics["relation:horizontal"] >= 85 and metrics["relation:vertical"] >= 85, metrics
