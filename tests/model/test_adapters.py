"""Versions as LoRA adapters over a shared base: train saves only the adapter, loading applies it to the base, a
second run continues the same adapter (base + one adapter, never a chain), and the pair moves together."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from regionscribe.model import adapters
from regionscribe.training.corpus import iter_samples, make_scenes
from regionscribe.model.describer import RegionDescriber
from regionscribe.model.modeling import RegionScribeModel
from regionscribe.training.stages import StageConfig, TrainConfig, saw_synthetic, train
from tests.builders import tiny_parts_checkpoint

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


def _run(init, base, out, seed):
    data = iter_samples(make_scenes("train", 8, seed=seed), 2, seed=seed)
    cfg = TrainConfig(out=str(out), init=str(init), seed=seed, version=out.name, lora=LORA, adapter_base=str(base),
                      freeze_visual=True, stage1=StageConfig(steps=0, lr=1e-3),
                      stage2=StageConfig(steps=3, lr=5e-3, batch_size=2))
    return train(cfg, stage1_data=iter(()), stage2_data=data, progress=False)


def test_adapter_versions_train_load_continue_and_move(tmp_path):
    torch.manual_seed(0)
    base = tiny_parts_checkpoint(tmp_path / "tree" / "base", tmp_path / "parts")
    first = _run(base, base, tmp_path / "tree" / "v1", seed=1)
    v1 = first.path
    assert (v1 / "adapter" / "adapter_model.safetensors").is_file()
    assert not (v1 / "model.safetensors").exists() and not (v1 / adapters.VISUAL).exists()  # visual frozen
    assert adapters.folder_bytes(v1) < adapters.folder_bytes(base) / 3
    meta = json.loads((v1 / "config.json").read_text())["metadata"]
    assert meta["synthetic_corpus"] is False is saw_synthetic(meta)  # caller data on a model that never saw it

    loaded = RegionScribeModel.from_pretrained(v1)
    plain = RegionScribeModel.from_pretrained(base)
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        merged = loaded.lm(input_ids=ids).logits
        trained = first.model.lm(input_ids=ids).logits
        untouched = plain.lm(input_ids=ids).logits
    assert torch.allclose(merged, trained, atol=1e-5)  # what was trained is what loads
    assert (merged - untouched).abs().max() > 1e-4  # and the adapter changed the LM
    for name, tensor in plain.region_encoder.state_dict().items():
        assert torch.equal(loaded.region_encoder.state_dict()[name], tensor), name

    second = _run(v1, base, tmp_path / "tree" / "v2", seed=2)  # continues v1's adapter, still over the base
    assert adapters.base_of(second.path) == base.resolve()

    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "tree"), str(moved))  # base and versions move together: found by the relative path
    describer = RegionDescriber.from_pretrained(moved / "v2")
    assert describer.model_version == "v2"
    out = describer.describe(make_scenes("test", 1, seed=3)[0].image, [(2, 2, 40, 40)])
    assert len(out.regions) == 1

    shutil.rmtree(moved / "base")
    with pytest.raises(FileNotFoundError, match="adapter over"):
        RegionScribeModel.from_pretrained(moved / "v2")
