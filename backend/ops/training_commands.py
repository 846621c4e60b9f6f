"""The commands that build and measure models: `regionscribe train`, `eval`, `data` and `convert`, each a function
running it and one adding its options (regionscribe.backend.ops.cli holds the table of every command)."""
from __future__ import annotations

import argparse
import json
import sys


def _drill(text: str) -> tuple[tuple[str, ...], int]:
    """"horizontal,vertical:400" -> (("horizontal", "vertical"), 400); "all" names every relation axis."""
    from regionscribe.training.corpus import RELATION_AXES, check_axes

    axes, sep, steps = text.rpartition(":")
    if not sep or not steps.isdigit() or not axes:
        raise SystemExit(f"--drill wants AXES:STEPS (e.g. horizontal,vertical:400), not {text!r}")
    try:
        names = check_axes(RELATION_AXES if axes == "all" else [a.strip() for a in axes.split(",")])
    except ValueError as exc:
        raise SystemExit(f"--drill: {exc} or all") from None
    return names, int(steps)


def train_command(args: argparse.Namespace) -> int:
    from regionscribe.training.stages import StageConfig, TrainConfig, train

    overrides = {}
    if args.coords_as_text:
        overrides["region_format"] = "text"
    if args.no_image_tokens:
        overrides["use_image_tokens"] = False
    if args.position_encoding:
        overrides["position_encoding"] = args.position_encoding
    if args.scaled_region_tokens:
        overrides["match_embedding_scale"] = True
    if args.mask_pooling:
        overrides["mask_pooling"] = args.mask_pooling
    if args.relation_regions:
        overrides["relation_regions"] = args.relation_regions
    if args.no_vpgc:
        overrides["use_vpgc"] = False
    lora = {"r": args.lora_r, "lora_alpha": 2 * args.lora_r, "target_modules": ["q_proj", "v_proj"]} if args.lora_r else None
    from regionscribe.training.datasets import FormatError
    from regionscribe.training.trainer import RunOptions, is_main_process
    from regionscribe.training.streams import recipe

    try:
        data = {1: list(args.stage1_data or []), 2: list(args.stage2_data or [])}
        if args.recipe:
            if not args.data_root:
                raise ValueError("--recipe needs --data-root (the folder that holds GPT4RoI's data/ layout)")
            for stage, specs in recipe(args.recipe, args.data_root).items():
                data[stage] = specs + data[stage]
        cfg = TrainConfig(
            out=args.out, preset=args.preset, init=args.init, seed=args.seed, vision=args.vision, lm=args.lm,
            stage0=StageConfig(steps=args.stage0_steps, lr=args.stage0_lr, batch_size=16),
            induction=StageConfig(steps=args.induction_steps, lr=args.induction_lr, batch_size=32),
            induction_replay=args.induction_replay, replay_relations=args.replay_relations,
            stage1=StageConfig(steps=args.stage1_steps, lr=args.stage1_lr, batch_size=args.batch_size,
                               epochs=args.stage1_epochs),
            stage2=StageConfig(steps=args.stage2_steps, lr=args.stage2_lr, batch_size=args.batch_size,
                               epochs=args.stage2_epochs),
            lora=lora, model_overrides=overrides, save_dtype=args.save_dtype, version=args.version,
            visual_lr_scale=args.visual_lr_scale,
            drills=[_drill(d) for d in args.drill or []], drill_lr=args.drill_lr, drill_balance=args.drill_balance,
            stage1_data=data[1], stage2_data=data[2], data_images=args.data_images,
            run=RunOptions(grad_accum=args.grad_accum, mixed_precision="bf16" if args.bf16 else "no",
                           gradient_checkpointing=args.gradient_checkpointing, save_every=args.save_every,
                           state_dir=args.state_dir, resume=args.resume),
            mask_share=args.mask_share, overlap_share=args.overlap_share, loose_share=args.loose_share,
            demonstrations=StageConfig(steps=args.demonstration_steps, lr=args.demonstration_lr,
                                       batch_size=args.batch_size),
            demonstration_replay=args.demonstration_replay, demonstration_copy=args.demonstration_copy,
            vpgc=StageConfig(steps=args.vpgc_steps, lr=args.vpgc_lr, batch_size=args.batch_size),
            vpgc_layer=args.vpgc_layer,
        )
        if args.vision and args.lm:  # the folders are checked before anything is loaded
            from regionscribe.model.config import from_parts
            from_parts(args.vision, args.lm, **overrides)
        result = train(cfg, progress=not args.quiet)
    # bad options, data or resume state; model overrides that an --init checkpoint cannot take; folders that are no
    # tower/LM
    except (ValueError, FormatError, FileNotFoundError) as exc:
        raise SystemExit(f"regionscribe train: {exc}") from None
    if not is_main_process():
        return 0
    summary = {"checkpoint": str(result.path), "seconds": round(result.seconds, 1),
               "final_loss": {k: (sum(v[-20:]) / len(v[-20:]) if v else None) for k, v in result.history.items()}}
    if args.eval_data:
        from regionscribe.model.describer import RegionDescriber
        from regionscribe.training.evaluation import evaluate_sources

        heldout = evaluate_sources(RegionDescriber.from_pretrained(result.path), args.eval_data,
                                   limit=args.eval_regions, images=args.data_images, progress=not args.quiet)
        (result.path / "heldout_metrics.json").write_text(json.dumps(heldout, indent=2) + "\n")
        summary["heldout"] = heldout
    if args.eval_scenes:
        from regionscribe.model.describer import RegionDescriber
        from regionscribe.training.evaluation import evaluate

        metrics = evaluate(RegionDescriber.from_pretrained(result.path), "test", args.eval_scenes,
                           progress=not args.quiet)
        (result.path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        summary["metrics"] = metrics
    print(json.dumps(summary, indent=2))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from regionscribe.model.describer import DEFAULT_CHECKPOINT, RegionDescriber
    from regionscribe.training.evaluation import evaluate

    describer = RegionDescriber.from_pretrained(args.checkpoint or DEFAULT_CHECKPOINT)
    metrics = evaluate(describer, args.split, args.scenes, seed=args.seed, progress=not args.json)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for k, v in metrics.items():
            if k != "counts":
                print(f"{k:28s} {v}")
    return 0


def data_command(args) -> int:
    from collections import Counter

    from regionscribe.training.datasets import FormatError, Source

    try:
        sources = [Source.parse(spec, images=args.images, split=args.split) for spec in args.sources]
    except (ValueError, FormatError) as exc:
        print(f"regionscribe data: error: {exc}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    bar = tqdm(unit=" samples", desc="data", file=sys.stderr, disable=args.quiet or args.json)
    out = {}
    try:
        for src in sources:
            kinds: Counter[str] = Counter()
            n = 0
            for sample in src.samples(stage=args.stage):
                n += 1
                kinds.update(t.kind for t in sample.turns)
                if n <= args.show:
                    print(json.dumps({"boxes": [[round(v, 1) for v in b] for b in sample.boxes],
                                      "turns": [[t.question, t.answer] for t in sample.turns]}, ensure_ascii=False))
                bar.update()
            out[f"{src.name}:{src.path}"] = {"samples": n, "turns": dict(kinds), **src.report.to_dict()}
            if not args.json:
                print(f"{src.report}\n  -> {n} stage-{args.stage} conversations, turns {dict(kinds)}")
    except FormatError as exc:
        print(f"regionscribe data: error: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def _convert_gpt4roi(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from regionscribe.model.gpt4roi import ConversionError, convert

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=stage, disable=args.quiet,
                                                              file=sys.stderr))
        bar.n = done
        bar.refresh()

    try:
        out = convert(args.checkpoint, args.vision, args.out, delta_base=args.delta_base,
                      max_shard_bytes=int(args.shard_size * 1024 ** 3), version=args.version, progress=progress)
    except (ConversionError, FileNotFoundError) as exc:
        raise SystemExit(f"regionscribe convert gpt4roi: {exc}") from None
    finally:
        for bar in bars.values():
            bar.close()
    print(json.dumps({"checkpoint": str(out)}))
    return 0


def convert_command(args: argparse.Namespace) -> int:
    """`regionscribe convert SOURCE ...`: the converter of that source."""
    return {"gpt4roi": _convert_gpt4roi}[args.source](args)


def train_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe train`'s options."""
    from regionscribe.model.config import MASK_POOLINGS, POSITION_ENCODINGS, RELATION_REGIONS

    p.add_argument("--out", default="runs/tiny", help="checkpoint folder to write")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--init", default=None, help="start from this checkpoint instead of a fresh preset")
    p.add_argument("--vision", default=None, metavar="PATH",
                   help="a local HF CLIP or SigLIP vision tower (frozen; copied into the checkpoint), with --lm")
    p.add_argument("--lm", default=None, metavar="PATH",
                   help="a local HF causal LM with its tokenizer (Llama, Qwen2/3, Mistral, ...), with --vision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage0-steps", type=int, default=400,
                   help="vision pretraining steps (only for a tower built from scratch, as in the tiny preset)")
    p.add_argument("--stage0-lr", type=float, default=1e-3)
    p.add_argument("--induction-steps", type=int, default=0,
                   help="before stage 1, steps (batch 32) of the LM alone on made-up words written again, so that it "
                        "learns to copy from earlier in the text, as reading demonstrations needs (a real LM can)")
    p.add_argument("--induction-lr", type=float, default=1e-3)
    p.add_argument("--induction-replay", type=int, default=0,
                   help="ordinary samples learned beside each induction step, so that a trained LM keeps its answers")
    p.add_argument("--replay-relations", type=float, default=0.0,
                   help="share of balanced relation questions among the ordinary samples that the induction phase "
                        "and the demonstration episodes replay, 0-1")
    p.add_argument("--stage1-steps", type=int, default=50)
    p.add_argument("--stage2-steps", type=int, default=2200)
    p.add_argument("--stage1-lr", type=float, default=1e-3)
    p.add_argument("--stage2-lr", type=float, default=6e-4)
    p.add_argument("--batch-size", type=int, default=8, help="per process and micro-batch")
    p.add_argument("--drill", action="append", metavar="AXES:STEPS",
                   help="before stage 2, STEPS steps (batch 16) on relation questions of AXES alone, e.g. "
                        "horizontal,vertical:400 or all:300 (repeatable, run in order)")
    p.add_argument("--drill-lr", type=float, default=3e-4)
    p.add_argument("--drill-balance", action="store_true",
                   help="in the drills, as many questions with each answer of an axis (same colour, overlapping)")
    p.add_argument("--mask-share", type=float, default=0.0,
                   help="share of the regions that stage 2 and the drills give with their object's visible mask "
                        "(mask pooling) instead of the box alone, 0-1")
    p.add_argument("--overlap-share", type=float, default=0.0,
                   help="share of the stage-2 and drill scenes drawn as two heavily overlapping objects, 0-1")
    p.add_argument("--loose-share", type=float, default=0.0,
                   help="share of the stage-2 and drill box regions drawn loosely, as by hand (each side from 5%% "
                        "inside to 30%% outside the object), instead of tight, 0-1")
    p.add_argument("--demonstration-steps", type=int, default=0,
                   help="after stage 2, steps on demonstration episodes (a project's own names and caption style "
                        "shown by accepted regions before the question; DEMONSTRATIONS=k serves them)")
    p.add_argument("--demonstration-lr", type=float, default=3e-4)
    p.add_argument("--demonstration-replay", type=float, default=0.3,
                   help="share of ordinary stage-2 samples among the demonstration episodes, 0-1")
    p.add_argument("--demonstration-copy", type=float, default=0.0,
                   help="share of text-only copy drills (made-up words copied and recalled) among them, 0-1")
    p.add_argument("--vpgc-steps", type=int, default=0,
                   help="last, steps training VPG-C alone (an instruction-guided visual prompt at the region tokens, "
                        "Cheetah) on the demonstration episodes, the LM frozen")
    p.add_argument("--vpgc-lr", type=float, default=1e-3)
    p.add_argument("--vpgc-layer", type=int, default=None, help="the LM decoder layer VPG-C acts at (default: middle)")
    p.add_argument("--no-vpgc", action="store_true", help="switch the checkpoint's VPG-C off (it stays in the file)")
    p.add_argument("--mask-pooling", choices=MASK_POOLINGS, default=None,
                   help="how a mask weights the RoI bins (filled: the rest holds the mask's mean; weighted: zero)")
    p.add_argument("--relation-regions", choices=RELATION_REGIONS, default=None,
                   help="what a question about two or more regions sees of a masked region (default box: its box)")
    p.add_argument("--visual-lr-scale", type=float, default=0.05,
                   help="learning-rate factor of region encoder and projector in stages 1-2")
    p.add_argument("--lora-r", type=int, default=0, help="stage 2 with LoRA adapters of this rank (0: full)")
    p.add_argument("--coords-as-text", action="store_true", help="baseline: boxes written as text, no region tokens")
    p.add_argument("--no-image-tokens", action="store_true", help="switch off LLaVA image-level tokens")
    p.add_argument("--position-encoding", choices=POSITION_ENCODINGS, default=None,
                   help="box features of the region position term (default: the preset's, coordinates, as "
                        "the embedded default; sinusoidal is an alternative, see README)")
    p.add_argument("--scaled-region-tokens", action="store_true",
                   help="region tokens RMS-normalised to the word embeddings' scale (an alternative, see README)")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--version", default=None, help="model_version to record (default: preset + timestamp)")
    p.add_argument("--eval-scenes", type=int, default=0, help="evaluate on this many test scenes afterwards")
    p.add_argument("--stage1-data", action="append", metavar="SOURCE:PATH[:WEIGHT]",
                   help="a stage-1 data source (repeatable; see `regionscribe data`); none: the synthetic corpus")
    p.add_argument("--stage2-data", action="append", metavar="SOURCE:PATH[:WEIGHT]",
                   help="a stage-2 data source (repeatable), e.g. vg:data/visual_genome:2 or export-hf:exports/v1")
    p.add_argument("--recipe", choices=["gpt4roi"],
                   help="GPT4RoI's mixtures: stage 1 COCO, RefCOCO, RefCOCO+; stage 2 RefCOCOg, Flickr30k, VG "
                        "(MDETR's and GRiT's files under --data-root), plus any --stage2-data")
    p.add_argument("--data-root", help="the folder holding GPT4RoI's data layout (coco/, mdetr_annotations/, ...)")
    p.add_argument("--data-images", help="one image folder for every data source (default: each dataset's layout)")
    p.add_argument("--stage1-epochs", type=int, default=None, help="passes over the stage-1 data instead of steps")
    p.add_argument("--stage2-epochs", type=int, default=None, help="passes over the stage-2 data instead of steps")
    p.add_argument("--eval-data", action="append", metavar="SOURCE:PATH",
                   help="held-out data: region-caption CIDEr-D and METEOR of the trained model on it")
    p.add_argument("--eval-regions", type=int, default=500, help="at most this many held-out regions")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per step: global batch = --batch-size x processes x --grad-accum")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    p.add_argument("--gradient-checkpointing", action="store_true", help="the LM's gradient checkpointing")
    p.add_argument("--save-every", type=int, default=0,
                   help="save the whole training state every N steps (model, optimiser, scheduler, RNG, data position)")
    p.add_argument("--state-dir", help="where the training state goes (default: <out>/state)")
    p.add_argument("--resume", action="store_true", help="continue from the saved training state")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def eval_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe eval`'s options."""
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the embedded default)")
    p.add_argument("--split", default="test", choices=["test", "val", "novel"])
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def data_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe data`'s options."""
    p.add_argument("sources", nargs="+", metavar="SOURCE:PATH[:WEIGHT]",
                   help="e.g. vg:data/visual_genome, refcoco:data/refcoco, coco:data/coco/annotations/"
                        "instances_train2017.json, export-hf:exports/v1 (see training/datasets/__init__.py)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=2, help="GPT4RoI stage whose conversations to build")
    p.add_argument("--split", default="train", help="the split to read where a dataset has several")
    p.add_argument("--images", default=None, help="image folder (default: the dataset's own layout)")
    p.add_argument("--show", type=int, default=0, help="print the first N conversations")
    p.add_argument("--json", action="store_true", help="print the counts and skip reports as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def convert_options(p: argparse.ArgumentParser) -> None:
    """`regionscribe convert`'s options."""
    csub = p.add_subparsers(dest="source", required=True)
    g = csub.add_parser("gpt4roi", help="GPT4RoI-7B (jshilong/GPT4RoI): its HF-sharded .bin or safetensors folder")
    g.add_argument("checkpoint", help="GPT4RoI's folder (config.json, shards and index, tokenizer)")
    g.add_argument("--vision", required=True, help="local CLIP ViT-L/14 folder (openai/clip-vit-large-patch14); "
                                                   "its vision weights are copied into OUT")
    g.add_argument("--out", required=True, help="folder to create (written beside it, renamed at the end)")
    g.add_argument("--delta-base", default=None, metavar="DIR",
                   help="LLaMA-7B v1 HF folder: CHECKPOINT is GPT4RoI's released delta, applied here shard by shard")
    g.add_argument("--shard-size", type=float, default=2.0, help="GiB per output shard")
    g.add_argument("--version", default=None, help="model_version to record (default: gpt4roi-<source name>)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
