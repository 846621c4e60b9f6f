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

This module holds the run: its settings (TrainConfig), the model it starts from (`new_model`; `untrained_describer`
serves one untrained, for tests and plumbing), `train` and the loss plot. A phase itself (stage 0, run_stage) is
regionscribe.training.phases'; the samples each phase draws (synthetic and drill streams, dataset mixtures, recipes)
are regionscribe.training.streams'.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from regionscribe.model.config import ModelConfig, preset as make_preset
from regionscribe.model.describer import RegionDescriber
from regionscribe.model.modeling import RegionScribeModel, load_adapter_version
from regionscribe.training.corpus import check_share, vocabulary_text
from regionscribe.training.phases import StageConfig, pretrain_induction, pretrain_vision, run_stage
from regionscribe.training.streams import (
    data_mixture, demonstration_stream, relation_stream, replay_stream, synthetic_stream,
)
from regionscribe.training.trainer import RunOptions, is_main_process, process_state, resume_point


# model settings that select a code path over the same parameters, so they can be changed on a loaded checkpoint:
# e.g. the coordinates-as-text baseline trained on the very stage-0 tower of a region-feature default
RUNTIME_SWITCHES = ("region_format", "use_image_tokens", "mask_pooling", "relation_regions", "use_vpgc")


@dataclass
class TrainConfig:
    out: str = "runs/tiny"
    preset: str = "tiny"
    # a pretrained HF vision tower (CLIP/SigLIP) and causal LM from local folders instead of a preset (from_parts)
    vision: str | None = None
    lm: str | None = None
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
    # the LM's induction pretraining (training.phases.pretrain_induction), after stage 0: what a real LM's own
    # pretraining brings and reading demonstrations needs, copying a made-up word from earlier in the text
    induction: StageConfig = field(default_factory=lambda: StageConfig(steps=0, lr=1e-3, batch_size=32))
    # and per induction step this many ordinary samples (streams.replay_stream), so that a trained LM keeps its answers
    induction_replay: int = 0
    # the share of balanced relation questions among the ordinary samples that the induction phase and the episodes
    # replay (streams.replay_stream); the episodes' conversations alone did not bring back relations once forgotten
    replay_relations: float = 0.0
    # relation drills, in order, between stage 1 and stage 2 (see the module docstring): (axes, steps) each, e.g.
    # [(("horizontal", "vertical"), 400), (RELATION_AXES, 300)]; every drill runs at drill_lr with batch drill_batch
    drills: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    drill_lr: float = 3e-4
    drill_batch: int = 16
    drill_balance: bool = False  # balance each axis' answers in the drills (see relation_stream)
    # the share of regions that stage 2 and the drills give as their object's visible mask instead of the box alone, so
    # the region encoder learns mask pooling (model/region_encoder.py); stage 0 and stage 1 stay on boxes, and so do
    # questions about two or more regions unless the model's relation_regions is "mask"
    mask_share: float = 0.0
    # the share of stage-2 and drill scenes drawn as two heavily overlapping objects (corpus.render_overlapping_pair)
    overlap_share: float = 0.0
    # the share of stage-2 and drill box regions drawn loosely, as by hand (corpus.with_loose_boxes), not tight
    loose_share: float = 0.0
    # demonstration episodes (corpus.episodes), after stage 2: the LM learns to read a project's accepted regions
    # written before the question (model/demonstrations.py), with `demonstration_replay` of the ordinary stage-2 mix
    demonstrations: StageConfig = field(default_factory=lambda: StageConfig(steps=0, lr=3e-4))
    demonstration_replay: float = 0.3
    # and a share of text-only copy drills (corpus.episodes.copy_drill): copying made-up words, which the tiny LM
    # never learned in a pretraining of its own
    demonstration_copy: float = 0.0
    # VPG-C (model/vpgc.py), last: a fresh one (unless the checkpoint has one) trained alone on the same episodes,
    # the LM and the visual side frozen (Cheetah)
    vpgc: StageConfig = field(default_factory=lambda: StageConfig(steps=0, lr=1e-3))
    vpgc_layer: int | None = None  # default: the LM's middle decoder layer
    vpgc_dim: int = 64
    save_dtype: str = "float32"  # "float16" halves the checkpoint (the embedded default is saved this way)
    # save the run as a LoRA adapter version over this base checkpoint (model/adapters.py) instead of a full copy;
    # needs `lora`. An --init that is itself an adapter version continues its adapter.
    adapter_base: str | None = None
    freeze_visual: bool = False  # stage 2 trains the LM alone (region encoder and projector stay as they are)
    version: str | None = None
    # data sources per stage, "SOURCE:PATH[:WEIGHT]" (training/datasets); empty: the synthetic corpus
    stage1_data: list[str] = field(default_factory=list)
    stage2_data: list[str] = field(default_factory=list)
    data_images: str | None = None  # image folder for every source (default: each dataset's own layout)
    run: RunOptions = field(default_factory=RunOptions)  # processes, precision, saved state, resume

    def __post_init__(self) -> None:
        if bool(self.vision) != bool(self.lm):
            raise ValueError("--vision and --lm go together (a tower and an LM from local HF folders)")
        if self.vision and self.init:
            raise ValueError("--vision/--lm build a new model; --init continues a checkpoint: give one or the other")
        for name in ("mask_share", "overlap_share", "loose_share", "replay_relations"):
            check_share(getattr(self, name), name)
        if self.induction_replay < 0:
            raise ValueError(f"induction replay is a number of samples per step, not {self.induction_replay!r}")
        if not 0.0 <= self.demonstration_replay < 1.0:  # checked here, before anything is loaded or built
            raise ValueError(f"demonstration replay must be at least 0 and below 1, not {self.demonstration_replay!r}")
        if not 0.0 <= self.demonstration_copy < 1.0 - self.demonstration_replay:
            raise ValueError(f"the demonstration copy share must be at least 0 and leave room for episodes beside "
                             f"the replay ({self.demonstration_replay!r}), not {self.demonstration_copy!r}")
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


def saw_synthetic(metadata: dict[str, Any]) -> bool:
    """Whether a checkpoint was trained on the synthetic corpus (its metadata says so; checkpoints from before the
    flag say it by their data or their preset). A converted GPT4RoI or an untrained tower + LM did not."""
    if "synthetic_corpus" in metadata:
        return bool(metadata["synthetic_corpus"])
    return str(metadata.get("data", "")).startswith("synthetic corpus") or metadata.get("preset") == "tiny"


def new_model(cfg: TrainConfig) -> RegionScribeModel:
    from regionscribe.model.tokenizer import train_tokenizer

    torch.manual_seed(cfg.seed)
    if cfg.vision:
        from transformers import AutoTokenizer, PretrainedConfig

        from regionscribe.model.config import from_parts

        mcfg = from_parts(cfg.vision, cfg.lm, **cfg.model_overrides)
        try:  # the LM's own tokenizer; the region tokens are added (and the LM's embeddings grown) by the model
            tokenizer = AutoTokenizer.from_pretrained(cfg.lm, config=PretrainedConfig())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--lm {cfg.lm}: no loadable tokenizer ({exc})") from None
        return RegionScribeModel(mcfg, tokenizer)
    mcfg: ModelConfig = make_preset(cfg.preset, **cfg.model_overrides)
    return RegionScribeModel(mcfg, train_tokenizer(vocabulary_text()))


def untrained_describer(preset: str = "tiny", seed: int = 0, **kwargs) -> RegionDescriber:
    """An untrained model of a preset (for tests and benchmarks of plumbing; its words are gibberish)."""
    from regionscribe.model.tokenizer import train_tokenizer

    torch.manual_seed(seed)
    model = RegionScribeModel(make_preset(preset), train_tokenizer(vocabulary_text()))
    return RegionDescriber(model, f"{preset}-untrained-{seed}", **kwargs)


def apply_switches(model: RegionScribeModel, overrides: dict[str, Any]) -> None:
    """Apply model_overrides to a checkpoint loaded with --init (TrainConfig has checked they are RUNTIME_SWITCHES)."""
    for key, value in overrides.items():
        setattr(model.config, key, value)


def train(cfg: TrainConfig, stage1_data: Iterable | None = None, stage2_data: Iterable | None = None,
          progress: bool = True, metadata: dict[str, Any] | None = None) -> TrainResult:
    """Run the phases (stage 0 for a from-scratch tower, the LM's induction pretraining, stage 1, the drills, stage 2,
    the demonstration episodes, VPG-C) and save an HF-shaped checkpoint (plus loss_curve.png, history.json and the
    data reports) to cfg.out.

    Data per stage: the caller's iterable, else cfg.stage{1,2}_data's dataset mixture, else fresh samples from the
    synthetic corpus. Either stage may be skipped with steps=0 (and no epochs). Under `accelerate launch` every
    process runs this; each trains on its own share of the data, and only the main process writes. With
    cfg.run.resume the phases before the saved one are skipped and the saved one continues at its saved step.
    """
    from regionscribe.model import adapters

    start = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    state_dir = Path(cfg.run.state_dir or Path(cfg.out) / "state")
    run = dataclasses.replace(cfg.run, state_dir=str(state_dir))
    saved = resume_point(state_dir, run.resume)
    if cfg.adapter_base and not cfg.lora:
        raise ValueError("adapter_base needs lora (the adapter's LoraConfig)")
    if cfg.init and cfg.adapter_base and adapters.is_adapter_version(cfg.init):
        model = load_adapter_version(cfg.init, trainable=True)  # the same adapter trained further: base + one adapter
        apply_switches(model, cfg.model_overrides)
    elif cfg.init:
        model = RegionScribeModel.from_pretrained(cfg.init)
        apply_switches(model, cfg.model_overrides)
    else:
        model = new_model(cfg)
    if cfg.adapter_base and not model.config.lora:
        adapters.attach(model, cfg.lora)
    if cfg.lora:
        model.config.lora = model.config.lora or cfg.lora
    world = process_state().num_processes
    phases = (["stage0", "induction", "stage1"] + [f"drill{k + 1}" for k in range(len(cfg.drills))]
              + ["stage2", "demonstrations", "vpgc"])
    if saved is not None and saved["phase"] not in phases:
        raise ValueError(f"--resume: the saved state is of phase {saved['phase']!r}, which this run does not have "
                         f"({', '.join(phases)}): resume with the same options")
    skip = set(phases[:phases.index(saved["phase"])]) if saved else set()
    history: dict[str, list[float]] = {k: list(v) for k, v in (saved["history"] if saved else {}).items()}
    history.setdefault("stage0", [])
    if cfg.induction.steps:
        history.setdefault("induction", [])
    history.setdefault("stage1", [])  # in the order the phases run
    data_sources: list = []  # their .report is the last pass's skip report

    def stage_data(stage: int, sc: StageConfig, given: Iterable | None, specs: list[str], synthetic: Callable):
        if given is not None:
            return given, sc
        if not specs:
            if sc.epochs:
                raise ValueError(f"stage {stage}: epochs need data sources (--stage{stage}-data); the synthetic "
                                 "corpus is endless: give steps")
            return synthetic(), sc
        per_step = sc.batch_size * world * run.grad_accum
        mixture, sources = data_mixture(specs, stage, cfg.seed, sc.epochs, pad_to=per_step, images=cfg.data_images)
        data_sources.extend(sources)
        if sc.epochs:
            sc = dataclasses.replace(sc, steps=mixture.count() // per_step)
        return mixture, sc

    def phase(name: str, stage: int, sc: StageConfig, data: Iterable, label: str, **kw) -> list[float]:
        return run_stage(model, stage, sc, data, cfg.weight_decay, cfg.grad_clip, progress,
                         visual_lr_scale=cfg.visual_lr_scale, name=label, run=run, phase=name, history=history, **kw)

    def episodes(seed: int):  # what the demonstration and VPG-C phases draw, each from its own seed
        return demonstration_stream(seed, cfg.demonstration_replay, mask_share=cfg.mask_share,
                                    copy=cfg.demonstration_copy, overlap_share=cfg.overlap_share,
                                    loose_share=cfg.loose_share, relations=cfg.replay_relations)

    vision_first = bool(cfg.stage0.steps and not cfg.init and not model.config.frozen_vision() and not saved)
    induction_first = bool(cfg.induction.steps and not saved)  # a saved state is of a later phase: they ran before it
    if (vision_first or induction_first) and torch.cuda.is_available():
        model.to("cuda")  # they run outside accelerate; the later stages place the model anyway
    if vision_first:
        history["stage0"] = pretrain_vision(model, cfg.stage0, cfg.seed, progress)
    if induction_first:
        keep = replay_stream(cfg.seed + 4, cfg.replay_relations, mask_share=cfg.mask_share,
                             overlap_share=cfg.overlap_share, loose_share=cfg.loose_share)
        history["induction"] = pretrain_induction(model, cfg.induction, cfg.seed, progress, keep=keep,
                                                  keep_batch=cfg.induction_replay)
    s1 = cfg.stage1
    if (s1.steps or s1.epochs) and "stage1" not in skip:
        data, s1 = stage_data(1, s1, stage1_data, cfg.stage1_data, lambda: synthetic_stream(1, cfg.seed))
        if s1.steps:
            history["stage1"] = phase("stage1", 1, s1, data, "stage 1")
    for k, (axes, steps) in enumerate(cfg.drills):  # every drill draws the same scenes (seed + 2), on its own axes
        if f"drill{k + 1}" in skip:
            continue
        sc = StageConfig(steps=steps, lr=cfg.drill_lr, batch_size=cfg.drill_batch, warmup=0.0)
        stream = relation_stream(tuple(axes), cfg.seed + 2, balance=cfg.drill_balance, mask_share=cfg.mask_share,
                                 overlap_share=cfg.overlap_share, loose_share=cfg.loose_share)
        history[f"drill{k + 1}"] = phase(f"drill{k + 1}", 2, sc, stream, f"drill {'/'.join(axes)}")
    history.setdefault("stage2", [])
    s2 = cfg.stage2
    if s2.steps or s2.epochs:
        data, s2 = stage_data(2, s2, stage2_data, cfg.stage2_data,
                              lambda: synthetic_stream(2, cfg.seed + 1, mask_share=cfg.mask_share,
                                                       overlap_share=cfg.overlap_share, loose_share=cfg.loose_share))
        if cfg.lora and not cfg.adapter_base:
            import warnings

            from peft import LoraConfig, get_peft_model
            with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question: not ours to fix
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                        category=FutureWarning)
                model.lm = get_peft_model(model.lm, LoraConfig(**cfg.lora))
        if s2.steps:
            history["stage2"] = phase("stage2", 2, s2, data, "stage 2", freeze_visual=cfg.freeze_visual)
        if cfg.lora and not cfg.adapter_base:
            model.lm = model.lm.merge_and_unload()
            model.config.lora = None
    if cfg.demonstrations.steps and "demonstrations" not in skip:
        stream = episodes(cfg.seed + 5)
        # the visual side stays as it is: the tokens a project's accepted regions were stored with stay comparable,
        # and the step costs a third (the demonstrations' images go through the region encoder without gradients)
        history["demonstrations"] = phase("demonstrations", 2, cfg.demonstrations, stream, "demonstrations",
                                          freeze_visual=True)
    if cfg.vpgc.steps and "vpgc" not in skip:
        if model.vpgc is None:
            model.add_vpgc(cfg.vpgc_layer, cfg.vpgc_dim)
        model.config.use_vpgc = True
        stream = episodes(cfg.seed + 6)
        history["vpgc"] = phase("vpgc", 2, cfg.vpgc, stream, "VPG-C", vpgc_only=True)
    seconds = time.time() - start
    out = Path(cfg.out)
    version = cfg.version or f"{model.config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    synthetic = stage2_data is None and not cfg.stage2_data
    meta = {
        "version": version,
        "preset": model.config.preset,
        "train_config": cfg.to_dict(),
        "train_seconds": round(seconds, 1),
        "final_loss": {k: (sum(v[-20:]) / len(v[-20:]) if v else None) for k, v in history.items()},
        "data": ("synthetic corpus (model/corpus.py) train split" if synthetic else
                 "caller-supplied" if stage2_data is not None else {"stage1": cfg.stage1_data,
                                                                    "stage2": cfg.stage2_data}),
        "synthetic_corpus": bool(history["stage0"]) or bool(cfg.drills) or saw_synthetic(model.metadata or {})
        or (stage1_data is None and not cfg.stage1_data and bool(history["stage1"]))
        or (synthetic and bool(history["stage2"])),
        "processes": world,
        **({"data_reports": [src.report.to_dict() for src in data_sources]} if data_sources else {}),
        **(metadata or {}),
    }
    if cfg.adapter_base:
        if is_main_process():
            adapters.save(model, out, cfg.adapter_base, meta,
                          visual=not cfg.freeze_visual or bool(cfg.stage1.steps) or bool(cfg.drills))
        model.lm = model.lm.merge_and_unload()  # the returned model serves (and is evaluated) merged
        model.config.lora = None
    elif is_main_process():
        model.save_pretrained(out, meta, dtype=getattr(torch, cfg.save_dtype))
    if is_main_process():
        (out / "history.json").write_text(json.dumps(history))
        plot_losses(history, out / "loss_curve.png", title=version)
        for src in data_sources:
            print(src.report)
    process_state().wait_for_everyone()
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
