"""No correction is lost, against the real Label Studio 1.23.2: a backend protected by Basic auth, connected in Label
Studio with "Basic auth" and the same credentials, and an ingest worker with a short SYNC_INTERVAL.

1. The webhook Label Studio creates carries no credentials; the backend gives it the header on its own (and removes
   the duplicate a credentials-in-URL workaround left), so a submitted annotation is stored through the webhook.
2. Backend stopped, 5 annotations submitted and 1 deleted, backend started again: the next sync leaves exactly the 4
   that remain in the store, none twice, counted toward retraining.
3. The project's webhook deleted: the sync alone keeps the store exact through 20 more annotations (and an update
   and a delete), and `regionscribe sync` finds nothing left to do.

The tests run in order on one project. The backend has its own Redis database and its own store, so the other e2e
backends' projects and jobs never mix with it.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).resolve().parents[2] / "labeling_configs" / "region_captioning.xml"
USER, PASSWORD = "ls-to-backend", "pw-e2e-basic-auth"
HEADER = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SYNC_INTERVAL = 2


class API:
    """Label Studio's REST API with the legacy token; every call checks its status."""

    def __init__(self, ls):
        self.base = ls.url
        self.session = requests.Session()
        self.session.headers.update(ls.headers)

    def call(self, method: str, path: str, expect=(200, 201, 204), **kwargs):
        r = self.session.request(method, f"{self.base}{path}", timeout=120, **kwargs)
        assert r.status_code in ((expect,) if isinstance(expect, int) else expect), \
            f"{method} {path} -> {r.status_code}: {r.text[:1000]}"
        return r.json() if r.content else None

    def webhooks(self, project: int) -> list[dict]:
        return self.call("GET", f"/api/webhooks?project={project}")

    def annotate(self, task: int, caption: str) -> dict:
        rid = f"r{abs(hash(caption)) % 10 ** 8}"
        box = {"x": 10.0, "y": 16.0, "width": 30.0, "height": 40.0, "rotation": 0}
        common = {"id": rid, "to_name": "image", "original_width": 160, "original_height": 120, "image_rotation": 0}
        result = [{**common, "from_name": "bbox", "type": "rectanglelabels",
                   "value": {**box, "rectanglelabels": ["Object"]}},
                  {**common, "from_name": "caption", "type": "textarea", "value": {**box, "text": [caption]}}]
        return self.call("POST", f"/api/tasks/{task}/annotations/", json={"result": result, "lead_time": 2.0})

    def annotations(self, project: int) -> dict[int, dict]:
        out = {}
        page = 1
        while True:
            r = self.session.get(f"{self.base}/api/tasks", params={"project": project, "fields": "all",
                                                                    "page": page, "page_size": 100}, timeout=120)
            if r.status_code == 404:
                return out
            assert r.ok, r.text[:500]
            body = r.json()
            for task in body["tasks"]:
                for ann in task["annotations"]:
                    out[ann["id"]] = ann
            if page * 100 >= body["total"]:
                return out
            page += 1


def png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (160, 120), (200, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


class Deployment:
    """The Basic-auth backend of this module: web app + ingest worker, stoppable and restartable on its port."""

    def __init__(self, backends, label_studio, redis_url, e2e_dir, e2e_logs):
        self.backends = backends
        self.label_studio, self.e2e_dir, self.e2e_logs = label_studio, e2e_dir, e2e_logs
        self.redis_url = redis_url.rsplit("/", 1)[0] + "/1"  # its own database: no other backend's keys or jobs
        self.data_dir = e2e_dir / "auth-data"
        self.env_vars = {"BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD, "DATA_DIR": str(self.data_dir),
                    "SYNC_INTERVAL": str(SYNC_INTERVAL)}
        self.port = None
        self.backend = None
        self.procs: list = []
        self.starts = 0

    def start(self):
        self.starts += 1
        self.backend, self.procs = self.backends.start(
            f"auth{self.starts}", redis_url=self.redis_url, label_studio=self.label_studio,
            api_key=self.label_studio.token, queue="inference", queues=["ingest"], port=self.port,
            e2e_dir=self.e2e_dir, e2e_logs=self.e2e_logs, extra_env=self.env_vars)
        self.port = int(self.backend.url.rsplit(":", 1)[1])
        return self.backend

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop(timeout=15)
        self.procs = []

    def store(self):
        from regionscribe.backend.store import Store

        return Store.open(f"sqlite:///{self.data_dir / 'store.sqlite3'}", images_dir=self.data_dir / "images")

    def env(self) -> dict:
        """The environment of a `regionscribe` command run for this backend."""
        return self.backends.env(REDIS_URL=self.redis_url, LABEL_STUDIO_URL=self.label_studio.url,
                                 LABEL_STUDIO_API_KEY=self.label_studio.token, PYTHONPATH=str(self.backends.src),
                                 **self.env_vars)

    def web_log(self) -> str:
        return "".join(p.log.read_text(errors="replace") for p in self.e2e_logs.values()
                       if p.name.startswith("auth") and p.name.endswith("-web"))


@pytest.fixture(scope="module")
def deployment(backends, label_studio, redis_url, e2e_dir, e2e_logs):
    found = Deployment(backends, label_studio, redis_url, e2e_dir, e2e_logs)
    try:
        found.start()
    except RuntimeError as exc:
        found.stop()
        pytest.fail(str(exc), pytrace=False)
    yield found
    found.stop()


@pytest.fixture(scope="module")
def api(label_studio) -> API:
    return API(label_studio)


@pytest.fixture(scope="module")
def project(api, deployment) -> dict:
    """A project with one uploaded image, 30 more tasks on that image, and a webhook someone added by hand with the
    credentials in its URL (the workaround that duplicates the webhook on reconnecting)."""
    pid = api.call("POST", "/api/projects", json={"title": "e2e sync", "label_config": CONFIG.read_text()})["id"]
    api.call("POST", f"/api/projects/{pid}/import", files={"file": ("scene.png", png(), "image/png")})
    first = api.call("GET", f"/api/tasks?project={pid}")["tasks"][0]
    image = next(iter(first["data"].values()))
    api.call("POST", f"/api/projects/{pid}/import", json=[{"data": {"image": image}} for _ in range(30)])
    tasks = sorted(t["id"] for t in api.call("GET", f"/api/tasks?project={pid}&page_size=100")["tasks"])
    url = deployment.backend.url
    by_hand = api.call("POST", "/api/webhooks", json={
        "project": pid, "url": url.replace("http://", f"http://{USER}:{PASSWORD}@") + "/webhook",
        "send_payload": True, "send_for_all_actions": True})
    return {"id": pid, "tasks": tasks, "by_hand": by_hand["id"]}


def live_annotations(store, pid: int) -> dict[int, list]:
    out: dict[int, list] = {}
    for record in store.records(pid):
        out.setdefault(record.annotation_id, []).append(record)
    return out


def wait_for(what: str, predicate, timeout: float = 60.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {value!r})")


def test_basic_auth_webhook_is_made_right_automatically(api, deployment, project, e2e_logs):
    pid = project["id"]
    backend = deployment.backend
    ml = api.call("POST", "/api/ml", json={"url": backend.url, "project": pid, "is_interactive": True,
                                           "title": "regionscribe", "auth_method": "BASIC_AUTH",
                                           "basic_auth_user": USER, "basic_auth_pass": PASSWORD})
    assert api.call("GET", f"/api/ml/{ml['id']}")["state"] == "CO"

    def fixed():
        hooks = [h for h in api.webhooks(pid) if h["url"].split("@")[-1].rstrip("/").endswith(
            backend.url.split("//")[1] + "/webhook")]
        return hooks if len(hooks) == 1 and (hooks[0].get("headers") or {}).get("Authorization") == HEADER else None

    hooks = wait_for("the webhook gets the Basic auth header, the duplicate goes", fixed, timeout=60)
    assert hooks[0]["url"] == f"{backend.url}/webhook" and hooks[0]["id"] != project["by_hand"]

    before = len(deployment.web_log())
    ann = api.annotate(project["tasks"][0], "a red square, through the webhook")
    store = deployment.store()
    try:
        records = wait_for("the annotation reaches the store", lambda: live_annotations(store, pid).get(ann["id"]),
                           timeout=10, every=0.1)
        assert [r.caption for r in records] == ["a red square, through the webhook"]
        assert [r.source for r in records] == ["webhook"], "it came by sync, not by the webhook"
    finally:
        store.close()
    log = deployment.web_log()[before:]
    assert re.search(r'"POST /webhook HTTP/1\.1" 201', log), "no webhook delivered with 201"
    assert not re.search(r'"POST /webhook HTTP/1\.1" 401', log), "a webhook was refused with 401"


def test_backend_down_then_sync_leaves_exactly_what_label_studio_has(api, deployment, project, e2e_logs):
    pid = project["id"]
    deployment.stop()
    created = [api.annotate(t, f"made while the backend was down {i}") for i, t in enumerate(project["tasks"][1:6])]
    api.call("DELETE", f"/api/annotations/{created[2]['id']}/")
    remaining = {a["id"] for a in created} - {created[2]["id"]}
    deployment.start()
    store = deployment.store()
    try:
        expected = set(api.annotations(pid))
        assert remaining < expected and created[2]["id"] not in expected
        live = wait_for("the sync brings the store in line", lambda: (lambda got: got if set(got) == expected
                                                                      else None)(live_annotations(store, pid)))
        assert all(len(records) == 1 for records in live.values()), "a region is stored twice"
        assert {live[a][0].source for a in remaining} == {"sync"}
        assert store.annotation_state(created[2]["id"]) is None  # never stored: nothing to tombstone
        assert store.pending_count(pid) == len(expected)  # every caption counts toward retraining, once
    finally:
        store.close()


def test_without_the_webhook_the_sync_alone_keeps_the_store_exact(api, deployment, project, e2e_logs):
    pid = project["id"]
    for hook in api.webhooks(pid):
        api.call("DELETE", f"/api/webhooks/{hook['id']}/")
    made = [api.annotate(t, f"only the sync sees this {i}") for i, t in enumerate(project["tasks"][6:26])]
    time.sleep(1.5)  # --since below reads tasks touched from a second before it: none of these
    changed = api.call("PATCH", f"/api/annotations/{made[0]['id']}/", json={"result": [
        {**item, "value": {**item["value"], "text": ["changed after the fact"]}} if item["type"] == "textarea"
        else item for item in made[0]["result"]]})
    api.call("DELETE", f"/api/annotations/{made[1]['id']}/")
    store = deployment.store()
    try:
        expected = api.annotations(pid)

        def exact():
            live = live_annotations(store, pid)
            if set(live) != set(expected):
                return None
            captions = {a: [r.caption for r in records] for a, records in live.items()}
            return live if captions[made[0]["id"]] == ["changed after the fact"] else None

        live = wait_for("the sync alone keeps the store exact", exact)
        assert len(live) == len(expected) and all(len(records) == 1 for records in live.values())
        assert store.annotation_state(made[1]["id"])["deleted_at"] is not None  # the sync saw the deletion
        assert store.pending_count(pid) == len(expected)
        only_sync = store.regions_by_source(pid)[pid]["sync"]
        assert only_sync == len(expected) - 1  # all but the one the webhook delivered in the first test
    finally:
        store.close()
    metrics = requests.get(f"{deployment.backend.url}/metrics", auth=(USER, PASSWORD), timeout=10).text
    assert f'regionscribe_regions_sync_only{{project="{pid}"}} {only_sync}' in metrics

    env, src = deployment.env(), deployment.backends.src
    done = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "sync", "--project", str(pid), "--json"], env=env,
                          cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)[str(pid)]
    assert (report["new"], report["changed"], report["deleted"]) == (0, 0, 0), report
    assert report["unchanged"] == len(expected)

    # --since reads only the tasks Label Studio changed since then (it bumps a task when an annotation changes)
    since = changed["updated_at"]
    api.call("PATCH", f"/api/annotations/{made[2]['id']}/", json={"result": made[2]["result"], "lead_time": 3.0})
    done = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "sync", "--project", str(pid), "--json", "--since",
                           since], env=env, cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)[str(pid)]
    assert report["tasks"] == 3, report  # changed, deleted and changed again since: not all 31

    doctor = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "doctor", "--json"], env=env, cwd=src,
                            capture_output=True, text=True, timeout=300)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks[f"webhooks.project-{pid}"]["status"] == "WARN", checks.get(f"webhooks.project-{pid}")
    assert "only through the sync" in checks[f"webhooks.project-{pid}"]["detail"]
    assert checks["sync"]["status"] == "OK", checks["sync"]
    assert checks["webhooks.401"]["status"] == "OK", checks["webhooks.401"]

