"""Fuzzing POST /predict and POST /webhook with hypothesis, against the real app: a real Redis, a real SQLite store in a
temporary folder (the webhook tests also run on the real PostgreSQL, own schema, when it is reachable: it refuses
what SQLite takes, e.g. NUL in text) and a real inference worker (untrained tiny model) on its own queue.

Payloads: JSON values of any shape; Label Studio-shaped payloads (batch and interactive /predict, the four webhook
actions) with keys deleted, values replaced by random JSON or by values of the wrong type; non-JSON bodies (random
bytes, truncated JSON, NaN/Infinity, unpaired surrogates, invalid UTF-8, nesting deeper than the parser's recursion
limit) under various content types; random X-Request-Id headers.

Properties: never a 5xx (the 503 for a Redis that is down is tested in test_redis_restart.py); every answer is JSON;
a /predict answered 200 has one item per task; a webhook event answered 4xx writes nothing to the store (every table
compared before and after); no job fails in the worker, and the worker is alive and still answers at the end.

FUZZ_EXAMPLES=<n> runs n examples per test instead of the modest default (for a deeper search by hand).
"""
from __future__ import annotations

import copy
import json
import os
import sqlite3
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings as hypothesis_settings, strategies as st

from regionscribe.backend.web.app import create_app
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.store import Store

ROOT = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("REGIONSCRIBE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
XML = (ROOT / "labeling_configs" / "region_attributes.xml").read_text()
SEGMENTS_XML = (ROOT / "labeling_configs" / "region_segments.xml").read_text()


def fuzz(examples: int):
    return hypothesis_settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES") or examples), deadline=None,
                               database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------------- strategies

KEYS = ["tasks", "params", "context", "result", "id", "data", "image", "annotations", "drafts", "predictions",
        "value", "x", "y", "width", "height", "rotation", "type", "from_name", "to_name", "rectanglelabels",
        "original_width", "original_height", "image_rotation", "action", "annotation", "task", "project",
        "label_config", "completed_by", "was_cancelled", "updated_at", "text", "choices", "taxonomy", "points",
        "polygonlabels", "rle", "format", "brushlabels", "radiusX", "radiusY", "ellipselabels"]
ANY_CHAR = st.characters(exclude_categories=())  # unpaired surrogates included
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(ANY_CHAR, max_size=12)
           | st.sampled_from(["", "0", "12", "1.5", "1e400", "NaN", "\x00", "rectanglelabels", "bbox", "image",
                              "ANNOTATION_CREATED", "/data/upload/1/x.png", "../../etc/passwd"]))
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(KEYS) | st.text(ANY_CHAR, max_size=6), inner, max_size=4), max_leaves=12)
WRONG_TYPES = st.sampled_from([
    None, True, False, 0, -1, 7, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 2 ** 64, 10 ** 30, 0.5, -0.0, 1e308, -1e308,
    "", "x", "12", "12.5", "-3", "1e400", "2024-05-01T12:00:00Z", [], [None], [1, "a"], {}, {"id": None},
    {"id": "abc"}, {"id": 2 ** 70}, "\x00", "\ud800"])
CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json", "application/json; charset=utf-8", "application/vnd.api+json",
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "application/xml", ""])
REQUEST_IDS = st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=160)


def _slots(value):
    """Every (container, key) in a JSON value, depth first."""
    if isinstance(value, dict):
        for key in list(value):
            yield value, key
            yield from _slots(value[key])
    elif isinstance(value, list):
        for i in range(len(value)):
            yield value, i
            yield from _slots(value[i])


@st.composite
def mutated(draw, bases):
    """A realistic payload with 1 to 4 keys deleted or their values replaced (random JSON or a wrong type)."""
    value = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        slots = list(_slots(value))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        how = draw(st.sampled_from(["delete", "random", "wrong type", "wrong type"]))
        if how == "delete":
            del container[key]
        else:
            # a copy: sampled_from hands out the same list or dict each time, and a later step may edit it
            container[key] = copy.deepcopy(draw(JSON_VALUES if how == "random" else WRONG_TYPES))
    return value


@st.composite
def json_body(draw, value):
    """`value` as a request body: plain JSON, or UTF-8 with unpaired surrogates left raw (invalid UTF-8)."""
    if draw(st.integers(0, 9)) == 0:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


@st.composite
def broken_body(draw, bases):
    """Bodies that are not one JSON object: random bytes, truncated JSON, too deep, NaN and friends."""
    kind = draw(st.sampled_from(["bytes", "truncated", "deep", "constant", "scalar"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        text = json.dumps(draw(st.sampled_from(bases))).encode()
        return text[:draw(st.integers(0, len(text) - 1))]
    if kind == "deep":
        depth = draw(st.sampled_from([100, 5000, 100_000]))
        return b'{"tasks": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "constant":
        return draw(st.sampled_from([b'{"tasks": NaN}', b'{"action": "ANNOTATION_CREATED", "annotation": '
                                     b'{"id": Infinity}}', b'{"project": -Infinity}', b'{"x": 1e999}',
                                     b'{"action": "\\ud800"}', b'{"a": 1} trailing', b'{"a": 1' + b"1" * 5000 + b"}"]))
    return json.dumps(draw(SCALARS | st.lists(SCALARS, max_size=3)), allow_nan=True).encode()


# ----------------------------------------------------------------------------------- realistic payloads


def box(rid: str, x=10.0, y=10.0, w=30.0, h=30.0) -> dict:
    return {"id": rid, "from_name": "bbox", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
            "original_width": 96, "original_height": 64, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Object"]}}


def shapes(prefix: str) -> list[dict]:
    """A polygon, a brush mask (Label Studio's RLE of a 96x64 image) and an ellipse, with a caption each."""
    import numpy as np

    from regionscribe.backend.labelstudio.shapes import Shape

    mask = np.zeros((64, 96), bool)
    mask[20:52, 56:88] = True
    common = {"to_name": "image", "origin": "manual", "original_width": 96, "original_height": 64,
              "image_rotation": 0}
    out = []
    for rid, name, kind, geometry in (
            (f"{prefix}p", "outline", "polygonlabels", {"points": [[8, 12], [42, 12], [42, 62], [8, 62]],
                                                       "closed": True}),
            (f"{prefix}b", "paint", "brushlabels", {"format": "rle", "rle": list(Shape.from_mask(mask).rle)}),
            (f"{prefix}e", "ellipse", "ellipselabels", {"x": 50, "y": 50, "radiusX": 10, "radiusY": 20,
                                                        "rotation": 15})):
        out.append({**common, "id": rid, "from_name": name, "type": kind, "value": {**geometry, kind: ["Object"]}})
        out.append({**common, "id": rid, "from_name": "caption", "type": "textarea",
                    "value": {**geometry, "text": ["a thing"]}})
    return out


def per_region(rid: str, from_name: str, kind: str, key: str, values) -> dict:
    return {"id": rid, "from_name": from_name, "to_name": "image", "type": kind, "origin": "manual",
            "original_width": 96, "original_height": 64, "image_rotation": 0,
            "value": {"x": 10.0, "y": 10.0, "width": 30.0, "height": 30.0, "rotation": 0, key: values}}


def predict_payloads(image: str) -> list[dict]:
    task = {"id": 11, "data": {"image": image}, "meta": {}, "project": 3,
            "annotations": [{"id": 5, "result": [box("r1"), box("r2", 55, 25, 35, 30)], "was_cancelled": False,
                             "updated_at": "2024-05-01T12:00:00.000000Z"}],
            "drafts": [], "predictions": [{"id": 2, "result": [box("p1", 5, 5, 10, 10)]}]}
    batch = {"tasks": [task, {"id": 12, "data": {"image": image}, "annotations": [], "predictions": []}],
             "model_version": "tiny-untrained-0", "project": "3.1714564800", "label_config": XML,
             "params": {"login": None, "password": None, "context": None}}
    interactive = {"tasks": [{"id": 11, "data": {"image": image}}], "model_version": "", "project": "3.1714564800",
                   "label_config": XML, "params": {"login": None, "password": None, "context": {
                       "result": [box("i1", 20, 20, 25, 25)], "is_positive": True}}}
    shaped = {"tasks": [{"id": 13, "data": {"image": image}, "annotations": [
                  {"id": 6, "result": shapes("a"), "was_cancelled": False,
                   "updated_at": "2024-05-01T12:00:00.000000Z"}]}],
              "model_version": "tiny-untrained-0", "project": "3.1714564800", "label_config": SEGMENTS_XML,
              "params": {"login": None, "password": None, "context": None}}
    return [batch, interactive, shaped]


def webhook_payloads() -> list[dict]:
    result = [box("w1"), per_region("w1", "caption", "textarea", "text", ["a red square"]),
              per_region("w1", "color", "choices", "choices", ["red"]),
              per_region("w1", "shape_family", "taxonomy", "taxonomy", [["polygon", "square"]]),
              box("w2", 50, 20, 30, 30), {"type": "relation", "from_id": "w1", "to_id": "w2", "direction": "right",
                                          "labels": []}]
    created = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 501, "result": result, "created_username": "a@example.com, 1", "completed_by": 1,
                       "was_cancelled": False, "ground_truth": False, "created_at": "2024-05-01T12:00:00.000000Z",
                       "updated_at": "2024-05-01T12:00:05.000000Z", "lead_time": 12.5, "task": 71, "project": 9},
        "task": {"id": 71, "data": {"image": "/data/upload/9/scene.png"}, "meta": {}, "project": 9,
                 "is_labeled": True},
        "project": {"id": 9, "title": "regions", "label_config": XML},
    }
    updated = copy.deepcopy(created)
    updated["action"] = "ANNOTATION_UPDATED"
    updated["annotation"]["updated_at"] = "2024-05-01T12:01:00.000000Z"
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 501}, {"id": 502}],
               "project": {"id": 9, "title": "regions"}}
    training = {"action": "START_TRAINING", "project": {"id": 9, "title": "regions"}}
    shaped = copy.deepcopy(created)
    shaped["annotation"].update(id=601, result=shapes("s"), task=72)
    shaped["task"]["id"] = 72
    shaped["project"]["label_config"] = SEGMENTS_XML
    return [created, updated, deleted, training, shaped]


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fuzz_worker(start_worker):
    return start_worker(f"fuzz-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def app_settings(redis_url, image_root, fuzz_worker, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    tag = uuid.uuid4().hex[:8]
    settings = Settings(redis_url=redis_url, model_dir="tiny-untrained", image_root=str(image_root),
                        data_dir=str(data_dir), store_url=f"sqlite:///{data_dir / 'store.sqlite3'}",
                        inference_queue=fuzz_worker.queue,
                        ingest_queue=f"ingest-{tag}", training_queue=f"training-{tag}", predict_timeout=15.0,
                        retrain_after=10_000, log_level="WARNING")
    Store.shared(settings)  # opened (and migrated) before the first request: only events write from here
    yield settings
    close_store(settings.store_url)


def close_store(url: str) -> None:
    for key, store in list(Store._shared.items()):
        if key[1] == url:
            store.close()
            Store._shared.pop(key, None)


@pytest.fixture(scope="module")
def client(app_settings):
    return create_app(app_settings).test_client()


def sqlite_rows(path: str):
    def rows() -> dict[str, list]:
        """Every table's rows."""
        conn = sqlite3.connect(path)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
        finally:
            conn.close()

    return rows


def postgresql_rows(schema: str):
    import psycopg

    def rows() -> dict[str, list]:
        """Every table's rows."""
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            tables = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE "
                                                 "table_schema = %s ORDER BY table_name", (schema,))]
            return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{schema}"."{t}"'))) for t in tables}

    return rows


@pytest.fixture(scope="module")
def store_rows(app_settings):
    return sqlite_rows(app_settings.store_url.removeprefix("sqlite:///"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def webhook_app(request, app_settings, client, store_rows):
    """The app and a reader of its store's tables: the SQLite one, or one on the real PostgreSQL (own schema)."""
    if request.param == "sqlite":
        yield SimpleNamespace(client=client, rows=store_rows)
        return
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
            schema = f"rs_fuzz_{uuid.uuid4().hex[:12]}"
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {type(exc).__name__}")
    settings = app_settings.replace(store_url=f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}")
    try:
        Store.shared(settings)
        yield SimpleNamespace(client=create_app(settings).test_client(), rows=postgresql_rows(schema))
    finally:
        close_store(settings.store_url)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def post(client, path: str, body: bytes, content_type: str | None = "application/json", request_id=None):
    headers = {"X-Request-Id": request_id} if request_id is not None else {}
    return client.post(path, data=body, content_type=content_type or None, headers=headers)


def note(what: str) -> None:
    """Counted by `pytest --hypothesis-show-statistics`: what the examples reached."""
    if currently_in_test_context():
        event(what)


def check_answer(response) -> None:
    note(f"HTTP {response.status_code}")
    assert response.status_code < 500, (response.status_code, response.get_data()[:500])
    assert response.is_json, (response.status_code, response.content_type)


def check_predict(response, body: bytes) -> None:
    check_answer(response)
    if response.status_code != 200:
        return
    tasks = json.loads(body)["tasks"]
    results = response.get_json()["results"]
    assert isinstance(results, list) and len(results) == len(tasks)
    for item in results:
        assert isinstance(item, dict) and "model_version" in item
        note("a task described by the worker" if item.get("result") and not item.get("error") else
             "a task answered with an error")
        # an input the worker cannot use is an answered error, never a job that raised in the worker
        assert "the worker failed" not in str(item.get("error", "")), item["error"]


def check_webhook(client, store_rows, body: bytes, content_type="application/json", request_id=None):
    before = store_rows()
    response = post(client, "/webhook", body, content_type, request_id)
    check_answer(response)
    if 400 <= response.status_code < 500:
        assert store_rows() == before, f"a refused event ({response.status_code}) changed the store"
    return response


# ---------------------------------------------------------------------------------------------------- /predict


@pytest.fixture(scope="module")
def predict_bases(image_root):
    return predict_payloads(str(image_root / "scene0.png"))


def test_predict_answers_the_realistic_payloads(client, predict_bases):
    """The fuzzing's starting points work: boxes described, one item per task."""
    for body in predict_bases:
        response = post(client, "/predict", json.dumps(body).encode())
        assert response.status_code == 200, response.get_json()
        results = response.get_json()["results"]
        assert len(results) == len(body["tasks"])
        assert results[0].get("result") and not results[0].get("error"), results[0]


@fuzz(60)
@given(data=st.data())
def test_fuzz_predict_mangled_payloads(client, predict_bases, data):
    body = data.draw(json_body(data.draw(mutated(predict_bases))))
    check_predict(post(client, "/predict", body, request_id=data.draw(REQUEST_IDS)), body)


@fuzz(60)
@given(payload=JSON_VALUES | st.fixed_dictionaries({"tasks": JSON_VALUES, "label_config": st.just(XML)},
                                                  optional={"params": JSON_VALUES, "project": JSON_VALUES}))
def test_fuzz_predict_any_json(client, payload):
    body = json.dumps(payload).encode()
    check_predict(post(client, "/predict", body), body)


@fuzz(40)
@given(data=st.data(), content_type=CONTENT_TYPES)
def test_fuzz_predict_broken_bodies(client, predict_bases, data, content_type):
    response = post(client, "/predict", data.draw(broken_body(predict_bases)), content_type)
    check_answer(response)
    assert response.status_code == 400, response.get_json()


def test_worker_survived_and_still_answers(client, predict_bases, fuzz_worker):
    assert fuzz_worker.process.poll() is None, "the inference worker died"
    response = post(client, "/predict", json.dumps(predict_bases[1]).encode())
    assert response.status_code == 200
    assert response.get_json()["results"][0]["result"]


# ---------------------------------------------------------------------------------------------------- /webhook


def test_webhook_stores_the_realistic_payloads(webhook_app):
    """The fuzzing's starting points are accepted and written (so a refused mutation writing nothing means
    something)."""
    for body in webhook_payloads():
        before = webhook_app.rows()
        response = post(webhook_app.client, "/webhook", json.dumps(body).encode())
        assert response.status_code in (200, 201), response.get_json()
        assert webhook_app.rows() != before, body["action"]


def _with_nul(where: str) -> dict:
    payload = webhook_payloads()[0]
    annotation, result = payload["annotation"], payload["annotation"]["result"]
    if where == "region id":
        for item in result:
            item["id"] = "w\x001" if item.get("id") == "w1" else item.get("id")
    elif where == "image":
        payload["task"]["data"]["image"] = "/data/upload/9/\x00.png"
    elif where == "email":
        annotation["created_username"] = "a\x00@example.com, 1"
    elif where == "email object":
        annotation["completed_by"] = {"id": 1, "email": ["not", "an", "email"]}
    elif where == "created_at":
        annotation["created_at"] = "2024-05-01\x00"
    elif where == "label config":
        payload["project"]["label_config"] = XML + "\x00"
    elif where == "caption":
        result[1]["value"]["text"] = ["a red\x00 square"]
    return payload


@pytest.mark.parametrize("where, status", [("region id", 400), ("image", 400), ("email", 201), ("email object", 201),
                                           ("created_at", 201), ("label config", 201), ("caption", 201)])
def test_webhook_nul_and_odd_text(webhook_app, where, status):
    """PostgreSQL text cannot hold NUL: an identifier with one is refused (400, nothing written), free text loses
    it; an email that is not a string is left out."""
    payload = _with_nul(where)
    payload["annotation"]["id"] = 900 + len(where)
    response = check_webhook(webhook_app.client, webhook_app.rows, json.dumps(payload).encode())
    assert response.status_code == status, response.get_json()


@fuzz(80)
@given(data=st.data())
def test_fuzz_webhook_mangled_payloads(webhook_app, data):
    body = data.draw(json_body(data.draw(mutated(webhook_payloads()))))
    check_webhook(webhook_app.client, webhook_app.rows, body, request_id=data.draw(REQUEST_IDS))


ACTIONS = st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"])


@fuzz(60)
@given(payload=JSON_VALUES | st.fixed_dictionaries(
    {"action": ACTIONS}, optional={"annotation": JSON_VALUES, "annotations": JSON_VALUES, "task": JSON_VALUES,
                                   "project": JSON_VALUES}))
def test_fuzz_webhook_any_json(webhook_app, payload):
    check_webhook(webhook_app.client, webhook_app.rows, json.dumps(payload).encode())


@fuzz(40)
@given(data=st.data(), content_type=CONTENT_TYPES)
def test_fuzz_webhook_broken_bodies(webhook_app, data, content_type):
    body = data.draw(broken_body(webhook_payloads()))
    assert check_webhook(webhook_app.client, webhook_app.rows, body, content_type).status_code == 400


# ------------------------------------------------------------------------------ what the fuzzing found, pinned


def _predict_with(change) -> dict:
    body = predict_payloads("/nonexistent/scene.png")[0]  # where a box gets to the worker: an image error
    change(body, body["tasks"][0], body["tasks"][0]["annotations"][0]["result"][0])
    return body


def _webhook_with(change) -> dict:
    body = webhook_payloads()[0]
    change(body, body["annotation"], body["annotation"]["result"][0])
    return body


FOUND = {
    # each answered 500 before: the exception the app raised
    "predict: image_rotation not a number (ValueError)": (
        "/predict", _predict_with(lambda b, t, box: box.update(image_rotation="2024-05-01T12:00:00Z"))),
    "predict: annotations not a list (TypeError)": (
        "/predict", _predict_with(lambda b, t, box: t.update(annotations=7))),
    "predict: an annotation's result not a list (TypeError)": (
        "/predict", _predict_with(lambda b, t, box: t["annotations"][0].update(result=True))),
    "predict: rectanglelabels not a list (TypeError)": (
        "/predict", _predict_with(lambda b, t, box: box["value"].update(rectanglelabels=5))),
    "predict: task data not an object (AttributeError)": (
        "/predict", _predict_with(lambda b, t, box: t.update(data=["scene.png"]))),
    "webhook: annotation id beyond 64 bits (OverflowError in the store)": (
        "/webhook", _webhook_with(lambda b, a, box: a.update(id=2 ** 64))),
    "webhook: completed_by beyond 64 bits (OverflowError in the store)": (
        "/webhook", _webhook_with(lambda b, a, box: a.update(completed_by=10 ** 30))),
    "webhook: original_width beyond 32 bits (PostgreSQL: out of range)": (
        "/webhook", _webhook_with(lambda b, a, box: box.update(original_width=2 ** 40))),
    "webhook: rectanglelabels not a list (TypeError)": (
        "/webhook", _webhook_with(lambda b, a, box: box["value"].update(rectanglelabels=True))),
}
BODIES = {
    # not standard JSON, answered 500 before (NaN and Infinity are read by Python's parser)
    "webhook: annotation id Infinity (OverflowError)": (
        "/webhook", b'{"action": "ANNOTATION_CREATED", "annotation": {"id": Infinity, "task": 1}, "project": 1}'),
    "webhook: project id 1e999 (OverflowError)": ("/webhook", b'{"action": "START_TRAINING", "project": 1e999}'),
    "webhook: unpaired surrogate (UnicodeEncodeError hashing the event)": (
        "/webhook", b'{"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}], "project": {"id": 1, '
                    b'"title": "\\ud800"}}'),
    "predict: nesting deeper than the parser's recursion limit (RecursionError)": (
        "/predict", b'{"tasks": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_found_by_fuzzing(webhook_app, case):
    path, body = FOUND[case]
    if path == "/webhook":
        check_webhook(webhook_app.client, webhook_app.rows, json.dumps(body).encode())
    else:
        check_predict(post(webhook_app.client, "/predict", json.dumps(body).encode()), json.dumps(body).encode())


@pytest.mark.parametrize("case", list(BODIES))
def test_non_standard_json_is_refused(webhook_app, case):
    path, body = BODIES[case]
    before = webhook_app.rows()
    response = post(webhook_app.client, path, body)
    check_answer(response)
    assert response.status_code == 400 and "not valid JSON" in response.get_json()["detail"]
    assert webhook_app.rows() == before
