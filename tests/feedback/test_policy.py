"""The retraining policy against a real Redis and both stores: the N-th changed region enqueues exactly one run,
START_TRAINING enqueues at once, never two runs of a project at a time, the count restarts at mark_training_started,
a dead training worker frees the project and gives its run's count back, and a real training worker's callbacks chain
the next run (after a success; a failed run gives its count back and is not retried at once)."""
from __future__ import annotations

import json

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.feedback.policy import TRAINING_FUNCTION, Policy
from regionscribe.backend.core.keys import TRAINING_JOB_KEY
from regionscribe.backend.store import Store

FAKE = "tests.feedback.fake_training.run_training"


def training_jobs(settings, client) -> list[Job]:
    queue = Queue(settings.training_queue, connection=client, serializer=JSONSerializer)
    return queue.get_jobs()


def one_region(ls, p, caption="c", annotation=None, task=None, updated=0.0, action="ANNOTATION_CREATED"):
    return ls.annotation_event(p, task or ls.new_id(), annotation or ls.new_id(),
                               ls.region("r", caption=caption), updated=updated, action=action)


def test_nth_changed_region_enqueues_exactly_one_run(make_settings, redis_client, ls):
    settings = make_settings(retrain_after=3)
    p = ls.new_id()
    first = one_region(ls, p)
    for event in (first, first, one_region(ls, p)):  # a duplicate does not count
        answer = handle_event(settings, event)
    assert answer["training"]["pending"] == 2 and training_jobs(settings, redis_client) == []
    answer = handle_event(settings, one_region(ls, p))
    assert answer["training"]["due"] and answer["training"]["enqueued"]
    jobs = training_jobs(settings, redis_client)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.func_name == TRAINING_FUNCTION == "regionscribe.backend.feedback.training_run.run_training"
    assert list(job.args) == [p] and job.origin == settings.training_queue
    assert job.timeout == settings.training_timeout and job.meta["project_id"] == p
    for _ in range(3):  # more corrections while it waits: still one run
        answer = handle_event(settings, one_region(ls, p))
        assert answer["training"]["active"] == job.id and answer["training"]["enqueued"] is None
    assert [j.id for j in training_jobs(settings, redis_client)] == [job.id]
    # another project has its own run
    q = ls.new_id()
    for _ in range(3):
        handle_event(settings, one_region(ls, q))
    assert sorted(j.args[0] for j in training_jobs(settings, redis_client)) == sorted([p, q])


def test_start_training_enqueues_at_once_and_only_once(make_settings, redis_client, ls):
    settings = make_settings(retrain_after=1000)
    p = ls.new_id()
    answer = handle_event(settings, {"action": "START_TRAINING", "project": {"id": p, "title": "x"}})
    assert answer["training"]["reason"] == "requested" and answer["training"]["enqueued"]
    again = handle_event(settings, {"action": "START_TRAINING", "project": {"id": p, "title": "x"}})
    assert again["training"]["active"] == answer["training"]["enqueued"]
    assert len(training_jobs(settings, redis_client)) == 1


def take_as_worker(settings, redis_client, job_id: str, worker: str) -> None:
    """What a worker does when it takes a training job: out of the queue, started under its name, its liveness key
    fresh (deleting that key later is what a SIGKILL amounts to)."""
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    Queue(settings.training_queue, connection=redis_client, serializer=JSONSerializer).remove(job)
    job.worker_name = worker
    job.set_status(JobStatus.STARTED)
    job.save()
    redis_client.set(f"regionscribe:workers:{worker}", json.dumps({"name": worker}), px=60000)


def test_a_running_job_blocks_and_a_dead_worker_frees_the_project(make_settings, redis_client, ls):
    settings = make_settings(retrain_after=1)
    p = ls.new_id()
    job_id = handle_event(settings, one_region(ls, p))["training"]["enqueued"]
    take_as_worker(settings, redis_client, job_id, "feedback-trainer")
    policy = Policy(settings, Store.shared(settings), redis_client)
    assert policy.evaluate(p)["active"] == job_id
    # the worker is killed: its liveness key expires; the next evaluation records the run as failed and starts anew
    redis_client.delete("regionscribe:workers:feedback-trainer")
    decision = policy.evaluate(p)
    assert decision["enqueued"] and decision["enqueued"] != job_id
    assert job_id in FailedJobRegistry(settings.training_queue, connection=redis_client, serializer=JSONSerializer)
    assert [j.id for j in training_jobs(settings, redis_client)] == [decision["enqueued"]]


def test_the_count_restarts_at_mark_training_started(make_settings, redis_client, ls):
    settings = make_settings(retrain_after=2)
    p = ls.new_id()
    handle_event(settings, one_region(ls, p))
    job_id = handle_event(settings, one_region(ls, p))["training"]["enqueued"]
    store = Store.shared(settings)
    store.mark_training_started(p, store.snapshot(p).id)  # what the run does first
    redis_client.delete(TRAINING_JOB_KEY.format(project=p))  # ... and the run ended
    Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer).delete()
    policy = Policy(settings, store, redis_client)
    assert policy.evaluate(p) == {"due": False, "pending": 0, "reason": "", "enqueued": None, "active": None}
    assert handle_event(settings, one_region(ls, p))["training"]["pending"] == 1
    assert handle_event(settings, one_region(ls, p))["training"]["enqueued"]


def test_a_training_worker_runs_it_and_events_during_the_run_lead_to_the_next(make_settings, redis_client,
                                                                             spawn_worker, ls):
    from tests.feedback.fake_training import FAIL, INJECT, RUNS

    settings = make_settings(retrain_after=2)
    p = ls.new_id()
    for _ in range(2):
        handle_event(settings.replace(redis_url=None), one_region(ls, p))  # stored; no policy yet
    redis_client.rpush(INJECT.format(project=p), json.dumps([one_region(ls, p) for _ in range(3)]))
    policy = Policy(settings, Store.shared(settings), redis_client)
    first = policy.evaluate(p, function=FAKE)["enqueued"]
    assert first
    worker = spawn_worker(settings, [settings.training_queue], burst=True)
    assert worker.wait(60) == 0
    runs = [json.loads(r) for r in redis_client.lrange(RUNS.format(project=p), 0, -1)]
    # run 1 trained on the 2 regions; 3 arrived during it (counted toward the next run, not enqueued then);
    # its success callback found them pending and enqueued run 2, which the same burst worker ran
    assert [r["records"] for r in runs] == [2, 5]
    assert Store.shared(settings).pending_count(p) == 0
    assert redis_client.get(TRAINING_JOB_KEY.format(project=p)) is None
    # a failing run frees the project too (failure callback)
    redis_client.set(FAIL.format(project=p), 1)
    redis_client.rpush(INJECT.format(project=p), json.dumps([]))
    assert policy.evaluate(p, function=FAKE)["enqueued"] is None  # nothing pending, nothing requested
    handle_event(settings.replace(redis_url=None), {"action": "START_TRAINING", "project": {"id": p}})
    failing = policy.evaluate(p, function=FAKE)["enqueued"]
    assert spawn_worker(settings, [settings.training_queue], burst=True).wait(60) == 0
    assert len(redis_client.lrange(RUNS.format(project=p), 0, -1)) == 3
    assert failing in FailedJobRegistry(settings.training_queue, connection=redis_client, serializer=JSONSerializer)
    assert redis_client.get(TRAINING_JOB_KEY.format(project=p)) is None
    # the failed run gave back the request it had taken (not retried at once: the burst worker ran it only once)
    store = Store.shared(settings)
    assert store.training_requested(p) and store.open_training_run(p) is None
    assert store.training_runs(p)[-1]["outcome"].startswith("failed")
    assert policy.evaluate(p, function=FAKE)["enqueued"]  # the next evaluation starts the next run


def test_a_run_whose_worker_died_gives_its_count_back_at_the_next_event(make_settings, redis_client, ls):
    """The run took its snapshot (the count restarted) and its worker was killed: the next webhook event finds the
    store's open run on a dead worker, closes it as failed, and the regions it had taken count again."""
    settings = make_settings(retrain_after=3)
    p = ls.new_id()
    for _ in range(2):
        handle_event(settings, one_region(ls, p))
    job_id = handle_event(settings, one_region(ls, p))["training"]["enqueued"]
    take_as_worker(settings, redis_client, job_id, "feedback-doomed")
    store = Store.shared(settings)
    store.mark_training_started(p, store.snapshot(p).id, job_id=job_id)  # what the run does first
    during = handle_event(settings, one_region(ls, p))["training"]
    assert during["pending"] == 1 and during["enqueued"] is None  # alive: an event during the run waits
    redis_client.delete("regionscribe:workers:feedback-doomed")  # SIGKILL: the liveness key expires
    after = handle_event(settings, one_region(ls, p))["training"]
    assert after["pending"] == 5 and after["enqueued"] not in (None, job_id)  # 3 taken by the dead run + 2
    assert [r["outcome"] for r in store.training_runs(p)] == ["failed: worker feedback-doomed stopped beating"]
    assert job_id in FailedJobRegistry(settings.training_queue, connection=redis_client, serializer=JSONSerializer)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_concurrent_triggers_enqueue_one_run(make_settings, redis_client, ls):
    """Many web threads deciding at once (the Redis mutex): one job."""
    import threading

    settings = make_settings(retrain_after=1)
    p = ls.new_id()
    handle_event(settings.replace(redis_url=None), one_region(ls, p))
    store = Store.shared(settings)
    decisions = []

    def decide():
        from regionscribe.backend.core.connections import fast_redis

        decisions.append(Policy(settings, store, fast_redis(settings.redis_url)).evaluate(p))

    threads = [threading.Thread(target=decide) for _ in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(1 for d in decisions if d["enqueued"]) == 1
    assert len(training_jobs(settings, redis_client)) == 1
