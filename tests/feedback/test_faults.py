"""Faults in the feedback loop, with real processes: a training worker SIGKILLed in the middle of a run, and the web
backend killed with -9 while Redis (non-persistent: its queues are lost) restarts between webhook events.

What must hold: the registry's current version keeps serving and no half-written version becomes visible, the
project's "one run at a time" lock does not outlive the dead worker, nothing the store recorded is lost or counted
twice, and the retraining count toward the next run is the store's (Redis only carries queues and announcements).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from rq import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.feedback.policy import Policy
from regionscribe.backend.core.keys import TRAINING_JOB_KEY
from regionscribe.backend.store import Store
from regionscribe.backend.inference.worker import is_alive

ROOT = Path(__file__).resolve().parents[2]


def seeded_registry(root: Path) -> Path:
    """A registry whose current version "v0" is an untrained tiny-preset checkpoint saved by the model code of this
    tree (a copy of model/default would do too, but only while its weights match the current architecture)."""
    from regionscribe.backend.core.registry import Registry
    from regionscribe.training.stages import TrainConfig, new_model

    new_model(TrainConfig(preset="tiny", seed=0)).save_pretrained(root / "versions" / "v0", {"version": "v0"})
    (root / "versions" / "v0" / "manifest.json").write_text(
        json.dumps({"version": "v0", "status": "accepted", "created": 1.0}))
    Registry(root).set_current("v0")
    return root


def trainer_env(stage1: int, stage2: int) -> dict:
    """A training worker's settings for these tests: tiny runs, a one-scene promotion check that lets any candidate
    through, and no `java` on PATH, so the evaluation skips METEOR's JVM (about 20 s of a run on 2 cores)."""
    return {"RETRAIN_STAGE1_STEPS": str(stage1), "RETRAIN_STAGE2_STEPS": str(stage2),
            "PROMOTION_BASE_SCENES": "1", "PROMOTION_TOLERANCE": "100",
            "PROMOTION_CIDER_TOLERANCE": "1000", "PATH": str(Path(sys.executable).parent)}


def training_jobs(settings, client) -> list:
    return Queue(settings.training_queue, connection=client, serializer=JSONSerializer).get_jobs()


# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def forget_announcement(redis_client):
    """The published version is announced under a global Redis key; the session's other tests must not see it."""
    from regionscribe.backend.core.keys import CURRENT_KEY

    yield
    redis_client.delete(CURRENT_KEY)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_training_worker_killed_mid_run_leaves_the_current_version_and_loses_no_event(
        make_settings, redis_client, spawn_worker, fake_ls, ls, wait, forget_announcement):
    from regionscribe.model.describer import RegionDescriber
    from regionscribe.backend.core.registry import Registry

    settings = make_settings(retrain_after=3)
    root = seeded_registry(Path(settings.registry_path))
    registry = Registry(root)
    store = Store.shared(settings)
    p, t = ls.new_id(), ls.new_id()

    def correction(n: int, caption: str) -> dict:
        path = f"/data/upload/{p}/{n}.png"
        fake_ls.files[path] = ls.png(color=(40 * n % 256, 90, 160))
        return ls.annotation_event(p, t + n, ls.new_id(), ls.region("r", caption=caption, color="red"), image=path)

    answers = [handle_event(settings, correction(n, f"a red square {n}"))["training"] for n in range(3)]
    first = answers[-1]["enqueued"]
    assert first and [a["pending"] for a in answers] == [1, 2, 3]

    # run 1: far more steps than it gets to do before the kill
    doomed = spawn_worker(settings, [settings.training_queue], env=trainer_env(stage1=2, stage2=100_000))
    run = wait(lambda: store.open_training_run(p), timeout=60, every=0.2)  # snapshot taken, count restarted
    assert run["job_id"] == first
    wait(lambda: list(root.glob(".staging-*")), timeout=30)  # the candidate is being trained into staging
    time.sleep(1.0)  # inside the training loop
    assert doomed.process.poll() is None, "the long run ended before the kill"
    # events during the run: stored, they wait for the next run; the lock holds (the worker is alive)
    during = [handle_event(settings, correction(n, f"a red square {n}"))["training"] for n in (3, 4)]
    assert [(d["pending"], d["enqueued"]) for d in during] == [(1, None), (2, None)]
    policy = Policy(settings, store, redis_client)
    assert policy.active_job(p).id == first

    doomed.kill()
    wait(lambda: not redis_client.exists(f"regionscribe:workers:{doomed.name}"), timeout=10)  # 4 missed beats

    # the current version still serves, and nothing half-written is a version
    assert (root / "current").read_text().strip() == "v0" and registry.current().version == "v0"
    assert [v.version for v in registry.versions()] == ["v0"] and os.listdir(root / "versions") == ["v0"]
    assert list(root.glob(".staging-*"))  # the interrupted candidate stays in staging, outside versions/
    assert RegionDescriber.from_pretrained(registry.current().path).model_version
    # the store still counts run 1 as going, and only the events during it as pending: what the next step repairs
    assert store.open_training_run(p)["job_id"] == first and store.pending_count(p) == 2
    # the lock still names run 1, but only as long as its worker beats: it no longer does (Policy.active_job would
    # now say None; not called here, so that the new worker's start does the recovery)
    assert redis_client.get(TRAINING_JOB_KEY.format(project=p)).decode() == first and not is_alive(redis_client, doomed.name)

    # a new training worker: its start finds run 1 on a dead worker, gives its count back, enqueues run 2, runs it
    started = time.monotonic()
    spawn_worker(settings, [settings.training_queue], env=trainer_env(stage1=1, stage2=2))
    wait(lambda: registry.current().version != "v0", timeout=120, every=0.2)
    seconds = time.monotonic() - started
    version = registry.current()
    assert version.manifest["status"] == "accepted" and version.manifest["parent"] == "v0"
    assert version.manifest["regions"] == version.manifest["images"] == 5  # 3 before the run, 2 during it
    assert RegionDescriber.from_pretrained(version.path).model_version == version.version
    assert sorted(v.version for v in registry.versions()) == sorted(["v0", version.version])
    runs = store.training_runs(p)
    assert [(r["job_id"] == first, r["outcome"]) for r in runs] == [
        (True, f"failed: worker {doomed.name} stopped beating"), (False, "accepted")]
    assert runs[1]["snapshot_id"] == version.manifest["snapshot"]
    assert store.pending_count(p) == 0 and store.open_training_run(p) is None
    assert first in FailedJobRegistry(settings.training_queue, connection=redis_client, serializer=JSONSerializer)
    wait(lambda: redis_client.get(TRAINING_JOB_KEY.format(project=p)) is None, timeout=20)  # run 2's callback freed it
    announced = json.loads(redis_client.get("regionscribe:model:current"))
    assert announced["version"] == version.version
    print(f"\nrun 2 (new worker start to published) in {seconds:.1f} s")


# ------------------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------------------


def test_backend_killed_and_redis_restarted_between_events_lose_nothing_and_count_nothing_twice(
        make_settings, own_redis, spawn_backend, ls):
    """The store is the source of truth for records and for the count toward the next run; Redis (here without
    persistence) only carries queues, the policy's job pointer and announcements, so losing it loses no event."""
    settings = make_settings(redis_url=own_redis.url, retrain_after=4)
    p, q, t = ls.new_id(), ls.new_id(), ls.new_id()
    a1, a2, a3 = ls.new_id(), ls.new_id(), ls.new_id()
    posts = []

    def post(backend, payload) -> dict:
        started = time.perf_counter()
        response = requests.post(f"{backend.url}/webhook", json=payload, timeout=10)
        assert response.status_code == 201 and time.perf_counter() - started < 1.0, response.text
        posts.append(payload)
        return response.json()

    def event(a, result, action="ANNOTATION_CREATED", updated=0.0, project=None):
        return ls.annotation_event(project or p, t, a, result, action=action, updated=updated,
                                   label_config=ls.XML if action == "ANNOTATION_CREATED" else None)

    def jobs(project) -> list[str]:
        client = redis.Redis.from_url(own_redis.url)
        try:
            return [j.id for j in training_jobs(settings, client) if j.args == [project]]
        finally:
            client.close()

    # --- before: backend 1, Redis 1
    backend = spawn_backend(settings)
    create_a1 = event(a1, ls.region("r1", caption="one") + ls.region("r2", caption="two"))
    create_a2 = event(a2, ls.region("r1", caption="three", color="red"))
    assert post(backend, create_a1)["training"]["pending"] == 2
    assert post(backend, create_a2)["training"]["pending"] == 3
    again = post(backend, create_a1)  # Label Studio's retry of a delivery
    assert again["result"]["outcome"] == "stale" and "training" not in again
    # project q crosses RETRAIN_AFTER: a run is queued (no training worker here), in Redis only
    for n in range(4):
        answer = post(backend, event(ls.new_id(), ls.region("r", caption=f"q {n}"), project=q))
    lost_job = answer["training"]["enqueued"]
    assert lost_job and jobs(q) == [lost_job]

    # --- kill -9 the backend; Redis restarts empty (persistence off: the queued run is gone)
    backend.kill()
    own_redis.kill()
    backend = spawn_backend(settings, port=backend.port)  # it comes back while Redis is still down
    update_a1 = event(a1, ls.region("r1", caption="one, corrected") + ls.region("r3", caption="four"),
                      action="ANNOTATION_UPDATED", updated=10)
    down = post(backend, update_a1)  # r2 removed, r1 changed, r3 new: stored, not evaluated without Redis
    assert down["result"]["outcome"] == "applied" and down["training"]["evaluated"] is False
    own_redis.start()
    assert jobs(q) == []

    # --- after: backend 2, Redis 2
    assert post(backend, update_a1)["result"]["outcome"] == "stale"  # retried after the restart: once only
    assert post(backend, create_a1)["result"]["outcome"] == "stale"  # an old delivery arriving late
    assert post(backend, ls.deleted_event(p, [a2]))["result"]["annotations"] == 1
    assert post(backend, create_a2)["result"]["outcome"] == "tombstoned"  # a retried create of a deleted one
    # the count toward the next run: r1 (changed), r3 (new), and a3's two regions; r2 and a2 are deleted
    crossing = post(backend, event(a3, ls.region("r1", caption="five") + ls.region("r2", caption="six")))
    assert crossing["training"]["pending"] == 4 and crossing["training"]["enqueued"]
    assert jobs(p) == [crossing["training"]["enqueued"]]
    # project q's run was lost with Redis; its count was not: the next event enqueues it again
    requeued = post(backend, event(ls.new_id(), ls.region("r", caption="q after"), project=q))["training"]
    assert requeued["pending"] == 5 and requeued["enqueued"] not in (None, lost_job) and jobs(q) == [
        requeued["enqueued"]]

    # --- what is on disk, through a fresh handle
    store = Store.open(settings.store_url, images_dir=Path(settings.data_dir) / "images")
    try:
        assert {(r.annotation_id, r.region_id): r.caption for r in store.records(p)} == {
            (a1, "r1"): "one, corrected", (a1, "r3"): "four", (a3, "r1"): "five", (a3, "r2"): "six"}
        assert {(r.annotation_id, r.region_id) for r in store.records(p, include_deleted=True) if r.deleted} == {
            (a1, "r2"), (a2, "r1")}
        assert store.pending_count(p) == 4 and store.pending_count(q) == 5
        assert len(store.records(q)) == 5
        kept = store.events(limit=1000)
        distinct = {json.dumps(e, sort_keys=True) for e in posts}
        assert len(kept) == len(distinct) and sum(e["deliveries"] for e in kept) == len(posts)
    finally:
        store.close()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_redis_flushed_mid_run_starts_no_second_run(make_settings, own_redis, spawn_worker, fake_ls, ls, wait):
    """FLUSHALL while a training run goes: the job, the policy's pointer to it and the worker's liveness key are
    gone from Redis, but the run's lease lives in the store (renewed by its worker), so neither further events, nor
    a training worker's start-up sweep, nor a second job of the same project start a second run. Once the first
    run's worker is gone, its lease expires and the project trains again."""
    from regionscribe.backend.core.keys import WORKER_KEY

    settings = make_settings(redis_url=own_redis.url, retrain_after=3)
    seeded_registry(Path(settings.registry_path))
    store = Store.shared(settings)
    client = redis.Redis.from_url(own_redis.url)
    p, t = ls.new_id(), ls.new_id()
    lease_seconds = 3.0
    env = {**trainer_env(stage1=2, stage2=100_000), "TRAINING_LEASE_SECONDS": str(lease_seconds)}

    def correction(n: int) -> dict:
        path = f"/data/upload/{p}/{n}.png"
        fake_ls.files[path] = ls.png(color=(40 * n % 256, 90, 160))
        return ls.annotation_event(p, t + n, ls.new_id(), ls.region("r", caption=f"a red square {n}", color="red"),
                                   image=path)

    first = [handle_event(settings, correction(n))["training"] for n in range(3)][-1]["enqueued"]
    assert first
    running = spawn_worker(settings, [settings.training_queue], env=env)
    wait(lambda: store.open_training_run(p), timeout=60, every=0.2)
    lease = wait(lambda: store.training_lease(p), timeout=10, every=0.1)
    assert lease["holder"] == first

    client.flushall()  # Redis loses everything in the middle of the run
    assert client.get(TRAINING_JOB_KEY.format(project=p)) is None and not training_jobs(settings, client)

    # events past RETRAIN_AFTER: each evaluates the policy; Redis knows of no run, the store's lease does
    during = [handle_event(settings, correction(n))["training"] for n in (3, 4, 5)]
    assert [(d["pending"], d["enqueued"], d["active"]) for d in during] == [(1, None, None), (2, None, None),
                                                                           (3, None, first)]
    # a training worker starting sweeps every project: still nothing enqueued
    assert Policy(settings, store, client).sweep()[p]["enqueued"] is None
    # a second job of the same project that got onto the queue anyway (a race before the lease) refuses to run
    Queue(settings.training_queue, connection=client, serializer=JSONSerializer).enqueue_call(
        "regionscribe.backend.feedback.training_run.run_training", args=(p,), job_id="second-run", timeout=600)
    second = spawn_worker(settings, [settings.training_queue], env=env)
    job = wait(lambda: (j := Queue(settings.training_queue, connection=client, serializer=JSONSerializer)
                        .fetch_job("second-run")) is not None and j.is_finished and j, timeout=120, every=0.2)
    assert job.return_value()["skipped"] is True and job.return_value()["holder"] == first
    # the first run's worker renews its lease past its original expiry; one run, still open, in the store
    time.sleep(lease_seconds + 0.5)
    renewed = store.training_lease(p)
    assert renewed is not None and renewed["holder"] == first and renewed["expires_at"] > lease["expires_at"]
    assert running.process.poll() is None
    assert [(r["job_id"], r["finished_at"]) for r in store.training_runs(p)] == [(first, None)]
    assert client.exists(WORKER_KEY.format(name=running.name))  # its heartbeat wrote its liveness key again

    # the first run's worker dies: the lease expires, the run is closed as failed and the project trains again
    second.stop()
    running.kill()
    wait(lambda: store.training_lease(p) is None, timeout=lease_seconds + 5, every=0.2)
    after = handle_event(settings, correction(6))["training"]
    assert after["enqueued"] and after["enqueued"] != first
    assert [r["outcome"] for r in store.training_runs(p)] == ["failed: its job is gone from Redis"]
    client.close()
