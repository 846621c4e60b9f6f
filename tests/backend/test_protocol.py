"""The HTTP protocol as Label Studio 1.23 speaks it (payload shapes from shared/research/labelstudio.md), against a
real Redis and a real inference worker running the untrained tiny model."""
from __future__ import annotations

import base64
import time

import pytest
from label_studio_sdk.label_interface import LabelInterface

from regionscribe.backend.web.app import create_app


def ls_box(rid, x, y, w, h, ow=96, oh=64):
    """A rectangle as Label Studio's editor serializes it in an interactive context."""
    return {"id": rid, "type": "rectanglelabels", "from_name": "bbox", "to_name": "image", "original_width": ow,
            "original_height": oh, "image_rotation": 0, "origin": "manual",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Object"]}}


def predict_body(h, config, tasks, context=None):
    return {"tasks": tasks, "project": "1.1716200000", "label_config": h.config_xml(config),
            "params": {"login": None, "password": None, "context": context}}


def task(tid, image, annotations=None, drafts=None, predictions=None):
    return {"id": tid, "data": {"image": image}, "annotations": annotations or [], "drafts": drafts or [],
            "predictions": predictions or [], "meta": {}, "created_at": "2026-11-22T00:00:00Z",
            "updated_at": "2026-11-22T00:00:00Z", "is_labeled": False, "project": 1}


def test_health_is_fast_and_reports_redis_and_workers(client):
    started = time.perf_counter()
    response = client.get("/health")
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "UP" and body["redis"] is True and body["workers"] >= 1
    assert body["model_version"] == "tiny-untrained-0"


def test_setup_answers_the_model_version_fast(client, h):
    payload = {"project": "1.1716200000", "schema": h.config_xml("region_attributes"), "hostname":
               "http://localhost:8080", "access_token": "abc", "extra_params": None}
    started = time.perf_counter()
    response = client.post("/setup", json=payload)
    assert time.perf_counter() - started < 3.0
    assert response.status_code == 200
    assert response.get_json() == {"model_version": "tiny-untrained-0"}


@pytest.mark.parametrize("config", ["region_captioning", "region_attributes", "region_relations"])
def test_interactive_predict_echoes_the_drawn_boxes_and_links_results_by_id(client, h, config):
    drawn = [ls_box("userBox01", 8, 12, 34, 50), ls_box("userBox02", 58, 30, 34, 50)]
    body = predict_body(h, config, [task(7, "/data/upload/1/scene.png")], {"result": drawn})
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 1
    prediction = results[0]
    assert "error" not in prediction, prediction
    assert LabelInterface(h.config_xml(config)).validate_prediction(prediction, return_errors=True) == []
    assert prediction["model_version"] == "tiny-untrained-0" and 0 <= prediction["score"] <= 1
    result = prediction["result"]
    for original in drawn:
        mine = [r for r in result if r.get("id") == original["id"]]
        echo = next(r for r in mine if r["type"] == "rectanglelabels")
        assert {k: v for k, v in echo.items() if k != "score"} == original  # the annotator's own box, unchanged
        caption = next(r for r in mine if r["from_name"] == "caption")
        assert caption["type"] == "textarea" and isinstance(caption["value"]["text"][0], str)
        for r in mine:
            assert r["to_name"] == "image"
            assert all(r["value"][k] == original["value"][k] for k in ("x", "y", "width", "height"))
    if config == "region_attributes":
        for rid in ("userBox01", "userBox02"):
            names = {r["from_name"] for r in result if r.get("id") == rid}
            assert {"color", "shape", "size", "texture", "shape_family"} <= names
            color = next(r for r in result if r.get("id") == rid and r["from_name"] == "color")
            assert len(color["value"]["choices"]) == 1
    if config == "region_relations":
        # no <Relations> in an interactive answer: Label Studio's editor cannot resolve them (labelstudio/predictions.py)
        assert [r for r in result if r["type"] == "relation"] == []
        texts = [r for r in result if r.get("from_name") == "relation_text"]
        assert {r["id"] for r in texts} == {"userBox01", "userBox02"}


def test_batch_predict_one_result_per_task_with_per_task_errors(client, h):
    annotation = {"id": 11, "result": [ls_box("a1", 8, 12, 34, 50), ls_box("a2", 58, 30, 34, 50)],
                  "updated_at": "2026-11-22T00:00:00Z"}
    prediction = {"id": 3, "result": [ls_box("p1", 10, 10, 20, 20)], "model_version": "old"}
    tasks = [
        task(1, "/data/upload/1/scene.png", annotations=[annotation]),
        task(2, "scene.png", predictions=[prediction]),  # a local file under IMAGE_ROOT
        task(3, "missing-file.png", annotations=[annotation]),
        task(4, "not-an-image.png", annotations=[annotation]),
        task(5, "/data/upload/1/scene.png"),  # no boxes at all
        {"id": 6, "data": {"other": "x"}, "annotations": [annotation]},  # no image field
        task(8, "rotated.jpg", drafts=[{"result": [{**ls_box("d1", 10, 10, 50, 20), "original_width": None,
                                                     "original_height": None}]}]),
    ]
    response = client.post("/predict", json=predict_body(h, "region_attributes", tasks))
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    interface = LabelInterface(h.config_xml("region_attributes"))
    ok = [results[i] for i in (0, 1, 6)]
    for item in ok:
        assert "error" not in item, item
        assert interface.validate_prediction(item, return_errors=True) == []
    assert {r["id"] for r in results[0]["result"]} == {"a1", "a2"}
    assert {r["id"] for r in results[1]["result"]} == {"p1"}
    # EXIF-rotated JPEG without original sizes: the decoded (rotated, 40x80) size is reported
    assert {(r["original_width"], r["original_height"]) for r in results[6]["result"]} == {(40, 80)}
    errors = {i: results[i] for i in (2, 3, 4, 5)}
    for i, item in errors.items():
        assert "result" not in item, item  # batch errors carry no result: Label Studio skips, stores nothing
        assert item["error"] and item["model_version"]
    assert "does not exist" in errors[2]["error"]
    assert "not a readable image" in errors[3]["error"]
    assert "no regions" in errors[4]["error"]
    assert "data.image" in errors[5]["error"]


def test_predict_with_a_config_it_cannot_fill_answers_an_error_per_task(client, h):
    body = predict_body(h, "region_captioning", [task(1, "scene.png"), task(2, "scene.png")])
    body["label_config"] = "<View><Image name='image' value='$image'/></View>"
    results = client.post("/predict", json=body).get_json()["results"]
    assert len(results) == 2 and all("RectangleLabels" in r["error"] for r in results)


def test_predict_uses_the_config_setup_saw_when_none_is_sent(client, h):
    client.post("/setup", json={"project": "42.1716200000", "schema": h.config_xml("region_captioning")})
    body = {"tasks": [task(1, "scene.png")], "project": "42.1716200000",
            "params": {"context": {"result": [ls_box("u1", 8, 12, 34, 50)]}}}
    results = client.post("/predict", json=body).get_json()["results"]
    assert "error" not in results[0] and {r["id"] for r in results[0]["result"]} == {"u1"}


def test_interactive_errors_keep_a_result_list(client, h):
    body = predict_body(h, "region_captioning", [task(1, "missing.png")], {"result": [ls_box("u1", 1, 1, 10, 10)]})
    item = client.post("/predict", json=body).get_json()["results"][0]
    assert item["result"] == [] and "does not exist" in item["error"]


@pytest.mark.parametrize("body, status", [
    ({"tasks": []}, 400), ({"tasks": "x"}, 400), ({}, 400),
    ({"tasks": [{"id": 1}], "params": {"context": "x"}}, 400),
    ({"tasks": [{"id": 1}], "params": {"context": {"result": "x"}}}, 400),
    ({"tasks": [{"id": 1}], "label_config": None}, 400),
])
def test_malformed_predict_requests_are_400_not_500(client, body, status):
    assert client.post("/predict", json=body).status_code == status
    assert client.post("/predict", data=b"not json", content_type="application/json").status_code == 400


def test_webhook_answers_201_fast(client):
    payload = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": []}, "task": {"id": 1},
               "project": {"id": 1}}
    started = time.perf_counter()
    response = client.post("/webhook", json=payload)
    assert response.status_code == 201 and time.perf_counter() - started < 1.0
    assert client.post("/webhook", json={"project": {}}).status_code == 400


def test_metrics_are_prometheus_text(client, h):
    client.get("/health")
    text = client.get("/metrics").get_data(as_text=True)
    assert "# TYPE regionscribe_http_requests_total counter" in text
    assert 'regionscribe_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'regionscribe_http_request_duration_seconds_bucket{route="/health",le="+Inf"}' in text
    assert "regionscribe_workers_up" in text and "regionscribe_queue_depth" in text
    assert "regionscribe_model_loads_total" in text


def test_request_body_limit(make_settings, worker):
    app = create_app(make_settings(max_request_bytes=1000))
    response = app.test_client().post("/predict", data=b"{" + b" " * 5000 + b"}", content_type="application/json")
    assert response.status_code == 413


def test_basic_auth_guards_every_route_but_health(make_settings, worker, h):
    app = create_app(make_settings(basic_auth_user="ls", basic_auth_pass="s3cret"))
    c = app.test_client()

    def auth(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert c.get("/health").status_code == 200
    for method, path in (("post", "/setup"), ("post", "/predict"), ("post", "/webhook"), ("get", "/metrics")):
        response = getattr(c, method)(path, json={})
        assert response.status_code == 401 and "Basic" in response.headers["WWW-Authenticate"]
        assert getattr(c, method)(path, json={}, headers=auth("ls", "wrong")).status_code == 401
        assert getattr(c, method)(path, json={}, headers=auth("other", "s3cret")).status_code == 401
    assert c.post("/setup", json={}, headers=auth("ls", "s3cret")).status_code == 200
    assert c.get("/metrics", headers=auth("ls", "s3cret")).status_code == 200


def test_redis_down_is_a_deliberate_503(make_settings, h):
    app = create_app(make_settings(redis_url="redis://127.0.0.1:1/0"))
    c = app.test_client()
    assert c.get("/health").status_code == 503
    body = predict_body(h, "region_captioning", [task(1, "scene.png")], {"result": [ls_box("u", 1, 1, 10, 10)]})
    response = c.post("/predict", json=body)
    assert response.status_code == 503 and "unreachable" in response.get_json()["detail"]
    assert c.post("/setup", json={"schema": h.config_xml("region_captioning")}).status_code == 200


def test_no_worker_running_is_a_fast_clear_error(make_settings, redis_url, h):
    empty_db = redis_url.rsplit("/", 1)[0] + "/7"  # a database no worker announces itself in
    app = create_app(make_settings(redis_url=empty_db))
    body = predict_body(h, "region_captioning", [task(1, "scene.png")], {"result": [ls_box("u", 1, 1, 10, 10)]})
    started = time.perf_counter()
    item = app.test_client().post("/predict", json=body).get_json()["results"][0]
    assert time.perf_counter() - started < 1.0
    assert "no inference worker is running" in item["error"]
