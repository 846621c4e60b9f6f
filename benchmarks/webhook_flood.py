"""/webhook under a flood, against the web server as it is deployed (gunicorn in a process of its own), on SQLite and
on PostgreSQL, with one client as the baseline in the same run.

    .venv/bin/python benchmarks/webhook_flood.py [--events 1000] [--clients 16] [--annotations 300]
                                                 [--postgres postgresql://postgres@127.0.0.1:5432/test] [--seed 0]

For each store: a private Redis, a fresh DATA_DIR (SQLite) or a fresh schema (PostgreSQL, when --postgres is given),
`regionscribe serve` (WEB_WORKERS=2, WEB_THREADS=clients+4). The events are benchmarks/everything_at_once.py's flood:
every version of `--annotations` annotations, about 15% deleted, repeated deliveries up to `--events`, shuffled.
They are sent twice, each time to a fresh store: by one client (the baseline), then spread over `--clients`
concurrent clients. Checks, for every pass: every answer is 2xx and the store ends exactly at the newest version of
every annotation. Prints JSON: per store and pass, events/s, p50/p99/max answer time, how many answers took over
Label Studio's 1 s, and the ratios of the concurrent pass to the baseline; exits 1 when a check fails.

The clients are threads of this process; the server is not, so its answers are not held up by the clients' GIL (in
tests/feedback/test_concurrency.py both share one process, and its times are mostly that queue).
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
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from everything_at_once import PROJECT, flood, pct, send_flood  # noqa: E402

from regionscribe.backend.ops.runner import _stop, find_redis_server, free_port, start_redis, wait_ready  # noqa: E402


def fresh_schema(postgres: str) -> tuple[str, callable]:
    """A store URL on an empty schema of `postgres`, and the function that drops it."""
    import psycopg

    schema = f"rs_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    return f"{postgres}{'&' if '?' in postgres else '?'}options=-csearch_path%3D{schema}", drop


def one_pass(store_kind: str, postgres: str | None, events: list[dict], final: dict, clients: int) -> dict:
    """Start Redis and the web server on a fresh store, send `events` from `clients` threads, check the store."""
    from regionscribe.backend.store import Store

    work = Path(tempfile.mkdtemp(prefix="regionscribe-webhook-flood-"))
    drop = None
    if store_kind == "postgresql":
        store_url, drop = fresh_schema(postgres)
    else:
        store_url = f"sqlite:///{work / 'store.sqlite3'}"
    redis_process, redis_url = start_redis(find_redis_server())
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, DATA_DIR=str(work / "data"), STORE_URL=store_url, PORT=str(port),
               HOST="127.0.0.1", LOG_LEVEL="WARNING", WEB_WORKERS="2", WEB_THREADS=str(clients + 4),
               RETRAIN_AFTER="1000000", SYNC_INTERVAL="0")
    log = open(work / "web.log", "w")
    web = subprocess.Popen([sys.executable, "-m", "regionscribe.backend.ops.cli", "serve"], env=env, cwd=ROOT,
                           start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    store = None
    try:
        if not wait_ready(base, [web], timeout=120, workers=0):
            raise RuntimeError(f"the web server did not become healthy; see {work / 'web.log'}")
        started = time.perf_counter()
        ms, bad = send_flood(base, events, clients)
        wall = time.perf_counter() - started
        store = Store.open(store_url, images_dir=work / "images")
        live = {(r.annotation_id, r.region_id): r.caption for r in store.records(PROJECT)}
        return {"clients": clients, "events": len(ms), "non_2xx": len(bad), "first_bad": bad[:3],
                "store_exact": live == final, "seconds": round(wall, 2), "per_s": round(len(ms) / wall, 1),
                "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(pct(ms, 0.99), 1),
                "max_ms": round(max(ms), 1), "over_1s": sum(m >= 1000.0 for m in ms)}
    finally:
        if store is not None:
            store.close()
        _stop(web, "web", timeout=30)
        _stop(redis_process, "redis")
        log.close()
        if drop is not None:
            drop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--annotations", type=int, default=300)
    ap.add_argument("--postgres", default=None,
                    help="a PostgreSQL URL to run on as well (a schema is made and dropped)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    events, final = flood(args.annotations, args.events, [f"/data/upload/{PROJECT}/scene-{i}.png" for i in range(24)],
                          first_id=1000, rng=random.Random(args.seed))
    out: dict = {"benchmark": "webhook_flood", "events": len(events), "annotations": args.annotations,
                 "expected_live_regions": len(final), "stores": {}}
    for kind in ["sqlite"] + (["postgresql"] if args.postgres else []):
        baseline = one_pass(kind, args.postgres, events, final, 1)
        print(f"{kind}: 1 client: {json.dumps(baseline)}", file=sys.stderr)
        loaded = one_pass(kind, args.postgres, events, final, args.clients)
        print(f"{kind}: {args.clients} clients: {json.dumps(loaded)}", file=sys.stderr)
        out["stores"][kind] = {"baseline": baseline, "concurrent": loaded, "ratios": {
            "throughput": round(loaded["per_s"] / baseline["per_s"], 2),
            "p50": round(loaded["p50_ms"] / baseline["p50_ms"], 2),
            "p99": round(loaded["p99_ms"] / baseline["p99_ms"], 2)}}
    passes = [p for store in out["stores"].values() for p in (store["baseline"], store["concurrent"])]
    out["passed"] = all(p["store_exact"] and not p["non_2xx"] for p in passes)
    print(json.dumps(out, indent=2))
    sys.exit(0 if out["passed"] else 1)


if __name__ == "__main__":
    main()
