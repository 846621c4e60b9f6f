"""The worker process: a long-lived, non-forking RQ worker that loads the describer once and reuses it, and keeps
the periodic sync's clock and the training sweep.

    regionscribe worker   ==   regionscribe.backend.ops.worker.run_worker(queues=["inference"], burst=False)

Why non-forking: rq's default Worker forks a work horse per job, which would either reload the model per job or
share CUDA state across a fork (which CUDA does not allow). `SimpleWorker` runs jobs in the worker process itself,
so the model, its feature cache and the CUDA context live as long as the worker.

Several workers may run against one Redis (one per GPU, or several on CPU): each loads its own model and takes
jobs from the same queue. Each worker announces itself in Redis with a short-lived liveness key refreshed by a
background thread (also while a job runs: regionscribe.backend.core.liveness), so the web process can tell "busy" from
"dead": a request whose job's worker stops beating gets a clear error within a few seconds instead of waiting for its
timeout. The describer it serves is held by regionscribe.backend.inference.state; the describe job is
regionscribe.backend.inference.job.

A training worker (`--queue training`) evaluates every project's retraining policy once when it starts
(`Policy.sweep`): a run whose worker died gives its count back and the next run is enqueued.

A worker serving the ingest queue also keeps the periodic sync's clock (regionscribe.backend.feedback.sync): every
SYNC_INTERVAL seconds one of them (a Redis key decides which) queues `sync_job` on the ingest queue, which brings
every connected project in line with Label Studio. The first one comes a few seconds after a worker starts, so
whatever Label Studio sent while the backend was down reaches the store soon after it is back. SYNC_INTERVAL=0 turns it off; without
LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY it is off, with one warning.

A worker killed mid-job (SIGKILL, OOM) leaves its job in rq's StartedJobRegistry. The waiting /predict notices the
missing heartbeat (4 × WORKER_HEARTBEAT), answers that task with an error and records the job as failed
(FailedJobRegistry) at once. Without a waiting request, rq 3's own maintenance (`StartedJobRegistry.cleanup`, run by
any live worker at start and then every `maintenance_interval`) does the same, but only once the job's execution
entry expires: job timeout + 60 s for a SimpleWorker.

Cross-request batching (`_job_worker_class`): an inference worker takes every describe job waiting in its queue,
up to INFERENCE_BATCH_JOBS (waiting up to INFERENCE_BATCH_WAIT_MS for more), and answers them in one batched pass
(`RegionDescriber.describe_many`: the vision tower over their images together, each image's prefix shared by its
boxes, decoding and ranking over all of them together); rq then records each job on its own, and a job whose input
is bad gets its own error while the others are answered.

Logging is set up by regionscribe.backend.core.logs (LOG_FORMAT, LOG_LEVEL); every line written while a job runs,
rq's own included, carries the request id of the web request that queued it (`job.meta["request_id"]`).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from regionscribe.backend.core.connections import redis_connection
from regionscribe.backend.core.keys import MODEL_VERSION_KEY
from regionscribe.backend.core.liveness import Heartbeat
from regionscribe.backend.core.logs import capture_process_output, configure_logging, request_context
from regionscribe.backend.core.settings import Settings, get_settings, redacted_url
from regionscribe.backend.feedback.policy import Policy
from regionscribe.backend.feedback.sync import tick
from regionscribe.backend.inference import state as describer_state
from regionscribe.backend.inference.job import JOB_FUNCTION, answer_batch, forget_answers
from regionscribe.backend.store import Store

log = logging.getLogger(__name__)


class _SyncClock(threading.Thread):
    """Asks `regionscribe.backend.feedback.sync.tick` a few times per SYNC_INTERVAL whether a sync is due (the first
    time soon after the worker starts); the tick key in Redis makes it one sync per interval across all ingest
    workers."""

    def __init__(self, connection: redis.Redis, settings: Settings, first: float = 3.0):
        super().__init__(name="regionscribe-sync-clock", daemon=True)
        self.connection, self.settings, self.first = connection, settings, first
        self.stopped = threading.Event()

    def run(self) -> None:
        wait = min(self.first, self.settings.sync_interval)
        while not self.stopped.wait(wait):
            wait = max(1.0, self.settings.sync_interval / 4)
            try:
                if tick(self.connection, self.settings):
                    log.info("sync of every connected project queued")
            except redis.RedisError as exc:
                log.warning("sync not queued: %s", exc)

    def stop(self) -> None:
        self.stopped.set()


def _start_sync_clock(settings: Settings, connection: redis.Redis) -> _SyncClock | None:
    if settings.sync_interval <= 0:
        return None
    if not settings.label_studio_api_enabled:
        log.warning("the periodic sync with Label Studio is off: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (a "
                    "personal access token) for this worker, or SYNC_INTERVAL=0 to silence this; until then an "
                    "annotation event the webhook loses (backend down, 401, timeout) never reaches the store")
        return None
    clock = _SyncClock(connection, settings)
    clock.start()
    return clock


def _sweep_training(settings: Settings, connection: redis.Redis) -> None:
    """A training worker starting looks at every project once: a run left open by a training worker that died gives
    its count back and the next run is enqueued; a due project whose queued job was lost with Redis gets its run.
    Staging folders of dead runs are removed first."""
    _discard_dead_staging(settings)
    try:
        decisions = Policy(settings, Store.shared(settings), connection).sweep()
    except Exception as exc:  # the store is down: the next webhook event evaluates again
        log.warning("training policy sweep skipped: %s", exc)
        return
    enqueued = {p: d["enqueued"] for p, d in decisions.items() if d.get("enqueued")}
    if enqueued:
        log.info("training runs enqueued at start: %s", enqueued)


def _discard_dead_staging(settings: Settings) -> None:
    """Staging folders of runs that died (killed workers) are removed once older than TRAINING_TIMEOUT: rq stops
    any run by then, so no live run's folder can be that old, whichever machine runs it."""
    from regionscribe.backend.core.registry import Registry

    try:
        removed = Registry(settings.registry_path).discard_staging(older_than=settings.training_timeout)
    except OSError as exc:
        log.warning("staging clean-up skipped: %s", exc)
        return
    if removed:
        log.info("removed staging folders of dead training runs: %s", removed)


def job_request_id(job) -> str | None:
    """The request id a job carries (set by the web request that queued it), if any."""
    value = (job.meta or {}).get("request_id")
    return str(value) if value else None


def _job_worker_class(settings: Settings | None = None):
    limit = settings.inference_batch_jobs if settings is not None else 1
    wait = (settings.inference_batch_wait_ms if settings is not None else 0.0) / 1000.0
    inference = settings.inference_queue if settings is not None else None

    class JobWorker(SimpleWorker):
        """rq's non-forking worker, with each job's request id on every line logged while the job runs.

        Cross-request batching: when it takes a describe job from the inference queue, it also takes every describe
        job waiting there, up to INFERENCE_BATCH_JOBS, waiting up to INFERENCE_BATCH_WAIT_MS for more when fewer
        are waiting, answers them all in one batched pass (`job.answer_batch`), and then runs each through rq as
        usual (started, finished, result), so each job is answered, timed out or failed on its own."""

        def execute_job(self, job, queue):
            batch = self._gather(job, queue) if limit > 1 and job.func_name == JOB_FUNCTION else [(job, queue)]
            if len(batch) == 1:
                with request_context(job_request_id(job)):
                    return super().execute_job(job, queue)
            # started on this worker from now on, as rq marks a job it runs: a waiting /predict whose job's worker
            # dies during the batched pass gets its error as soon as the heartbeat stops (submit.wait_for)
            with self.connection.pipeline() as pipe:
                for j, _ in batch:
                    j.prepare_for_execution(self.name, pipeline=pipe)
                pipe.execute()
            answer_batch([j for j, _ in batch if j.func_name == JOB_FUNCTION])
            try:
                for j, q in batch:
                    with request_context(job_request_id(j)):
                        super().execute_job(j, q)
            finally:
                forget_answers([j.id for j, _ in batch])

        def _gather(self, job, queue) -> list:
            if queue.name != inference:
                return [(job, queue)]
            batch = [(job, queue)]
            # pop as this worker's own dequeue does: rq moves a job into its intermediate queue (and takes it out at
            # the start of the job) only for a worker of one queue; with two keys dequeue_any pops it plainly
            keys = [queue] if len(self.queues) == 1 else [queue, queue]
            deadline = time.monotonic() + wait
            while len(batch) < limit:
                got = self.queue_class.dequeue_any(keys, None, connection=self.connection,
                                                   job_class=self.job_class, serializer=self.serializer,
                                                   death_penalty_class=self.death_penalty_class)
                if got is not None:
                    batch.append(got)
                elif time.monotonic() < deadline:
                    time.sleep(0.0005)
                else:
                    break
            return batch

    return JobWorker


def run_worker(queues: list[str] | None = None, burst: bool = False, settings: Settings | None = None,
               name: str | None = None, max_jobs: int | None = None) -> bool:
    """Serve jobs of `queues` (default: the inference and ingest queues, as `run` starts it) until stopped
    (SIGINT/SIGTERM finish the current job, then exit). Returns whether any job was processed. `burst=True` stops
    when the queues are empty."""
    settings = settings or get_settings()
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is not set: point it at the Redis the web server uses (redis://host:6379/0)")
    capture_process_output(settings, configure_logging(settings))
    connection = redis_connection(settings.redis_url)
    connection.ping()
    name = name or f"regionscribe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    queue_names = list(queues or [settings.inference_queue, settings.ingest_queue])  # as `run` starts it
    info = {"name": name, "pid": os.getpid(), "host": socket.gethostname(), "state": "loading",
            "model_version": None, "started_at": time.time(), "queues": queue_names}
    heartbeat = Heartbeat(connection, name, info, every=settings.worker_heartbeat)
    heartbeat.beat()  # a loading worker counts as up: jobs queued meanwhile wait for it
    heartbeat.start()
    clock = None
    try:
        if settings.inference_queue in queue_names:  # a worker for other queues only (ingest) needs no model
            state = describer_state.load(settings, connection, name)
            info.update(state="ready", model_version=state.describer.model_version, loads=state.loads)
            connection.set(MODEL_VERSION_KEY, state.describer.model_version)
            if settings.demonstrations > 0:  # the served version's tokens and this process's indexes
                describer_state.start_demonstrations(state, connection)
        else:
            info.update(state="ready")
        if settings.training_queue in queue_names:
            _sweep_training(settings, connection)
        if settings.ingest_queue in queue_names and not burst:
            clock = _start_sync_clock(settings, connection)
        heartbeat.beat()
        rq_queues = [Queue(q, connection=connection, serializer=JSONSerializer) for q in queue_names]
        worker = _job_worker_class(settings)(rq_queues, connection=connection, name=name, serializer=JSONSerializer,
                                     worker_ttl=60, maintenance_interval=60)
        log.info("worker %s serving %s on %s", name, [q.name for q in rq_queues], redacted_url(settings.redis_url))
        return worker.work(burst=burst, max_jobs=max_jobs, logging_level=settings.log_level)
    finally:
        if clock is not None:
            clock.stop()
        heartbeat.stop()


