"""The describer an inference worker holds: loaded once per process (the announced current version of the registry,
else MODEL_DIR's checkpoint or the embedded default) and reloaded between jobs when a new version is announced.

The worker process (regionscribe.backend.ops.worker) loads it before taking jobs (`load`); a describe job finds it
with `current`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import redis

from regionscribe.backend.core.connections import redis_connection
from regionscribe.backend.core.liveness import announced_model
from regionscribe.backend.core.prometheus import Metrics
from regionscribe.backend.core.settings import TINY_UNTRAINED, Settings, get_settings
from regionscribe.backend.labelstudio.fetcher import ImageFetcher

log = logging.getLogger(__name__)

LOADS = 0  # how many times this process loaded a describer (tests check it stays 1 per worker)


def load_describer(settings: Settings, connection: redis.Redis | None = None):
    """The describer to serve: the announced current version of the registry when there is one, else MODEL_DIR's
    checkpoint or the embedded default; MODEL_DIR=tiny-untrained always gives an untrained tiny model."""
    global LOADS
    from regionscribe.model.describer import DEFAULT_CHECKPOINT, RegionDescriber

    started = time.perf_counter()
    kwargs = {"cache_size": settings.cache_size, "relation_threshold": settings.relation_threshold}
    announced = announced_model(connection)
    if settings.model_dir == TINY_UNTRAINED:
        from regionscribe.training.stages import untrained_describer

        describer = untrained_describer("tiny", seed=0, **kwargs)
    else:
        path = announced["path"] if announced else (settings.model_dir or DEFAULT_CHECKPOINT)
        describer = RegionDescriber.from_pretrained(path, device=settings.device, **kwargs)
    LOADS += 1
    log.info("model %s loaded in %.1f s", describer.model_version, time.perf_counter() - started)
    return describer


@dataclass
class WorkerState:
    """What a worker process keeps between jobs."""

    settings: Settings
    describer: object
    fetcher: ImageFetcher
    metrics: Metrics
    name: str
    loads: int


_STATE: WorkerState | None = None
_STATE_LOCK = threading.Lock()


def load(settings: Settings, connection: redis.Redis, name: str) -> WorkerState:
    """Load the describer to serve and make it this process's worker state (the worker process does it before
    taking jobs)."""
    global _STATE
    describer = load_describer(settings, connection)
    metrics = Metrics(connection)
    metrics.count("model_loads")
    with _STATE_LOCK:
        _STATE = WorkerState(settings=settings, describer=describer, fetcher=ImageFetcher(settings),
                             metrics=metrics, name=name, loads=LOADS)
        return _STATE


def current(connection: redis.Redis | None = None) -> WorkerState:
    """This process's worker state, loading the model the first time (the worker process does it before taking
    jobs: `load`)."""
    global _STATE
    with _STATE_LOCK:
        if _STATE is None:
            settings = get_settings()
            if connection is None and settings.redis_url:
                connection = redis_connection(settings.redis_url)
            describer = load_describer(settings)
            _STATE = WorkerState(settings=settings, describer=describer, fetcher=ImageFetcher(settings),
                                 metrics=Metrics(connection), name=f"in-process-{os.getpid()}", loads=LOADS)
            Metrics(connection).count("model_loads")
        return _STATE


def refresh_model(state: "WorkerState", connection: redis.Redis | None) -> bool:
    """Between jobs: reload when the announced current version differs from the one loaded. Jobs queued meanwhile
    just wait for this job; none is dropped. Returns whether a reload happened."""
    announced = announced_model(connection)
    if not announced or state.settings.model_dir == TINY_UNTRAINED:
        return False
    if announced["version"] == state.describer.model_version:
        return False
    started = time.perf_counter()
    state.describer.reload(announced["path"])
    state.metrics.count("model_reloads")
    log.info("reloaded model %s in %.1f s", state.describer.model_version, time.perf_counter() - started)
    if state.settings.demonstrations > 0:  # the new version's tokens: computed for every project, indexes rebuilt
        start_demonstrations(state, connection)
    return True


def start_demonstrations(state: "WorkerState", connection: redis.Redis | None):
    """DEMONSTRATIONS: the worker serves `state.describer`'s version from now on (regionscribe.backend.inference.
    demonstrations.start_serving). Returns the background thread, or None when the store cannot be opened."""
    from regionscribe.backend.inference.demonstrations import start_serving
    from regionscribe.backend.store import Store, StoreError

    try:
        store = Store.shared(state.settings)
    except StoreError as exc:
        log.warning("demonstrations: the store is unavailable (%s); indexes are built at their first lookup", exc)
        return None
    return start_serving(state.settings, store, connection, state.describer.model_version)
