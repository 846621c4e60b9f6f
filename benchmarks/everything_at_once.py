"""Everything at once: 1,000 webhook events from 16 clients (duplicates, out of order) while a training run and 16
predicting annotators run, against one backend.

    .venv/bin/python benchmarks/everything_at_once.py [--events 1000] [--clients 16] [--annotators 16]
                                                     [--annotations 300] [--stage2-steps 200] [--seed 0]

Starts a private Redis, the web server (gunicorn), one inference worker, one ingest worker and one training worker
on a fresh DATA_DIR. Seeds a project with corrected annotations and presses "Start training" (START_TRAINING); once
the run has taken its snapshot, sends the flood: every version of `--annotations` annotations (creates, updates with
newer `updated_at`, about 15% deleted), repeated deliveries up to `--events`, shuffled, spread over `--clients`
concurrent webhook clients. Meanwhile `--annotators` clients draw boxes (/predict, interactive), and a probe in a
process of its own asks /health every 0.2 s until the training run ends. Checks, and exits 1 when one fails:
- the store's final state is exactly the newest version of every annotation (deleted ones hold no live region);
- every webhook answer is 2xx;
- /health answered 200 within 1 s every time;
- no prediction came back with an error;
- the training run was going during the whole flood.
Prints JSON with the checks and figures (webhook and /predict latency, /health's slowest answer, the run's times).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from regionscribe.backend.ops.runner import _stop, find_redis_server, free_port, start_redis, wait_ready

CONFIG = (ROOT / "labeling_configs" / "region_attributes.xml").read_text()
PROJECT = 1


# /health is timed from a process of its own: in this one, the GIL shared with 30-odd client threads would delay the
# probe itself (a Label Studio polling /health is another process too)
PROBE = """
import json, sys, time, pathlib, requests
base, out = sys.argv[1], pathlib.Path(sys.argv[2])
stop, seen, s = out.with_suffix(".stop"), [], requests.Session()
while not stop.exists():
    t = time.perf_counter()
    try:
        status = s.get(base + "/health", timeout=5).status_code
    except requests.RequestException:
        status = -1
    seen.append((time.perf_counter() - t, status))
    time.sleep(0.2)
out.write_text(json.dumps(seen))
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_700_000_000 + seconds)) + f".{int(seconds * 1e6) % 1_000_000:06d}Z"


def box_results(rid: str, box: tuple[float, float, float, float], caption: str, color: str | None = None) -> list:
    x, y, w, h = box
    geometry = {"x": x, "y": y, "width": w, "height": h, "rotation": 0}
    common = {"id": rid, "to_name": "image", "original_width": 128, "original_height": 128, "image_rotation": 0,
              "origin": "manual"}
    out = [{**common, "from_name": "bbox", "type": "rectanglelabels", "value": {**geometry, "rectanglelabels": ["Object"]}},
           {**common, "from_name": "caption", "type": "textarea", "value": {**geometry, "text": [caption]}}]
    if color:
        out.append({**common, "from_name": "color", "type": "choices", "value": {**geometry, "choices": [color]}})
    return out


def annotation_event(action: str, task: int, annotation: int, image: str, result: list, updated: float) -> dict:
    return {
        "action": action,
        "annotation": {"id": annotation, "result": result, "completed_by": 1, "was_cancelled": False,
                       "ground_truth": False, "created_at": stamp(0), "updated_at": stamp(updated), "lead_time": 5.0,
                       "task": task, "project": PROJECT, "parent_prediction": None},
        "task": {"id": task, "data": {"image": image}, "project": PROJECT, "is_labeled": True},
        "project": {"id": PROJECT, "title": "everything at once", "label_config": CONFIG},
    }


def send_webhooks(base: str, events: list[dict], ms: list[float], bad: list[str]) -> None:
    """One webhook client: `events` posted to `base`/webhook in turn on one session; each answer's time (ms) goes to
    `ms`, each non-2xx answer or failed request to `bad`."""
    with requests.Session() as session:
        for event in events:
            started = time.perf_counter()
            try:
                response = session.post(f"{base}/webhook", json=event, timeout=30)
                if not 200 <= response.status_code < 300:
                    bad.append(f"HTTP {response.status_code}: {response.text[:200]}")
            except requests.RequestException as exc:
                bad.append(f"{type(exc).__name__}: {exc}")
            ms.append(1000 * (time.perf_counter() - started))


def send_flood(base: str, events: list[dict], clients: int) -> tuple[list[float], list[str]]:
    """`events` spread over `clients` concurrent webhook clients (`send_webhooks`), until all are sent: (every
    answer's time in ms, every non-2xx answer or failed request)."""
    ms: list[float] = []
    bad: list[str] = []
    senders = [threading.Thread(target=send_webhooks, args=(base, events[c::clients], ms, bad))
               for c in range(clients)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    return ms, bad


def seed_annotations(scenes, paths) -> tuple[list[dict], dict]:
    """Corrected annotations the training run takes (annotation ids 1..len(scenes)), and their final state."""
    from regionscribe.training.corpus import caption_text

    events, final = [], {}
    for i, (scene, path) in enumerate(zip(scenes, paths), start=1):
        w, h = scene.image.size
        result = []
        for k, obj in enumerate(scene.objects):
            x1, y1, x2, y2 = obj.box
            box = (100 * x1 / w, 100 * y1 / h, 100 * (x2 - x1) / w, 100 * (y2 - y1) / h)
            result += box_results(f"s{i}r{k}", box, caption_text(obj), obj.color)
            final[(i, f"s{i}r{k}")] = caption_text(obj)
        events.append(annotation_event("ANNOTATION_CREATED", i, i, path, result, 1.0))
    return events, final


def flood(n_annotations: int, n_events: int, paths: list[str], first_id: int, rng: random.Random
          ) -> tuple[list[dict], dict]:
    """Every version of `n_annotations` annotations plus repeated deliveries, shuffled; and the final state."""
    events, final = [], {}
    for a in range(first_id, first_id + n_annotations):
        task = 10_000 + a
        image = paths[a % len(paths)]
        versions = 1 + rng.randrange(3)
        newest = None
        for v in range(versions):
            regions = {f"r{k}": f"annotation {a} version {v} region {k}" for k in range(1 + rng.randrange(3))}
            result = [r for k, (rid, caption) in enumerate(regions.items())
                      for r in box_results(rid, (5 + 20 * k, 5 + 9 * v, 18, 22), caption)]
            action = "ANNOTATION_CREATED" if v == 0 else "ANNOTATION_UPDATED"
            events.append(annotation_event(action, task, a, image, result, 10.0 + v))
            newest = regions
        if rng.random() < 0.15:
            events.append({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": a}],
                           "project": {"id": PROJECT, "title": "everything at once"}})
        else:
            final.update({(a, rid): caption for rid, caption in newest.items()})
    if len(events) > n_events:
        raise SystemExit(f"{n_annotations} annotations make {len(events)} events, more than --events {n_events}")
    events += [rng.choice(events) for _ in range(n_events - len(events))]  # Label Studio's repeated deliveries
    rng.shuffle(events)
    return events, final


def run(events: int = 1000, clients: int = 16, annotators: int = 16, annotations: int = 300, stage2_steps: int = 200,
        seed: int = 0, seeds: int = 24, log=print) -> dict:
    from regionscribe.training.corpus import make_scenes

    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="regionscribe-everything-"))
    images = work / "images"
    images.mkdir()
    scenes = make_scenes("train", seeds, seed=seed + 5)
    paths = []
    for i, scene in enumerate(scenes):
        path = images / f"scene-{i}.png"
        scene.image.save(path)
        paths.append(str(path))
    seed_events, final = seed_annotations(scenes, paths)
    flood_events, flood_final = flood(annotations, events, paths, first_id=1000, rng=rng)
    final.update(flood_final)

    redis_process, url = start_redis(find_redis_server())
    port = free_port()
    env = dict(os.environ, REDIS_URL=url, DATA_DIR=str(work / "data"), IMAGE_ROOT=str(images), PORT=str(port),
               HOST="127.0.0.1", LOG_LEVEL="WARNING", WEB_WORKERS="2", WEB_THREADS=str(annotators + clients + 4),
               RETRAIN_AFTER="1000000", RETRAIN_STAGE1_STEPS="5", RETRAIN_STAGE2_STEPS=str(stage2_steps),
               PROMOTION_BASE_SCENES="2", SYNC_INTERVAL="0", OMP_NUM_THREADS="1")
    py = sys.executable
    logs = {name: open(work / f"{name}.log", "w") for name in ("web", "inference", "ingest", "trainer")}

    def worker(queue: str, name: str) -> subprocess.Popen:
        return subprocess.Popen([py, "-m", "regionscribe.backend.ops.cli", "worker", "--queue", queue], env=env, cwd=ROOT,
                                start_new_session=True, stdout=logs[name], stderr=subprocess.STDOUT)

    procs = {"inference": worker("inference", "inference"), "ingest": worker("ingest", "ingest"),
             "trainer": worker("training", "trainer"),
             "web": subprocess.Popen([py, "-m", "regionscribe.backend.ops.cli", "serve"], env=env, cwd=ROOT, start_new_session=True,
                                     stdout=logs["web"], stderr=subprocess.STDOUT)}
    base = f"http://127.0.0.1:{port}"
    out: dict = {"benchmark": "everything_at_once", "events": len(flood_events), "webhook_clients": clients,
                 "annotators": annotators, "annotations": annotations, "seed_annotations": len(seed_events),
                 "workdir": str(work)}
    from regionscribe.backend.store import Store

    store = prober = None
    try:
        if not wait_ready(base, procs, timeout=300):
            raise RuntimeError("the backend did not become healthy; see " + str(work))
        store = Store.open(f"sqlite:///{work / 'data' / 'store.sqlite3'}", images_dir=work / "data" / "images")
        session = requests.Session()
        for e in seed_events:
            session.post(f"{base}/webhook", json=e, timeout=10).raise_for_status()
        session.post(f"{base}/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}},
                     timeout=10).raise_for_status()
        deadline = time.monotonic() + 300
        while store.open_training_run(PROJECT) is None:  # the run took its snapshot: it is going
            if time.monotonic() > deadline or procs["trainer"].poll() is not None:
                raise RuntimeError("the training run did not start; see " + str(work))
            time.sleep(0.2)
        run_started = time.monotonic()
        log(f"training run going; flooding {len(flood_events)} events from {clients} clients")

        stop = threading.Event()
        predictions: list[float] = []
        prediction_errors: list[str] = []

        def annotator(c: int) -> None:
            s = requests.Session()
            k = 0
            while not stop.is_set():
                box = box_results(f"p{c}-{k}", (4 + (k * 7) % 50, 4 + (k * 11) % 50, 30, 30), "")[0]
                del box["origin"]
                body = {"tasks": [{"id": 50_000 + c, "data": {"image": paths[c % len(paths)]}}], "label_config": CONFIG,
                        "project": f"{PROJECT}.0", "params": {"context": {"result": [box]}}}
                t = time.perf_counter()
                try:
                    r = s.post(f"{base}/predict", json=body, timeout=120)
                    answer = r.json()["results"][0] if r.status_code == 200 else {"error": f"HTTP {r.status_code}"}
                except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                (prediction_errors.append(str(answer["error"])[:300]) if answer.get("error")
                 else predictions.append(1000 * (time.perf_counter() - t)))
                k += 1

        probe_out = work / "health.json"
        prober = subprocess.Popen([py, "-c", PROBE, base, str(probe_out)], env=env, cwd=ROOT)
        background = [threading.Thread(target=annotator, args=(c,)) for c in range(annotators)]
        for t in background:
            t.start()
        time.sleep(1.0)  # the annotators are drawing when the flood starts
        flood_started = time.monotonic()
        webhook_ms, webhook_bad = send_flood(base, flood_events, clients)
        flood_seconds = time.monotonic() - flood_started
        running_after_flood = store.open_training_run(PROJECT) is not None
        time.sleep(1.0)
        stop.set()
        for t in background:
            t.join()
        log(f"flood done in {flood_seconds:.1f} s; waiting for the training run to end")
        deadline = time.monotonic() + 1800
        while store.open_training_run(PROJECT) is not None and time.monotonic() < deadline:
            time.sleep(1.0)
        probe_out.with_suffix(".stop").touch()  # /health was probed from the run's start to its end
        prober.wait(30)
        health = [tuple(x) for x in json.loads(probe_out.read_text())]
        runs = store.training_runs(PROJECT)

        live = {(r.annotation_id, r.region_id): r.caption for r in store.records(PROJECT)}
        missing = sorted(set(final) - set(live))
        extra = sorted(set(live) - set(final))
        wrong = sorted(k for k in set(final) & set(live) if final[k] != live[k])
        health_s = [s for s, _ in health]
        checks = {
            "store_exact": not (missing or extra or wrong),
            "webhooks_all_2xx": not webhook_bad,
            "health_within_1s": bool(health) and max(health_s) < 1.0 and all(st == 200 for _, st in health),
            "no_prediction_error": not prediction_errors and bool(predictions),
            "training_run_during_flood": run_started < flood_started and running_after_flood,
        }
        out.update({
            "passed": all(checks.values()), "checks": checks,
            "store": {"live_regions": len(live), "expected": len(final), "missing": missing[:5], "extra": extra[:5],
                      "wrong": wrong[:5]},
            "webhooks": {"sent": len(webhook_ms), "non_2xx": len(webhook_bad), "first_bad": webhook_bad[:3],
                         "seconds": round(flood_seconds, 1), "per_s": round(len(webhook_ms) / flood_seconds, 1),
                         "p50_ms": round(statistics.median(webhook_ms), 1), "p95_ms": round(pct(webhook_ms, 0.95), 1),
                         "max_ms": round(max(webhook_ms), 1)},
            "health": {"probes": len(health), "max_ms": round(1000 * max(health_s), 1) if health_s else None,
                       "p95_ms": round(1000 * pct(health_s, 0.95), 1) if health_s else None,
                       "non_200": sum(st != 200 for _, st in health)},
            "predictions": {"ok": len(predictions), "errors": len(prediction_errors),
                            "first_errors": prediction_errors[:3],
                            **({"p50_ms": round(statistics.median(predictions), 1),
                                "p95_ms": round(pct(predictions, 0.95), 1)} if predictions else {})},
            "training": {"runs": [{k: r[k] for k in ("job_id", "outcome")} for r in runs],
                         "running_when_flood_ended": running_after_flood},
        })
    finally:
        if prober is not None and prober.poll() is None:
            prober.kill()
        for name in ("web", "inference", "ingest", "trainer"):
            _stop(procs[name], name, timeout=30)
        _stop(redis_process, "redis")
        for f in logs.values():
            f.close()
        if store is not None:
            store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--annotators", type=int, default=16)
    ap.add_argument("--annotations", type=int, default=300)
    ap.add_argument("--stage2-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = run(args.events, args.clients, args.annotators, args.annotations, args.stage2_steps, args.seed,
              log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(out, indent=2))
    sys.exit(0 if out.get("passed") else 1)


if __name__ == "__main__":
    main()
