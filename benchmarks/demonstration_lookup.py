"""Demonstration lookup cost (DEMONSTRATIONS=k): per box, the store sync check and the k-nearest search of a worker's
index (regionscribe.backend.inference.demonstration_index), at 1k, 10k and 100k accepted regions in one project.

    .venv/bin/python benchmarks/demonstration_lookup.py [--sizes 1000,10000,100000] [--lookups 300] [--k 4]
                                                       [--store-url postgresql://...]

Target (issue 19): at most 5 ms per box at 100,000 accepted regions.

Generation. Writing 100k tokens through workers would take hours on this CPU, so the store's own schema is created
by `Store.open` (its migrations) and the rows are bulk-inserted straight into its `demonstrations` table: one row per
region, 5 regions per task, with the columns `write_demonstrations` writes. Tokens have the hidden size of the
default checkpoint's language model (model/default/config.json, lm_config.hidden_size: the region tokens' size) and
are drawn around 500 centres (regions of a project resemble each other: objects of a few kinds), float32.

Each lookup is what the prediction path does per box: `project_index(store, project, version)` (a query for rows
above the index's high-water mark: the store sync check) and `index.search(token, k, exclude_task=its task)`; the
query is a noisy copy of a stored token from another task. Reported per size: the first use (the index built from the
store, as after a worker restart), the lookup's median and p95 (and its two parts), a lookup right after a new token
was written (the sync applies it), and recall@k of the index against an exact brute-force scan.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from regionscribe.backend.inference.demonstration_index import forget_indexes, project_index  # noqa: E402
from regionscribe.backend.store import Store  # noqa: E402
from regionscribe.model.checkpoints import DEFAULT_CHECKPOINT  # noqa: E402

PROJECT, VERSION, PER_TASK = 1, "bench-v1", 5


def hidden_size() -> int:
    config = json.loads((Path(DEFAULT_CHECKPOINT) / "config.json").read_text())
    return int(config["model"]["lm_config"]["hidden_size"])


def vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(500, dim)).astype(np.float32)
    return (centres[rng.integers(0, 500, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def fill(store: Store, tokens: np.ndarray) -> None:
    now = time.time()
    rows = [(PROJECT, i // PER_TASK, f"r{i}", 1_000_000 + i // PER_TASK, VERSION, f"digest{i}", t.tobytes(),
             f"caption {i}", '{"color":"red"}', now) for i, t in enumerate(tokens)]

    def write(tx):
        tx.execute("INSERT INTO projects (project_id, created_at) VALUES (?, ?)", (PROJECT, now))
        for start in range(0, len(rows), 5000):
            tx.executemany("INSERT INTO demonstrations (project_id, task_id, region_id, annotation_id, model_version, "
                           "content_digest, token, caption, attributes, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                           "?)", rows[start:start + 5000])

    store._run(write)
    if store.dialect == "postgresql":  # the planner's statistics, as autovacuum keeps them on a live table
        store._run(lambda tx: tx.execute("ANALYZE demonstrations"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(store: Store, n: int, dim: int, lookups: int, k: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tokens = vectors(n, dim, rng)
    t0 = time.perf_counter()
    fill(store, tokens)
    generated = time.perf_counter() - t0
    forget_indexes()
    t0 = time.perf_counter()
    index = project_index(store, PROJECT, VERSION)
    first_use = time.perf_counter() - t0
    assert len(index) == n

    tasks = np.arange(n) // PER_TASK
    total, sync, search, results = [], [], [], []
    picks = rng.integers(0, n, lookups)
    queries = tokens[picks] + 0.2 * rng.normal(size=(lookups, dim)).astype(np.float32)
    for query, i in zip(queries, picks):
        task = int(tasks[i])
        t0 = time.perf_counter()
        index = project_index(store, PROJECT, VERSION)
        t1 = time.perf_counter()
        found = index.search(query, k, exclude_task=task)[0]
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1000)
        sync.append((t1 - t0) * 1000)
        search.append((t2 - t1) * 1000)
        results.append(found)
        assert all(f.task_id != task for f in found) and len(found) == k
    # recall against an exact scan, after the timed loop (BLAS threads would compete with the lookups)
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    hits = 0
    for query, i, found in zip(queries, picks, results):
        scores = unit @ (query / np.linalg.norm(query))
        scores[tasks == tasks[i]] = -np.inf
        exact = set(np.argpartition(-scores, k)[:k].tolist())
        hits += len({int(f.region_id[1:]) for f in found} & exact)

    # a lookup right after a worker wrote a new token: the sync check applies it
    after_write = []
    for j in range(min(50, lookups)):
        region = n + j
        fresh = vectors(1, dim, rng)[0]  # a row as `fill` writes it (no region row behind it to check)
        now = time.time()
        store._run(lambda tx: tx.execute(
            "INSERT INTO demonstrations (project_id, task_id, region_id, annotation_id, model_version, content_digest, "
            "token, caption, attributes, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (PROJECT, region // PER_TASK, f"r{region}", 2_000_000 + j, VERSION, "d", fresh.tobytes(), "new", "{}",
             now)))
        t0 = time.perf_counter()
        index = project_index(store, PROJECT, VERSION)
        index.search(fresh, k, exclude_task=-1)
        after_write.append((time.perf_counter() - t0) * 1000)

    return {
        "regions": n, "hidden_size": dim, "k": k, "index": index.kind, "lookups": lookups,
        "generate_s": round(generated, 2), "first_use_build_s": round(first_use, 3),
        "lookup_ms": {"median": round(statistics.median(total), 3), "p95": round(percentile(total, 0.95), 3)},
        "sync_check_ms": {"median": round(statistics.median(sync), 3), "p95": round(percentile(sync, 0.95), 3)},
        "search_ms": {"median": round(statistics.median(search), 3), "p95": round(percentile(search, 0.95), 3)},
        "lookup_after_a_new_token_ms": {"median": round(statistics.median(after_write), 3),
                                        "p95": round(percentile(after_write, 0.95), 3)},
        f"recall_at_{k}": round(hits / (k * lookups), 4),
        "meets_5ms_p95": percentile(total, 0.95) <= 5.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--store-url", default=None, help="an empty PostgreSQL database (default: SQLite in a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import faiss

    dim = hidden_size()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            url = args.store_url or f"sqlite:///{Path(tmp) / f'store-{n}.sqlite3'}"
            with Store.open(url, images_dir=Path(tmp) / "images") as store:
                if args.store_url:
                    store._run(lambda tx: tx.execute("DELETE FROM demonstrations WHERE project_id = ?", (PROJECT,)))
                    store._run(lambda tx: tx.execute("DELETE FROM projects WHERE project_id = ?", (PROJECT,)))
                results.append(measure(store, n, dim, args.lookups, args.k, args.seed))
    print(json.dumps({"store": "postgresql" if args.store_url else "sqlite", "faiss": faiss.__version__,
                      "faiss_threads": faiss.omp_get_max_threads(), "cpus": os.cpu_count(), "results": results},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
