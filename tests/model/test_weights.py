"""Checkpoints over the shard size are HF's sharded safetensors with an index, read back shard by shard."""
from __future__ import annotations

import json

import torch

from regionscribe.model.checkpoints import checkpoint_version
from regionscribe.model.modeling import RegionScribeModel
from regionscribe.model.weights import SAFE_INDEX, shard_files
from regionscribe.training.stages import untrained_describer


def test_sharded_save_loads_back_identically_and_unsharded_replaces_it(tmp_path):
    model = untrained_describer("tiny", seed=3).model
    path = tmp_path / "ckpt"
    model.save_pretrained(path, metadata={}, max_shard_bytes=2 * 1024 ** 2)
    index = json.loads((path / SAFE_INDEX).read_text())
    files = shard_files(path)
    assert len(files) >= 3 and not (path / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(model.state_dict())  # the tower included (tiny's is trained)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    loaded = RegionScribeModel.from_pretrained(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert checkpoint_version(path).startswith("ckpt-")  # named by its index, not by hashing every shard

    model.save_pretrained(path, metadata={})  # below the threshold: one file, the shards and index gone
    assert shard_files(path) == [path / "model.safetensors"] and not (path / SAFE_INDEX).exists()
    assert not list(path.glob("model-*-of-*.safetensors"))
    RegionScribeModel.from_pretrained(path)
