"""The feedback loop, end to end, on the synthetic corpus' withheld concept (a colour and a shape the embedded default
never saw): corrected annotations that use them go through /webhook exactly as Label Studio sends them, the policy
triggers a training run, the promotion gate decides, and the inference worker serves the new version.

    .venv/bin/python benchmarks/feedback_loop.py [--regions 200] [--stage2-steps 300] [--seed 11]

Starts a private Redis, the web server, one inference+ingest worker and one training worker on a fresh DATA_DIR.
Prints JSON: new-concept accuracy before/after (colour of withheld-colour objects, shape of withheld-shape objects,
on held-out novel scenes), base test attribute accuracy before/after, and the time from the last correction to the
new version serving predictions.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from regionscribe.backend.ops.runner import _stop, find_redis_server, free_port, start_redis, wait_ready

CONFIG = (ROOT / "labeling_configs" / "region_attributes.xml").read_text()


def region_results(rid: str, obj, size: tuple[int, int]) -> list[dict]:
    """What Label Studio's editor serializes for one corrected region (same id on every result)."""
    from regionscribe.training.corpus import caption_text

    w, h = size
    x1, y1, x2, y2 = obj.box
    geometry = {"x": 100 * x1 / w, "y": 100 * y1 / h, "width": 100 * (x2 - x1) / w, "height": 100 * (y2 - y1) / h,
                "rotation": 0}
    common = {"id": rid, "to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0,
              "origin": "manual"}
    out = [{**common, "from_name": "bbox", "type": "rectanglelabels", "value": {**geometry, "rectanglelabels": ["Object"]}},
           {**common, "from_name": "caption", "type": "textarea", "value": {**geometry, "text": [caption_text(obj)]}}]
    for name in ("color", "shape", "size", "texture"):
        out.append({**common, "from_name": name, "type": "choices", "value": {**geometry, "choices": [getattr(obj, name)]}})
    return out


def annotation_event(project: int, task: int, annotation: int, image: str, result: list) -> dict:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": annotation, "result": result, "completed_by": 1, "was_cancelled": False,
                       "ground_truth": False, "created_at": stamp, "updated_at": stamp, "lead_time": 20.0,
                       "task": task, "project": project, "parent_prediction": None},
        "task": {"id": task, "data": {"image": image}, "project": project, "is_labeled": True},
        "project": {"id": project, "title": "feedback", "label_config": CONFIG},
    }


def new_concept_accuracy(describer, scenes) -> dict:
    """Accuracy on the withheld concept only: colour questions about withheld-colour objects and shape questions
    about withheld-shape objects, ranked over every value (base and withheld)."""
    from regionscribe.training.corpus import WITHHELD_COLOR, WITHHELD_SHAPE, eval_samples
    from regionscribe.training.evaluation import evaluate_samples

    samples = [s for s in eval_samples(scenes) if s.turns[0].kind == "attribute"
               and ((s.turns[0].key == "color" and s.turns[0].answer == WITHHELD_COLOR)
                    or (s.turns[0].key == "shape" and s.turns[0].answer == WITHHELD_SHAPE))]
    m = evaluate_samples(describer, samples)
    color, shape = m.get("attribute:color"), m.get("attribute:shape")
    n_c, n_s = m["counts"].get("attribute:color", 0), m["counts"].get("attribute:shape", 0)
    overall = (color * n_c + shape * n_s) / (n_c + n_s) if (n_c + n_s) else None
    return {"overall": round(overall, 2) if overall is not None else None, "color": color, "shape": shape,
            "questions": n_c + n_s}


def run_loop(regions: int = 200, stage1_steps: int = 30, stage2_steps: int = 300, base_scenes: int = 100,
             eval_scenes: int = 60, tolerance: float = 2.0,
             cider_tolerance: float = 25.0, timeout: float = 1500.0, seed: int = 11,
             log=print, model_dir: str | None = None) -> dict:
    from regionscribe.training.corpus import make_scenes
    from regionscribe.model.describer import DEFAULT_CHECKPOINT, RegionDescriber
    from regionscribe.training.evaluation import evaluate

    work = Path(tempfile.mkdtemp(prefix="regionscribe-loop-"))
    images = work / "images-in"
    images.mkdir()
    # corrections: novel scenes (every one has the withheld colour or shape), until `regions` regions
    scenes, total = [], 0
    for scene in make_scenes("novel", regions, seed=seed):
        if total + len(scene.objects) > regions:
            break
        scenes.append(scene)
        total += len(scene.objects)
    held_out = make_scenes("novel", eval_scenes, seed=seed + 1000)  # other scenes, for the accuracy after

    before = RegionDescriber.from_pretrained(model_dir or DEFAULT_CHECKPOINT)
    result = {"corrected_regions": total, "corrected_images": len(scenes),
              "before": {"model_version": before.model_version,
                         "new_concept": new_concept_accuracy(before, held_out),
                         "base_test": evaluate(before, "test", base_scenes, seed=3)}}
    log(f"before: {json.dumps(result['before']['new_concept'])}")

    redis_process, url = start_redis(find_redis_server())
    port = free_port()
    env = dict(os.environ, REDIS_URL=url, DATA_DIR=str(work / "data"), IMAGE_ROOT=str(images), PORT=str(port),
               HOST="127.0.0.1", LOG_LEVEL="INFO", RETRAIN_AFTER=str(total), WEB_WORKERS="1",
               RETRAIN_STAGE1_STEPS=str(stage1_steps), RETRAIN_STAGE2_STEPS=str(stage2_steps),
               PROMOTION_TOLERANCE=str(tolerance),
               PROMOTION_CIDER_TOLERANCE=str(cider_tolerance), PROMOTION_BASE_SCENES="40",
               **({"MODEL_DIR": str(model_dir)} if model_dir else {}))
    py = sys.executable
    logs = {name: open(work / f"{name}.log", "w") for name in ("web", "inference", "trainer")}
    procs = {
        "inference": subprocess.Popen([py, "-m", "regionscribe.backend.ops.cli", "worker", "--queue", "inference", "--queue", "ingest"],
                                      env=env, cwd=ROOT, start_new_session=True, stdout=logs["inference"],
                                      stderr=subprocess.STDOUT),
        "trainer": subprocess.Popen([py, "-m", "regionscribe.backend.ops.cli", "worker", "--queue", "training"], env=env, cwd=ROOT,
                                    start_new_session=True, stdout=logs["trainer"], stderr=subprocess.STDOUT),
        "web": subprocess.Popen([py, "-m", "regionscribe.backend.ops.cli", "serve"], env=env, cwd=ROOT, start_new_session=True,
                                stdout=logs["web"], stderr=subprocess.STDOUT),
    }
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base, procs, timeout=180):
            raise RuntimeError("the backend did not become healthy; see " + str(work))
        result["version_served_before"] = requests.post(f"{base}/setup", json={"schema": CONFIG, "project": "1.0"},
                                                        timeout=5).json()["model_version"]
        annotation = 0
        for task, scene in enumerate(scenes, start=1):
            path = images / f"scene-{task}.png"
            scene.image.save(path)
            results = [r for k, obj in enumerate(scene.objects)
                       for r in region_results(f"t{task}r{k}", obj, scene.image.size)]
            annotation += 1
            r = requests.post(f"{base}/webhook", json=annotation_event(1, task, annotation, str(path), results),
                              timeout=5)
            r.raise_for_status()
        last_correction = time.monotonic()
        log(f"sent {annotation} annotations with {total} regions; waiting for a new version")
        served, status = None, None
        probe = {"tasks": [{"id": 1, "data": {"image": str(images / "scene-1.png")}}], "label_config": CONFIG,
                 "project": "1.0", "params": {"context": {"result": region_results("probe", scenes[0].objects[0],
                                                                                   scenes[0].image.size)[:1]}}}
        registry = work / "data" / "registry" / "versions"
        while time.monotonic() - last_correction < timeout:
            published = [json.loads((d / "manifest.json").read_text()) for d in sorted(registry.glob("*"))
                         if (d / "manifest.json").is_file()] if registry.exists() else []
            if published:
                status = published[-1]
                if not status["accepted"]:
                    break
                answer = requests.post(f"{base}/predict", json=probe, timeout=60).json()["results"][0]
                if answer.get("model_version") == status["version"]:
                    served = time.monotonic()
                    break
            if any(p.poll() is not None for p in procs.values()):
                raise RuntimeError("a backend process exited; see " + str(work))
            time.sleep(1.0)
        result["published"] = {k: status.get(k) for k in ("version", "accepted", "base_drop", "train_seconds",
                                                          "total_seconds", "regions", "images", "heldout_images",
                                                          "kind")} if status else None
        if status:  # what a version costs on disk against the checkpoint it started from
            from regionscribe.model.adapters import folder_bytes

            result["published"]["version_mb"] = round(folder_bytes(registry / status["version"]) / 2 ** 20, 3)
            result["published"]["base_mb"] = round(folder_bytes(model_dir or DEFAULT_CHECKPOINT) / 2 ** 20, 3)
        result["loop_seconds_last_correction_to_serving"] = round(served - last_correction, 1) if served else None
    finally:
        for name in ("web", "inference", "trainer"):
            _stop(procs[name], name, timeout=30)
        _stop(redis_process, "redis")
        for f in logs.values():
            f.close()
    if status:
        after = RegionDescriber.from_pretrained(registry / status["version"])
        result["after"] = {"model_version": after.model_version,
                           "new_concept": new_concept_accuracy(after, held_out),
                           "base_test": evaluate(after, "test", base_scenes, seed=3)}
        attrs = [k for k in result["before"]["base_test"] if k.startswith("attribute:")]
        result["base_attribute_drop_points"] = {
            k: round(result["before"]["base_test"][k] - result["after"]["base_test"][k], 2) for k in attrs}
    result["workdir"] = str(work)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--regions", type=int, default=200)
    ap.add_argument("--stage1-steps", type=int, default=30)
    ap.add_argument("--stage2-steps", type=int, default=300)
    ap.add_argument("--base-scenes", type=int, default=100)
    ap.add_argument("--eval-scenes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=11, help="which novel scenes are corrected and held out")
    args = ap.parse_args()
    out = run_loop(args.regions, args.stage1_steps, args.stage2_steps, args.base_scenes, args.eval_scenes,
                   seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({"benchmark": "feedback_loop", **out}, indent=2))


if __name__ == "__main__":
    main()
