"""`regionscribe doctor` on the webhook path: every connected project's webhook (present, authenticated, not
duplicated), requests to /webhook refused with 401, and the periodic sync. Label Studio's API is
tests/feedback/fake_labelstudio.py."""
from __future__ import annotations

import json
import time

import redis
import requests

from regionscribe.backend.ops.doctor import FAIL, OK, SKIP, WARN, check_sync, check_webhooks
from regionscribe.backend.labelstudio.webhooks import refusals, remember_connection

from tests.feedback.fake_labelstudio import HEADER, PASSWORD, USER


def test_doctor_reports_webhooks_and_refusals(make_settings, api, serve, own_redis, ls):
    settings = make_settings(redis_url=own_redis.url, label_studio_url=api.url, basic_auth_user=USER,
                             basic_auth_pass=PASSWORD, sync_interval=300)
    server = serve(settings)
    connection = redis.Redis.from_url(own_redis.url)
    checks = {c.name: c for c in check_webhooks(settings, connection, 5.0)}
    assert checks["webhooks.401"].status == OK and checks["webhooks"].status == SKIP

    for _ in range(3):
        refused = requests.post(f"{server.url}/webhook", json={"action": "ANNOTATION_CREATED"}, timeout=5)
        assert refused.status_code == 401
    assert refusals(connection)["last_hour"] == 3

    unauth, duplicated, missing, fine = (api.add_project(ls.XML) for _ in range(4))
    api.add_webhook(unauth, f"{server.url}/webhook")
    for _ in range(2):
        api.add_webhook(duplicated, f"{server.url}/webhook", headers={"Authorization": HEADER})
    api.add_webhook(fine, f"{server.url}/webhook", headers={"Authorization": HEADER})
    for pid in (unauth, duplicated, missing, fine):
        remember_connection(connection, pid, server.url + "/")
    checks = {c.name: c for c in check_webhooks(settings, connection, 5.0)}
    assert checks["webhooks.401"].status == FAIL and "3 request(s)" in checks["webhooks.401"].detail
    assert "sync" in checks["webhooks.401"].fix
    assert checks[f"webhooks.project-{unauth}"].status == FAIL
    assert "no credentials: every event gets 401" in checks[f"webhooks.project-{unauth}"].detail
    assert checks[f"webhooks.project-{duplicated}"].status == WARN
    assert "1 more to the same URL" in checks[f"webhooks.project-{duplicated}"].detail
    assert checks[f"webhooks.project-{missing}"].status == WARN
    assert "only through the sync" in checks[f"webhooks.project-{missing}"].detail
    assert checks[f"webhooks.project-{fine}"].status == OK
    assert all(PASSWORD not in c.detail + c.fix and HEADER not in c.detail + c.fix for c in checks.values())

    assert check_webhooks(settings.replace(sync_interval=0), connection, 5.0)[-2].status == FAIL  # missing, no sync
    unfixable = {c.name: c for c in check_webhooks(settings.replace(label_studio_api_key=None), connection, 5.0)}
    assert unfixable["webhooks"].status == FAIL and "LABEL_STUDIO_API_KEY" in unfixable["webhooks"].detail


def test_doctor_reports_the_sync(make_settings, own_redis, api):
    settings = make_settings(redis_url=own_redis.url, label_studio_url=api.url, sync_interval=60)
    connection = redis.Redis.from_url(own_redis.url)
    assert check_sync(settings, connection).status == WARN  # never ran
    assert check_sync(settings.replace(sync_interval=0), connection).status == WARN
    from regionscribe.backend.core.keys import SYNC_LAST_KEY

    connection.set(SYNC_LAST_KEY, json.dumps({"at": time.time() - 5, "projects": {"7": {"new": 1}}}))
    check = check_sync(settings, connection)
    assert check.status == OK and "over 1 project(s)" in check.detail
    assert "arrived only through the sync" in check.detail
    connection.set(SYNC_LAST_KEY, json.dumps({"at": time.time() - 5, "projects": {"7": {"error": "project 7 is gone"}}}))
    assert check_sync(settings, connection).status == WARN
    connection.set(SYNC_LAST_KEY, json.dumps({"at": time.time() - 3600, "projects": {}}))
    assert check_sync(settings, connection).status == WARN
