"""benchmarks/gpu_real_size.py without a GPU: the skip answer, and the real-size build path at toy widths (same
configs, tokenizer padding to the 32006-row LM, batched and naive describe) to catch shape errors on CPU."""
from __future__ import annotations

import json

import pytest
import torch

from tests.builders import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("gpu_real_size") as module:
        yield module


@pytest.fixture
def one_thread():
    """The suite shares two cores with other work: torch's default thread pool oversubscribes them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_without_cuda_it_says_skipped_and_exits_0(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["skipped"] is True and "no CUDA device" in doc["reason"]


def test_real_size_configs_are_gpt4roi_shaped(bench):
    assert bench.VIT_L_14["hidden_size"] == 1024 and bench.VIT_L_14["num_hidden_layers"] == 24
    assert bench.VIT_L_14["patch_size"] == 14
    assert (bench.LLAMA_7B["hidden_size"], bench.LLAMA_7B["num_hidden_layers"], bench.LLAMA_7B["vocab_size"]) == \
        (4096, 32, 32006)
    from transformers import LlamaConfig

    # about 6.7 B parameters, counted from the config without building it
    c = LlamaConfig(**bench.LLAMA_7B)
    per_layer = 4 * c.hidden_size ** 2 + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    total = c.num_hidden_layers * per_layer + 2 * c.vocab_size * c.hidden_size + c.hidden_size
    assert 6.6e9 < total < 6.8e9


def test_smoke_build_and_measure_on_cpu(bench, one_thread, capsys):
    tok = bench.padded_tokenizer()
    assert len(tok) == 32006 and tok.convert_tokens_to_ids("<bbox>") < 32006
    assert bench.main(["--smoke", "--device", "cpu", "--images", "1", "--repeats", "1", "--naive-images", "1",
                       "--boxes", "3", "--max-new-tokens", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["architecture"] == "smoke (toy widths)" and doc["dtype"] == "float32"
    assert doc["image_tokens"] == (224 // 14) ** 2
    assert doc["batched"]["regions_per_s"] > 0 and doc["naive"]["regions_per_s"] > 0
    assert doc["caption_tokens_per_region_mean"] <= 2 + 1e-9
    assert doc["meets_target"] is None  # no claim from a toy run


@pytest.mark.parametrize("size, tokens", [(224, 256), (336, 576)])
def test_real_size_model_builds_on_the_meta_device(bench, size, tokens):
    """The full-size constructor path (no memory): the gpt4roi preset, CLIP ViT-L/14 + LLaMA-7B in bf16, GPT4RoI's
    pyramid layers and region module (299,142,912 parameters, as in the released checkpoint)."""
    model = bench.build(size, smoke=False, device="meta")
    assert model.config.preset == "gpt4roi-random" and model.config.stop_string == "###"
    assert sum(p.numel() for p in model.region_encoder.parameters()) == 299_142_912
    assert round(sum(p.numel() for p in model.lm.parameters()) / 1e9, 2) == 6.74
    assert round(sum(p.numel() for p in model.vision.parameters()) / 1e6) == 303 + (size == 336)
    assert model.level_indices == [14, 17, 20, 23]  # GPT4RoI: layers 14, 17, 20, 23 of CLIP ViT-L/14
    assert model.n_image_tokens == tokens
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm.get_input_embeddings().weight.shape == (32006, 4096)
