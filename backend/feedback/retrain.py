"""What a feedback training run does once it holds its project's lease (regionscribe.backend.feedback.training_run,
which the training worker runs): from the store's snapshot to training items, the two-stage tuning from the current
version, the evaluation of candidate and current, the promotion gate, the publication into the registry and the
announcement of an accepted version. Steps 1 to 6 of training_run's list.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Iterable, Iterator

from regionscribe.backend.core.connections import redis_connection
from regionscribe.backend.core.liveness import announce
from regionscribe.backend.labelstudio.shapes import Shape, ShapeError

log = logging.getLogger(__name__)


def records_to_images(records: Iterable) -> list:
    """Store records -> model AnnotatedImage items, one per cached image; regions without a cached image are
    skipped (the sweep fetches them for the next run)."""
    from regionscribe.training.annotation_samples import AnnotatedImage, RegionAnnotation
    from regionscribe.model.images import load_image

    by_image: dict[str, list] = {}
    for rec in records:
        if rec.image_sha256 and rec.image_path is not None and rec.pixel_box is not None:
            by_image.setdefault(rec.image_sha256, []).append(rec)
    items = []
    for sha, all_recs in sorted(by_image.items()):
        image = load_image(Path(all_recs[0].image_path).read_bytes())
        # a polygon, ellipse or brush trains with its mask (the model pools inside it) and the mask's bounding box
        recs, shapes = [], []
        for r in all_recs:
            try:
                shape = region_mask(r.shape, image.size)
            except ShapeError as exc:
                log.info("region %s of annotation %s left out of training: %s", r.region_id, r.annotation_id, exc)
                continue
            recs.append(r)
            shapes.append(shape)
        index = {r.region_id: i for i, r in enumerate(recs)}
        regions = []
        for r, (box, mask) in zip(recs, shapes):
            attributes = {}
            for name, values in (r.attributes or {}).items():
                flat = [v[-1] if isinstance(v, (list, tuple)) else v for v in values]  # taxonomy path -> leaf
                if flat:
                    attributes[name] = [str(v) for v in flat]
            relations = [(index[rel["to"]], label) for rel in (r.relations or []) if rel.get("to") in index
                         for label in rel.get("labels") or []]
            regions.append(RegionAnnotation(tuple(box or r.pixel_box), r.caption or None, attributes, relations,
                                            mask=mask))
        if regions:
            items.append(AnnotatedImage(image, regions, sha))
    return items


def region_mask(shape: dict | None, size: tuple[int, int]) -> tuple[tuple | None, object]:
    """(pixel box, boolean mask) of a stored region shape on the decoded image of `size`; (None, None) for a
    rectangle or keypoint, whose stored pixel box is what trains. Raises ShapeError (an empty mask, an RLE of another
    size)."""
    if shape is None:
        return None, None
    parsed = Shape.from_json(shape)
    if not parsed.has_mask:
        return None, None
    mask = parsed.mask(*size)
    return parsed.pixel_box(*size, mask), mask


def split_by_image(items: list, heldout_fraction: float = 0.2) -> tuple[list, list]:
    """Deterministic split on the image hash; with fewer than 5 images everything trains."""
    if len(items) < 5:
        return items, []
    cut = int(round(heldout_fraction * 1000))
    held = [it for it in items if int(hashlib.sha256(it.key.encode()).hexdigest()[:8], 16) % 1000 < cut]
    train = [it for it in items if it not in held]
    return (train, held) if train and held else (items, [])


def mixed(corrections: list, replay: Iterator, ratio: float, seed: int, stage: int) -> Iterator:
    """Endless samples through the trainer's mixer (training/mixture.py), as any dataset mixture: the corrections are
    one source (re-made and reshuffled each pass), the replayed base data another, weighted `ratio` to 1."""
    from regionscribe.training.annotation_samples import training_samples
    from regionscribe.training.mixture import Mixture

    def fixes(n: int) -> Iterator:
        samples = list(training_samples(corrections, seed=seed + n))
        if stage == 1:  # stage 1 aligns on simple region -> phrase pairs: captions only
            samples = [s for s in samples if all(t.kind == "caption" for t in s.turns)] or samples
        random.Random(seed + n).shuffle(samples)
        return iter(samples)

    if not corrections:
        return replay
    streams = [("corrections", fixes, 1.0)] + ([("replay", lambda n: replay, ratio)] if ratio > 0 else [])
    return iter(Mixture(streams, seed=seed))


def base_score(metrics: dict) -> float:
    """One number for 'old skills', for reports: the mean of attribute and relation accuracies on the base test
    split. The gate does not use it (an average hides one skill lost: regionscribe.backend.feedback.promotion)."""
    keys = [k for k in metrics if k.startswith("attribute:")] + ["relation"]
    values = [metrics[k] for k in keys if isinstance(metrics.get(k), (int, float))]
    return sum(values) / len(values) if values else 0.0


def heldout_score(metrics: dict) -> float:
    """Held-out corrections: mean attribute accuracy and caption exact match (as a percentage)."""
    values = [v for k, v in metrics.items() if k.startswith("attribute:") and isinstance(v, (int, float))]
    if isinstance(metrics.get("caption:exact_match"), (int, float)):
        values.append(100.0 * metrics["caption:exact_match"])
    return sum(values) / len(values) if values else 0.0


def vocabularies(items: list) -> dict[str, list[str]]:
    """Candidate answers per attribute word: every value seen, plus the synthetic corpus' values for its words."""
    from regionscribe.training.corpus import ATTRIBUTE_VALUES

    vocab: dict[str, set[str]] = {}
    for it in items:
        for reg in it.regions:
            for word, values in reg.attributes.items():
                vocab.setdefault(word, set()).update(values)
    return {w: sorted(v | set(ATTRIBUTE_VALUES.get(w, []))) for w, v in vocab.items()}


def evaluate_pair(candidate, current, heldout: list, vocab: dict, base_scenes: int) -> dict:
    """Both on the synthetic base test split (skipped with base_scenes=0) and on the held-out corrections."""
    from regionscribe.training.annotation_samples import eval_samples
    from regionscribe.training.evaluation import evaluate, evaluate_samples

    out = {}
    for name, describer in (("candidate", candidate), ("current", current)):
        base = evaluate(describer, "test", base_scenes, seed=1, agreement=False) if base_scenes else {}
        held = evaluate_samples(describer, eval_samples(heldout, vocab)) if heldout else {}
        out[name] = {"base": base, "heldout": held, "base_score": round(base_score(base), 2),
                     "heldout_score": round(heldout_score(held), 2) if held else None}
    return out


# LoRA of a feedback run on a model with a pretrained LM: rank 8 on the attention's query and value projections
FEEDBACK_LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


def feedback_plan(current: Path) -> dict:
    """How a run continues the current version. A model whose LM came pretrained from a folder (a converted
    GPT4RoI, `train --vision --lm`) trains LoRA adapters on its LM (region module and projector frozen, no stage 1)
    and is published as an adapter over its base (megabytes, not a full copy); the tiny default trains in full.
    Synthetic replay and the synthetic base test only for a model that learned the synthetic corpus."""
    from regionscribe.model import adapters
    from regionscribe.training.stages import saw_synthetic

    current = Path(current)
    doc = json.loads((current / "config.json").read_text())
    synthetic = saw_synthetic(doc.get("metadata") or {})
    if adapters.is_adapter_version(current):
        return {"kind": "adapter", "lora": FEEDBACK_LORA, "adapter_base": str(adapters.base_of(current)),
                "synthetic": synthetic}
    if doc["model"].get("lm_path"):
        return {"kind": "adapter", "lora": FEEDBACK_LORA, "adapter_base": str(current), "synthetic": synthetic}
    return {"kind": "full", "lora": None, "adapter_base": None, "synthetic": synthetic}


class LeaseHeld(RuntimeError):
    """Another run of the project holds its training lease."""


def train_and_publish(project_id, settings, store, job, keeper) -> dict:
    """Steps 1 to 6 of a run of `project_id` (training_run's list); `keeper`: the run's LeaseKeeper, whose `lost` says
    the run must not publish. Returns the run's summary."""
    from regionscribe.model.describer import DEFAULT_CHECKPOINT, RegionDescriber
    from regionscribe.backend.core.registry import Registry
    from regionscribe.training.stages import StageConfig, TrainConfig, train
    from regionscribe.training.streams import synthetic_stream

    from regionscribe.backend.feedback.image_cache import fetch_missing_images
    from regionscribe.backend.feedback.promotion import promotion_gate

    started = time.time()
    registry = Registry(settings.registry_path, base=settings.model_dir or DEFAULT_CHECKPOINT)
    fetch_missing_images(store, settings)
    snapshot = store.snapshot(project_id)
    # the job id lets the policy give this run's count back if the run never completes (worker killed, exception)
    run_id = store.mark_training_started(project_id, snapshot.id, job_id=job.id if job is not None else None)
    items = records_to_images(snapshot.records)
    train_items, heldout = split_by_image(items)
    current = registry.current()
    version = f"p{project_id}-{time.strftime('%Y%m%d-%H%M%S')}-{snapshot.id[:6]}"
    log.info("training %s from %s on %d images (%d held out), %d regions", version, current.version,
             len(train_items), len(heldout), sum(len(i.regions) for i in items))
    staged = registry.staging_dir()
    seed = int(snapshot.id[:6], 16) if snapshot.id else 0
    plan = feedback_plan(current.path)
    cfg = TrainConfig(out=str(staged), init=str(current.path), seed=seed, version=version,
                      visual_lr_scale=settings.retrain_visual_lr_scale,
                      # an adapter run trains the LoRA adapter alone: no stage 1, region module and projector frozen
                      stage1=StageConfig(steps=0 if plan["adapter_base"] else settings.retrain_stage1_steps,
                                         lr=settings.retrain_lr),
                      stage2=StageConfig(steps=settings.retrain_stage2_steps, lr=settings.retrain_lr),
                      lora=plan["lora"], adapter_base=plan["adapter_base"],
                      freeze_visual=plan["adapter_base"] is not None)
    if plan["synthetic"]:  # old skills: replayed synthetic data
        s1 = mixed(train_items, synthetic_stream(1, seed), settings.replay_ratio, seed, stage=1)
        s2 = mixed(train_items, synthetic_stream(2, seed + 1), settings.replay_ratio, seed + 1, stage=2)
    else:  # a model that never saw the corpus: the project's regions alone (the snapshot holds every live region
        # of the project, those earlier runs accepted too, so they are replayed with the new ones)
        s1 = mixed(train_items, iter(()), 0.0, seed, stage=1)
        s2 = mixed(train_items, iter(()), 0.0, seed + 1, stage=2)
    result = train(cfg, stage1_data=s1, stage2_data=s2, progress=False,
                   metadata={"parent": current.version, "project": str(project_id), "snapshot": snapshot.id})
    vocab = vocabularies(items)
    candidate = RegionDescriber(result.model, version)
    serving = RegionDescriber.from_pretrained(current.path)
    scores = evaluate_pair(candidate, serving, heldout, vocab,
                           settings.promotion_base_scenes if plan["synthetic"] else 0)
    cand, cur = scores["candidate"], scores["current"]
    # the synthetic base test only for a model that learned the corpus (evaluate_pair gave the others no base
    # metrics, so the gate checks their held-out regions alone)
    base_drop = cur["base_score"] - cand["base_score"] if plan["synthetic"] else 0.0
    gate = promotion_gate(cand, cur, settings.promotion_tolerance, settings.promotion_cider_tolerance)
    accepted = gate.accepted
    summary = {
        "project": str(project_id), "version": version, "parent": current.version, "snapshot": snapshot.id,
        "regions": sum(len(i.regions) for i in items), "images": len(items), "heldout_images": len(heldout),
        "accepted": accepted, "base_drop": round(base_drop, 2), "gate": gate.as_dict(), "scores": scores,
        "kind": plan["kind"],
        "train_seconds": round(result.seconds, 1), "total_seconds": round(time.time() - started, 1),
    }
    (staged / "metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
    if keeper.lost.is_set():
        raise LeaseHeld(f"training run of project {project_id} lost its lease before publishing; {version} is not "
                        "published")
    published = registry.publish(staged, version, accepted, summary)
    store.training_completed(run_id, "accepted" if accepted else "rejected")
    if accepted and settings.redis_url:
        announce(redis_connection(settings.redis_url), version, published.path)
    summary["total_seconds"] = round(time.time() - started, 1)
    log.info("version %s %s (base drop %.2f, held-out %s vs %s)%s", version,
             "accepted" if accepted else "rejected", base_drop, cand["heldout_score"], cur["heldout_score"],
             "" if accepted else "; failed: " + "; ".join(c.describe() for c in gate.failed))
    return summary
