"""The RQ queue and the inference workers, against a real redis-server and real worker processes."""
from __future__ import annotations

import json
import threading
import time

from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from regionscribe.backend.web.app import create_app
from regionscribe.backend.inference.submit import inference_queue, make_payload, submit, wait_for
from regionscribe.backend.core.liveness import live_workers
from regionscribe.model.asks import Asks

BOX = {"x": 8, "y": 12, "width": 34, "height": 50, "rotation": 0, "labels": ["Object"]}
BOX2 = {"x": 58, "y": 30, "width": 34, "height": 50, "rotation": 0, "labels": ["Object"]}


def payload(image, *boxes, task_id=1):
    regions = [{"id": f"r{i}", **b} for i, b in enumerate(boxes or (BOX,))]
    return make_payload(task_id, image, regions, Asks(caption=True, attributes={"color": ["red", "blue"]}), True)


def test_worker_loads_the_model_once_and_reuses_it(redis_client, make_settings, worker):
    settings = make_settings()
    queue = inference_queue(redis_client, settings)
    jobs = submit(queue, [payload("scene.png", task_id=i) for i in range(4)], settings)
    outcomes = wait_for(redis_client, jobs, timeout=30)
    assert all(o.ok for o in outcomes), [o.message for o in outcomes]
    assert {o.value["worker"] for o in outcomes} == {"test-worker-main"}
    assert {o.value["worker_loads"] for o in outcomes} == {1}  # four jobs, one model load
    info = json.loads(redis_client.get("regionscribe:workers:test-worker-main"))
    assert info["state"] == "ready" and info["loads"] == 1 and info["model_version"] == "tiny-untrained-0"


def test_second_box_on_the_same_image_hits_the_feature_cache(redis_client, make_settings, worker, image_root, h):
    settings = make_settings()
    queue = inference_queue(redis_client, settings)
    fresh = image_root / f"fresh-{time.monotonic_ns()}.png"  # an image no earlier test has shown the worker
    fresh.write_bytes(h.png_bytes(size=(50, 70), color=(10, 200, 30)))
    first = wait_for(redis_client, submit(queue, [payload(fresh.name, BOX)], settings), timeout=30)[0]
    second = wait_for(redis_client, submit(queue, [payload(fresh.name, BOX2)], settings), timeout=30)[0]
    assert first.ok and second.ok
    assert first.value["cache_hit"] is False and second.value["cache_hit"] is True
    assert (second.value["width"], second.value["height"]) == (50, 70)


def test_image_errors_come_back_as_task_errors_not_failed_jobs(redis_client, make_settings, worker):
    settings = make_settings()
    outcomes = wait_for(redis_client, submit(inference_queue(redis_client, settings),
                                             [payload("nope.png"), payload("http://10.0.0.1/x.png")], settings), 30)
    assert not outcomes[0].ok and "does not exist" in outcomes[0].message
    assert not outcomes[1].ok and "not allowed" in outcomes[1].message


def test_a_plain_worker_serves_the_inference_and_the_ingest_queue(redis_client, spawn_worker):
    """`regionscribe worker` with no --queue, as a deployment starts it: the ingest jobs that cache annotated images
    have a worker too (doctor counts it as a live ingest worker)."""
    from rq import Worker

    spawn_worker("plain-worker", "inference-plain", plain=True, INGEST_QUEUE="ingest-plain")
    assert "plain-worker" in {w["name"] for w in live_workers(redis_client, "inference-plain")}
    assert "plain-worker" in {w["name"] for w in live_workers(redis_client, "ingest-plain")}
    deadline = time.monotonic() + 10
    while not (found := [w for w in Worker.all(connection=redis_client) if w.name == "plain-worker"]):
        assert time.monotonic() < deadline, "rq never registered the worker"
        time.sleep(0.05)
    assert set(found[0].queue_names()) == {"inference-plain", "ingest-plain"}


def test_several_workers_share_one_queue(redis_client, make_settings, spawn_worker):
    settings = make_settings(inference_queue="inference-shared")
    # at most 2 jobs per batched pass: one worker cannot take all 4 jobs at once, the other gets the rest
    workers = [spawn_worker(name, "inference-shared", wait=False, INFERENCE_BATCH_JOBS=2)
               for name in ("shared-a", "shared-b")]
    for w in workers:  # both load their model at the same time
        w.wait_ready(redis_client)
    slow = [payload(f"http://{settings.allowed_hosts[0]}/slow.png?s=0.6", task_id=i) for i in range(4)]
    outcomes = wait_for(redis_client, submit(inference_queue(redis_client, settings), slow, settings), timeout=30)
    assert all(o.ok for o in outcomes), [o.message for o in outcomes]
    assert {o.value["worker"] for o in outcomes} == {"shared-a", "shared-b"}


def test_predict_timeout_returns_a_clear_error_and_cancels_queued_jobs(make_settings, spawn_worker, redis_client, h):
    spawn_worker("slow-worker", "inference-timeout")
    settings = make_settings(inference_queue="inference-timeout", predict_timeout=1.0)
    client = create_app(settings).test_client()
    slow = f"http://{settings.allowed_hosts[0]}/slow.png?s=3"
    tasks = [{"id": i, "data": {"image": slow}} for i in (1, 2)]
    body = {"tasks": tasks, "label_config": h.config_xml("region_captioning"),
            "params": {"context": {"result": [{"id": "u", "type": "rectanglelabels", "from_name": "bbox",
                                               "to_name": "image", "value": {**BOX, "rectanglelabels": ["Object"]}}]}}}
    started = time.perf_counter()
    results = client.post("/predict", json=body).get_json()["results"]
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0
    assert len(results) == 2
    assert all("PREDICT_TIMEOUT=1 s" in r["error"] for r in results)
    queue = inference_queue(redis_client, settings)
    assert queue.count == 0  # the job still waiting behind the slow one was cancelled


def test_a_worker_killed_mid_job_does_not_hang_the_request(make_settings, spawn_worker, redis_client, h):
    victim = spawn_worker("victim-worker", "inference-kill")
    settings = make_settings(inference_queue="inference-kill", predict_timeout=30.0)
    client = create_app(settings).test_client()
    body = {"tasks": [{"id": 1, "data": {"image": f"http://{settings.allowed_hosts[0]}/slow.png?s=20"}}],
            "label_config": h.config_xml("region_captioning"),
            "params": {"context": {"result": [{"id": "u", "type": "rectanglelabels", "from_name": "bbox",
                                               "to_name": "image", "value": {**BOX, "rectanglelabels": ["Object"]}}]}}}
    answer = {}

    def request():
        answer["results"] = client.post("/predict", json=body).get_json()["results"]

    thread = threading.Thread(target=request)
    started = time.perf_counter()
    thread.start()
    registry = inference_queue(redis_client, settings).started_job_registry
    deadline = time.monotonic() + 10
    while not registry.get_job_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    job_id = registry.get_job_ids()[0].split(":")[0]
    assert Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer).get_status() == JobStatus.STARTED
    victim.kill()  # SIGKILL while the worker is fetching the image
    thread.join(15)
    assert not thread.is_alive(), "the request hung after the worker died"
    assert time.perf_counter() - started < 10  # well before PREDICT_TIMEOUT=30
    error = answer["results"][0]["error"]
    assert "victim-worker" in error and "stopped while describing" in error
    assert "victim-worker" not in {w["name"] for w in live_workers(redis_client)}
    # not lost silently: the job is in rq's FailedJobRegistry already, not only after rq's own cleanup
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert job_id in inference_queue(redis_client, settings).failed_job_registry.get_job_ids()


def test_waiting_jobs_are_answered_in_one_pass_each_on_its_own(redis_client, make_settings, spawn_worker):
    """Cross-request batching: jobs waiting when the worker looks are answered in one batched pass, each with the
    answer a one-job-per-pass worker gives it, and a job with an unreadable image or a bad box fails alone."""
    boxes = [BOX, BOX2, {**BOX, "x": 30, "y": 5, "width": 20, "height": 20}]
    good = [payload("scene.png", *boxes[: 1 + i % 3], task_id=i) for i in range(6)]
    bad_box = make_payload(90, "scene.png", [{"id": "r0", **BOX}], Asks(caption=True), True, describe=[5])
    jobs = good[:3] + [payload("nope.png", task_id=91)] + good[3:] + [bad_box]
    answers = {}
    for name, limit in (("batching", 16), ("one-per-pass", 1)):
        settings = make_settings(inference_queue=f"inference-{name}")
        submitted = submit(inference_queue(redis_client, settings), jobs, settings)  # all waiting before it starts
        spawn_worker(f"{name}-worker", f"inference-{name}", INFERENCE_BATCH_JOBS=limit)
        answers[name] = wait_for(redis_client, submitted, timeout=60)
    batched, alone = answers["batching"], answers["one-per-pass"]
    assert [o.ok for o in batched] == [o.ok for o in alone] == [True] * 3 + [False] + [True] * 3 + [False]
    assert "does not exist" in batched[3].message and batched[3].value["error_kind"] == "image"
    assert "there are 1 boxes" in batched[7].message and batched[7].value["error_kind"] == "input"
    assert {o.value["timings"]["batch"] for o in batched if o.ok} == {6.0}  # 8 jobs in the pass, 6 reached the model
    assert {o.value["timings"]["batch"] for o in alone if o.ok} == {1.0}
    for b, a in zip(batched, alone):
        if not b.ok:
            continue
        assert len(b.value["regions"]) == len(a.value["regions"])
        for rb, ra in zip(b.value["regions"], a.value["regions"]):
            assert rb["caption"] == ra["caption"]
            assert [v for v, _ in rb["attributes"]["color"]] == [v for v, _ in ra["attributes"]["color"]]
            assert abs(rb["confidence"] - ra["confidence"]) < 1e-4
