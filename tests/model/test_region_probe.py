"""benchmarks/region_probe.py: its linear probe separates what is separable and nothing else, and the script runs
end to end on the embedded default at a small size."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("region_probe", ROOT / "benchmarks" / "region_probe.py")
region_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(region_probe)


def test_linear_probe_reads_a_linear_label_and_not_a_random_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    y = (x @ torch.randn(16, 3, generator=g)).argmax(1)  # three linearly separable classes
    pred = region_probe.linear_probe(x[:400], y[:400], x[400:])
    assert (pred == y[400:]).float().mean() >= 0.95
    noise = torch.randint(0, 3, (600,), generator=g)
    pred = region_probe.linear_probe(x[:400], noise[:400], x[400:])
    assert (pred == noise[400:]).float().mean() <= 0.5


def test_breakdown_is_the_accuracy_per_key():
    assert region_probe.breakdown([True, False, True, True], ["a", "a", "b", "b"]) == {"a": 50.0, "b": 100.0}


def test_script_probes_the_default_checkpoint():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "region_probe.py"), "--train-scenes", "64",
                          "--val-scenes", "32"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result["accuracy"]) == {"color", "shape", "size", "texture"}
    assert result["accuracy"]["color"] >= 80, result  # the default reads colour; a broken feature path would not
    assert set(result["texture_by_size"]) <= {"small", "medium", "large"}
    assert sum(result["objects"].values()) > 96


def test_script_refuses_a_checkpoint_without_region_tokens(tmp_path):
    from regionscribe.training.stages import TrainConfig, new_model

    new_model(TrainConfig(model_overrides={"region_format": "text"})).save_pretrained(tmp_path / "coords", {})
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "region_probe.py"), "--checkpoint",
                          str(tmp_path / "coords")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 1 and "no region tokens" in run.stderr, run.stderr
    assert run.stdout == ""
