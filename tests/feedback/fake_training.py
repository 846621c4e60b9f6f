"""A stand-in for regionscribe.backend.feedback.training_run.run_training (the lead's job), for the policy tests: it takes a snapshot, marks
the run started, records the run in Redis, and can replay events "arriving during the run" or fail on request."""
from __future__ import annotations

import json

import redis
from rq import get_current_job

from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.core.settings import get_settings
from regionscribe.backend.store import Store

RUNS = "feedback-test:runs:{project}"
INJECT = "feedback-test:inject:{project}"
FAIL = "feedback-test:fail:{project}"


def run_training(project_id: int) -> dict:
    settings = get_settings()
    store = Store.shared(settings)
    connection = redis.Redis.from_url(settings.redis_url)
    snapshot = store.snapshot(project_id)
    job = get_current_job()
    store.mark_training_started(project_id, snapshot.id, job_id=job.id if job is not None else None)
    connection.rpush(RUNS.format(project=project_id), json.dumps({"snapshot": snapshot.id,
                                                                 "records": len(snapshot.records)}))
    arriving = connection.lpop(INJECT.format(project=project_id))
    for payload in json.loads(arriving or "[]"):  # webhook events that arrive while this run trains
        handle_event(settings, payload)
    if connection.get(FAIL.format(project=project_id)):
        raise RuntimeError("training failed on purpose")
    return {"snapshot": snapshot.id, "records": len(snapshot.records)}
