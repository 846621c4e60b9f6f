"""The demonstration jobs as rq runs them in an inference worker (DEMONSTRATIONS=k), and their queueing.

    refresh_demonstrations_job(project_id, task_ids=None)   compute the region tokens the project's accepted regions
                                                            (of those tasks) lack for the worker's model version
                                                            (regionscribe.backend.inference.demonstrations.refresh)

They run on the inference queue, because computing a token needs the model a describe job uses. The web process
queues one per annotation event (`enqueue_refresh` with the event's task); a worker queues one per project when it
starts, when it serves a new model version, and when it notices regions it has not queued (`queue_refresh`: one at a
time per project and version, marked in Redis). A refresh of a whole project computes REFRESH_CHUNK regions per job
and queues the rest as another job, so describe jobs are answered in between.

As with the describe job (regionscribe.backend.inference.job), the web process enqueues the function itself (a
rename fails at import) and this module imports nothing heavy: the work is imported inside the job, which runs only
in a worker. Jobs are JSON-serialized.
"""
from __future__ import annotations

import uuid

from regionscribe.backend.core.keys import DEMONSTRATIONS_REFRESH_KEY

REFRESH_TIMEOUT = 900  # seconds one refresh job (a chunk of regions: images fetched, encoded) may take
MARK_SECONDS = 1800  # a project's refresh mark expires on its own after this long (its worker died mid-chain)


def refresh_demonstrations_job(project_id: int, task_ids: list[int] | None = None, after_seq: int = 0) -> dict:
    """Runs in an inference worker: the tokens of the project's accepted regions (of `task_ids` only, when given;
    changed after `after_seq`, where a whole project's refresh goes on) that the served model version lacks; returns
    the counts (regionscribe.backend.inference.demonstrations.refresh)."""
    from regionscribe.backend.inference.demonstrations import refresh_in_worker

    return refresh_in_worker(int(project_id), [int(t) for t in task_ids] if task_ids is not None else None,
                             int(after_seq))


def enqueue_refresh(connection, settings, project_id: int, task_ids: list[int] | None = None,
                    after_seq: int = 0) -> str:
    """Put a refresh job on the inference queue (`after_seq` > 0: the next chunk of a whole project's); returns its
    id."""
    from regionscribe.backend.core.logs import current_request_id
    from regionscribe.backend.inference.submit import inference_queue

    queue = inference_queue(connection, settings)
    what = f"tasks {', '.join(map(str, task_ids))}" if task_ids is not None else "every accepted region"
    job = queue.enqueue_call(refresh_demonstrations_job, args=(int(project_id), task_ids, int(after_seq)),
                             job_id=f"rs-demonstrations-{uuid.uuid4().hex}", timeout=REFRESH_TIMEOUT,
                             result_ttl=settings.result_ttl, failure_ttl=max(settings.result_ttl, 3600),
                             description=f"demonstrations of project {project_id}: {what}"
                                         + (f" (changed after {after_seq})" if after_seq else ""),
                             meta={"request_id": current_request_id()})
    return job.id


def queue_refresh(connection, settings, project_id: int, model_version: str) -> str | None:
    """Queue a refresh of the whole project for `model_version`, unless one is queued or running already (marked in
    Redis until its last chunk is done). Returns the job id, or None when one was already on its way."""
    if not connection.set(_mark(project_id, model_version), "1", nx=True, ex=MARK_SECONDS):
        return None
    return enqueue_refresh(connection, settings, project_id)


def keep_refresh_mark(connection, project_id: int, model_version: str) -> None:
    """The project's refresh goes on (its next chunk is queued): the mark lives on."""
    connection.set(_mark(project_id, model_version), "1", ex=MARK_SECONDS)


def clear_refresh_mark(connection, project_id: int, model_version: str) -> None:
    """The project's refresh is done: the next trigger queues a new one."""
    connection.delete(_mark(project_id, model_version))


def _mark(project_id: int, model_version: str) -> str:
    return DEMONSTRATIONS_REFRESH_KEY.format(project=int(project_id), version=model_version)
