"""The demonstrations an inference worker looks up (DEMONSTRATIONS=k): one faiss index per (project, model version)
over the region tokens of the project's accepted regions, in the worker's memory.

The store is the source of truth (regionscribe.backend.store.demonstrations): every change to a region's row gives it
a new id, and the index remembers the highest id it applied. Before each lookup it reads the rows above that mark
(`sync`: one indexed query that returns nothing when nothing changed) and applies them: a new or replaced token is
added, the row it replaces is dropped, a retired row drops its region. A worker that starts (or restarts after a
crash) has no index: the first lookup of a project builds it from the store the same way, from id 0.

Search: inner product over L2-normalised tokens (cosine similarity), through a faiss `IDSelectorBitmap` that lets
through only live rows (a replaced or retired row stays in the faiss index until it is compacted) of other tasks
than the one being predicted: the k results are the k nearest allowed rows, not k nearest rows filtered afterwards.
Below `HNSW_FROM` live rows the index is exact (`IndexFlatIP`); from there on it is an HNSW graph (`IndexHNSWFlat`,
M=32, efConstruction=80, efSearch=256), whose lookups stay well under a millisecond at 100,000 rows where the exact
scan costs about 4 ms (benchmarks/demonstration_lookup.py). The index is rebuilt (compacted) when a quarter of its
rows are dead.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

log = logging.getLogger(__name__)

HNSW_FROM = 20_000  # live rows from which an index is an HNSW graph instead of an exact scan
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256
COMPACT_FRACTION = 0.25  # dead rows (replaced, retired) that make the index rebuild itself
COMPACT_MIN = 1024


class DemonstrationIndexError(ValueError):
    """A token that does not fit the index (another size than the model version's other tokens)."""


@dataclass(frozen=True)
class Neighbour:
    """An accepted region found near a box: where it is, how similar (cosine of the region tokens), and its answer."""

    row_id: int
    task_id: int
    region_id: str
    annotation_id: int
    similarity: float
    caption: str | None
    attributes: dict[str, str] = field(default_factory=dict)
    token: np.ndarray | None = field(default=None, repr=False, compare=False)  # float32 [dim], as stored

    @property
    def source(self) -> str:
        return f"task {self.task_id} / region {self.region_id} / annotation {self.annotation_id}"

    def to_json(self) -> dict:
        """What a prediction records about a demonstration it was made with."""
        return {"task_id": self.task_id, "region_id": self.region_id, "annotation_id": self.annotation_id,
                "similarity": round(float(self.similarity), 4), "caption": self.caption,
                "attributes": dict(self.attributes)}


class DemonstrationIndex:
    """One project's accepted regions under one model version. Thread-safe; `sync` with the store, then `search`."""

    def __init__(self, project_id: int, model_version: str, hnsw_from: int = HNSW_FROM):
        self.project_id = int(project_id)
        self.model_version = str(model_version)
        self.hnsw_from = int(hnsw_from)
        self.high_water = 0  # the highest row id applied
        self.dim: int | None = None
        self._index = None  # faiss index; positions 0..ntotal-1 in the order rows were added
        self._alive = np.zeros(0, dtype=bool)
        self._task = np.zeros(0, dtype=np.int64)
        self._norm = np.zeros(0, dtype=np.float32)  # each token's length: the index holds them normalised
        self._meta: list[tuple] = []  # per position: (row id, task id, region id, annotation id, caption, attributes)
        self._position: dict[tuple[int, str], int] = {}  # (task id, region id) -> its live position
        self._lock = threading.Lock()
        self.rebuilds = 0

    # ------------------------------------------------------------------------------------------------ state

    def __len__(self) -> int:
        return len(self._position)

    @property
    def kind(self) -> str:
        return "empty" if self._index is None else ("hnsw" if isinstance(self._index, faiss.IndexHNSWFlat) else "flat")

    # ------------------------------------------------------------------------------------------------- sync

    def sync(self, store) -> int:
        """Apply the store's rows above the high-water mark (all of them the first time). Returns how many."""
        with self._lock:
            applied = 0
            while True:
                rows = store.demonstrations_since(self.project_id, self.model_version, self.high_water, limit=20_000)
                if not rows:
                    return applied
                self._apply(rows)
                applied += len(rows)

    def apply(self, rows) -> None:
        """Apply store rows (regionscribe.backend.store.DemonstrationRow, in id order)."""
        with self._lock:
            self._apply(rows)

    def _apply(self, rows) -> None:
        started = time.perf_counter()
        vectors: list[np.ndarray] = []
        tasks: list[int] = []
        first = len(self._meta)
        for row in rows:
            if row.id <= self.high_water:
                continue
            self.high_water = row.id
            key = (int(row.task_id), str(row.region_id))
            old = self._position.pop(key, None)
            if old is not None:
                if old < len(self._alive):
                    self._alive[old] = False
                else:  # added earlier in this batch
                    tasks[old - len(self._alive)] = -1
            if row.token is None:
                continue
            vector = np.frombuffer(row.token, dtype=np.float32)
            if self.dim is None:
                self.dim = int(vector.size)
            if vector.size != self.dim:
                raise DemonstrationIndexError(
                    f"project {self.project_id}, model {self.model_version}: row {row.id} has a token of "
                    f"{vector.size} values, the others {self.dim}")
            self._position[key] = first + len(vectors)
            vectors.append(vector)
            tasks.append(int(row.task_id))
            self._meta.append((int(row.id), int(row.task_id), str(row.region_id), int(row.annotation_id),
                               row.caption, dict(row.attributes or {})))
        if vectors:
            matrix = np.ascontiguousarray(np.stack(vectors), dtype=np.float32)
            norms = np.linalg.norm(matrix, axis=1).astype(np.float32)
            faiss.normalize_L2(matrix)
            task_ids = np.asarray(tasks, dtype=np.int64)
            self._alive = np.concatenate([self._alive, task_ids >= 0])
            self._task = np.concatenate([self._task, np.where(task_ids >= 0, task_ids, 0)])
            self._norm = np.concatenate([self._norm, norms])
            if self._index is None:
                self._index = self._new_index(len(self._position))
            self._index.add(matrix)
        self._maybe_rebuild()
        if vectors and len(vectors) > 1000:
            log.info("demonstrations of project %s (%s): %d tokens indexed in %.2f s (%s, %d live)", self.project_id,
                     self.model_version, len(vectors), time.perf_counter() - started, self.kind, len(self))

    def _new_index(self, live: int):
        if live >= self.hnsw_from:
            index = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
            return index
        return faiss.IndexFlatIP(self.dim)

    def _maybe_rebuild(self) -> None:
        """Compact the index when many of its rows are dead, and make it an HNSW graph once it is large."""
        if self._index is None:
            return
        total = int(self._index.ntotal)
        dead = total - len(self._position)
        grow = self.kind == "flat" and len(self._position) >= self.hnsw_from
        if not grow and dead < max(COMPACT_MIN, COMPACT_FRACTION * total):
            return
        started = time.perf_counter()
        keep = np.flatnonzero(self._alive)
        vectors = self._index.reconstruct_n(0, total)[keep] if total else np.zeros((0, self.dim), np.float32)
        meta = [self._meta[i] for i in keep]
        self._index = self._new_index(len(keep))
        if len(keep):
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._alive = np.ones(len(keep), dtype=bool)
        self._task = self._task[keep].copy()
        self._norm = self._norm[keep].copy()
        self._meta = meta
        self._position = {(m[1], m[2]): i for i, m in enumerate(meta)}
        self.rebuilds += 1
        log.info("demonstrations of project %s (%s): index rebuilt as %s over %d live rows (%d dead dropped) in "
                 "%.2f s", self.project_id, self.model_version, self.kind, len(keep), dead,
                 time.perf_counter() - started)

    # ----------------------------------------------------------------------------------------------- search

    def search(self, tokens: np.ndarray, k: int, exclude_task: int | None = None) -> list[list[Neighbour]]:
        """The k live rows most similar to each token (rows [n, dim]), nearest first, never of `exclude_task`; each
        with its stored token (what the model is shown)."""
        tokens = np.asarray(tokens, dtype=np.float32)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        with self._lock:
            if k <= 0 or self._index is None or not self._position:
                return [[] for _ in range(len(tokens))]
            if tokens.shape[1] != self.dim:
                raise DemonstrationIndexError(
                    f"project {self.project_id}, model {self.model_version}: a query token of {tokens.shape[1]} "
                    f"values; the index holds tokens of {self.dim}")
            allowed = self._alive if exclude_task is None else self._alive & (self._task != int(exclude_task))
            count = int(allowed.sum())
            if count == 0:
                return [[] for _ in range(len(tokens))]
            queries = np.ascontiguousarray(tokens.copy())
            faiss.normalize_L2(queries)
            bits = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(HNSW_EF_SEARCH, k))
            else:
                params = faiss.SearchParameters(sel=selector)
            scores, positions = self._index.search(queries, min(k, count), params=params)
            out = []
            for row_scores, row_positions in zip(scores, positions):
                found = []
                for score, position in zip(row_scores, row_positions):
                    if position < 0:
                        continue
                    row_id, task_id, region_id, annotation_id, caption, attributes = self._meta[position]
                    token = self._index.reconstruct(int(position)) * self._norm[position]
                    found.append(Neighbour(row_id, task_id, region_id, annotation_id, float(score), caption,
                                           dict(attributes), token.astype(np.float32)))
                out.append(found)
            return out


# ------------------------------------------------------------------------------------ this process's indexes

_INDEXES: dict[tuple[str, int, str], DemonstrationIndex] = {}
_INDEXES_LOCK = threading.Lock()


def project_index(store, project_id: int, model_version: str) -> DemonstrationIndex:
    """This process's index of the project's demonstrations for `model_version`, brought up to date with the store
    (built from it on first use). Indexes of other model versions are dropped: tokens compare only within one."""
    key = (store.url, int(project_id), str(model_version))
    with _INDEXES_LOCK:
        index = _INDEXES.get(key)
        if index is None:
            for other in [k for k in _INDEXES if k[0] == store.url and k[2] != key[2]]:
                del _INDEXES[other]
            index = _INDEXES[key] = DemonstrationIndex(project_id, model_version)
    index.sync(store)
    return index


def forget_indexes() -> None:
    """Drop every index of this process (the next lookup rebuilds from the store, as after a restart)."""
    with _INDEXES_LOCK:
        _INDEXES.clear()
