"""Training on several processes through `accelerate launch` (CPU, gloo), and resuming a killed run.

- The mixture (training/mixture.py): deterministic, weighted, padded epochs; each process's share is disjoint from the
  others' and together they cover an epoch once.
- Two processes with per-device batch b follow the loss curve of one process with batch 2b (same seed) within 1e-3.
- kill -9 in the middle of stage 2, then --resume: the final weights equal an uninterrupted run's (<= 1e-6).

The data is a Visual Genome-format folder written from synthetic scenes (real JPEG files, the published field
names), read by the same reader as the real dataset.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from regionscribe.training.datasets.synthetic import write_visual_genome
from regionscribe.training.mixture import Mixture
from regionscribe.training.trainer import _my_share

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def write_vg(root: Path, n_scenes: int) -> Path:
    return write_visual_genome(root, n_scenes, seed=5)


# ----------------------------------------------------------------------------------------------------- mixture
def test_mixture_is_deterministic_weighted_and_padded():
    a = [("a", lambda n: iter([f"a{i}" for i in range(10)]), 2), ("b", lambda n: iter([f"b{i}" for i in range(5)]), 1)]
    one = list(Mixture(a, seed=3, epochs=2, shuffle_buffer=4, pad_to=8))
    assert one == list(Mixture(a, seed=3, epochs=2, shuffle_buffer=4, pad_to=8))
    assert one != list(Mixture(a, seed=4, epochs=2, shuffle_buffer=4, pad_to=8))
    first = one[:32]  # epoch 1: a twice, b once = 25 items, padded with its own first items to 32
    counts = Counter(first[:25])
    assert all(counts[f"a{i}"] == 2 for i in range(10)) and all(counts[f"b{i}"] == 1 for i in range(5))
    assert first[25:] == first[:7]
    assert len(one) == 64 == Mixture(a, seed=3, epochs=2, pad_to=8).count()
    endless = Mixture([("x", lambda n: iter(["x"] * 3), 3.0), ("y", lambda n: iter(["y"] * 3), 1.0)], seed=0)
    drawn = Counter(item for item, _ in zip(endless, range(4000)))
    assert 0.70 < drawn["x"] / 4000 < 0.80
    with pytest.raises(ValueError, match="whole passes"):
        Mixture(a[:1] + [("c", lambda n: iter([]), 0.5)], epochs=1)
    with pytest.raises(ValueError, match="empty"):
        list(Mixture([("e", lambda n: iter([]), 1)], epochs=1))


def test_process_shares_are_disjoint_and_cover_the_epoch():
    items = list(range(48))
    shares = [list(_my_share(iter(items), rank, 3, skip=0)) for rank in range(3)]
    assert sorted(sum(shares, [])) == items and not set(shares[0]) & set(shares[1])
    resumed = [list(_my_share(iter(items), rank, 3, skip=12)) for rank in range(3)]
    assert sorted(sum(resumed, [])) == items[12:]


# ------------------------------------------------------------------------------------------ accelerate launch
@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny pretrained-LM model's parts: a random CLIP tower and a random Qwen2 LM with its tokenizer, saved as HF
    folders (what `train --vision --lm` takes)."""
    from tests.builders import tiny_lm, tiny_tower

    folder = tmp_path_factory.mktemp("parts")
    return tiny_tower("clip", folder / "clip"), tiny_lm("qwen2", folder / "qwen2")


def train_command(out: Path, data: Path, parts: tuple[Path, Path], *extra: str, processes: int = 1) -> list[str]:
    vision, lm = parts
    args = ["-m", "regionscribe.backend.ops.cli", "train", "--out", str(out), "--vision", str(vision), "--lm", str(lm), "--seed", "0",
            "--stage1-steps", "0", "--stage2-lr", "1e-3", "--quiet", "--version", "dist-test",
            "--stage2-data", f"vg:{data}", *extra]
    if processes == 1:
        return [sys.executable, *args]
    # --multi_gpu selects accelerate's torchrun launcher; without CUDA the processes join one gloo group
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *args]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str], timeout: float = 600) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from regionscribe.model.weights import iter_state

    out: dict[str, torch.Tensor] = {}
    for shard in iter_state(folder):
        out.update({k: v.clone() for k, v in shard.items()})
    return out


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(tmp_path, parts):
    data = write_vg(tmp_path / "vg", 24)
    one, two = tmp_path / "one", tmp_path / "two"
    run(train_command(one, data, parts, "--batch-size", "4", "--stage2-epochs", "2"))
    run(train_command(two, data, parts, "--batch-size", "2", "--stage2-epochs", "2", processes=2))
    a = json.loads((one / "history.json").read_text())["stage2"]
    b = json.loads((two / "history.json").read_text())["stage2"]
    assert len(a) == len(b) == 12  # 24 conversations per epoch, global batch 4, two epochs
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-3, (a, b)
    assert json.loads((two / "config.json").read_text())["metadata"]["processes"] == 2


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path, parts):
    data = write_vg(tmp_path / "vg", 16)
    common = ("--batch-size", "2", "--stage2-steps", "40", "--save-every", "4")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(train_command(straight, data, parts, *common))
    proc = subprocess.Popen(train_command(killed, data, parts, *common), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    progress = killed / "state" / "progress.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["step"] >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads(progress.read_text())
    assert 8 <= saved["step"] < 40 and saved["phase"] == "stage2"
    assert not (killed / "model.safetensors").exists()
    run(train_command(killed, data, parts, *common, "--resume"))
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    a_hist = json.loads((straight / "history.json").read_text())["stage2"]
    b_hist = json.loads((killed / "history.json").read_text())["stage2"]
    assert len(b_hist) == 40 and max(abs(x - y) for x, y in zip(a_hist, b_hist)) <= 1e-6


def test_resume_without_a_saved_state_says_where_it_looked(tmp_path, parts):
    data = write_vg(tmp_path / "vg", 2)
    proc = subprocess.run(train_command(tmp_path / "out", data, parts, "--stage2-steps", "2", "--resume"), cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no saved training state in" in proc.stderr


def test_fsdp_wraps_the_lm_decoder_layers_whatever_the_lm():
    """scripts/accelerate/fsdp.yaml names no layer class: accelerate takes RegionScribeModel._no_split_modules."""
    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin

    from regionscribe.training.stages import TrainConfig, new_model

    config = yaml.safe_load((ROOT / "scripts" / "accelerate" / "fsdp.yaml").read_text())
    assert config["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in config["fsdp_config"]
    for z in (2, 3):
        ds = yaml.safe_load((ROOT / "scripts" / "accelerate" / f"deepspeed_zero{z}.yaml").read_text())
        assert ds["distributed_type"] == "DEEPSPEED" and ds["deepspeed_config"]["zero_stage"] == z
    model = new_model(TrainConfig())
    plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap")
    plugin.set_auto_wrap_policy(model)
    wrapped = {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]}
    assert type(model.lm.model.layers[0]).__name__ in wrapped


def test_bf16_and_gradient_checkpointing_switches_train(tmp_path, parts):
    """--bf16 (autocast, here on the CPU) and --gradient-checkpointing (the LM's own) run and give finite losses."""
    data = write_vg(tmp_path / "vg", 4)
    run(train_command(tmp_path / "out", data, parts, "--batch-size", "2", "--stage2-steps", "3", "--bf16",
                      "--gradient-checkpointing", "--grad-accum", "2"))
    losses = json.loads((tmp_path / "out" / "history.json").read_text())["stage2"]
    assert len(losses) == 3 and all(l == l and l < 50 for l in losses)
    metadata = json.loads((tmp_path / "out" / "config.json").read_text())["metadata"]
    options = metadata["train_config"]["run"]
    assert options["mixed_precision"] == "bf16" and options["gradient_checkpointing"] and options["grad_accum"] == 2
    report = metadata["data_reports"][0]  # the reader's skip report of the last pass over the data
    assert report["source"] == "vg" and report["images"] == 4 and report["regions"] > 4


def test_heldout_evaluation_scores_region_captions(tmp_path):
    """--eval-data: region-caption CIDEr-D (and METEOR where Java is) of a model on a held-out source."""
    from regionscribe.model.describer import RegionDescriber
    from regionscribe.training.evaluation import evaluate_sources

    data = write_visual_genome(tmp_path / "heldout", 4, seed=9, split="test")
    out = evaluate_sources(RegionDescriber.from_pretrained(), [f"vg:{data}"], limit=6)
    scores = out[f"vg:{data}"]
    assert scores["counts"]["caption"] == 6
    assert scores["caption:CIDEr-D"] > 300  # the embedded default captions synthetic shapes well
    assert "caption:METEOR" in scores
