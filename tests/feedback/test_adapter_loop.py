"""The feedback loop on a model with a pretrained LM (a random tower + Llama from folders, never trained on the
synthetic corpus): corrections through /webhook -> a run trains a LoRA adapter -> the registry publishes it as an
adapter version over the base (a fraction of the base's size) -> the inference worker reloads and serves it."""
import json
from pathlib import Path

import pytest

from tests.builders import benchmark_module, tiny_parts_checkpoint


@pytest.mark.slow
def test_corrections_publish_an_adapter_version_that_is_served(tmp_path):
    base = tiny_parts_checkpoint(tmp_path / "base", tmp_path / "parts")
    with benchmark_module("feedback_loop") as loop:
        out = loop.run_loop(regions=12, stage1_steps=5, stage2_steps=6, base_scenes=2, eval_scenes=2,
                            tolerance=0.0, timeout=400, seed=21, log=lambda m: None, model_dir=str(base))
    published = out["published"]
    assert published is not None and published["kind"] == "adapter", out
    assert published["accepted"], out  # gated on held-out regions alone: no synthetic base test for this model
    assert out["after"]["model_version"] == published["version"] != out["before"]["model_version"]
    assert out["loop_seconds_last_correction_to_serving"] is not None  # the worker reloaded it between jobs
    version = Path(out["workdir"]) / "data" / "registry" / "versions" / published["version"]
    assert (version / "adapter" / "adapter_model.safetensors").is_file()
    assert not (version / "model.safetensors").exists()
    assert published["version_mb"] < published["base_mb"] / 3, published
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["scores"]["candidate"]["base"] == {}  # no synthetic base test
    assert manifest["base_drop"] == 0.0
