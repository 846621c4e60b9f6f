"""`regionscribe`: thin command line over importable functions.

    regionscribe train   two-stage tuning of a preset (or --vision PATH --lm PATH) on the synthetic corpus or on
                         region-text datasets (--stage2-data, --recipe gpt4roi), on one process or under
                         `accelerate launch` -> an HF-shaped checkpoint
    regionscribe data    read datasets or exports as training conversations; counts and what was skipped
    regionscribe eval    metrics of a checkpoint on a split of the synthetic corpus (--json)
    regionscribe run     Redis (private, if REDIS_URL is unset) + one worker + the web server, for `make run`
    regionscribe serve   the web server (gunicorn) only
    regionscribe worker  a long-lived, non-forking RQ worker (inference, or --queue training)
    regionscribe versions  the model registry's versions with their metrics
    regionscribe report  an HTML page with the metrics across versions and the edit rate per model version
    regionscribe doctor  checks Redis, the store, the registry, the model, workers and Label Studio; exit 1 on a FAIL
    regionscribe export  curated region-text datasets from the feedback store (conversations, vg, coco, hf)
    regionscribe sync    bring the feedback store in line with Label Studio (annotations the webhook missed)
    regionscribe convert gpt4roi  GPT4RoI's released checkpoint (or delta + LLaMA-7B) -> a regionscribe checkpoint
"""
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


def _train(args: argparse.Namespace) -> int:
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
            mask_share=args.mask_share, overlap_share=args.overlap_share,
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


def _eval(args: argparse.Namespace) -> int:
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


def _run(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.runner import run_all

    return run_all() or 0


def _serve(args: argparse.Namespace) -> int:
    from regionscribe.backend.web.server import serve

    return serve(host=args.host, port=args.port, workers=args.workers) or 0


def _worker(args: argparse.Namespace) -> int:
    from regionscribe.backend.inference.worker import run_worker

    return run_worker(queues=args.queue, burst=args.burst) or 0


def _doctor(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.doctor import main as doctor

    return doctor(json_output=args.json, load=args.load, timeout=args.timeout, backend_url=args.backend)


def _export(args: argparse.Namespace) -> int:
    from regionscribe.backend.export import (
        ExportError, ExportFilters, ExportOptions, export, parse_formats, parse_split,
    )
    from regionscribe.backend.store import Store, StoreError

    try:
        filters = ExportFilters(
            projects=tuple(args.project or ()), annotators=tuple(args.annotator or ()),
            model_versions=tuple(args.model_version or ()), prefilled=args.prefilled, since=args.since,
            until=args.until, min_caption_length=args.min_caption_length, ground_truth_only=args.ground_truth_only,
            dedup=not args.keep_duplicates)
        options = ExportOptions(formats=parse_formats(",".join(args.format)), images=args.images,
                                split=parse_split(args.split), seed=args.seed, filters=filters,
                                overwrite=args.overwrite, chunk_size=args.chunk_size)
        with Store.open(args.store) as store:
            manifest = export(store, args.out, options, progress=not args.quiet)
    except (ExportError, StoreError) as exc:
        print(f"regionscribe export: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "selection_id": manifest["selection_id"], "counts": manifest["counts"]},
                     indent=2, ensure_ascii=False))
    return 0


def _sync(args: argparse.Namespace) -> int:
    from regionscribe.backend.core.settings import get_settings
    from regionscribe.backend.store import StoreError
    from regionscribe.backend.feedback.sync import SyncReport, parse_since, sync_all

    settings = get_settings()
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        print(f"regionscribe sync: error: {exc}", file=sys.stderr)
        return 2
    if not settings.label_studio_api_enabled:
        print("regionscribe sync: error: set LABEL_STUDIO_URL (Label Studio's base URL) and LABEL_STUDIO_API_KEY (a "
              "personal access token: Account & Settings) so the backend can read the annotations", file=sys.stderr)
        return 2
    connection = _redis_or_none(settings)
    bar = None
    if not args.quiet and not args.json:
        from tqdm import tqdm

        bar = tqdm(unit=" tasks", desc="sync", file=sys.stderr)
    try:
        reports = sync_all(settings, projects=args.project, since=since, connection=connection,
                           on_task=bar.update if bar is not None else None)
    except StoreError as exc:
        print(f"regionscribe sync: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    failed = {p: r for p, r in reports.items() if not isinstance(r, SyncReport)}
    if args.json:
        print(json.dumps({str(p): (r.as_dict() if isinstance(r, SyncReport) else {"error": r})
                          for p, r in reports.items()}, indent=2))
    else:
        if not reports:
            print("no project to sync: none is connected (Label Studio calls /setup when a project connects) and the "
                  "store holds none; name one with --project")
        for p, r in reports.items():
            if isinstance(r, SyncReport):
                print(f"project {p}: {r.new} new, {r.changed} changed, {r.unchanged} unchanged, {r.deleted} deleted"
                      + (f", {r.skipped} skipped (see the log)" if r.skipped else "")
                      + f" ({r.tasks} tasks in {r.seconds:.1f} s)")
            else:
                print(f"project {p}: not synced: {r}")
    return 1 if failed else 0


def _redis_or_none(settings):
    """Redis when REDIS_URL is set and answers (to queue image fetches and ask the retraining policy), else None."""
    if not settings.redis_url:
        return None
    import redis

    from regionscribe.backend.core.connections import redis_connection

    connection = redis_connection(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        connection.ping()
    except redis.RedisError as exc:
        print(f"regionscribe sync: Redis unreachable ({type(exc).__name__}): the store is still synced; images and "
              "the retraining policy wait for the next event", file=sys.stderr)
        return None
    return connection


def _versions(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.report import format_table, version_rows, versions_json

    print(versions_json() if args.json else format_table(version_rows()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from regionscribe.backend.ops.report import write_report

    result = write_report(args.out)
    print(f"wrote {result['path']} ({result['versions']} versions)")
    return 0


def _data(args) -> int:
    from collections import Counter

    from regionscribe.training.datasets import FormatError, Source

    try:
        sources = [Source.parse(spec, images=args.images, split=args.split) for spec in args.sources]
    except (ValueError, FormatError) as exc:
        print(f"regionscribe data: error: {exc}", file=sys.stderr)
        return 2
    bar = None
    if not args.quiet and not args.json:
        from tqdm import tqdm

        bar = tqdm(unit=" samples", desc="data", file=sys.stderr)
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
                if bar is not None:
                    bar.update()
            out[f"{src.name}:{src.path}"] = {"samples": n, "turns": dict(kinds), **src.report.to_dict()}
            if not args.json:
                print(f"{src.report}\n  -> {n} stage-{args.stage} conversations, turns {dict(kinds)}")
    except FormatError as exc:
        print(f"regionscribe data: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    from regionscribe.model.config import MASK_POOLINGS, POSITION_ENCODINGS

    p = argparse.ArgumentParser(prog="regionscribe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="two-stage spatial instruction tuning on the synthetic corpus or on datasets")
    t.add_argument("--out", default="runs/tiny", help="checkpoint folder to write")
    t.add_argument("--preset", default="tiny")
    t.add_argument("--init", default=None, help="start from this checkpoint instead of a fresh preset")
    t.add_argument("--vision", default=None, metavar="PATH",
                   help="a local HF CLIP or SigLIP vision tower (frozen; copied into the checkpoint), with --lm")
    t.add_argument("--lm", default=None, metavar="PATH",
                   help="a local HF causal LM with its tokenizer (Llama, Qwen2/3, Mistral, ...), with --vision")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--stage0-steps", type=int, default=400,
                   help="vision pretraining steps (only for a tower built from scratch, as in the tiny preset)")
    t.add_argument("--stage0-lr", type=float, default=1e-3)
    t.add_argument("--stage1-steps", type=int, default=50)
    t.add_argument("--stage2-steps", type=int, default=2200)
    t.add_argument("--stage1-lr", type=float, default=1e-3)
    t.add_argument("--stage2-lr", type=float, default=6e-4)
    t.add_argument("--batch-size", type=int, default=8, help="per process and micro-batch")
    t.add_argument("--drill", action="append", metavar="AXES:STEPS",
                   help="before stage 2, STEPS steps (batch 16) on relation questions of AXES alone, e.g. "
                        "horizontal,vertical:400 or all:300 (repeatable, run in order)")
    t.add_argument("--drill-lr", type=float, default=3e-4)
    t.add_argument("--drill-balance", action="store_true",
                   help="in the drills, as many questions with each answer of an axis (same colour, overlapping)")
    t.add_argument("--mask-share", type=float, default=0.0,
                   help="share of the regions that stage 2 and the drills give with their object's visible mask "
                        "(mask pooling) instead of the box alone, 0-1")
    t.add_argument("--overlap-share", type=float, default=0.0,
                   help="share of the stage-2 and drill scenes drawn as two heavily overlapping objects, 0-1")
    t.add_argument("--mask-pooling", choices=MASK_POOLINGS, default=None,
                   help="how a mask weights the RoI bins (filled: the rest holds the mask's mean; weighted: zero)")
    t.add_argument("--visual-lr-scale", type=float, default=0.05,
                   help="learning-rate factor of region encoder and projector in stages 1-2")
    t.add_argument("--lora-r", type=int, default=0, help="stage 2 with LoRA adapters of this rank (0: full)")
    t.add_argument("--coords-as-text", action="store_true", help="baseline: boxes written as text, no region tokens")
    t.add_argument("--no-image-tokens", action="store_true", help="switch off LLaVA image-level tokens")
    t.add_argument("--position-encoding", choices=POSITION_ENCODINGS, default=None,
                   help="box features of the region position term (default: the preset's, coordinates, as "
                        "the embedded default; sinusoidal is an alternative, see README)")
    t.add_argument("--scaled-region-tokens", action="store_true",
                   help="region tokens RMS-normalised to the word embeddings' scale (an alternative, see README)")
    t.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    t.add_argument("--version", default=None, help="model_version to record (default: preset + timestamp)")
    t.add_argument("--eval-scenes", type=int, default=0, help="evaluate on this many test scenes afterwards")
    t.add_argument("--stage1-data", action="append", metavar="SOURCE:PATH[:WEIGHT]",
                   help="a stage-1 data source (repeatable; see `regionscribe data`); none: the synthetic corpus")
    t.add_argument("--stage2-data", action="append", metavar="SOURCE:PATH[:WEIGHT]",
                   help="a stage-2 data source (repeatable), e.g. vg:data/visual_genome:2 or export-hf:exports/v1")
    t.add_argument("--recipe", choices=["gpt4roi"],
                   help="GPT4RoI's mixtures: stage 1 COCO, RefCOCO, RefCOCO+; stage 2 RefCOCOg, Flickr30k, VG "
                        "(MDETR's and GRiT's files under --data-root), plus any --stage2-data")
    t.add_argument("--data-root", help="the folder holding GPT4RoI's data layout (coco/, mdetr_annotations/, ...)")
    t.add_argument("--data-images", help="one image folder for every data source (default: each dataset's layout)")
    t.add_argument("--stage1-epochs", type=int, default=None, help="passes over the stage-1 data instead of steps")
    t.add_argument("--stage2-epochs", type=int, default=None, help="passes over the stage-2 data instead of steps")
    t.add_argument("--eval-data", action="append", metavar="SOURCE:PATH",
                   help="held-out data: region-caption CIDEr-D and METEOR of the trained model on it")
    t.add_argument("--eval-regions", type=int, default=500, help="at most this many held-out regions")
    t.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per step: global batch = --batch-size x processes x --grad-accum")
    t.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    t.add_argument("--gradient-checkpointing", action="store_true", help="the LM's gradient checkpointing")
    t.add_argument("--save-every", type=int, default=0,
                   help="save the whole training state every N steps (model, optimiser, scheduler, RNG, data position)")
    t.add_argument("--state-dir", help="where the training state goes (default: <out>/state)")
    t.add_argument("--resume", action="store_true", help="continue from the saved training state")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on the synthetic corpus")
    e.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the embedded default)")
    e.add_argument("--split", default="test", choices=["test", "val", "novel"])
    e.add_argument("--scenes", type=int, default=200)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=_eval)

    v = sub.add_parser("versions", help="the model registry's versions with their metrics")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_versions)

    rp = sub.add_parser("report", help="an HTML page: metrics across versions and the edit rate per model version")
    rp.add_argument("--out", default="regionscribe-report.html")
    rp.set_defaults(func=_report)

    r = sub.add_parser("run", help="Redis + one worker + web server on the embedded default (make run)")
    r.set_defaults(func=_run)

    s = sub.add_parser("serve", help="the HTTP app under gunicorn")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(func=_serve)

    w = sub.add_parser("worker", help="a long-lived non-forking RQ worker")
    w.add_argument("--queue", action="append", default=None,
                   help="queue name (repeatable; default: the inference and ingest queues, as `run` starts it)")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.set_defaults(func=_worker)

    d = sub.add_parser("doctor", help="check Redis, the store, the registry, the model, workers and Label Studio")
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.add_argument("--load", action="store_true", help="also load the model the workers would serve and time it")
    d.add_argument("--timeout", type=float, default=5.0, help="seconds for each network call")
    d.add_argument("--backend", default=None, metavar="URL", help="also check a running web server's /health")
    d.set_defaults(func=_doctor)

    x = sub.add_parser("export", help="write a curated region-text dataset from the feedback store")
    x.add_argument("--format", action="append", required=True, metavar="FORMATS",
                   help="conversations, vg, coco, hf (comma list or repeated)")
    x.add_argument("--out", required=True, help="folder to create (written beside it, renamed at the end)")
    x.add_argument("--images", default="reference", choices=["reference", "copy"],
                   help="copy the cached images into OUT/images, or reference them (default)")
    x.add_argument("--split", default="1", help="train,val,test fractions by image (default 1: all train)")
    x.add_argument("--seed", type=int, default=0, help="seed of the split")
    x.add_argument("--project", type=int, action="append", help="project id (repeatable)")
    x.add_argument("--annotator", action="append", help="annotator user id or e-mail (repeatable)")
    x.add_argument("--model-version", action="append", help="only regions this model version pre-filled (repeatable)")
    x.add_argument("--prefilled", choices=["any", "changed", "confirmed", "no"],
                   help="pre-filled regions a human changed or confirmed (any), only changed, only confirmed, or "
                        "regions written without a suggestion (no)")
    x.add_argument("--since", help="annotations updated at or after this ISO date/time (UTC)")
    x.add_argument("--until", help="annotations updated before this ISO date/time (UTC)")
    x.add_argument("--min-caption-length", type=int, default=0, help="characters; drops shorter or no captions")
    x.add_argument("--ground-truth-only", action="store_true", help="only annotations marked ground truth")
    x.add_argument("--keep-duplicates", action="store_true",
                   help="keep identical regions (same image, box to the pixel and text); dropped by default")
    x.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    x.add_argument("--store", default=None, metavar="URL", help="store URL (default: STORE_URL/DATABASE_URL/DATA_DIR)")
    x.add_argument("--chunk-size", type=int, default=1000, help="rows read from the store at a time")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=_export)

    y = sub.add_parser("sync", help="bring the feedback store in line with Label Studio (annotations the webhook "
                                    "missed: backend down, 401, timeout)")
    y.add_argument("--project", type=int, action="append",
                   help="project id (repeatable; default: every connected project and every project in the store)")
    y.add_argument("--since", help="only tasks Label Studio changed at or after this ISO date/time (UTC)")
    y.add_argument("--json", action="store_true", help="print the counts as JSON")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    y.set_defaults(func=_sync)

    dt = sub.add_parser("data", help="read public region-text datasets or exports as training conversations and "
                                     "report what was kept and skipped")
    dt.add_argument("sources", nargs="+", metavar="SOURCE:PATH[:WEIGHT]",
                    help="e.g. vg:data/visual_genome, refcoco:data/refcoco, coco:data/coco/annotations/"
                         "instances_train2017.json, export-hf:exports/v1 (see model/datasets/__init__.py)")
    dt.add_argument("--stage", type=int, choices=(1, 2), default=2, help="GPT4RoI stage whose conversations to build")
    dt.add_argument("--split", default="train", help="the split to read where a dataset has several")
    dt.add_argument("--images", default=None, help="image folder (default: the dataset's own layout)")
    dt.add_argument("--show", type=int, default=0, help="print the first N conversations")
    dt.add_argument("--json", action="store_true", help="print the counts and skip reports as JSON")
    dt.add_argument("--quiet", action="store_true", help="no progress bar")
    dt.set_defaults(func=_data)

    c = sub.add_parser("convert", help="convert a released checkpoint into a regionscribe checkpoint")
    csub = c.add_subparsers(dest="source", required=True)
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
    g.set_defaults(func=_convert_gpt4roi)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
