"""`regionscribe convert gpt4roi`: a scaled-down GPT4RoI checkpoint (its exact key names and module tree, smaller
widths, random weights) converts into a regionscribe checkpoint that gives the same region tokens and LM logits as a
reference forward written here from GPT4RoI's published code (gpt4roi/models/layers.py, spi_llava.py), independent
of model/."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.ops import roi_align

from regionscribe.backend.ops.cli import main as cli_main
from regionscribe.model.config import gpt4roi
from regionscribe.model.gpt4roi import ADDED_TOKENS, ConversionError, convert, load_tokenizer
from regionscribe.model.modeling import RegionScribeModel

BASE_VOCAB, VOCAB = 250, 256
VISION = dict(image_size=224, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=12,
              num_attention_heads=4)
FUSE, LEVELS, ROUNDS, GN, ROI, REGION, POS = 128, 4, 5, 64, 14, 48, 16  # GPT4RoI: 1024, 4, 5, 64, 14, 1024, 256
LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def _word_tokenizer(n_words: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(n_words - 3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _gpt4roi_tokenizer():
    """A LLaMA-style tokenizer with GPT4RoI's six tokens added as its initialize_vision_tokenizer adds them."""
    tok = _word_tokenizer(BASE_VOCAB)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.add_tokens(["<im_patch>"], special_tokens=True)
    tok.add_tokens(["<bbox>", "<point>"], special_tokens=True)
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    return tok


def _gpt4roi_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """GPT4RoI's state dict, scaled down: same keys and module tree (spi_llava.py, layers.py), random weights."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, std=0.02: torch.randn(*shape, generator=g) * std  # noqa: E731
    ones = lambda n: 1 + r(n, std=0.1)  # noqa: E731
    h, inter, c = LM["hidden_size"], LM["intermediate_size"], VISION["hidden_size"]
    sd = {"model.embed_tokens.weight": r(VOCAB, h, std=1.0), "lm_head.weight": r(VOCAB, h),
          "model.norm.weight": ones(h)}
    for i in range(LM["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in "qkvo":
            sd[p + f"self_attn.{n}_proj.weight"] = r(h, h, std=0.1)
        sd[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, h // 4, 2).float() / (h // 4))
        sd[p + "mlp.gate_proj.weight"] = r(inter, h, std=0.1)
        sd[p + "mlp.up_proj.weight"] = r(inter, h, std=0.1)
        sd[p + "mlp.down_proj.weight"] = r(h, inter, std=0.1)
        sd[p + "input_layernorm.weight"] = ones(h)
        sd[p + "post_attention_layernorm.weight"] = ones(h)
    sd["model.mm_projector.weight"], sd["model.mm_projector.bias"] = r(h, c, std=0.1), r(h)
    m = "model.spi_module."
    for lvl in range(LEVELS):
        sd[m + f"mlvl_fuse.input_conv.{lvl}.weight"] = r(FUSE, c + 2, 1, 1, std=0.1)
        sd[m + f"mlvl_fuse.input_conv.{lvl}.bias"] = r(FUSE)
        sd[m + f"roi_align.pconvs.{lvl}.weight"] = r(FUSE, FUSE, 3, 3)
        sd[m + f"roi_align.pconvs.{lvl}.bias"] = r(FUSE)
    for k in range(ROUNDS):
        sd[m + f"mlvl_fuse.fuse_convs.{k}.conv.weight"] = r(FUSE, FUSE, 3, 3, std=0.05)
        sd[m + f"mlvl_fuse.fuse_convs.{k}.gn.weight"] = ones(FUSE)
        sd[m + f"mlvl_fuse.fuse_convs.{k}.gn.bias"] = r(FUSE)
    sd[m + "roi_align.pos_embedd.0.weight"], sd[m + "roi_align.pos_embedd.0.bias"] = r(POS, 4, std=0.5), r(POS)
    sd[m + "roi_align.pos_embedd.2.weight"], sd[m + "roi_align.pos_embedd.2.bias"] = ones(POS), r(POS)
    sd[m + "roi_align.pos_embedd.3.weight"], sd[m + "roi_align.pos_embedd.3.bias"] = r(REGION, POS, std=0.3), r(REGION)
    sd[m + "roi_align.pos_embedd.5.weight"], sd[m + "roi_align.pos_embedd.5.bias"] = ones(REGION), r(REGION)
    sd[m + "roi_align.flatten_linear.weight"] = r(REGION, FUSE * ROI * ROI, std=0.01)
    sd[m + "roi_align.flatten_linear.bias"] = r(REGION)
    sd[m + "roi_align.updims.weight"], sd[m + "roi_align.updims.bias"] = r(h, REGION, std=0.2), r(h)
    return sd


def _config_json(folder, **extra) -> None:
    cfg = {"architectures": ["SPILlavaMPTForCausalLM"], "model_type": "llava", "vocab_size": VOCAB,
           "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "tie_word_embeddings": False,
           "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_hidden_size": VISION["hidden_size"],
           "mm_vision_select_layer": -2, "mm_use_im_start_end": True, "use_mm_proj": True, "torch_dtype": "float32",
           **LM, **extra}
    (folder / "config.json").write_text(json.dumps(cfg))


def _save_sharded(folder, sd: dict[str, torch.Tensor], fmt: str, n_shards: int = 2) -> None:
    """HF's sharded layout: .bin shards with pytorch_model.bin.index.json, or safetensors with its index."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(sd)
    per = math.ceil(len(keys) / n_shards)
    weight_map = {}
    for i in range(n_shards):
        part = {k: sd[k].contiguous() for k in keys[i * per:(i + 1) * per]}
        ext = "bin" if fmt == "bin" else "safetensors"
        name = (f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin" if fmt == "bin"
                else f"model-{i + 1:05d}-of-{n_shards:05d}.{ext}")
        if fmt == "bin":
            torch.save(part, folder / name)
        else:
            save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    """A CLIP folder shaped like openai/clip-vit-large-patch14's (a full CLIPModel; the text side is unused)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(vision_config=VISION, text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                            num_attention_heads=2, vocab_size=100),
                     projection_dim=16)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(cfg).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def weights():
    return _gpt4roi_state()


def _source(folder, sd, fmt="bin", tokenizer=True):
    _save_sharded(folder, sd, fmt)
    _config_json(folder)
    if tokenizer:
        _gpt4roi_tokenizer().save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ the reference forward
def _coords(b, h, w):
    ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.cat([x.expand(b, 1, h, w), y.expand(b, 1, h, w)], 1)


def reference_regions(sd, hidden_states, boxes):
    """GPT4RoI's MLVLROIQueryModule: levels from hs[-2::-3][::-1][-4:], upsampled, fused, RoIAlign on every level."""
    m = "model.spi_module."
    feats = [hs[:, 1:] for hs in hidden_states[-2::-3][::-1][-LEVELS:]]
    b, t, c = feats[0].shape
    side = int(math.sqrt(t))
    feats = [f.reshape(b, side, side, c).permute(0, 3, 1, 2) for f in feats]
    shapes = [(side * 2 ** lvl, side * 2 ** lvl) for lvl in range(LEVELS)][::-1]
    feats = [F.interpolate(f, size=s, mode="bilinear", align_corners=True) for f, s in zip(feats, shapes)]
    feats = [F.conv2d(torch.cat([f, _coords(b, *f.shape[-2:])], 1), sd[m + f"mlvl_fuse.input_conv.{i}.weight"],
                      sd[m + f"mlvl_fuse.input_conv.{i}.bias"]) for i, f in enumerate(feats)]
    shuffle = FUSE // 4
    remain = FUSE - 2 * shuffle
    for k in range(ROUNDS):
        fused = []
        for lvl in range(LEVELS):
            tar, top, down = feats[lvl], feats[min(lvl + 1, LEVELS - 1)], feats[max(lvl - 1, 0)]
            from_top = F.interpolate(top[:, remain:][:, shuffle:], size=tar.shape[-2:], mode="bilinear",
                                     align_corners=True)
            from_down = F.interpolate(down[:, remain:][:, :shuffle], size=tar.shape[-2:], mode="bilinear",
                                      align_corners=True)
            x = torch.cat([tar[:, :remain], from_top, from_down], 1)
            x = F.conv2d(x, sd[m + f"mlvl_fuse.fuse_convs.{k}.conv.weight"], padding=1)
            x = F.group_norm(x, GN, sd[m + f"mlvl_fuse.fuse_convs.{k}.gn.weight"],
                             sd[m + f"mlvl_fuse.fuse_convs.{k}.gn.bias"])
            fused.append(F.relu(x))
        feats = fused
    rois = torch.cat([torch.cat([torch.full((len(bx), 1), float(i)), bx * 224], 1) for i, bx in enumerate(boxes)])
    strides = [14 / 8, 14 / 4, 14 / 2, 14]
    pooled = [roi_align(f, rois, ROI, spatial_scale=1 / s, sampling_ratio=2, aligned=True)
              for f, s in zip(feats, strides)]
    x = sum(F.conv2d(p, sd[m + f"roi_align.pconvs.{i}.weight"], sd[m + f"roi_align.pconvs.{i}.bias"], padding=1)
            for i, p in enumerate(pooled))
    x = F.linear(F.relu(x).flatten(1), sd[m + "roi_align.flatten_linear.weight"],
                 sd[m + "roi_align.flatten_linear.bias"])
    pe = lambda j, v: F.linear(v, sd[m + f"roi_align.pos_embedd.{j}.weight"],  # noqa: E731
                               sd[m + f"roi_align.pos_embedd.{j}.bias"])
    ln = lambda j, v: F.layer_norm(v, v.shape[-1:], sd[m + f"roi_align.pos_embedd.{j}.weight"],  # noqa: E731
                                   sd[m + f"roi_align.pos_embedd.{j}.bias"])
    pos = ln(5, F.relu(pe(3, ln(2, F.relu(pe(0, torch.cat(boxes)))))))
    x = F.linear(x + pos, sd[m + "roi_align.updims.weight"], sd[m + "roi_align.updims.bias"])
    return list(x.split([len(bx) for bx in boxes]))


def reference_logits(sd, tower_model, pixel_values, boxes, input_ids, ids):
    """spi_llava.py's forward: image tokens after <im_start>, region tokens over <bbox>, then LLaMA."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hs = tower_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    image = F.linear(hs[-2][:, 1:], sd["model.mm_projector.weight"], sd["model.mm_projector.bias"])
    regions = reference_regions(sd, hs, boxes)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, rms_norm_eps=1e-6, tie_word_embeddings=False,
                                         max_position_embeddings=2048, **LM)).eval()
    llama.load_state_dict({k: v for k, v in sd.items() if not k.startswith(("model.mm_projector", "model.spi_module"))
                           and "rotary_emb" not in k}, strict=True)
    rows = []
    for b in range(len(input_ids)):
        cur = input_ids[b]
        emb = llama.model.embed_tokens(cur)
        start = int(torch.where(cur == ids["<im_start>"])[0][0])
        n = image.shape[1]
        assert cur[start + n + 1] == ids["<im_end>"]
        emb = torch.cat([emb[:start + 1], image[b], emb[start + n + 1:]], 0)
        mask = cur == ids["<bbox>"]
        spi = torch.zeros_like(emb)
        spi[mask] = regions[b]
        rows.append(emb * (~mask).to(emb.dtype)[:, None] + spi)
    return regions, llama(inputs_embeds=torch.stack(rows)).logits


def _inputs(n_patches, ids, n_boxes):
    bos, words = 1, list(range(3, 40))
    seq = [bos] + words[:6] + [ids["<im_start>"]] + [ids["<im_patch>"]] * n_patches + [ids["<im_end>"]] + words[6:10]
    for k in range(n_boxes):
        seq += words[10 + k: 12 + k] + [ids["<bbox>"]]
    return seq + words[20:24]


def _check_parity(out, tower, sd):
    from transformers import CLIPVisionModel

    model = RegionScribeModel.from_pretrained(out).float()
    tok = model.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
    assert [ids[t] for t in ADDED_TOKENS] == list(range(BASE_VOCAB, VOCAB))
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 224, 224)
    boxes = [torch.tensor([[0.1, 0.2, 0.6, 0.7], [0.0, 0.0, 1.0, 1.0], [0.55, 0.3, 0.9, 0.45]]),
             torch.tensor([[0.3, 0.1, 0.4, 0.95], [0.72, 0.6, 0.98, 0.99]])]
    input_ids = torch.tensor(_pad_inputs([_inputs(256, ids, 3), _inputs(256, ids, 2)]))
    tower_model = CLIPVisionModel.from_pretrained(str(tower)).eval()
    with torch.no_grad():
        ref_regions, ref_logits = reference_logits(sd, tower_model, pixel_values, boxes, input_ids, ids)
        feats = model.encode_images(pixel_values)
        regions = model.region_tokens(feats, boxes)
        logits = model.lm(inputs_embeds=model.embed(input_ids, feats.image_tokens, regions)).logits
    assert feats.image_tokens.shape[1] == 256 == model.n_image_tokens
    for got, want in zip(regions, ref_regions):
        assert (got - want).abs().max() <= 1e-4
    assert ref_regions[0].abs().mean() > 0.1  # the comparison is of real numbers, not of zeros
    assert (logits - ref_logits).abs().max() <= 1e-4
    # a wrong correspondence shows: another box's tokens differ by far more than the tolerance
    assert (regions[0][0] - ref_regions[0][1]).abs().max() > 1e-2


def _pad_inputs(rows):  # equal lengths for the test's two rows
    width = max(map(len, rows))
    return [r + [3] * (width - len(r)) for r in rows]


def test_converted_bin_shards_answer_as_the_reference(tmp_path, tower, weights):
    src = _source(tmp_path / "gpt4roi", weights, "bin")
    out = convert(src, tower, tmp_path / "converted", max_shard_bytes=2 * 1024 ** 2)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3  # streamed into several output shards
    assert not any("rotary_emb" in k for k in index["weight_map"])
    assert any(k.startswith("vision.") for k in index["weight_map"])  # the tower is copied in: the folder moves
    _check_parity(out, tower, weights)


def test_delta_applied_by_gpt4roi_rules(tmp_path, tower, weights):
    """A safetensors delta over a LLaMA base: base added everywhere but mm_projector/spi_module and the six new rows."""
    g = torch.Generator().manual_seed(7)
    base = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in weights.items()
            if not k.startswith(("model.mm_projector", "model.spi_module"))}
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        base[k] = base[k][:BASE_VOCAB].clone()
    delta = {}
    for k, v in weights.items():
        if k in base and "rotary_emb" not in k:
            d = v.clone()
            d[tuple(slice(0, n) for n in base[k].shape)] -= base[k]
            delta[k] = d
        else:
            delta[k] = v.clone()
    base_dir = tmp_path / "llama"
    _save_sharded(base_dir, base, "safetensors")
    _word_tokenizer(BASE_VOCAB).save_pretrained(base_dir)  # a plain LLaMA tokenizer: the six tokens get added
    src = _source(tmp_path / "delta", delta, "safetensors", tokenizer=False)
    out = convert(src, tower, tmp_path / "converted", delta_base=base_dir)
    _check_parity(out, tower, weights)


def test_bad_keys_are_listed_and_nothing_is_written(tmp_path, tower, weights):
    bad = dict(weights)
    del bad["model.spi_module.roi_align.pconvs.2.weight"]
    bad["model.spi_module.roi_align.extra.weight"] = torch.zeros(3)
    bad["model.spi_module.roi_align.updims.weight"] = torch.zeros(LM["hidden_size"], REGION + 1)
    src = _source(tmp_path / "bad", bad, "safetensors")
    with pytest.raises(ConversionError) as err:
        convert(src, tower, tmp_path / "out")
    msg = str(err.value)
    assert "region_encoder.level_convs.2.weight" in msg and "1 missing" in msg
    assert "model.spi_module.roi_align.extra.weight" in msg and "1 unexpected" in msg
    assert "model.spi_module.roi_align.updims.weight" in msg and "misshaped" in msg
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bad"]

    base_dir = tmp_path / "llama"  # a base that lacks a layer: named, nothing written
    _save_sharded(base_dir, {k: v for k, v in weights.items() if k.startswith("model.embed")}, "safetensors", 1)
    src = _source(tmp_path / "delta", weights, "bin")
    with pytest.raises(ConversionError, match=r"model\.layers\.0\.mlp\.up_proj\.weight is not in the base"):
        convert(src, tower, tmp_path / "out", delta_base=base_dir)
    assert not (tmp_path / "out").exists()


def test_cli_converts_and_refuses_clearly(tmp_path, tower, weights, capsys):
    src = _source(tmp_path / "gpt4roi", weights, "safetensors")
    assert cli_main(["convert", "gpt4roi", str(src), "--vision", str(tower), "--out", str(tmp_path / "o"),
                     "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(tmp_path / "o")
    from PIL import Image

    from regionscribe.model.describer import RegionDescriber

    describer = RegionDescriber.from_pretrained(tmp_path / "o")  # serves: GPT4RoI's prompt, stop string "###"
    assert describer.model.config.stop_string == "###" and describer.model.n_image_tokens == 256
    out = describer.describe(Image.new("RGB", (320, 240), (90, 140, 30)), [(10, 20, 200, 180), (150, 30, 300, 230)])
    assert len(out.regions) == 2 and all(isinstance(r.caption, str) for r in out.regions)
    with pytest.raises(SystemExit, match="exists"):
        cli_main(["convert", "gpt4roi", str(src), "--vision", str(tower), "--out", str(tmp_path / "o"), "--quiet"])
    empty = tmp_path / "no-weights"
    empty.mkdir()
    _config_json(empty)
    with pytest.raises(SystemExit, match="holds no weights"):
        cli_main(["convert", "gpt4roi", str(empty), "--vision", str(tower), "--out", str(tmp_path / "p"), "--quiet"])
    with pytest.raises(SystemExit, match="not a LLaMA-based checkpoint"):
        cli_main(["convert", "gpt4roi", str(tower), "--vision", str(tower), "--out", str(tmp_path / "p"), "--quiet"])
    assert not (tmp_path / "p").exists()


def test_llama_tokenizer_gets_the_six_tokens_at_32000():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        _word_tokenizer(32000).save_pretrained(d)
        tok = load_tokenizer([Path(d)], 32006)
    assert tok.convert_tokens_to_ids(ADDED_TOKENS) == [32000, 32001, 32002, 32003, 32004, 32005]
    assert tok.pad_token == "[PAD]" and len(tok) == 32006
    with tempfile.TemporaryDirectory() as d:
        _word_tokenizer(31999).save_pretrained(d)
        with pytest.raises(ConversionError, match="32006"):
            load_tokenizer([Path(d)], 32006)


def test_preset_has_gpt4roi_exact_shape():
    """Built on the meta device from the preset: every parameter outside the tower, 7,041,806,080 as in the
    released checkpoint, the region module 299,142,912."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    cfg = gpt4roi()
    assert (cfg.num_levels, cfg.layer_stride, cfg.select_layer, cfg.fuse_channels, cfg.num_fuse, cfg.gn_groups,
            cfg.roi_output, cfg.position_hidden, cfg.region_hidden, cfg.stop_string) == \
        (4, 3, -2, 1024, 5, 64, 14, 256, 1024, "###")
    tok = _word_tokenizer(32000)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.add_tokens(ADDED_TOKENS[1:], special_tokens=True)
    with torch.device("meta"):
        model = RegionScribeModel(cfg, tok, vision=CLIPVisionModel(CLIPVisionConfig(**cfg.vision_config)),
                                  lm=LlamaForCausalLM(LlamaConfig(vocab_size=32006, **cfg.lm_config)))
    assert model.level_indices == [14, 17, 20, 23] and model.n_image_tokens == 256
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.region_encoder) == 299_142_912
    assert count(model) - count(model.vision) == 7_041_806_080


def test_greedy_stops_where_the_stop_check_says():
    """GPT4RoI's answers end at "###" (no </s>): greedy stops a row once its text reaches the stop string."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from regionscribe.model.generation import State, extend, greedy, last_logits

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, **LM)).eval()
    emb = lm.get_input_embeddings()
    ids = torch.tensor([[1, 5, 6, 7], [1, 9, 8, 3]])
    lengths = torch.tensor([4, 4])
    state, logits = extend(lm, State.empty(2, torch.device("cpu")), emb(ids), lengths)
    free = greedy(lm, emb, state, last_logits(logits, lengths), set(), 8)
    assert [len(t) for t in free.tokens] == [8, 8] and not any(free.stopped)
    marker = free.tokens[0][2]  # row 0 stops at its third token; row 1 runs on unless it meets the same token
    stopped = greedy(lm, emb, state, last_logits(logits, lengths), set(), 8,
                     stop_when=lambda toks: toks[-1] == marker and len(toks) >= 3)
    assert stopped.tokens[0] == free.tokens[0][:3] and stopped.stopped[0]
