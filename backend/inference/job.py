"""The describe job as rq runs it in an inference worker: one task's payload (regionscribe.backend.inference.submit
makes it) in, its answer out (regionscribe.backend.inference.answers computes it).

A worker that finds several describe jobs waiting answers them together first (`answer_batch`: one `describe_many`
pass), and each job then returns its own answer when rq runs it. The web process enqueues `describe_job` itself (a
rename fails at import): this module imports nothing heavy, the answering is imported inside the functions, which
run only in a worker.

Jobs and results are JSON-serialized (rq's JSONSerializer), never pickled, so a Redis shared with other software
cannot make a worker unpickle code.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_ANSWERED: dict[str, dict] = {}  # job id -> its answer, computed with other jobs in one pass (answer_batch)


def describe_job(payload: dict) -> dict:
    """Runs in an inference worker. Input errors (image unreachable, not an image, bad box) come back as
    {"error": ...}; anything else raises and rq records the job as failed. When the worker answered this job
    together with others (`answer_batch`), it returns that answer."""
    from rq import get_current_job

    from regionscribe.backend.inference.answers import describe_payloads

    job = get_current_job()
    if job is not None and job.id in _ANSWERED:
        return _ANSWERED.pop(job.id)
    return describe_payloads([payload])[0]


JOB_FUNCTION = f"{describe_job.__module__}.{describe_job.__qualname__}"  # a describe job's func_name in rq


def answer_batch(jobs: list) -> int:
    """Answer several waiting describe jobs in one batched pass (the worker's job loop calls it before running
    them); each job then returns its own answer when rq runs it. Returns how many were answered. Anything but an
    input error leaves the jobs unanswered, so each runs alone and fails alone."""
    from regionscribe.backend.inference.answers import describe_payloads

    try:
        answers = describe_payloads([job.args[0] for job in jobs])
    except Exception as exc:
        log.warning("batched pass over %d jobs failed (%s: %s); running them one by one", len(jobs),
                    type(exc).__name__, exc)
        return 0
    for job, answer in zip(jobs, answers):
        _ANSWERED[job.id] = answer
    return len(jobs)


def forget_answers(job_ids) -> None:
    """Drop answers a job loop computed but did not hand out (a job that could not run)."""
    for job_id in job_ids:
        _ANSWERED.pop(job_id, None)
