"""The webhook made right automatically (regionscribe.backend.labelstudio.webhooks): /setup queues the repair without waiting on Label Studio,
the ingest worker gives Label Studio's webhook the Basic auth header and removes duplicates, and a backend without an
API key says once how to fix it. Label Studio's API is
tests/feedback/fake_labelstudio.py; tests/e2e/test_no_lost_corrections.py runs the same against the real Label Studio 1.23.2."""
from __future__ import annotations

import logging
import socket
import time

import redis
import requests

from regionscribe.backend.labelstudio import webhooks
from regionscribe.backend.labelstudio.webhooks import ensure_webhook

from tests.feedback.fake_labelstudio import HEADER, PASSWORD, USER


def setup_call(server, pid: int, auth=(USER, PASSWORD), xml="<View/>"):
    started = time.perf_counter()
    response = requests.post(f"{server.url}/setup", json={"project": f"{pid}.1714564800", "schema": xml},
                             auth=auth, timeout=5)
    return response, time.perf_counter() - started


def test_setup_makes_the_webhook_carry_the_credentials(make_settings, api, serve, spawn_worker, redis_client, ls,
                                                      wait):
    settings = make_settings(label_studio_url=api.url, basic_auth_user=USER, basic_auth_pass=PASSWORD)
    server = serve(settings)
    pid = api.add_project(ls.XML)
    own = api.add_webhook(pid, f"{server.url}/webhook", headers={"X-Trace": "kept"})
    port = server.url.rsplit(":", 1)[1]
    dup = api.add_webhook(pid, f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/webhook/")  # the reconnect duplicate
    other = api.add_webhook(pid, "http://elsewhere.example/hook")
    response, seconds = setup_call(server, pid, xml=ls.XML)
    assert response.status_code == 200 and response.json()["model_version"]
    assert seconds < 1.0
    worker = spawn_worker(settings, [settings.ingest_queue]).wait_ready(redis_client)
    wait(lambda: api.webhooks[own]["headers"].get("Authorization") == HEADER and dup not in api.webhooks,
         timeout=30)
    assert api.webhooks[own]["headers"]["X-Trace"] == "kept"
    assert api.webhooks[own]["url"] == f"{server.url}/webhook" and other in api.webhooks
    # Label Studio sends what the webhook holds: with that header an event is stored (before: 401)
    event = ls.annotation_event(pid, ls.new_id(), ls.new_id(), ls.region("r1", caption="arrives"))
    assert requests.post(f"{server.url}/webhook", json=event, timeout=5).status_code == 401
    stored = requests.post(f"{server.url}/webhook", json=event, headers={"Authorization": HEADER}, timeout=5)
    assert stored.status_code == 201, stored.text
    # /setup runs often: the check is not queued again within CHECK_EVERY seconds
    patches = sum(1 for method, _ in api.calls if method in ("PATCH", "DELETE"))
    lists = sum(1 for method, path in api.calls if path.startswith("/api/webhooks/?"))
    assert setup_call(server, pid, xml=ls.XML)[0].status_code == 200
    time.sleep(1.0)
    assert sum(1 for method, path in api.calls if path.startswith("/api/webhooks/?")) == lists
    assert sum(1 for method, _ in api.calls if method in ("PATCH", "DELETE")) == patches == 2
    worker.stop()


def test_without_an_api_key_setup_succeeds_and_warns_once(make_settings, serve, caplog, monkeypatch):
    monkeypatch.setattr(webhooks, "_warned", False)
    settings = make_settings(basic_auth_user=USER, basic_auth_pass=PASSWORD, label_studio_api_key=None)
    server = serve(settings)
    with caplog.at_level(logging.WARNING, logger="regionscribe.backend.labelstudio.webhooks"):
        for pid in (41, 42):
            response, seconds = setup_call(server, pid)
            assert response.status_code == 200 and seconds < 1.0
    warnings = [r for r in caplog.records if r.name == "regionscribe.backend.labelstudio.webhooks" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    text = warnings[0].getMessage()
    assert "LABEL_STUDIO_API_KEY" in text and "401" in text and "/api/webhooks/<id>/" in text
    assert f"{server.url}/webhook" in text and PASSWORD not in text
    # remembered as connected all the same (the doctor and the sync go through these)
    connection = redis.Redis.from_url(settings.redis_url)
    assert {41, 42} <= set(webhooks.connected_projects(connection))


def test_setup_never_waits_on_label_studio(make_settings, serve):
    """A Label Studio that accepts connections and never answers costs /setup nothing: the check runs in a job."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        settings = make_settings(label_studio_url=f"http://127.0.0.1:{hole.getsockname()[1]}",
                                 basic_auth_user=USER, basic_auth_pass=PASSWORD)
        server = serve(settings)
        for pid in (51, 52, 53):
            response, seconds = setup_call(server, pid)
            assert response.status_code == 200 and seconds < 1.0, seconds
    finally:
        hole.close()


def test_the_repair_case_by_case(make_settings, api, ls):
    settings = make_settings(label_studio_url=api.url, basic_auth_user=USER, basic_auth_pass=PASSWORD)
    backend_url = "http://backend.example:9090"
    pid = api.add_project(ls.XML)

    assert ensure_webhook(settings, pid, backend_url, waits=())["status"] == "missing"
    assert not [c for c in api.calls if c[0] != "GET"]

    hook = api.add_webhook(pid, backend_url + "/webhook", headers={"authorization": "Basic d3Jvbmc6d3Jvbmc="})
    report = ensure_webhook(settings, pid, backend_url, waits=())
    assert report["status"] == "fixed" and report["updated"] == [hook]
    assert api.webhooks[hook]["headers"] == {"Authorization": HEADER}  # the wrong one replaced, not doubled
    calls = len(api.calls)
    assert ensure_webhook(settings, pid, backend_url + "/", waits=())["status"] == "ok"
    assert all(method == "GET" for method, _ in api.calls[calls:])

    # only a webhook with credentials in its URL: kept, the credentials move to the header
    other = api.add_project(ls.XML)
    creds = api.add_webhook(other, f"http://{USER}:{PASSWORD}@BACKEND.example:9090/webhook")
    report = ensure_webhook(settings, other, backend_url, waits=())
    assert report["status"] == "fixed" and api.webhooks[creds]["url"] == "http://BACKEND.example:9090/webhook"
    assert api.webhooks[creds]["headers"] == {"Authorization": HEADER}

    # Basic auth off: duplicates go, no header is added
    third = api.add_project(ls.XML)
    first = api.add_webhook(third, backend_url + "/webhook")
    second = api.add_webhook(third, backend_url + "/webhook")
    report = ensure_webhook(settings.replace(basic_auth_user=None, basic_auth_pass=None), third, backend_url,
                            waits=())
    assert report["deleted"] == [second] and set(api.webhooks) >= {first} and second not in api.webhooks
    assert api.webhooks[first]["headers"] == {}

    # behind a proxy Label Studio reaches the backend by another URL: the project's only ML backend tells which
    fourth = api.add_project(ls.XML)
    api.add_ml(fourth, "https://ml.example/regionscribe")
    proxied = api.add_webhook(fourth, "https://ml.example/regionscribe/webhook")
    report = ensure_webhook(settings, fourth, backend_url, waits=())
    assert report["status"] == "fixed" and api.webhooks[proxied]["headers"] == {"Authorization": HEADER}


def test_the_repair_waits_for_label_studio_to_save_the_webhook(make_settings, api, ls):
    """Label Studio saves the webhook while it calls /setup: the job looks again before it gives up."""
    import threading

    settings = make_settings(label_studio_url=api.url, basic_auth_user=USER, basic_auth_pass=PASSWORD)
    pid = api.add_project(ls.XML)
    later = threading.Timer(0.5, lambda: api.add_webhook(pid, "http://b:9090/webhook"))
    later.start()
    report = ensure_webhook(settings, pid, "http://b:9090", waits=(1.0, 1.0))
    assert report["status"] == "fixed"

