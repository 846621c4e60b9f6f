"""/webhook end to end: the Flask app behind a real HTTP server, a real Redis, the store on SQLite and PostgreSQL,
the ingest job run by a real `regionscribe worker --queue ingest` subprocess fetching from a fake Label Studio."""
from __future__ import annotations

import hashlib
import json
import time

import pytest
import requests

from regionscribe.backend.store import Store


def post(server, payload, **kwargs):
    data = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    return requests.post(f"{server.url}/webhook", data=data, headers={"Content-Type": "application/json"},
                         timeout=10, **kwargs)


def test_malformed_payloads_get_400_and_write_nothing(make_settings, serve, ls):
    settings = make_settings()
    server = serve(settings)
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    good = ls.annotation_event(p, t, a, ls.region("r1", caption="x"))
    bad = {
        "not json": "{nope",
        "not an object": "[1, 2]",
        "no action": {k: v for k, v in good.items() if k != "action"},
        "no annotation": {k: v for k, v in good.items() if k != "annotation"},
        "annotation not an object": {**good, "annotation": "17"},
        "no annotation id": {**good, "annotation": {k: v for k, v in good["annotation"].items() if k != "id"}},
        "result not a list": {**good, "annotation": {**good["annotation"], "result": {"id": "r1"}}},
        "bad task id": {**good, "task": {**good["task"], "id": "seven"},
                        "annotation": {**good["annotation"], "task": "seven"}},
        "no project": {k: v for k, v in good.items() if k != "project"} | {
            "annotation": {k: v for k, v in good["annotation"].items() if k != "project"},
            "task": {k: v for k, v in good["task"].items() if k != "project"}},
        "deleted without a list": {"action": "ANNOTATIONS_DELETED", "annotations": {"id": 1}, "project": {"id": p}},
        "deleted with a bad id": {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": None}], "project": {"id": p}},
        "training without project": {"action": "START_TRAINING"},
    }
    for name, payload in bad.items():
        response = post(server, payload)
        assert response.status_code == 400, (name, response.text)
        body = response.json()
        assert body.get("detail"), name
    assert Store.shared(settings).events() == []
    # the messages say what is wrong
    assert "annotation.result" in post(server, bad["result not a list"]).json()["detail"]
    assert "JSON object" in post(server, bad["not json"]).json()["detail"]


def test_unknown_actions_get_200(make_settings, serve, ls):
    settings = make_settings()
    server = serve(settings)
    for action in ("PROJECT_UPDATED", "TASKS_CREATED", "ANNOTATION_DELETED"):  # singular: not what LS sends
        response = post(server, {"action": action, "project": {"id": 1}})
        assert response.status_code == 200 and response.json()["status"] == "Unknown event"
    assert Store.shared(settings).events() == []


def test_created_is_stored_before_the_201_and_answers_fast(make_settings, serve, ls):
    settings = make_settings()
    server = serve(settings)
    p, t = ls.new_id(), ls.new_id()
    post(server, ls.annotation_event(p, t, ls.new_id(), ls.region("warm", caption="x")))  # first request opens things
    seconds = []
    for i in range(20):
        a = ls.new_id()
        started = time.perf_counter()
        response = post(server, ls.annotation_event(p, t, a, ls.region("r", caption=f"caption {i}", color="red")))
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 201, response.text
        assert response.json()["result"]["outcome"] == "applied"
        # durable before the answer: a fresh handle (another process would see the same) has it
        fresh = Store.open(settings.store_url, images_dir=settings.data_dir)
        assert [r.caption for r in fresh.records(p) if r.annotation_id == a] == [f"caption {i}"]
        fresh.close()
    assert max(seconds) < 1.0, seconds
    assert sorted(seconds)[len(seconds) // 2] < 0.25, seconds


def test_ingest_worker_caches_the_image_by_content_hash(make_settings, serve, spawn_worker, redis_client, fake_ls,
                                                        ls, wait):
    settings = make_settings()
    server = serve(settings)
    p, t = ls.new_id(), ls.new_id()
    path = f"/data/upload/{p}/{t}-photo.jpg"
    data = ls.exif_jpeg(size=(80, 40), orientation=6)  # displayed (and decoded) as 40x80
    fake_ls.files[path] = data
    a = ls.new_id()
    response = post(server, ls.annotation_event(p, t, a, ls.region("r1", x=25, y=50, w=50, h=25, caption="green"),
                                                image=path))
    assert response.status_code == 201 and response.json()["image"] == "queued"
    # a second annotation of the same image while the job waits: no second job
    b = ls.new_id()
    assert post(server, ls.annotation_event(p, t, b, ls.region("r2", caption="also green"), image=path)).ok
    worker = spawn_worker(settings, [settings.ingest_queue]).wait_ready(redis_client)
    store = Store.shared(settings)
    records = wait(lambda: (lambda rs: rs if all(r.image_sha256 for r in rs) and len(rs) == 2 else None)(
        store.records(p)))
    sha = hashlib.sha256(data).hexdigest()
    assert {r.image_sha256 for r in records} == {sha}
    cached = store.image_path(sha)
    assert cached is not None and cached.name == f"{sha}.jpg" and cached.read_bytes() == data
    assert cached.parent == store.images_dir and str(cached).startswith(settings.data_dir)
    r1 = next(r for r in records if r.region_id == "r1")
    assert (r1.image_width, r1.image_height) == (40, 80) and r1.image_path == cached
    assert r1.pixel_box == pytest.approx((10.0, 40.0, 30.0, 60.0))  # from the decoded size, not LS's 640x480
    assert sum(1 for seen in fake_ls.seen if seen == path) == 1  # fetched once
    # a later annotation of a cached image is filled at ingest time, without a job
    c = ls.new_id()
    later = post(server, ls.annotation_event(p, t, c, ls.region("r3", caption="third"), image=path)).json()
    assert "image" not in later
    assert [r.image_sha256 for r in store.records(p) if r.annotation_id == c] == [sha]
    worker.stop()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_hanging_redis_is_asked_once_per_event_with_demonstrations(make_settings, serve, own_redis, ls,
                                                                     monkeypatch):
    """DEMONSTRATIONS=k: the web process queues the demonstrations' refresh after the event is stored. A Redis that
    accepts connections but never answers (SIGSTOP) fails the event's first Redis call; the refresh is not tried
    again after it (each try costs the short timeouts), and the answer says the queue is unavailable."""
    from regionscribe.backend.inference import demonstration_jobs

    queued = []
    real = demonstration_jobs.enqueue_refresh
    monkeypatch.setattr(demonstration_jobs, "enqueue_refresh",
                        lambda connection, settings, project, tasks, *a: queued.append((project, tasks)) or real(
                            connection, settings, project, tasks, *a))
    settings = make_settings(redis_url=own_redis.url, demonstrations=4, retrain_after=1)
    server = serve(settings)
    p, t = ls.new_id(), ls.new_id()
    first = post(server, ls.annotation_event(p, t, ls.new_id(), ls.region("before", caption="x")))
    assert first.status_code == 201 and "queue" not in first.json() and queued == [(p, [t])]
    own_redis.freeze()
    try:
        started = time.perf_counter()
        response = post(server, ls.annotation_event(p, t, ls.new_id(), ls.region("during", caption="hung")))
        elapsed = time.perf_counter() - started
    finally:
        own_redis.thaw()
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["queue"] == "unavailable" and body["training"]["evaluated"] is False, body
    assert queued == [(p, [t])], queued  # the refresh was not tried against the hung Redis
    print(f"\nanswered in {elapsed * 1000:.0f} ms with Redis hung")
    assert {r.region_id for r in Store.shared(settings).records(p)} == {"before", "during"}
    after = post(server, ls.annotation_event(p, t, ls.new_id(), ls.region("after", caption="y")))
    assert after.status_code == 201 and "queue" not in after.json() and queued == [(p, [t]), (p, [t])]


def test_redis_down_still_stores_and_the_sweep_fetches_later(make_settings, serve, own_redis, fake_ls, ls):
    from regionscribe.backend.feedback.image_cache import fetch_missing_images

    settings = make_settings(redis_url=own_redis.url, retrain_after=1)
    server = serve(settings)
    p, t = ls.new_id(), ls.new_id()
    path = f"/data/upload/{p}/{t}.png"
    fake_ls.files[path] = ls.png(size=(100, 50))
    assert post(server, ls.annotation_event(p, t, ls.new_id(), ls.region("before", caption="x"), image=path)).ok
    own_redis.kill()
    started = time.perf_counter()
    a = ls.new_id()
    response = post(server, ls.annotation_event(p, t, a, ls.region("during", caption="redis is down"), image=path))
    elapsed = time.perf_counter() - started
    assert response.status_code == 201 and elapsed < 1.0, (response.text, elapsed)
    body = response.json()
    assert body["image"] == "deferred" and body["training"]["evaluated"] is False
    training = post(server, {"action": "START_TRAINING", "project": {"id": p}})
    assert training.status_code == 201  # the request is kept in the store
    store = Store.shared(settings)
    assert store.training_requested(p)
    assert {r.region_id for r in store.records(p)} == {"before", "during"}
    assert all(r.image_sha256 is None for r in store.records(p))
    # Redis comes back empty (its queued jobs are gone): nothing recorded is lost, the next event works
    own_redis.start()
    after = post(server, ls.annotation_event(p, t, ls.new_id(), ls.region("after", caption="y"), image=path))
    assert after.ok and after.json()["training"]["enqueued"]  # the request kept while Redis was down
    assert {r.region_id for r in store.records(p)} == {"before", "during", "after"}
    from rq import Queue
    from rq.serializers import JSONSerializer

    import redis

    client = redis.Redis.from_url(own_redis.url)
    assert [j.args for j in Queue(settings.training_queue, connection=client, serializer=JSONSerializer).get_jobs()
            ] == [[p]]
    summary = fetch_missing_images(store, settings)
    assert summary == {"fetched": 1, "failed": {}}
    assert all(r.image_sha256 and r.image_path and r.image_width == 100 for r in store.records(p))
    assert fetch_missing_images(store, settings) == {"fetched": 0, "failed": {}}


def test_sweep_records_failures_and_retries(make_settings, fake_ls, ls):
    from regionscribe.backend.feedback.events import handle_event
    from regionscribe.backend.feedback.image_cache import fetch_missing_images

    settings = make_settings(redis_url=None)
    store = Store.shared(settings)
    p, t = ls.new_id(), ls.new_id()
    path = f"/data/upload/{p}/missing.png"
    handle_event(settings, ls.annotation_event(p, t, ls.new_id(), ls.region("r", caption="x"), image=path))
    summary = fetch_missing_images(store, settings)
    assert summary["fetched"] == 0 and "404" in summary["failed"][path]
    assert store.cached_image(path)["attempts"] == 1
    fake_ls.files[path] = ls.png()
    assert fetch_missing_images(store, settings) == {"fetched": 1, "failed": {}}
    fake_ls.files[f"/data/upload/{p}/junk.png"] = b"<html>login page</html>"
    handle_event(settings, ls.annotation_event(p, t, ls.new_id(), ls.region("j", caption="x"),
                                               image=f"/data/upload/{p}/junk.png"))
    assert "not a readable image" in fetch_missing_images(store, settings)["failed"][f"/data/upload/{p}/junk.png"]


def test_metrics_show_the_edit_rate_per_model_version(make_settings, serve, ls):
    from regionscribe.backend.store import Suggestion

    settings = make_settings()
    server = serve(settings)
    p, t = ls.new_id(), ls.new_id()
    Store.shared(settings).record_suggestions(p, [Suggestion(t, "s1", "tiny-v7", caption="a red square"),
                                                  Suggestion(t, "s2", "tiny-v7", caption="a blue circle")])
    post(server, ls.annotation_event(p, t, ls.new_id(), ls.region("s1", caption="a red square")
                                     + ls.region("s2", caption="a green circle")))
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'regionscribe_edit_rate{model_version="tiny-v7"} 0.5' in text
    assert 'regionscribe_prefilled_regions{model_version="tiny-v7"} 2' in text


def test_predict_remembers_what_it_suggested(make_settings, ls):
    """The hook in RegionScribeBackend.predict: what the prediction sent to Label Studio suggests (read from the
    regions and the worker's answer it was built from, like an annotation) is kept per (project, task, region id);
    then an annotation that keeps it counts as confirmed."""
    from regionscribe.backend.labelstudio.labeling_config import ProjectConfig
    from regionscribe.backend.web.ml_backend import RegionScribeBackend

    settings = make_settings()
    p, t = ls.new_id(), ls.new_id()
    config = ProjectConfig.parse(ls.XML)
    regions = config.regions_from_results(ls.region("r1") + ls.region("r2", x=50))
    answer = {"width": 640, "height": 480, "model_version": "tiny-v9", "relations": [], "regions": [
        {"id": "r1", "caption": "a red square", "confidence": 0.9, "attributes": {
            "color": [["red", 0.9], ["blue", 0.1]], "shape family": [["square", 0.8]]}},
        {"id": "r2", "caption": "a blue circle", "confidence": 0.8, "attributes": {"color": [["blue", 0.7]]}}]}
    prediction = config.build_prediction(regions, answer, interactive=True)
    model = RegionScribeBackend(settings, None, ls.XML, project=str(p))
    model._remember_suggestions(config, [{"id": t, "data": {"image": "/x.png"}}, {"id": t + 1}],
                                [prediction, {"error": "no boxes", "result": []}], {0: (regions, answer, None)})
    store = Store.shared(settings)
    got = store.suggestions(p, t)
    assert got["r1"].caption == "a red square" and got["r1"].model_version == "tiny-v9"
    assert got["r1"].attributes == {"color": ["red"], "shape_family": [["polygon", "square"]]}
    assert store.suggestions(p, t + 1) == {}
    from regionscribe.backend.feedback.events import handle_event

    accepted = [dict(item, origin="prediction") for item in prediction["result"]]
    accepted[-1] = {**accepted[-1], "value": {**accepted[-1]["value"], "choices": ["green"]}}  # r2's colour fixed
    handle_event(settings.replace(redis_url=None), ls.annotation_event(p, t, ls.new_id(), accepted))
    assert {r.region_id: r.changed for r in store.records(p)} == {"r1": False, "r2": True}
    assert store.edit_rate(project_id=p)["tiny-v9"]["rate"] == 0.5


def test_the_config_saved_by_setup_reads_results_when_the_payload_has_none(make_settings, serve, ls):
    settings = make_settings()
    server = serve(settings)
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    setup = requests.post(f"{server.url}/setup", json={"project": f"{p}.1714564800", "schema": ls.RELATIONS_XML},
                          timeout=10)
    assert setup.ok
    g = {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 0}
    result = [{"id": "q", "from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
               "value": {**g, "rectanglelabels": ["Object"]}},
              {"id": "q", "from_name": "relation_text", "to_name": "image", "type": "textarea",
               "value": {**g, "text": ["next to the cup"]}},  # first, but the config says it is the relation text
              {"id": "q", "from_name": "caption", "to_name": "image", "type": "textarea",
               "value": {**g, "text": ["a spoon"]}}]
    assert post(server, ls.annotation_event(p, t, a, result, label_config=None)).status_code == 201
    store = Store.shared(settings)
    record = store.records(p)[0]
    assert (record.caption, record.relation_text) == ("a spoon", "next to the cup")
    assert store.label_config(p) == ls.RELATIONS_XML  # kept for the trainer
