"""The worker's demonstration index (regionscribe.backend.inference.demonstration_index): lookups against brute force on
random vectors (exact below HNSW_FROM, high recall above), never the same task, replaced and retired rows dropped,
compaction, and an index built from the store after a restart (a new process) answering like the one kept up to
date row by row."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regionscribe.backend.inference.demonstration_index import (DemonstrationIndex, DemonstrationIndexError,
                                                                 forget_indexes, project_index)
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.store import DemonstrationInput, DemonstrationRow

ROOT = Path(__file__).resolve().parents[2]
DIM = 32


def apply(store, payload) -> dict:
    return handle_event(Settings(), payload, store=store, connection=None)


def rows_of(vectors: np.ndarray, tasks: np.ndarray, start_id: int = 1) -> list[DemonstrationRow]:
    return [DemonstrationRow(id=start_id + i, project_id=1, task_id=int(t), region_id=f"r{i}", annotation_id=1000 + i,
                             model_version="v", token=v.astype(np.float32).tobytes(), caption=f"caption {i}",
                             attributes={"color": "red"}) for i, (v, t) in enumerate(zip(vectors, tasks))]


def brute_force(vectors, tasks, alive, query, k, exclude_task):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    scores = unit @ q
    allowed = alive & (tasks != exclude_task)
    scores[~allowed] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(i) for i in order if np.isfinite(scores[i])], scores


@pytest.mark.parametrize("n", [1, 7, 500])
def test_exact_lookups_match_brute_force_on_random_vectors(n):
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32) * rng.uniform(0.1, 10, size=(n, 1)).astype(np.float32)
    tasks = rng.integers(0, max(2, n // 5), size=n)
    index = DemonstrationIndex(1, "v")
    index.apply(rows_of(vectors, tasks))
    assert index.kind == "flat" and len(index) == n
    alive = np.ones(n, bool)
    for trial in range(20):
        query = rng.normal(size=DIM).astype(np.float32)
        exclude = int(tasks[trial % n])
        for k in (1, 4, 8):
            got = index.search(query, k, exclude_task=exclude)[0]
            expected, scores = brute_force(vectors, tasks, alive, query, k, exclude)
            assert [int(g.region_id[1:]) for g in got] == expected
            assert [g.similarity for g in got] == pytest.approx([scores[i] for i in expected], abs=1e-5)
            assert all(g.task_id != exclude for g in got)


def test_hnsw_lookups_find_the_brute_force_neighbours():
    rng = np.random.default_rng(7)
    n, clusters = 3000, 60
    centres = rng.normal(size=(clusters, DIM))
    vectors = (centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, DIM))).astype(np.float32)
    tasks = rng.integers(0, 600, size=n)
    index = DemonstrationIndex(1, "v", hnsw_from=1000)
    index.apply(rows_of(vectors, tasks))
    assert index.kind == "hnsw"
    alive = np.ones(n, bool)
    hits = total = 0
    for trial in range(100):
        query = vectors[rng.integers(0, n)] + 0.1 * rng.normal(size=DIM).astype(np.float32)
        exclude = int(tasks[trial])
        got = index.search(query, 4, exclude_task=exclude)[0]
        assert all(g.task_id != exclude for g in got) and len(got) == 4
        expected, _ = brute_force(vectors, tasks, alive, query, 4, exclude)
        hits += len({int(g.region_id[1:]) for g in got} & set(expected))
        total += 4
    assert hits / total >= 0.97


def test_replaced_and_retired_rows_drop_out_and_the_index_compacts():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, DIM)).astype(np.float32)
    index = DemonstrationIndex(1, "v")
    index.apply(rows_of(vectors, np.arange(40)))
    target = vectors[5]
    assert index.search(target, 1)[0][0].region_id == "r5"
    # r5 retired (token None), r6 replaced by a token equal to r5's old one
    retire = DemonstrationRow(id=100, project_id=1, task_id=5, region_id="r5", annotation_id=1005, model_version="v",
                              token=None, caption=None, attributes={})
    replace = DemonstrationRow(id=101, project_id=1, task_id=6, region_id="r6", annotation_id=2006, model_version="v",
                               token=target.tobytes(), caption="new answer", attributes={})
    index.apply([retire, replace])
    best = index.search(target, 3)[0]
    assert best[0].region_id == "r6" and best[0].caption == "new answer" and best[0].annotation_id == 2006
    assert "r5" not in [b.region_id for b in best] and [b.region_id for b in best].count("r6") == 1
    assert len(index) == 39 and index.high_water == 101
    index.apply([retire])  # an id already applied changes nothing
    assert len(index) == 39
    # retiring most rows compacts the faiss index to the live ones
    import regionscribe.backend.inference.demonstration_index as module

    old_min = module.COMPACT_MIN
    module.COMPACT_MIN = 4
    try:
        index.apply([DemonstrationRow(id=200 + i, project_id=1, task_id=i, region_id=f"r{i}", annotation_id=0,
                                      model_version="v", token=None, caption=None, attributes={})
                     for i in range(20, 40)])
    finally:
        module.COMPACT_MIN = old_min
    assert index.rebuilds >= 1 and index._index.ntotal == len(index) == 19
    assert index.search(target, 1)[0][0].region_id == "r6"
    assert {n.region_id for n in index.search(target, 50)[0]} == {f"r{i}" for i in range(20) if i != 5}


def test_nothing_to_show():
    index = DemonstrationIndex(1, "v")
    assert index.search(np.ones(DIM, np.float32), 4, exclude_task=1) == [[]]
    index.apply(rows_of(np.ones((2, DIM), np.float32), np.array([1, 1])))
    assert index.search(np.ones(DIM, np.float32), 4, exclude_task=1) == [[]]  # every row is of the same task
    assert len(index.search(np.ones((3, DIM), np.float32), 4, exclude_task=2)) == 3
    with pytest.raises(DemonstrationIndexError, match="query token of 3 values"):
        index.search(np.ones(3, np.float32), 4)
    with pytest.raises(DemonstrationIndexError, match="token of 5 values"):
        index.apply([DemonstrationRow(id=9, project_id=1, task_id=3, region_id="x", annotation_id=1, model_version="v",
                                      token=np.ones(5, np.float32).tobytes(), caption=None, attributes={})])


# ------------------------------------------------------------------------------- from the store, after a restart

def _write(store, p, version, rng):
    missing = store.accepted_regions(p, version)
    items = [DemonstrationInput(task_id=m.record.task_id, region_id=m.record.region_id,
                                annotation_id=m.record.annotation_id, content_digest=m.content_digest,
                                token=rng.normal(size=DIM).astype(np.float32).tobytes(), caption=m.record.caption,
                                attributes={}) for m in missing]
    store.write_demonstrations(p, version, items)


def _answers(index, queries, tasks):
    return [[(n.task_id, n.region_id, n.caption, round(n.similarity, 5)) for n in index.search(q, 4, exclude_task=t)[0]]
            for q, t in zip(queries, tasks)]


def test_an_index_rebuilt_from_the_store_answers_like_the_one_kept_up_to_date(store, store_url, ls, tmp_path):
    rng = np.random.default_rng(11)
    p = ls.new_id()
    tasks = [ls.new_id() for _ in range(6)]
    annotations = {}
    for i, t in enumerate(tasks):
        annotations[t] = ls.new_id()
        result = sum((ls.region(f"r{j}", x=5 + 10 * j, caption=f"object {i}.{j}") for j in range(3)), [])
        apply(store, ls.annotation_event(p, t, annotations[t], result, updated=1))
    forget_indexes()
    _write(store, p, "v", rng)
    live = project_index(store, p, "v")
    assert len(live) == 18
    # changes after the index was built: a correction, a deletion, a removed region, new tokens
    apply(store, ls.annotation_event(p, tasks[0], annotations[tasks[0]], ls.region("r0", caption="corrected")
                                     + ls.region("r1", x=15, caption="object 0.1"), action="ANNOTATION_UPDATED",
                                     updated=2))
    apply(store, ls.deleted_event(p, [annotations[tasks[1]]]))
    _write(store, p, "v", rng)
    assert project_index(store, p, "v") is live and len(live) == 18 - 1 - 3  # r2 of task 0 and task 1 gone
    assert live.search(rng.normal(size=DIM), 20)[0] and \
        {n.caption for n in live.search(rng.normal(size=DIM), 20)[0]} >= {"corrected"}

    queries = rng.normal(size=(5, DIM)).astype(np.float32)
    exclude = [tasks[0], tasks[2], tasks[3], tasks[5], -1]
    expected = _answers(live, queries, exclude)

    fresh = DemonstrationIndex(p, "v")  # what a restarted worker builds
    fresh.sync(store)
    assert fresh.high_water == live.high_water and _answers(fresh, queries, exclude) == expected
    forget_indexes()
    assert project_index(store, p, "v") is not live

    # and in a new process, from the store alone
    script = (
        "import json, sys, numpy as np\n"
        "from regionscribe.backend.store import Store\n"
        "from regionscribe.backend.inference.demonstration_index import project_index\n"
        "url, p, queries, exclude = json.loads(sys.argv[1])\n"
        "store = Store.open(url, images_dir=sys.argv[2])\n"
        "index = project_index(store, p, 'v')\n"
        "out = [[[n.task_id, n.region_id, n.caption, round(n.similarity, 5)] for n in "
        "index.search(np.asarray(q, np.float32), 4, exclude_task=t)[0]] for q, t in zip(queries, exclude)]\n"
        "print(json.dumps(out))\n")
    args = json.dumps([store_url, p, queries.tolist(), exclude])
    done = subprocess.run([sys.executable, "-c", script, args, str(tmp_path / "images")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [[tuple(n) for n in found] for found in json.loads(done.stdout)] == expected
