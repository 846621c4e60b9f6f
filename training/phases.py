"""One phase of a training run: the settings of a stage (StageConfig), the pretraining of the tiny preset's parts
that a real model gets from elsewhere (stage 0's vision tower on corpus scenes, the LM's induction pretraining on
repeated made-up words), and a stage's parameters (set_trainable) trained by regionscribe.training.trainer's loop
(run_stage). regionscribe.training.stages.train runs the phases in order.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from regionscribe.model.modeling import RegionScribeModel
from regionscribe.model.conversation import IGNORE
from regionscribe.training.batches import batches, pad, to_device
from regionscribe.training.corpus import BASE_VALUES, RELATION_AXES, make_scenes, relations
from regionscribe.training.corpus.episodes import induction_text
from regionscribe.training.trainer import RunOptions, cosine_with_warmup, fit


@dataclass
class StageConfig:
    steps: int
    lr: float
    batch_size: int = 8  # per process and micro-batch (training/trainer.py)
    warmup: float = 0.05  # fraction of the steps
    epochs: int | None = None  # with data sources: passes over the stage's mixture instead of `steps`


def scene_batch(model: RegionScribeModel, scenes: list) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pixel values [B, 3, S, S] and per-scene normalised object boxes of corpus scenes, on the model's device: what
    stage 0 trains on, and what benchmarks/region_probe.py probes."""
    from regionscribe.model.tensors import normalise_boxes, pixel_values

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


def induction_batch(tokenizer, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and labels (every token but the first and the padding) of texts, each after BOS."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows = [bos + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids, labels, mask = pad([(r, [IGNORE] + r[1:]) for r in rows], tokenizer.pad_token_id)
    return ids.to(device), mask.to(device), labels.to(device)


def pretrain_induction(model: RegionScribeModel, sc: StageConfig, seed: int, progress: bool = True,
                       keep: Iterator | None = None, keep_batch: int = 0) -> list[float]:
    """The LM alone, as plain language modelling on text that only copying predicts (corpus.episodes.induction_text:
    made-up words, then the same words again), so that it forms induction heads: look back for the earlier
    occurrence of the current token and say what came after it.

    keep, keep_batch: each step also learns `keep_batch` ordinary samples drawn from `keep` (their answers' mean
    loss added to the text's), so that an LM that already answers the corpus keeps doing so. Without them the
    default's LM forgot the corpus in this phase (relations 38.7%, CIDEr-D 0 after 700 steps), and the episodes'
    replay brought back its attributes and captions but not its relations.

    A real LM brings this from its pretraining, and reading a project's own word off the demonstrations needs it. The
    tiny preset's LM only ever learned the corpus' answers: taught on demonstration episodes or on copy drills, whose
    loss is the answer alone, it gave a made-up word's letters p 0.02-0.3 after 800 steps. With the loss on every
    token of these texts the default's LM copies 97% of the repeated tokens after 700 steps (batch 32, lr 1e-3).
    """
    from tqdm import tqdm

    model.requires_grad_(False)
    params = list(model.lm.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=sc.lr, weight_decay=0.0)
    # warm-up, then a constant rate: induction forms suddenly and late, and a decaying rate put it off (a cosine from
    # 1.5e-3 copied 35% at step 600 and 42% at 700, the constant 1e-3 94% at 600 and 97% at 700)
    sched = cosine_with_warmup(opt, int(sc.warmup * sc.steps), sc.steps, decay=False)
    model.lm.train()
    losses: list[float] = []
    probe = [induction_text(random.Random(f"{seed}:induction-probe:{i}")) for i in range(64)]
    kept = batches(model, keep, keep_batch) if keep is not None and keep_batch else None
    bar = tqdm(range(sc.steps), desc="induction (LM)", disable=not progress, dynamic_ncols=True)
    for step in bar:
        rng = random.Random(f"{seed}:induction:{step}")
        ids, mask, labels = induction_batch(model.tokenizer, [induction_text(rng) for _ in range(sc.batch_size)],
                                            model.device)
        loss = model.lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        if kept is not None:  # without num_items_in_batch the loss is the mean over the batch's answer tokens
            loss = loss + model(**to_device(next(kept), model.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 100 == 99:  # induction forms suddenly: the copied share jumps from about 0.2 to 0.9 and more
            model.lm.eval()
            share = copied_share(model, probe)
            model.lm.train()
            bar.set_postfix(loss=f"{sum(losses[-100:]) / 100:.3f}", copied=f"{share:.2f}", refresh=False)
    model.requires_grad_(False)
    model.eval()
    return losses


def copied_share(model: RegionScribeModel, texts: list[str]) -> float:
    """The share of the tokens after each text's first line that the LM predicts right (greedy, teacher-forced): how
    much of the repeats of `induction_text` it copies."""
    tok = model.tokenizer
    ids, mask, _ = induction_batch(tok, texts, model.device)
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    repeated = (ids == newline).long().cumsum(1) > 0  # after the first line break
    with torch.no_grad():
        pred = model.lm(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
    scored = (repeated & (mask == 1))[:, 1:] & (ids[:, 1:] != newline)
    return float((pred[scored] == ids[:, 1:][scored]).float().mean())


def set_trainable(model: RegionScribeModel, stage: int, freeze_visual: bool = False,
                  vpgc_only: bool = False) -> list[torch.nn.Parameter]:
    model.requires_grad_(False)
    if vpgc_only:  # Cheetah: VPG-C alone learns, the LM and the visual side stay frozen
        model.vpgc.requires_grad_(True)
        return list(model.vpgc.parameters())
    parts = [] if freeze_visual else [model.region_encoder, model.projector]
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


def run_stage(model: RegionScribeModel, stage: int, sc: StageConfig, samples: Iterable, weight_decay: float = 0.0,
              grad_clip: float = 0.0, progress: bool = True, log: Callable[[str], None] | None = None,
              visual_lr_scale: float = 1.0, name: str | None = None, run: RunOptions | None = None,
              phase: str | None = None, history: dict[str, list[float]] | None = None,
              freeze_visual: bool = False, vpgc_only: bool = False) -> list[float]:
    """One phase: the parameters of `stage` (set_trainable), the LM's at sc.lr and the visual side's at
    sc.lr * visual_lr_scale, trained by training/trainer.py's loop on `samples` (Samples or dataset Units). On CUDA a
    model whose config asks for bfloat16 trains under bf16 autocast; on the CPU in fp32."""
    run = run or RunOptions()
    if torch.cuda.is_available() and model.config.dtype == "bfloat16" and run.mixed_precision == "no":
        run = dataclasses.replace(run, mixed_precision="bf16")
    params = set_trainable(model, stage, freeze_visual, vpgc_only)
    lm_params = {id(p) for p in model.lm.parameters()}
    groups = [{"params": [p for p in params if id(p) in lm_params], "lr": sc.lr},
              {"params": [p for p in params if id(p) not in lm_params], "lr": sc.lr * visual_lr_scale}]
    return fit(model, params, [g for g in groups if g["params"]], sc.steps, sc.batch_size, int(sc.warmup * sc.steps),
               samples, run or RunOptions(), phase or f"stage{stage}", history or {}, weight_decay, grad_clip,
               progress, log, desc=name or f"stage {stage}")
