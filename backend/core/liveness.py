"""Who is alive and what they serve, as Redis says: the workers' liveness keys (written by a heartbeat thread, read by
/health, /predict, the retraining policy, the sync and doctor), the model version announced to the workers and to
/setup, and what happens to a job whose worker stopped beating.

Each worker announces itself with a short-lived key refreshed by its `Heartbeat` (also while a job runs), so the
other processes can tell "busy" from "dead": a worker that has not beaten for MISSED_BEATS heartbeats counts as dead.
A job left started by a dead worker is recorded as failed at once (`record_abandoned`), not when rq's own cleanup gets
to it.

The training job announces the registry's new current version (`announce`); inference workers read it between jobs
(`announced_model`) and the web process reports the version the workers serve (`read_model_version`), never by loading
the model: the checkpoint's version is read from its config.json (regionscribe.model.checkpoints, torch-free).
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import redis
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.serializers import JSONSerializer

from regionscribe.backend.core.keys import CURRENT_KEY, MODEL_VERSION_KEY, WORKER_KEY
from regionscribe.backend.core.settings import TINY_UNTRAINED, Settings

log = logging.getLogger(__name__)

MISSED_BEATS = 4  # a worker that has not beaten for this many WORKER_HEARTBEAT periods counts as dead


# ----------------------------------------------------------------------------------------------- the workers


def live_workers(connection: redis.Redis, queue: str | None = None) -> list[dict]:
    """Every worker whose liveness key is fresh (beaten within MISSED_BEATS heartbeats); with `queue`, only those
    serving it (workers that do not say which queues they serve count for every queue)."""
    keys = list(connection.scan_iter(match=WORKER_KEY.format(name="*"), count=500))
    if not keys:
        return []
    values = connection.mget(keys)
    workers = [json.loads(v) for v in values if v]
    return workers if queue is None else serving(workers, queue)


def serving(workers: list[dict], queue: str) -> list[dict]:
    """Those of `workers` (from live_workers) that serve `queue`; a worker that does not say counts for every one."""
    return [w for w in workers if "queues" not in w or queue in (w.get("queues") or [])]


def is_alive(connection: redis.Redis, name: str) -> bool:
    return bool(connection.exists(WORKER_KEY.format(name=name)))


class Heartbeat(threading.Thread):
    """Keeps a worker's liveness key (`info` as JSON) fresh every `every` seconds; `stop` removes it."""

    def __init__(self, connection: redis.Redis, name: str, info: dict, every: float):
        super().__init__(name="regionscribe-heartbeat", daemon=True)
        self.connection, self.key, self.info = connection, WORKER_KEY.format(name=name), info
        self.every = every
        self.stopped = threading.Event()

    def beat(self) -> None:
        try:
            self.connection.set(self.key, json.dumps(self.info), px=int(self.every * MISSED_BEATS * 1000))
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.beat()

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.connection.delete(self.key)
        except redis.RedisError:
            pass


def record_abandoned(connection: redis.Redis, job: Job | str, worker_name: str,
                     during: str = "while running the job") -> None:
    """Move a started job whose worker died to rq's FailedJobRegistry now, rather than when rq's own abandoned-job
    cleanup gets to it (job timeout + 60 s later): no job is lost silently, and rq-dashboard shows it at once. `job`:
    an rq Job, or its id (then fetched, and left alone unless it is still started). Best effort."""
    job_id = job if isinstance(job, str) else job.id
    try:
        if isinstance(job, str):
            job = Job.fetch(job, connection=connection, serializer=JSONSerializer)
            if job.get_status() != JobStatus.STARTED:
                return
        with connection.pipeline() as pipe:
            record_job_failure(job, f"AbandonedJobError: worker {worker_name} stopped beating {during}", pipe)
            pipe.execute()
    except Exception as exc:  # best effort: rq's cleanup will get it later anyway
        log.warning("could not record job %s as failed: %s", job_id, exc)


# ------------------------------------------------------------------------------------ the announced version


def announce(connection: redis.Redis, version: str, path: str | Path) -> None:
    """Tell every inference worker (they look between jobs) and /setup which version is current."""
    connection.set(CURRENT_KEY, json.dumps({"version": version, "path": str(path)}))
    connection.set(MODEL_VERSION_KEY, version)


def announced_model(connection: redis.Redis | None) -> dict | None:
    """The registry's current version as the training job announced it ({"version", "path"}), if any."""
    if connection is None:
        return None
    try:
        raw = connection.get(CURRENT_KEY)
    except redis.RedisError:
        return None
    return json.loads(raw) if raw else None


_VERSION_CACHE: dict[str, str] = {}


def read_model_version(connection: redis.Redis | None, settings: Settings) -> str:
    """The version the workers serve, announced in Redis; before any worker has started, the checkpoint's own
    version from its config.json. Never loads the model."""
    if connection is not None:
        try:
            value = connection.get(MODEL_VERSION_KEY)
            if value:
                return value.decode()
        except redis.RedisError:
            pass
    if settings.model_dir == TINY_UNTRAINED:
        return "tiny-untrained-0"
    from regionscribe.model.checkpoints import DEFAULT_CHECKPOINT, checkpoint_version

    path = Path(settings.model_dir) if settings.model_dir else DEFAULT_CHECKPOINT
    config = path / "config.json"
    try:
        stamp = f"{path}:{config.stat().st_mtime_ns}"
    except OSError:
        return "unknown"
    if stamp not in _VERSION_CACHE:
        try:
            _VERSION_CACHE[stamp] = checkpoint_version(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read the checkpoint version under %s: %s", path, exc)
            return "unknown"
    return _VERSION_CACHE[stamp]
