"""Cross-request batching in the inference worker: requests/s and latency for 1, 4, 16 and 32 concurrent annotators,
with and without batching, in one run.

    .venv/bin/python benchmarks/cross_request_batching.py [--clients 1,4,16,32] [--seconds 15] [--rounds 2]
                                                         [--model-dir DIR] [--against CHECKOUT]

Starts a private redis-server and two inference workers on their own queues: one with INFERENCE_BATCH_JOBS=1 (one
job per pass, as before batching: the baseline) and one with the settings' defaults (INFERENCE_BATCH_JOBS,
INFERENCE_BATCH_WAIT_MS). Only one of them has work at a time (the other blocks on Redis), and the two are measured
in turn at each client count, `--rounds` times, so a load change on the machine hits both alike.

Each simulated annotator works on its own image and sends one request at a time, as the web process does for a
/predict (`inference.submit.submit` + `wait_for`, without HTTP): a new box, described with a caption and four choices
(colour, shape, size, texture); its first box is on an image the worker has not seen. Prints JSON: per mode and
client count, requests/s and p50/p95 latency (pooled over the rounds), errors, the mean jobs per batched pass, and
the ratios batching / baseline: requests/s at each client count, and a lone request's p95.

`--against CHECKOUT` (another checkout of this repository with its own .venv, e.g. a `git worktree` of an earlier
commit) adds two modes whose workers run that checkout's code, `against_one_per_pass` and `against_batching`, measured
in turn with the others, and the ratios of every mode's requests/s and lone p95 to `against_one_per_pass`: this
code's speed-up over that one's, in one run.
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from regionscribe.backend.inference.submit import inference_queue, make_payload, submit, wait_for
from regionscribe.backend.ops.runner import _stop, find_redis_server, start_redis
from regionscribe.backend.core.settings import Settings
from regionscribe.model.asks import Asks
from regionscribe.training.corpus import ATTRIBUTE_VALUES, make_scenes

ASKS = Asks(caption=True, attributes={k: list(ATTRIBUTE_VALUES[k]) for k in ("color", "shape", "size", "texture")})
MODES = {"one_per_pass": {"INFERENCE_BATCH_JOBS": "1"}, "batching": {}}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def start_worker(env: dict, queue: str, name: str, connection: redis.Redis, checkout: Path | None = None
                 ) -> subprocess.Popen:
    """A worker on `queue`, running this code or, with `checkout`, that checkout's (with its .venv's Python)."""
    code = f"from regionscribe.backend.ops.worker import run_worker; run_worker(queues=[{queue!r}], name={name!r})"
    python = sys.executable if checkout is None else str(checkout / ".venv" / "bin" / "python")
    process = subprocess.Popen([python, "-c", code], env=env, cwd=checkout or ROOT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        raw = connection.get(f"regionscribe:workers:{name}")
        if raw and json.loads(raw).get("state") == "ready":
            return process
        if process.poll() is not None:
            raise SystemExit(f"worker {name} exited with {process.returncode}")
        time.sleep(0.1)
    raise SystemExit(f"worker {name} not ready in 180 s")


def region(k: int) -> dict:
    x, y = 4 + (k * 7) % 50, 4 + (k * 11) % 50
    return {"id": f"r{k}", "x": x, "y": y, "width": 30 + k % 11, "height": 28 + k % 13, "rotation": 0,
            "labels": ["Object"]}


def measure(connection: redis.Redis, settings: Settings, images: list[str], clients: int, seconds: float,
            start_box: int) -> dict:
    """`clients` annotators, each on its own image, for `seconds`."""
    queue = inference_queue(connection, settings)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    batches: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def annotator(c: int) -> None:
        k = start_box
        image = images[(start_box + c) % len(images)]
        while time.monotonic() < stop:
            payload = make_payload(c, image, [region(k)], ASKS, True, request_id=uuid.uuid4().hex[:8])
            t = time.perf_counter()
            outcome = wait_for(connection, submit(queue, [payload], settings), timeout=settings.predict_timeout)[0]
            ms = 1000 * (time.perf_counter() - t)
            if outcome.ok:
                latencies[c].append(ms)
                batches.append(outcome.value["timings"].get("batch", 1.0))
            else:
                errors.append(outcome.message)
            k += 1

    started = time.monotonic()
    threads = [threading.Thread(target=annotator, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    done = [ms for per in latencies for ms in per]
    return {"seconds": elapsed, "latencies": done, "errors": errors, "batches": batches}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model-dir", default=None, help="checkpoint (default: the embedded default)")
    ap.add_argument("--against", type=Path, default=None,
                    help="another checkout with its own .venv: its workers are measured too (against_* modes)")
    args = ap.parse_args()
    modes = dict(MODES)
    if args.against:
        if not (args.against / ".venv" / "bin" / "python").is_file():
            raise SystemExit(f"{args.against} has no .venv/bin/python")
        modes = {f"against_{m}": extra for m, extra in MODES.items()} | modes
    levels = [int(c) for c in args.clients.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="regionscribe-batching-"))
    scenes = make_scenes("test", 2 * max(levels) * (args.rounds + 1) + 8, seed=78)
    images = []
    for i, s in enumerate(scenes):
        s.image.save(workdir / f"img{i}.png")
        images.append(f"img{i}.png")

    redis_process, url = start_redis(find_redis_server())
    connection = redis.Redis.from_url(url)
    base_env = dict(os.environ, REDIS_URL=url, IMAGE_ROOT=str(workdir), LOG_LEVEL="WARNING",
                    DATA_DIR=str(workdir / "data"), SYNC_INTERVAL="0")
    if args.model_dir:
        base_env["MODEL_DIR"] = args.model_dir
    workers = {}
    settings = {}
    results: dict[str, dict[int, dict]] = {m: {n: {"seconds": 0.0, "latencies": [], "errors": [], "batches": []}
                                               for n in levels} for m in modes}
    try:
        for mode, extra in modes.items():
            queue = f"inference-{mode}"
            workers[mode] = start_worker({**base_env, **extra, "INFERENCE_QUEUE": queue}, queue, f"bench-{mode}",
                                         connection, args.against if mode.startswith("against_") else None)
            settings[mode] = Settings.from_env({**base_env, **extra, "INFERENCE_QUEUE": queue})
        defaults = Settings()
        box = 0
        for r in range(args.rounds + 1):  # round 0 warms both workers up (first passes allocate) and is not counted
            for n in levels:
                for mode in modes:
                    got = measure(connection, settings[mode], images, n, 2.0 if r == 0 else args.seconds, box)
                    if r:
                        acc = results[mode][n]
                        acc["seconds"] += got["seconds"]
                        for key in ("latencies", "errors", "batches"):
                            acc[key] += got[key]
                box += max(levels)  # new images and new boxes for the next client count
    finally:
        for process in workers.values():
            _stop(process, "worker")
        _stop(redis_process, "redis")

    out = {"benchmark": "cross_request_batching", "asks": "caption + colour, shape, size, texture choices",
           "rounds": args.rounds, "seconds_per_measure": args.seconds,
           "batching": {"INFERENCE_BATCH_JOBS": defaults.inference_batch_jobs,
                        "INFERENCE_BATCH_WAIT_MS": defaults.inference_batch_wait_ms},
           "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"), "modes": {}}
    for mode in modes:
        out["modes"][mode] = {}
        for n in levels:
            acc = results[mode][n]
            lat = acc["latencies"]
            out["modes"][mode][str(n)] = {
                "requests": len(lat), "errors": len(acc["errors"]),
                "requests_per_s": round(len(lat) / acc["seconds"], 2) if acc["seconds"] else None,
                "p50_ms": round(statistics.median(lat), 1) if lat else None,
                "p95_ms": round(pct(lat, 0.95), 1) if lat else None,
                "mean_jobs_per_pass": round(statistics.mean(acc["batches"]), 2) if acc["batches"] else None,
                **({"first_error": acc["errors"][0]} if acc["errors"] else {}),
            }
    base, batched = out["modes"]["one_per_pass"], out["modes"]["batching"]
    out["ratios"] = {
        "requests_per_s": {n: round(batched[n]["requests_per_s"] / base[n]["requests_per_s"], 2)
                           for n in base if base[n]["requests_per_s"] and batched[n]["requests_per_s"]},
    }
    if "1" in base and base["1"]["p95_ms"] and batched["1"]["p95_ms"]:
        out["ratios"]["lone_request_p95"] = round(batched["1"]["p95_ms"] / base["1"]["p95_ms"], 3)
    if args.against:
        out["against"] = str(args.against)
        old = out["modes"]["against_one_per_pass"]
        out["ratios_to_against_one_per_pass"] = {
            mode: {"requests_per_s": {n: round(got[n]["requests_per_s"] / old[n]["requests_per_s"], 2)
                                      for n in old if old[n]["requests_per_s"] and got[n]["requests_per_s"]},
                   **({"lone_request_p95": round(got["1"]["p95_ms"] / old["1"]["p95_ms"], 3)}
                      if "1" in old and old["1"]["p95_ms"] and got["1"]["p95_ms"] else {})}
            for mode, got in out["modes"].items() if mode != "against_one_per_pass"}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
