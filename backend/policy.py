"""The retraining policy: when a project gets a training run, and never two at once.

A project is due for training when
- `RETRAIN_AFTER` (default 50) new or changed trainable regions arrived since its last run started
  (`store.pending_count`), or
- someone pressed "Start training" in Label Studio (START_TRAINING): the request is kept durably in the store
  (`store.request_training`) and satisfied when a run starts on a later snapshot (`store.mark_training_started`).

When due, and no run of that project is queued or running, the policy enqueues
`backend.training_job.run_training(project_id)` on the `TRAINING_QUEUE` queue (by dotted path: the function lives in
the training worker's code). At most one run per project: the id of the project's current job is kept in Redis
(`regionscribe:training:<project>:job`), and a short Redis mutex serialises the check-then-enqueue across web
processes. A run counts as active while its rq job is queued/deferred/scheduled, or started on a worker whose
liveness key is fresh (a killed training worker frees the project at once, not after rq's job timeout). A trigger that
arrives while a run is active enqueues nothing: its regions stay pending (the count only restarts at
`mark_training_started`) and the request flag stays set, and the run's rq callbacks (`training_finished`, on success,
failure or stop) evaluate the project again, so they lead to the next run.

Every webhook event that changed records calls `Policy.evaluate`; START_TRAINING calls it after setting the request.
With Redis down nothing is lost: the count and the request are in the store, and the next evaluation enqueues.
"""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager

import redis
from rq import Callback, Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from .settings import Settings

log = logging.getLogger(__name__)

TRAINING_FUNCTION = "backend.training_job.run_training"
FINISHED_CALLBACK = "backend.policy.training_finished"
JOB_KEY = "regionscribe:training:{project}:job"  # id of the project's current (or last) training job
MUTEX_KEY = "regionscribe:training:{project}:mutex"
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

    def active_job(self, project_id: int) -> Job | None:
        """The project's queued or running training job, or None."""
        job_id = self.connection.get(JOB_KEY.format(project=int(project_id)))
        if not job_id:
            return None
        try:
            job = Job.fetch(job_id.decode(), connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        status = job.get_status(refresh=False)
        if status in _ACTIVE:
            return job
        if status == JobStatus.STARTED:
            from .worker import is_alive

            if job.worker_name and not is_alive(self.connection, job.worker_name):
                log.warning("training job %s of project %s: worker %s is gone; the run counts as failed", job.id,
                            project_id, job.worker_name)
                self._record_abandoned(job)
                return None
            return job
        return None

    def _record_abandoned(self, job: Job) -> None:
        from rq.job_lifecycle import record_job_failure

        try:
            with self.connection.pipeline() as pipe:
                record_job_failure(job, f"AbandonedJobError: worker {job.worker_name} stopped beating during the "
                                        "training run", pipe)
                pipe.execute()
        except Exception as exc:  # best effort: rq's own cleanup gets it later
            log.warning("could not record training job %s as failed: %s", job.id, exc)

    @contextmanager
    def _mutex(self, project_id: int, wait: float = 2.0):
        key, token = MUTEX_KEY.format(project=int(project_id)), uuid.uuid4().hex
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

    def evaluate(self, project_id: int, function: str = TRAINING_FUNCTION) -> dict:
        """Enqueue a training run (`function(project_id)`, a dotted path) for the project if it is due and none is
        active. Returns what was decided: {"due", "pending", "reason", "enqueued": job id or None,
        "active": job id or None}."""
        project_id = int(project_id)
        due, reason, pending = self.due(project_id)
        answer = {"due": due, "pending": pending, "reason": reason, "enqueued": None, "active": None}
        if not due:
            return answer
        with self._mutex(project_id):
            active = self.active_job(project_id)
            if active is not None:
                answer["active"] = active.id
                return answer
            answer["enqueued"] = self._enqueue(project_id, reason, function)
        return answer

    def _enqueue(self, project_id: int, reason: str, function: str) -> str:
        job_id = f"regionscribe-train-{project_id}-{uuid.uuid4().hex[:12]}"
        key = JOB_KEY.format(project=project_id)
        self.connection.set(key, job_id)  # first: a callback of a very fast run finds its own id
        try:
            callback = Callback(FINISHED_CALLBACK, timeout=60)
            self.queue().enqueue_call(
                function, args=(project_id,), job_id=job_id, timeout=self.settings.training_timeout,
                result_ttl=7 * 24 * 3600, failure_ttl=30 * 24 * 3600, description=f"train project {project_id}",
                meta={"project_id": project_id, "reason": reason, "requested_at": time.time()},
                on_success=callback, on_failure=callback, on_stopped=callback)
        except Exception:
            self.connection.delete(key)
            raise
        log.info("training run %s enqueued for project %s (%s)", job_id, project_id, reason)
        return job_id

    def finished(self, project_id: int, job_id: str, function: str = TRAINING_FUNCTION) -> dict:
        """A training run ended (any outcome): free the project, then evaluate it again (events that arrived during
        the run, or a request made during it, lead to the next run)."""
        project_id = int(project_id)
        with self._mutex(project_id):
            key = JOB_KEY.format(project=project_id)
            current = self.connection.get(key)
            if current is not None and current.decode() == job_id:
                self.connection.delete(key)
        return self.evaluate(project_id, function)


def training_finished(job: Job, connection: redis.Redis, *args, **kwargs) -> None:
    """rq callback (success, failure and stopped) of every training job the policy enqueued."""
    from .settings import get_settings
    from .store import Store

    project_id = (job.meta or {}).get("project_id", job.args[0] if job.args else None)
    if project_id is None:
        return
    settings = get_settings()
    try:
        decision = Policy(settings, Store.shared(settings), connection).finished(
            int(project_id), job.id, job.func_name or TRAINING_FUNCTION)
        log.info("training run %s of project %s ended; next: %s", job.id, project_id, decision)
    except Exception as exc:  # never fail the job because of the follow-up decision
        log.warning("after training run %s of project %s: %s", job.id, project_id, exc)
