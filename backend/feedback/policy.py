"""The retraining policy: when a project gets a training run, and never two at once.

A project is due for training when
- `RETRAIN_AFTER` (default 50) new or changed trainable regions arrived since its last run started
  (`store.pending_count`), or
- someone pressed "Start training" in Label Studio (START_TRAINING): the request is kept durably in the store
  (`store.request_training`) and satisfied when a run starts on a later snapshot (`store.mark_training_started`).

When due, and no run of that project is queued or running, the policy enqueues
`regionscribe.backend.feedback.training_run.run_training(project_id)` on the `TRAINING_QUEUE` queue (the function
itself: a rename fails at import; its module imports nothing heavy, the training itself is imported when the job runs
in the training worker). At most one run per project: the id of the project's current job is kept in Redis
(`regionscribe:training:<project>:job`), and a short Redis mutex serialises the check-then-enqueue across web
processes. A run counts as active while its rq job is queued/deferred/scheduled, or started on a worker whose
liveness key is fresh (a killed training worker frees the project at once, not after rq's job timeout), or while the
project's training lease in the store is live (`store.training_lease`: taken by the running job, renewed by its
worker every third of TRAINING_LEASE_SECONDS). The lease is what keeps one run per project when Redis loses its data
in the middle of a run (FLUSHALL, a restart without persistence): the job, its pointer and the worker's liveness key
are gone, but the lease is not, so nothing is enqueued and a job that starts anyway refuses to run
(`training_run.run_training`). A lease whose worker died expires by itself; a run closed as failed releases it. A
trigger that arrives while a run is active enqueues nothing: its regions stay pending (the count only restarts at
`mark_training_started`) and the request flag stays set, and the run's success callback (`training_finished`)
evaluates the project again, so it leads to the next run.

A run that never completes gives its count back. The run records its rq job id with `mark_training_started`; when
the job fails or is stopped (`training_failed` callback), or when an evaluation finds that the store's open run
belongs to a job that is no longer running (`reclaim`: its worker stopped beating, e.g. SIGKILL or OOM, or the job is
gone from Redis), `store.training_failed` closes the run as failed and moves the project's watermark back: the
regions the run had taken, and a request it had satisfied, count toward the next run again. A failed run is not
retried at once (a run that fails every time would loop): the next webhook event, START_TRAINING, or a training
worker starting (`sweep`) evaluates the project again.

Every webhook event that changed records calls `Policy.evaluate`; START_TRAINING calls it after setting the request.
With Redis down nothing is lost: the count and the request are in the store, and the next evaluation enqueues.
"""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from typing import Callable

import redis
from rq import Callback, Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from regionscribe.backend.core.keys import TRAINING_JOB_KEY, TRAINING_MUTEX_KEY
from regionscribe.backend.core.liveness import is_alive, record_abandoned
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.feedback.training_run import run_training

log = logging.getLogger(__name__)

TRAINING_FUNCTION: Callable = run_training  # what a run executes; its callbacks: training_finished, training_failed
MUTEX_MS = 5000
_ACTIVE = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class PolicyBusy(RuntimeError):
    """Another process held the project's policy mutex for too long."""


class Policy:
    def __init__(self, settings: Settings, store, connection: redis.Redis):
        self.settings = settings
        self.store = store
        self.connection = connection

    def queue(self) -> Queue:
        return Queue(self.settings.training_queue, connection=self.connection, serializer=JSONSerializer)

    # ------------------------------------------------------------------------------------------------ state

    def _fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    def _running(self, job: Job, project_id: int) -> bool:
        """Whether the job is queued, or started on a live worker. A started job whose worker stopped beating is
        recorded as failed, and its run gives its count back."""
        status = job.get_status(refresh=False)
        if status in _ACTIVE:
            return True
        if status == JobStatus.STARTED:
            if job.worker_name and not is_alive(self.connection, job.worker_name):
                log.warning("training job %s of project %s: worker %s is gone; the run counts as failed", job.id,
                            project_id, job.worker_name)
                record_abandoned(self.connection, job, job.worker_name, during="during the training run")
                self.store.training_failed(project_id, job.id, f"worker {job.worker_name} stopped beating")
                return False
            return True
        return False

    def lease(self, project_id: int) -> dict | None:
        """The project's live training lease in the store (its running job renews it), or None."""
        return self.store.training_lease(project_id)

    def active_job(self, project_id: int) -> Job | None:
        """The project's queued or running training job, or None."""
        job_id = self.connection.get(TRAINING_JOB_KEY.format(project=int(project_id)))
        if not job_id:
            return None
        job = self._fetch(job_id.decode())
        return job if job is not None and self._running(job, int(project_id)) else None

    def reclaim(self, project_id: int) -> str | None:
        """When the store still counts a run of the project as going but its job is no longer running (its worker
        was killed, or the job is gone from Redis), close that run as failed so its count goes back. Returns that
        job's id, or None. Cheap when no run is open (one indexed read of the store)."""
        run = self.store.open_training_run(project_id)
        if run is None:
            return None
        job = self._fetch(run["job_id"])
        if job is not None and self._running(job, project_id):
            return None
        if job is None and self.lease(project_id) is not None:
            return None  # Redis lost the job (FLUSHALL, a restart without persistence), its worker still renews
        status = None if job is None else job.get_status(refresh=False)
        if status == JobStatus.FINISHED:
            self.store.training_completed(run["id"], "completed")  # returned without closing its run itself
            return None
        reason = "its job is gone from Redis" if job is None else f"its job is {getattr(status, 'value', status)}"
        if self.store.training_failed(project_id, run["job_id"], reason):
            log.warning("training run %s of project %s never completed (%s); its regions count toward the next run",
                        run["job_id"], project_id, reason)
        return run["job_id"]

    @contextmanager
    def _mutex(self, project_id: int, wait: float = 2.0):
        key, token = TRAINING_MUTEX_KEY.format(project=int(project_id)), uuid.uuid4().hex
        deadline = time.monotonic() + wait
        while not self.connection.set(key, token, nx=True, px=MUTEX_MS):
            if time.monotonic() > deadline:
                raise PolicyBusy(f"the training policy of project {project_id} is busy")
            time.sleep(0.005)
        try:
            yield
        finally:
            try:
                self.connection.eval(_RELEASE, 1, key, token)
            except redis.RedisError:
                pass  # expires by itself

    # ------------------------------------------------------------------------------------------- decisions

    def due(self, project_id: int) -> tuple[bool, str, int]:
        pending = self.store.pending_count(project_id)
        if self.store.training_requested(project_id):
            return True, "requested", pending
        if pending >= self.settings.retrain_after:
            return True, f"{pending} new or changed regions (RETRAIN_AFTER={self.settings.retrain_after})", pending
        return False, "", pending

    def evaluate(self, project_id: int, function: Callable | str = TRAINING_FUNCTION) -> dict:
        """Enqueue a training run (`function(project_id)`: the function, or its dotted path) for the project if it is
        due and none is active. Returns what was decided: {"due", "pending", "reason", "enqueued": job id or None,
        "active": job id or None}."""
        project_id = int(project_id)
        self.reclaim(project_id)
        due, reason, pending = self.due(project_id)
        answer = {"due": due, "pending": pending, "reason": reason, "enqueued": None, "active": None}
        if not due:
            return answer
        with self._mutex(project_id):
            active = self.active_job(project_id)
            if active is not None:
                answer["active"] = active.id
                return answer
            lease = self.lease(project_id)
            if lease is not None:  # a run Redis no longer knows of (its data lost) is still going
                answer["active"] = lease["holder"]
                return answer
            answer["enqueued"] = self._enqueue(project_id, reason, function)
        return answer

    def _enqueue(self, project_id: int, reason: str, function: Callable | str) -> str:
        job_id = f"regionscribe-train-{project_id}-{uuid.uuid4().hex[:12]}"
        key = TRAINING_JOB_KEY.format(project=project_id)
        self.connection.set(key, job_id)  # first: a callback of a very fast run finds its own id
        try:
            # on failure (also rq's abandoned-job cleanup) and on stop
            failed = Callback(training_failed, timeout=60)
            self.queue().enqueue_call(
                function, args=(project_id,), job_id=job_id, timeout=self.settings.training_timeout,
                result_ttl=7 * 24 * 3600, failure_ttl=30 * 24 * 3600, description=f"train project {project_id}",
                meta={"project_id": project_id, "reason": reason, "requested_at": time.time()},
                on_success=Callback(training_finished, timeout=60), on_failure=failed, on_stopped=failed)
        except Exception:
            self.connection.delete(key)
            raise
        log.info("training run %s enqueued for project %s (%s)", job_id, project_id, reason)
        return job_id

    def finished(self, project_id: int, job_id: str, function: Callable | str = TRAINING_FUNCTION,
                 failed: bool = False) -> dict:
        """A training run ended: free the project. After a completed run, evaluate the project again (events that
        arrived during the run, or a request made during it, lead to the next run). After a failed or stopped run,
        give its count back (`store.training_failed`) and enqueue nothing: the next event, START_TRAINING or a
        training worker starting leads to the next run (a run failing every time must not loop)."""
        project_id = int(project_id)
        with self._mutex(project_id):
            key = TRAINING_JOB_KEY.format(project=project_id)
            current = self.connection.get(key)
            if current is not None and current.decode() == job_id:
                self.connection.delete(key)
        if not failed:
            run = self.store.open_training_run(project_id)
            if run is not None and run["job_id"] == job_id:  # a job function that did not close its run itself
                self.store.training_completed(run["id"], "completed")
            return self.evaluate(project_id, function)
        self.store.training_failed(project_id, job_id, "the job failed or was stopped")
        due, reason, pending = self.due(project_id)
        return {"due": due, "pending": pending, "reason": reason, "enqueued": None, "active": None,
                "detail": "not retried at once after a failure; the next event or START_TRAINING starts it"}

    def sweep(self, function: Callable | str = TRAINING_FUNCTION) -> dict[int, dict]:
        """Evaluate every project in the store (a training worker does it when it starts): a run whose worker died
        gives its count back and the next run is enqueued, and a due project whose queued job was lost with Redis
        gets its run, without waiting for the next webhook event."""
        decisions = {}
        for project_id in self.store.projects():
            try:
                decisions[project_id] = self.evaluate(project_id, function)
            except (redis.RedisError, PolicyBusy) as exc:
                log.warning("training policy not evaluated for project %s: %s", project_id, exc)
        return decisions


def _after_run(job: Job, connection: redis.Redis, failed: bool) -> None:
    from regionscribe.backend.core.settings import get_settings
    from regionscribe.backend.store import Store

    project_id = (job.meta or {}).get("project_id", job.args[0] if job.args else None)
    if project_id is None:
        return
    settings = get_settings()
    try:
        decision = Policy(settings, Store.shared(settings), connection).finished(
            int(project_id), job.id, job.func_name or TRAINING_FUNCTION, failed=failed)
        log.info("training run %s of project %s %s; next: %s", job.id, project_id,
                 "failed" if failed else "ended", decision)
    except Exception as exc:  # never fail the job because of the follow-up decision
        log.warning("after training run %s of project %s: %s", job.id, project_id, exc)


def training_finished(job: Job, connection: redis.Redis, *args, **kwargs) -> None:
    """rq success callback of every training job the policy enqueues."""
    _after_run(job, connection, failed=False)


def training_failed(job: Job, connection: redis.Redis, *args, **kwargs) -> None:
    """rq failure and stopped callback of every training job the policy enqueues (rq's abandoned-job cleanup
    calls it too)."""
    _after_run(job, connection, failed=True)
