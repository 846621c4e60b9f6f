import pytest
import torch
from PIL import Image

from regionscribe.model.asks import Asks
from regionscribe.model.config import tiny
from regionscribe.model.conversation import IMAGE_PREFIX, encode
from regionscribe.model.describer import RegionDescriber
from regionscribe.model.errors import BoxError, PlaceholderError
from regionscribe.model.tensors import pixel_values
from regionscribe.model.modeling import RegionScribeModel
from regionscribe.model.prompts import BBOX

BOXES = [(5, 5, 40, 40), (50, 10, 110, 70), (20, 60, 90, 118), (70, 70, 120, 120)]
ASKS = Asks(caption=True, attributes={"color": ["red", "green", "blue"], "shape": ["circle", "square"]},
            relation_labels=["left of", "above"], relation_text=True, max_new_tokens=6)


def _image():
    img = Image.new("RGB", (128, 128), (150, 150, 150))
    img.paste((200, 30, 30), (5, 5, 40, 40))
    img.paste((30, 30, 200), (50, 10, 110, 70))
    return img


def test_embed_replaces_placeholders_in_order(untrained):
    m = untrained
    tok = m.tokenizer
    ids = torch.tensor([tok(f"x {BBOX} y {BBOX}", add_special_tokens=False)["input_ids"]])
    a, b = torch.full((1, 256), 1.0), torch.full((1, 256), 2.0)
    emb = m.embed(ids, None, [torch.cat([a, b])])
    pos = (ids[0] == m.ids.bbox).nonzero().flatten()
    assert torch.equal(emb[0, pos[0]], a[0]) and torch.equal(emb[0, pos[1]], b[0])
    other = (ids[0] != m.ids.bbox).nonzero().flatten()
    assert torch.equal(emb[0, other], m.lm.get_input_embeddings()(ids)[0, other])


def test_embed_count_mismatch_raises(untrained):
    ids = torch.tensor([untrained.tokenizer(f"x {BBOX} y {BBOX}", add_special_tokens=False)["input_ids"]])
    with pytest.raises(PlaceholderError, match=r"placeholders per row \[2\] but region tokens per row \[1\]"):
        untrained.embed(ids, None, [torch.zeros(1, 256)])
    with pytest.raises(PlaceholderError):
        untrained.embed(ids, None, [torch.zeros(3, 256)])


def test_batched_equals_one_by_one(untrained):
    """All boxes in one pass (shared prefix, padded batch) == each box alone with the image re-encoded."""
    d = RegionDescriber(untrained, "t")
    batched = d.describe(_image(), BOXES, ASKS)
    naive = d.describe(_image(), BOXES, ASKS, naive=True)
    for a, b in zip(batched.regions, naive.regions):
        assert a.caption == b.caption and a.relation_text == b.relation_text
        assert a.caption_confidence == pytest.approx(b.caption_confidence, abs=1e-4)
        for k in a.attributes:
            assert [v for v, _ in a.attributes[k]] == [v for v, _ in b.attributes[k]]
            assert [p for _, p in a.attributes[k]] == pytest.approx([p for _, p in b.attributes[k]], abs=1e-4)
    single = d.describe(_image(), BOXES[2:3], ASKS)
    assert single.regions[0].caption == batched.regions[2].caption


def test_only_describes_the_named_boxes_with_every_box_as_partner(untrained):
    """`only`: the named boxes get the same answers as when every box is described (their partners are found among
    all the boxes); the others come back empty, and their own questions are never asked."""
    d = RegionDescriber(untrained, "t")
    every = d.describe(_image(), BOXES, ASKS)
    only = d.describe(_image(), BOXES, ASKS, only=[2])
    naive = d.describe(_image(), BOXES, ASKS, only=[2], naive=True)
    for got in (only, naive):
        assert len(got.regions) == len(BOXES)
        mine = got.regions[2]
        assert mine.caption == every.regions[2].caption and mine.relation_text == every.regions[2].relation_text
        assert mine.relation_partner == every.regions[2].relation_partner
        assert [v for v, _ in mine.attributes["color"]] == [v for v, _ in every.regions[2].attributes["color"]]
        for k in (0, 1, 3):
            assert got.regions[k].caption is None and got.regions[k].attributes == {}
            assert got.regions[k].relation_text is None and got.regions[k].confidence == 0.0
        assert got.relations == [] or {r.subject for r in got.relations} == {2}
    with pytest.raises(BoxError, match="there are 4 boxes"):
        d.describe(_image(), BOXES, ASKS, only=[4])
    with pytest.raises(BoxError, match="`only` names boxes"):
        d.describe(_image(), BOXES, ASKS, only=["0"])


def test_ranking_equals_full_sequence_likelihood(untrained):
    """The cached, padded ranking path gives the same log-likelihood as one plain forward over the sequence."""
    m = untrained
    d = RegionDescriber(m, "t")
    img = _image()
    q = f"What is the color of region1 {BBOX}?"
    (ranked,) = d.ask(img, BOXES[:1], [(q, [0], ["red", "dark green"])])
    scores = {}
    for cand in ["red", "dark green"]:
        enc = encode(m.tokenizer, [(IMAGE_PREFIX + q, cand)], m.n_image_tokens, 1, system=m.system)
        ids = torch.tensor([enc.input_ids])
        pv = pixel_values(img, m.config.image_size, m.config.image_mean, m.config.image_std)[None]
        with torch.no_grad():
            feats = m.encode_images(pv)
            box = torch.tensor([[5 / 128, 5 / 128, 40 / 128, 40 / 128]])
            emb = m.embed(ids, feats.image_tokens, m.region_tokens(feats, [box]))
            logp = torch.log_softmax(m.lm(inputs_embeds=emb).logits[0, :-1].float(), -1)
        labels = torch.tensor(enc.labels[1:])
        keep = labels != -100
        scores[cand] = logp[keep].gather(1, labels[keep][:, None]).sum()
    p_red = torch.softmax(torch.stack([scores["red"], scores["dark green"]]), 0)[0].item()
    assert dict(ranked)["red"] == pytest.approx(p_red, abs=1e-4)


def test_save_load_round_trip_gives_identical_outputs(untrained, tmp_path):
    untrained.save_pretrained(tmp_path / "ckpt", metadata={"version": "rt-1"})
    loaded = RegionScribeModel.from_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()
    a = RegionDescriber(untrained, "x").describe(_image(), BOXES, ASKS)
    b = RegionDescriber.from_pretrained(tmp_path / "ckpt").describe(_image(), BOXES, ASKS)
    assert b.model_version == "rt-1"
    assert [r.caption for r in a.regions] == [r.caption for r in b.regions]
    assert [r.attributes for r in a.regions] == [r.attributes for r in b.regions]
    for (n1, p1), (n2, p2) in zip(untrained.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a regionscribe checkpoint"):
        RegionScribeModel.from_pretrained(tmp_path)


def test_cache_hit_on_second_box_of_same_image(untrained):
    d = RegionDescriber(untrained, "t")
    first = d.describe(_image(), BOXES[:1], Asks(max_new_tokens=2))
    second = d.describe(_image(), BOXES[1:2], Asks(max_new_tokens=2))
    assert not first.cache_hit and second.cache_hit
    assert d.cache_info() == {"hits": 1, "misses": 1, "size": 1}


@pytest.mark.parametrize("overrides", [{"region_format": "text"}, {"use_image_tokens": False},
                                       {"vision_type": "siglip"}])
def test_switches_build_and_run(tokenizer, overrides):
    cfg = tiny(**overrides)
    if overrides.get("vision_type") == "siglip":
        cfg.vision_config = {k: v for k, v in cfg.vision_config.items()}
    m = RegionScribeModel(cfg, tokenizer).eval()
    out = RegionDescriber(m, "s").describe(_image(), BOXES[:2], ASKS)
    assert len(out.regions) == 2 and all(r.caption is not None for r in out.regions)
    item = {"image": _image(), "boxes": BOXES[:2]}
    from regionscribe.training.corpus import Turn
    from regionscribe.training.batches import collate, encode_sample

    class S:
        image, boxes = item["image"], item["boxes"]
        turns = [Turn(IMAGE_PREFIX + f"Is region1 {BBOX} left of region2 {BBOX}?", "yes", "yesno")]
    batch = collate([encode_sample(m, S)], m.tokenizer.pad_token_id)
    loss = m(**batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_scaled_region_tokens_enter_at_the_word_embeddings_scale(tokenizer):
    """match_embedding_scale (`--scaled-region-tokens`): unscaled, region tokens are 170x the words around them."""
    m = RegionScribeModel(tiny(match_embedding_scale=True, position_encoding="sinusoidal"), tokenizer).eval()
    feats = m.encode_images(pixel_values(_image(), m.config.image_size, m.config.image_mean, m.config.image_std)[None])
    boxes = torch.tensor(BOXES, dtype=torch.float32) / 128
    tokens = m.region_tokens(feats, [boxes])[0]
    words = m.lm.get_input_embeddings().weight
    rms = tokens.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, words.pow(2).mean().sqrt().expand_as(rms), rtol=1e-3)
    raw = m.region_encoder(feats.levels, [boxes])[0]
    assert torch.allclose(tokens / rms[:, None], raw / raw.pow(2).mean(-1, keepdim=True).sqrt(), atol=1e-4)


def test_checkpoints_from_before_the_switches_load_as_they_were_trained():
    from regionscribe.model.config import ModelConfig

    old = tiny(match_embedding_scale=True, position_encoding="sinusoidal").to_dict()
    del old["match_embedding_scale"], old["position_encoding"]
    config = ModelConfig.from_dict(old)
    assert config.match_embedding_scale is False and config.position_encoding == "coordinates"
    with pytest.raises(ValueError, match="position_encoding"):
        ModelConfig.from_dict({**old, "position_encoding": "polar"})
