"""The web side of a prediction: one describe job per task on the "inference" queue (rq, JSON-serialized), and
the wait for their answers, never longer than PREDICT_TIMEOUT.

A job whose worker stops beating (killed mid-job) gets an error as soon as that is noticed (the worker's liveness
key, regionscribe.backend.core.liveness) and is recorded as failed at once; jobs still waiting in the queue at the
deadline are cancelled so no worker spends time on them. What a payload holds and what comes back:
regionscribe.backend.inference.answers.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from regionscribe.model.asks import Asks

from regionscribe.backend.core.liveness import is_alive, record_abandoned
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.inference.job import describe_job

log = logging.getLogger(__name__)


def make_payload(task_id, image_ref: str, regions: list[dict], asks: Asks, interactive: bool,
                 request_id: str | None = None, describe: list[int] | None = None,
                 project_id: int | None = None) -> dict:
    """`regions`: every box of the task (all of them are relation partners); `describe`: the indices of those to
    describe (None: all of them); `project_id`: the Label Studio project, whose accepted regions the worker may show
    the model as demonstrations (DEMONSTRATIONS)."""
    payload = {"task_id": task_id, "image": image_ref, "regions": regions, "asks": asdict(asks),
               "interactive": interactive, "request_id": request_id}
    if project_id is not None:
        payload["project_id"] = int(project_id)
    if describe is not None:
        payload["describe"] = list(describe)
    return payload


@dataclass
class Outcome:
    """What came back for one job: the worker's dict, or an error message for that task."""

    value: dict | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.value is not None and "error" not in self.value

    @property
    def message(self) -> str:
        return self.error or (self.value or {}).get("error", "")


class NoWorkers(RuntimeError):
    pass


def inference_queue(connection: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.inference_queue, connection=connection, serializer=JSONSerializer)


def submit(queue: Queue, payloads: list[dict], settings: Settings) -> list[Job]:
    """Enqueue one job per payload in one round trip."""
    wait = max(1, math.ceil(settings.predict_timeout))
    data = [Queue.prepare_data(describe_job, args=(p,), job_id=f"rs-{uuid.uuid4().hex}", timeout=settings.job_timeout,
                               ttl=wait + 5, result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl,
                               description=f"describe task {p.get('task_id')}",
                               meta={"request_id": p.get("request_id")}) for p in payloads]
    return queue.enqueue_many(data)


def wait_for(connection: redis.Redis, jobs: list[Job], timeout: float, poll: float = 0.5) -> list[Outcome]:
    """Block until every job has an outcome or `timeout` seconds pass; never longer. A job whose worker stops
    beating (killed mid-job) gets an error as soon as that is noticed; jobs still waiting in the queue at the
    deadline are cancelled so no worker spends time on them."""
    deadline = time.monotonic() + timeout
    outcomes: list[Outcome | None] = [None] * len(jobs)
    pending = {job.id: i for i, job in enumerate(jobs)}
    cursors = {Result.get_key(job.id): "0-0" for job in jobs}
    next_check = time.monotonic() + poll
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        streams = {key: cursors[key] for key in (Result.get_key(jid) for jid in pending)}
        block_ms = max(1, int(min(remaining, poll) * 1000))
        for stream, entries in connection.xread(streams, block=block_ms) or []:
            stream = stream.decode() if isinstance(stream, bytes) else stream
            job_id = stream.rsplit(":", 1)[-1]
            for result_id, fields in entries:
                result_id = result_id.decode() if isinstance(result_id, bytes) else result_id
                cursors[stream] = result_id
                result = Result.restore(job_id, result_id, fields, connection=connection, serializer=JSONSerializer)
                outcome = _outcome(result)
                if outcome is not None and job_id in pending:
                    outcomes[pending.pop(job_id)] = outcome
        if pending and time.monotonic() >= next_check:
            next_check = time.monotonic() + poll
            _check_pending(connection, pending, outcomes, is_alive)
    for job_id, i in pending.items():
        outcomes[i] = Outcome(error=f"no answer from the inference workers within PREDICT_TIMEOUT={timeout:g} s "
                                    "(workers busy, stopped or too slow for this load)")
    if pending:
        _cancel_queued(connection, list(pending))
    return [o if o is not None else Outcome(error="no outcome") for o in outcomes]


def _outcome(result: Result) -> Outcome | None:
    if result.type == Result.Type.SUCCESSFUL:
        value = result.return_value
        if not isinstance(value, dict):
            return Outcome(error="the worker returned an unexpected value")
        return Outcome(value=value)
    if result.type in (Result.Type.FAILED, Result.Type.MAX_RETRIES_EXCEEDED):
        return Outcome(error=f"the worker failed on this task: {_last_line(result.exc_string)}")
    if result.type == Result.Type.STOPPED:
        return Outcome(error="the job was stopped before it finished")
    return None  # RETRIED: wait for the next result


def _check_pending(connection: redis.Redis, pending: dict[str, int], outcomes: list, is_alive) -> None:
    pipe = connection.pipeline(transaction=False)
    ids = list(pending)
    for job_id in ids:
        pipe.hmget(Job.key_for(job_id), "status", "worker_name")
    for job_id, (status, worker_name) in zip(ids, pipe.execute()):
        status = status.decode() if status else None
        worker_name = worker_name.decode() if worker_name else None
        if status is None:
            outcomes[pending.pop(job_id)] = Outcome(error="the job disappeared from Redis (expired or deleted)")
        elif status in (JobStatus.CANCELED.value, JobStatus.STOPPED.value):
            outcomes[pending.pop(job_id)] = Outcome(error=f"the job was {status}")
        elif status == JobStatus.STARTED.value and worker_name and not is_alive(connection, worker_name):
            outcomes[pending.pop(job_id)] = Outcome(
                error=f"the inference worker {worker_name} stopped while describing this task (killed or crashed); "
                      "try again")
            record_abandoned(connection, job_id, worker_name)


def _cancel_queued(connection: redis.Redis, job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            if job.get_status() in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                job.cancel()
        except Exception as exc:  # the job may have expired or finished meanwhile
            log.debug("could not cancel job %s: %s", job_id, exc)


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
