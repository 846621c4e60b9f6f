"""Two-stage spatial instruction tuning (GPT4RoI), with the whole loop on one screen.

Stage 1 (align): the region encoder and the image projector learn with the LM frozen, on simple region->phrase
pairs. A vision tower built from scratch (the tiny preset) trains too; a pretrained one stays frozen throughout.
Stage 2 (end-to-end): region encoder, projector and LM (fully, or LoRA adapters via peft that are merged back
before saving) on the full mix of captions, attributes, relations, multi-region reasoning and multi-turn dialogue.
AdamW, linear warm-up then cosine decay, gradient clipping, accelerate for device placement.

Relation drills (optional, between stage 1 and stage 2; with `init` they continue a trained checkpoint): the stage-2
parameters on single-turn relation questions of some axes alone. The tiny LM does not find on its own how to compare
two region tokens: in the full mix left/right and above/below stayed at exactly 50% after 2,200 steps, and 600 more
steps on all five relation axes together left them there, although a linear probe reads the answer from the two
tokens at 100% (and from the LM's hidden state at the answer at 48-59%). 400 steps on the two position axes alone
took them to 96% and 95% (val). Same colour and overlap needed drills of their own with balanced answers
(`drill_balance`): on the corpus' shares the LM always gave the common answer.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from model.config import ModelConfig, preset as make_preset
from model.corpus import (BASE_VALUES, RELATION_AXES, check_axes, iter_samples, make_scenes, relation_samples,
                          relations, render_overlapping_pair, vocabulary_text)
from model.data import batches, to_device
from model.modeling import RegionScribeModel


@dataclass
class StageConfig:
    steps: int
    lr: float
    batch_size: int = 8
    warmup: float = 0.05  # fraction of the steps


# model settings that select a code path over the same parameters, so they can be changed on a loaded checkpoint:
# e.g. the coordinates-as-text baseline trained on the very stage-0 tower of a region-feature default
RUNTIME_SWITCHES = ("region_format", "use_image_tokens", "mask_pooling")


@dataclass
class TrainConfig:
    out: str = "runs/tiny"
    preset: str = "tiny"
    init: str | None = None  # start from this checkpoint instead of a fresh preset (the feedback loop does)
    seed: int = 0
    stage1: StageConfig = field(default_factory=lambda: StageConfig(steps=300, lr=1e-3))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(steps=2500, lr=6e-4))
    lora: dict[str, Any] | None = None  # e.g. {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"region_format": "text"}
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    # after stage 0 the region encoder is pretrained: early gradients through a still-random LM would scramble it
    # (measured: shape 16% -> 90% on val at the same budget when scaled down 20x)
    visual_lr_scale: float = 0.05
    # stage 0 (only for a vision tower built from scratch, i.e. the tiny preset): what CLIP's pretraining is to
    # GPT4RoI. The tower and region encoder learn to tell region attributes apart, then the tower is frozen.
    stage0: StageConfig = field(default_factory=lambda: StageConfig(steps=300, lr=1e-3, batch_size=16))
    # relation drills, in order, between stage 1 and stage 2 (see the module docstring): (axes, steps) each, e.g.
    # [(("horizontal", "vertical"), 400), (RELATION_AXES, 300)]; every drill runs at drill_lr with batch drill_batch
    drills: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    drill_lr: float = 3e-4
    drill_batch: int = 16
    drill_balance: bool = False  # balance each axis' answers in the drills (see relation_stream)
    # the share of regions that stage 2 and the drills give as their object's visible mask instead of the box alone, so
    # the region encoder learns mask pooling (model/region_encoder.py); stage 0 and stage 1 stay on boxes
    mask_share: float = 0.0
    # the share of stage-2 and drill scenes drawn as two heavily overlapping objects (corpus.render_overlapping_pair)
    overlap_share: float = 0.0
    save_dtype: str = "float32"  # "float16" halves the checkpoint (the embedded default is saved this way)
    version: str | None = None

    def __post_init__(self) -> None:
        for name in ("mask_share", "overlap_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)!r}")
        fixed = sorted(set(self.model_overrides) - set(RUNTIME_SWITCHES))
        if self.init and fixed:  # refused before anything is loaded or built
            raise ValueError(f"{', '.join(fixed)} change the model's parameters and cannot be applied to an --init "
                             f"checkpoint; train from the preset instead (only {', '.join(RUNTIME_SWITCHES)} can)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    path: Path
    model: RegionScribeModel
    history: dict[str, list[float]]
    seconds: float


def with_overlapping_pairs(scenes: list, share: float, key: str) -> list:
    """`scenes` with a `share` of them replaced by heavily overlapping pairs (corpus.render_overlapping_pair, drawn
    from `key`), in a shuffled order: occluders for masks to leave out."""
    if not share:
        return scenes
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"overlap_share must be between 0 and 1, not {share!r}")
    n = round(share * len(scenes))
    pairs = [render_overlapping_pair(random.Random(f"{key}:pair:{i}"), scene_id=f"train-pair-{key}-{i}")
             for i in range(n)]
    out = scenes[:len(scenes) - n] + pairs
    random.Random(f"{key}:order").shuffle(out)
    return out


def synthetic_stream(stage: int, seed: int, chunk: int = 64, mask_share: float = 0.0,
                     overlap_share: float = 0.0) -> Iterator:
    """Endless fresh training samples from the synthetic corpus' train split (never val/test/novel scenes);
    `mask_share` of the regions come with their object's visible mask (corpus.with_masks), `overlap_share` of the
    scenes are heavily overlapping pairs (`with_overlapping_pairs`)."""
    k = 0
    while True:
        scenes = make_scenes("train", chunk, seed=seed * 1_000_003 + k)
        scenes = with_overlapping_pairs(scenes, overlap_share, f"{seed}:{stage}:{k}")
        yield from iter_samples(scenes, stage, seed=seed * 7919 + k, mask_share=mask_share)
        k += 1


def relation_stream(axes: tuple[str, ...] | list[str], seed: int, chunk: int = 32, balance: bool = False,
                    mask_share: float = 0.0, overlap_share: float = 0.0) -> Iterator:
    """Endless single-turn relation questions on `axes` from the train split, shuffled across `chunk` scenes.

    balance: per axis, keep only as many questions with the more common answer as there are with the other one.
    Left/right, above/below and bigger/smaller are balanced already (every ordered pair is asked both ways round);
    "same colour as" is about 29% of colour questions and "overlapping" about 19% of overlap questions, and on
    unbalanced data the LM learned to always give the common answer (80.5% on overlap, its share of the test split).
    """
    check_axes(axes)  # unknown axes fail here, before any training
    k = 0
    while True:
        scenes = make_scenes("train", chunk, seed=seed * 1_000_003 + 700_000 + k)
        scenes = with_overlapping_pairs(scenes, overlap_share, f"{seed}:drill:{k}")
        samples = list(relation_samples(scenes, axes, seed=seed * 7919 + k, mask_share=mask_share))
        random.Random(f"{seed}:{k}").shuffle(samples)
        if balance:
            counts = Counter((s.turns[0].key, s.turns[0].answer) for s in samples)
            quota = {axis: min(counts[(axis, answer)] for answer in RELATION_AXES[axis]) for axis in axes}
            kept: Counter = Counter()
            for s in samples:
                key = (s.turns[0].key, s.turns[0].answer)
                if kept[key] < quota[key[0]]:
                    kept[key] += 1
                    yield s
        else:
            yield from samples
        k += 1


def new_model(cfg: TrainConfig) -> RegionScribeModel:
    from model.tokenizer import train_tokenizer

    torch.manual_seed(cfg.seed)
    mcfg: ModelConfig = make_preset(cfg.preset, **cfg.model_overrides)
    return RegionScribeModel(mcfg, train_tokenizer(vocabulary_text()))


def apply_switches(model: RegionScribeModel, overrides: dict[str, Any]) -> None:
    """Apply model_overrides to a checkpoint loaded with --init (TrainConfig has checked they are RUNTIME_SWITCHES)."""
    for key, value in overrides.items():
        setattr(model.config, key, value)


def scene_batch(model: RegionScribeModel, scenes: list) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pixel values [B, 3, S, S] and per-scene normalised object boxes of corpus scenes, on the model's device: what
    stage 0 trains on, and what benchmarks/region_probe.py probes."""
    from model.images import normalise_boxes, pixel_values

    cfg = model.config
    pv = torch.stack([pixel_values(s.image, cfg.image_size, cfg.image_mean, cfg.image_std) for s in scenes])
    boxes = [normalise_boxes([o.box for o in s.objects], *s.image.size).to(model.device) for s in scenes]
    return pv.to(model.device), boxes


def pretrain_vision(model: RegionScribeModel, sc: StageConfig, seed: int, progress: bool = True) -> list[float]:
    """Stage 0 for a from-scratch tower: region-attribute classification on synthetic scenes (colour, shape, size,
    texture from each box's region token) and pairwise relations (left/right, above/below, bigger/smaller, same
    colour, overlapping from the two tokens of an ordered pair), through linear heads thrown away afterwards; then
    the tower is frozen.

    GPT4RoI starts from a CLIP tower pretrained on 400 M image-text pairs; no weights can be downloaded here, so the
    tiny preset pretrains its own tower on the corpus' train split (never val/test/novel scenes).
    """
    from tqdm import tqdm

    width = model.lm.config.hidden_size
    names = list(BASE_VALUES)
    axes = list(RELATION_AXES)
    heads = torch.nn.ModuleList(torch.nn.Linear(width, len(BASE_VALUES[n])) for n in names)
    pair_heads = torch.nn.ModuleList(torch.nn.Linear(2 * width, 2) for _ in axes)
    heads.to(model.device)
    pair_heads.to(model.device)
    model.requires_grad_(False)
    params = [*model.vision.parameters(), *model.region_encoder.parameters(), *heads.parameters(),
              *pair_heads.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=sc.lr, betas=(0.9, 0.98))
    sched = cosine_with_warmup(opt, int(sc.warmup * sc.steps), sc.steps)
    model.train()
    losses = []
    hits: dict[str, list[float]] = {n: [] for n in names}  # running accuracy per attribute head, shown on the bar
    ce = torch.nn.functional.cross_entropy
    bar = tqdm(range(sc.steps), desc="stage 0 (vision)", disable=not progress, dynamic_ncols=True)
    for step in bar:
        scenes = make_scenes("train", sc.batch_size, seed=seed * 1_000_003 + 500_000 + step)
        pv, boxes = scene_batch(model, scenes)
        feats = model.encode_images(pv)
        if not feats.levels:  # coordinates-as-text baseline: the tower is pretrained the same way, for fairness
            hs = model.vision(pixel_values=pv, output_hidden_states=True).hidden_states
            feats.levels = model.region_encoder.pyramid([hs[i] for i in model.level_indices])
        tokens = torch.cat(model.region_encoder(feats.levels, boxes))
        loss = 0
        for head, name in zip(heads, names):
            target = torch.tensor([BASE_VALUES[name].index(getattr(o, name)) for s in scenes for o in s.objects])
            logits = head(tokens)
            loss = loss + ce(logits, target.to(tokens.device))
            hits[name].append(float((logits.argmax(1).cpu() == target).float().mean()))
        pairs: dict[str, tuple[list[int], list[int], list[int]]] = {a: ([], [], []) for a in axes}
        offset = 0
        for s in scenes:
            for i, a in enumerate(s.objects):
                for j, b in enumerate(s.objects):
                    if i != j:
                        for axis, label in relations(a, b, s.image.size).items():
                            pairs[axis][0].append(offset + i)
                            pairs[axis][1].append(offset + j)
                            pairs[axis][2].append(RELATION_AXES[axis].index(label))
            offset += len(s.objects)
        for head, axis in zip(pair_heads, axes):
            left, right, target = pairs[axis]
            if target:
                both = torch.cat([tokens[left], tokens[right]], 1)
                loss = loss + ce(head(both), torch.tensor(target, device=tokens.device))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 50 == 49:  # a head stuck near chance on one attribute shows here long before it shows in the loss
            bar.set_postfix({n[:3]: f"{sum(h[-50:]) / len(h[-50:]):.2f}" for n, h in hits.items()}, refresh=False)
    model.config.freeze_vision = True
    model.vision.requires_grad_(False)
    model.eval()
    return losses


def set_trainable(model: RegionScribeModel, stage: int) -> list[torch.nn.Parameter]:
    model.requires_grad_(False)
    parts = [model.region_encoder, model.projector]
    if not model.config.frozen_vision():
        parts.append(model.vision)
    if stage == 2:
        parts.append(model.lm)
    for p in parts:
        p.requires_grad_(True)
    if model.config.match_embedding_scale:
        model.region_scale.requires_grad_(True)
    if stage == 2 and model.config.lora:
        for n, p in model.lm.named_parameters():  # peft: only adapters in the LM
            p.requires_grad_("lora_" in n)
    return [p for p in model.parameters() if p.requires_grad]


def cosine_with_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def run_stage(model: RegionScribeModel, stage: int, sc: StageConfig, samples: Iterable, weight_decay: float = 0.0,
              grad_clip: float = 0.0, progress: bool = True, log: Callable[[str], None] | None = None,
              visual_lr_scale: float = 1.0, name: str | None = None) -> list[float]:
    from accelerate import Accelerator
    from tqdm import tqdm

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    params = set_trainable(model, stage)
    lm_params = {id(p) for p in model.lm.parameters()}
    groups = [{"params": [p for p in params if id(p) in lm_params], "lr": sc.lr},
              {"params": [p for p in params if id(p) not in lm_params], "lr": sc.lr * visual_lr_scale}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = cosine_with_warmup(opt, int(sc.warmup * sc.steps), sc.steps)
    model.train()
    model, opt, sched = accelerator.prepare(model, opt, sched)
    losses: list[float] = []
    data = batches(accelerator.unwrap_model(model), samples, sc.batch_size)
    name = name or f"stage {stage}"
    bar = tqdm(range(sc.steps), desc=name, disable=not progress, dynamic_ncols=True)
    for step in bar:
        batch = to_device(next(data), accelerator.device)
        loss = model(**batch)
        accelerator.backward(loss)
        if grad_clip:
            accelerator.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
        if log and step % 100 == 0:
            log(f"{name} step {step} loss {losses[-1]:.4f}")
    model = accelerator.unwrap_model(model)
    model.eval()
    return losses


def train(cfg: TrainConfig, stage1_data: Iterable | None = None, stage2_data: Iterable | None = None,
          progress: bool = True, metadata: dict[str, Any] | None = None) -> TrainResult:
    """Run both stages and save an HF-shaped checkpoint (plus loss_curve.png and train_config.json) to cfg.out.

    Without data arguments the stages draw fresh samples from the synthetic corpus. Either stage may be skipped
    with steps=0.
    """
    start = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.init:
        model = RegionScribeModel.from_pretrained(cfg.init)
        apply_switches(model, cfg.model_overrides)
    else:
        model = new_model(cfg)
    if cfg.lora:
        model.config.lora = cfg.lora
    history: dict[str, list[float]] = {"stage0": [], "stage1": []}  # in the order the phases run
    if cfg.stage0.steps and not cfg.init and not model.config.frozen_vision():
        if torch.cuda.is_available():  # stage 0 runs outside accelerate; the later stages place the model anyway
            model.to("cuda")
        history["stage0"] = pretrain_vision(model, cfg.stage0, cfg.seed, progress)
    if cfg.stage1.steps:
        data = stage1_data if stage1_data is not None else synthetic_stream(1, cfg.seed)
        history["stage1"] = run_stage(model, 1, cfg.stage1, data, cfg.weight_decay, cfg.grad_clip, progress,
                                      visual_lr_scale=cfg.visual_lr_scale)
    for k, (axes, steps) in enumerate(cfg.drills):  # every drill draws the same scenes (seed + 2), on its own axes
        sc = StageConfig(steps=steps, lr=cfg.drill_lr, batch_size=cfg.drill_batch, warmup=0.0)
        stream = relation_stream(tuple(axes), cfg.seed + 2, balance=cfg.drill_balance, mask_share=cfg.mask_share,
                                 overlap_share=cfg.overlap_share)
        history[f"drill{k + 1}"] = run_stage(model, 2, sc, stream,
                                             cfg.weight_decay, cfg.grad_clip, progress,
                                             visual_lr_scale=cfg.visual_lr_scale, name=f"drill {'/'.join(axes)}")
    history["stage2"] = []
    if cfg.stage2.steps:
        if cfg.lora:
            from peft import LoraConfig, get_peft_model
            model.lm = get_peft_model(model.lm, LoraConfig(**cfg.lora))
        data = stage2_data if stage2_data is not None else synthetic_stream(2, cfg.seed + 1,
                                                                             mask_share=cfg.mask_share,
                                                                             overlap_share=cfg.overlap_share)
        history["stage2"] = run_stage(model, 2, cfg.stage2, data, cfg.weight_decay, cfg.grad_clip, progress,
                                      visual_lr_scale=cfg.visual_lr_scale)
        if cfg.lora:
            model.lm = model.lm.merge_and_unload()
            model.config.lora = None
    seconds = time.time() - start
    out = Path(cfg.out)
    version = cfg.version or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    meta = {
        "version": version,
        "preset": cfg.preset,
        "train_config": cfg.to_dict(),
        "train_seconds": round(seconds, 1),
        "final_loss": {k: (sum(v[-20:]) / len(v[-20:]) if v else None) for k, v in history.items()},
        "data": "synthetic corpus (model/corpus.py) train split" if stage2_data is None else "caller-supplied",
        **(metadata or {}),
    }
    model.save_pretrained(out, meta, dtype=getattr(torch, cfg.save_dtype))
    (out / "history.json").write_text(json.dumps(history))
    plot_losses(history, out / "loss_curve.png", title=version)
    return TrainResult(out, model, history, seconds)


def plot_losses(history: dict[str, list[float]], path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for name, losses in history.items():
        if not losses:
            continue
        k = max(1, len(losses) // 100)
        smooth = [sum(losses[i:i + k]) / len(losses[i:i + k]) for i in range(0, len(losses), k)]
        ax.plot([offset + i * k for i in range(len(smooth))], smooth, label=name)
        offset += len(losses)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_yscale("log")
    ax.set_title(title)
    if ax.get_lines():  # a run with no training step (an --init with 0 steps) has no curve to label
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
