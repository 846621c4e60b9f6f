"""Interactive /predict latency over HTTP with a real Redis and a real worker, against the model called in-process,
all in one run.

    .venv/bin/python benchmarks/backend_latency.py [--model-dir DIR] [--requests 40] [--seconds 20]

Starts a private redis-server, one inference worker and the web server (gunicorn), then measures:
- warm: a new box on an image the worker has already seen (image features cached);
- cold: a new box on a new image;
- throughput: 8 concurrent clients sending warm requests for --seconds;
- in-process: the same describe() calls without HTTP and Redis, to get the queue's overhead (p50 difference).
Prints JSON with medians and p95s.
"""
from __future__ import annotations

import argparse
import json
import os
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
from regionscribe.training.corpus import make_scenes

CONFIG = (ROOT / "labeling_configs" / "region_attributes.xml").read_text()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(pct(ms, 0.95), 1)}


def box_result(i: int, k: int) -> dict:
    x, y = 5 + (k * 7) % 50, 5 + (k * 11) % 50
    return {"id": f"box{i}-{k}", "type": "rectanglelabels", "from_name": "bbox", "to_name": "image",
            "original_width": 128, "original_height": 128, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": 30, "height": 30, "rotation": 0, "rectanglelabels": ["Object"]}}


def payload(image_path: str, i: int, k: int) -> dict:
    return {"tasks": [{"id": i, "data": {"image": image_path}}], "label_config": CONFIG, "project": "1.0",
            "params": {"context": {"result": [box_result(i, k)]}}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=None, help="checkpoint (default: the embedded default)")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="regionscribe-bench-"))
    scenes = make_scenes("test", args.requests + 2, seed=77)
    paths = []
    for i, s in enumerate(scenes):
        p = workdir / f"img{i}.png"
        s.image.save(p)
        paths.append(str(p))

    redis_process, url = start_redis(find_redis_server())
    port = free_port()
    env = dict(os.environ, REDIS_URL=url, IMAGE_ROOT=str(workdir), PORT=str(port), HOST="127.0.0.1",
               LOG_LEVEL="WARNING", WEB_WORKERS="2", WEB_THREADS="8")
    if args.model_dir:
        env["MODEL_DIR"] = args.model_dir
    py = sys.executable
    worker = subprocess.Popen([py, "-c", "from regionscribe.backend.ops.worker import run_worker; run_worker()"], env=env, cwd=ROOT,
                              start_new_session=True)
    web = subprocess.Popen([py, "-c", "from regionscribe.backend.web.server import serve; serve()"], env=env, cwd=ROOT,
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(base, [worker, web], timeout=180):
            raise SystemExit("backend did not become healthy")
        session = requests.Session()

        def call(i: int, k: int) -> float:
            t = time.perf_counter()
            r = session.post(f"{base}/predict", json=payload(paths[i], i, k), timeout=60)
            ms = 1000 * (time.perf_counter() - t)
            body = r.json()
            if r.status_code != 200 or body["results"][0].get("error"):
                raise RuntimeError(f"predict failed: {r.status_code} {str(body)[:300]}")
            return ms

        call(len(paths) - 1, 0)  # warm-up (first forward allocates)
        call(len(paths) - 1, 1)
        cold = [call(i, 0) for i in range(args.requests)]  # first box on each image: not cached yet
        warm = [call(i, 1) for i in range(args.requests)]  # second box on each image: features cached

        # throughput: concurrent clients, warm requests
        stop = time.monotonic() + args.seconds
        done, errors = [], []

        def client(c: int) -> None:
            s = requests.Session()
            k = 2
            while time.monotonic() < stop:
                i = (c * 5 + k) % args.requests
                t = time.perf_counter()
                try:
                    r = s.post(f"{base}/predict", json=payload(paths[i], i, k), timeout=60)
                    ok = r.status_code == 200 and not r.json()["results"][0].get("error")
                except requests.RequestException:
                    ok = False
                (done if ok else errors).append(1000 * (time.perf_counter() - t))
                k += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        _stop(web, "web")
        _stop(worker, "worker")
        _stop(redis_process, "redis")

    # in-process: the same work (decode + describe, same asks) without HTTP and Redis
    from regionscribe.backend.labelstudio.labeling_config import ProjectConfig
    from regionscribe.model.describer import DEFAULT_CHECKPOINT, RegionDescriber
    from regionscribe.model.images import load_image

    d = RegionDescriber.from_pretrained(args.model_dir or DEFAULT_CHECKPOINT)
    asks = ProjectConfig.parse(CONFIG).asks()
    local_cold, local_warm = [], []
    for i in range(args.requests):
        data = Path(paths[i]).read_bytes()
        for k, bucket in ((0, local_cold), (1, local_warm)):
            t = time.perf_counter()
            img = load_image(data)
            v = box_result(i, k)["value"]
            d.describe(img, [(v["x"] * 1.28, v["y"] * 1.28, (v["x"] + v["width"]) * 1.28,
                              (v["y"] + v["height"]) * 1.28)], asks, image_key=f"bench:{i}")
            bucket.append(1000 * (time.perf_counter() - t))
    print(json.dumps({
        "benchmark": "backend_latency",
        "label_config": "labeling_configs/region_attributes.xml (caption + 4 Choices + 1 Taxonomy)",
        "model_version": d.model_version,
        "http_interactive_warm": summary(warm),
        "http_interactive_cold": summary(cold),
        "in_process_warm": summary(local_warm),
        "in_process_cold": summary(local_cold),
        "queue_overhead_p50_ms": round(statistics.median(warm) - statistics.median(local_warm), 1),
        "throughput": {"clients": args.clients, "seconds": round(elapsed, 1), "requests_ok": len(done),
                       "errors": len(errors), "requests_per_s": round(len(done) / elapsed, 2),
                       **({"p50_ms": round(statistics.median(done), 1), "p95_ms": round(pct(done, 0.95), 1)}
                          if done else {})},
    }, indent=2))


if __name__ == "__main__":
    main()
