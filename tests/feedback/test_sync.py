"""Reconciliation with Label Studio (regionscribe.backend.feedback.sync): annotations the webhook lost reach the store, newest wins,
deletions are seen, a sync and a webhook together count each region once, and the store says which path brought what.
Label Studio's API is tests/feedback/fake_labelstudio.py here; tests/e2e/test_no_lost_corrections.py runs the same against the real
Label Studio 1.23.2."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.store import Store
from regionscribe.backend.feedback.sync import SyncError, parse_since, sync_project

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(make_settings, api, ls):
    """(settings, store): the store on SQLite and PostgreSQL, Label Studio's API at the fake."""
    settings = make_settings(label_studio_url=api.url, redis_url=None)
    return settings, Store.shared(settings)


def live(store, project_id) -> dict:
    return {(r.annotation_id, r.region_id): r for r in store.records(project_id)}


def counts(report) -> dict:
    return report.counts()


def test_annotations_the_webhook_lost_reach_the_store(setup, api, ls):
    settings, store = setup
    pid = api.add_project(ls.XML)
    t1, t2 = api.add_task(pid), api.add_task(pid, image="/data/upload/1/y.png")
    a1 = api.annotate(t1, ls.region("r1", caption="a red square", color="red")
                      + ls.region("r2", caption="a blue disc", color="blue"))
    a2 = api.annotate(t2, ls.region("r1", caption="a green cube", shape="cube"))
    report = sync_project(settings, pid, store=store)
    assert counts(report) == {"new": 2, "changed": 0, "unchanged": 0, "deleted": 0, "skipped": 0}
    assert report.tasks == 2 and report.regions_changed == 3
    records = live(store, pid)
    assert {k: r.caption for k, r in records.items()} == {
        (a1["id"], "r1"): "a red square", (a1["id"], "r2"): "a blue disc", (a2["id"], "r1"): "a green cube"}
    assert {r.image_ref for r in records.values()} == {"/data/upload/1/x.png", "/data/upload/1/y.png"}
    assert records[(a1["id"], "r1")].attributes == {"color": ["red"]}
    assert {r.source for r in records.values()} == {"sync"}
    assert store.pending_count(pid) == 3  # they count toward retraining
    assert store.regions_by_source(pid) == {pid: {"regions": 3, "webhook": 0, "sync": 3}}
    assert {e["source"] for e in store.events()} == {"sync"}
    assert store.label_config(pid) == ls.XML  # read from Label Studio's project

    events = len(store.events())
    again = sync_project(settings, pid, store=store)
    assert counts(again) == {"new": 0, "changed": 0, "unchanged": 2, "deleted": 0, "skipped": 0}
    assert len(store.events()) == events, "an unchanged annotation must not be written again"
    assert store.pending_count(pid) == 3


def test_events_refused_with_401_reach_the_store_and_count_toward_retraining(make_settings, api, serve, ls,
                                                                            redis_client):
    settings = make_settings(label_studio_url=api.url, basic_auth_user="u", basic_auth_pass="p", retrain_after=2)
    server = serve(settings)
    pid = api.add_project(ls.XML)
    tid = api.add_task(pid)
    ann = api.annotate(tid, ls.region("r1", caption="refused") + ls.region("r2", caption="also refused"))
    event = ls.annotation_event(pid, tid, ann["id"], ann["result"], label_config=ls.XML)
    assert requests.post(f"{server.url}/webhook", json=event, timeout=5).status_code == 401  # no header
    store = Store.shared(settings)
    assert store.records(pid) == []
    report = sync_project(settings, pid, store=store, connection=redis_client)
    assert report.new == 1 and store.pending_count(pid) == 2
    assert report.training["due"] and report.training["enqueued"], report.training


def test_newest_wins_and_deletions_are_seen(setup, api, ls):
    settings, store = setup
    pid = api.add_project(ls.XML)
    tid = api.add_task(pid)
    kept = api.annotate(tid, ls.region("r1", caption="before", color="red") + ls.region("r2", caption="same"))
    gone = api.annotate(tid, ls.region("r1", caption="to be deleted"))
    sync_project(settings, pid, store=store)
    assert store.pending_count(pid) == 3

    api.update(kept["id"], ls.region("r1", caption="after", color="red") + ls.region("r2", caption="same"))
    api.delete(gone["id"])
    report = sync_project(settings, pid, store=store)
    assert counts(report) == {"new": 0, "changed": 1, "unchanged": 0, "deleted": 1, "skipped": 0}
    assert report.regions_changed == 1  # r2 did not change: counted once, not again
    records = live(store, pid)
    assert {k: r.caption for k, r in records.items()} == {(kept["id"], "r1"): "after", (kept["id"], "r2"): "same"}
    assert store.annotation_state(gone["id"])["deleted_at"] is not None
    assert store.pending_count(pid) == 2  # the deleted region left the count; r2 still counts once
    assert [r.caption for r in store.records(pid, include_deleted=True) if r.deleted] == ["to be deleted"]
    delete_events = [e for e in store.events() if e["action"] == "ANNOTATIONS_DELETED"]
    assert len(delete_events) == 1 and delete_events[0]["source"] == "sync"

    # an older version than the store's (a webhook delivered a newer one) does not win
    newer = ls.annotation_event(pid, tid, kept["id"],
                                ls.region("r1", caption="newest") + ls.region("r2", caption="same"),
                                action="ANNOTATION_UPDATED", updated=10_000, label_config=ls.XML)
    handle_event(settings, newer, store=store, connection=None)
    report = sync_project(settings, pid, store=store)
    assert counts(report)["unchanged"] == 1 and counts(report)["changed"] == 0
    assert live(store, pid)[(kept["id"], "r1")].caption == "newest"


def test_a_listing_that_misses_an_annotation_deletes_nothing(setup, api, ls):
    """A page that shifted while it was read leaves an annotation out of the listing: it is asked for on its own and
    kept, because Label Studio still has it. A project Label Studio does not have, or a listing that fails half way,
    deletes nothing either."""
    settings, store = setup
    pid = api.add_project(ls.XML)
    tasks = [api.add_task(pid) for _ in range(3)]
    anns = [api.annotate(t, ls.region("r1", caption=f"caption {i}")) for i, t in enumerate(tasks)]
    sync_project(settings, pid, store=store)
    api.hidden.add(anns[1]["id"])
    report = sync_project(settings, pid, store=store)
    assert report.deleted == 0 and len(live(store, pid)) == 3
    assert ("GET", f"/api/annotations/{anns[1]['id']}/") in api.calls

    api.hidden.clear()
    api.delete(anns[0]["id"])
    api.fail_pages.add(1)
    with pytest.raises(SyncError, match="nothing deleted"):
        sync_project(settings, pid, store=store)
    assert len(live(store, pid)) == 3
    api.fail_pages.clear()

    with pytest.raises(SyncError, match="not in Label Studio"):
        sync_project(settings, api.new_id(), store=store)
    del api.projects[pid]
    with pytest.raises(SyncError, match="not in Label Studio"):
        sync_project(settings, pid, store=store)
    assert len(live(store, pid)) == 3


def test_pages_and_since(setup, api, ls, monkeypatch):
    import regionscribe.backend.labelstudio.api as ls_api

    monkeypatch.setattr(ls_api, "PAGE_SIZE", 4)
    settings, store = setup
    pid = api.add_project(ls.XML)
    tasks = [api.add_task(pid) for _ in range(10)]
    anns = [api.annotate(t, ls.region("r1", caption=f"caption {i}")) for i, t in enumerate(tasks)]
    report = sync_project(settings, pid, store=store)
    assert report.tasks == 10 and report.new == 10
    pages = [c for c in api.calls if c[1].startswith("/api/tasks/?")]
    assert len(pages) == 3, pages  # 4 + 4 + 2: the total says when to stop

    cut = parse_since(api.annotations[anns[-1]["id"]]["updated_at"])
    api.update(anns[-1]["id"], ls.region("r1", caption="changed late"))
    api.delete(anns[-2]["id"])
    report = sync_project(settings, pid, store=store, since=cut)
    assert report.tasks == 2, "only the tasks changed since --since are read"
    assert (report.changed, report.deleted) == (1, 1)
    assert live(store, pid)[(anns[-1]["id"], "r1")].caption == "changed late"
    assert len(live(store, pid)) == 9
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("last tuesday")


def test_malformed_annotations_are_skipped_not_deleted(setup, api, ls):
    settings, store = setup
    pid = api.add_project(ls.XML)
    tid = api.add_task(pid)
    good = api.annotate(tid, ls.region("r1", caption="fine"))
    bad = api.annotate(tid, ls.region("r1", caption="was fine"))
    sync_project(settings, pid, store=store)
    api.annotations[bad["id"]]["result"] = {"not": "a list"}
    api.annotations[bad["id"]]["updated_at"] = "2030-01-01T00:00:00.000000Z"
    report = sync_project(settings, pid, store=store)
    assert (report.skipped, report.deleted, report.unchanged) == (1, 0, 1)
    assert {k[0] for k in live(store, pid)} == {good["id"], bad["id"]}  # the bad version loses nothing


def test_a_sync_and_a_webhook_together_count_each_region_once(setup, api, ls):
    """The same annotations delivered by webhooks and by syncs, at the same time and in both orders: each region is
    stored once, counted once toward retraining, and marked as arrived through the webhook."""
    settings, store = setup
    pid = api.add_project(ls.XML)
    events = []
    for i in range(12):
        tid = api.add_task(pid)
        ann = api.annotate(tid, ls.region("r1", caption=f"first {i}") + ls.region("r2", caption=f"second {i}"))
        events.append(ls.annotation_event(pid, tid, ann["id"], ann["result"], label_config=ls.XML,
                                          created=_seconds(ann["created_at"]), updated=_seconds(ann["updated_at"])))
    errors = []

    def webhooks():
        try:
            for event in events:
                handle_event(settings, event, store=store, connection=None)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def syncs():
        try:
            for _ in range(3):
                sync_project(settings, pid, store=store)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=webhooks), threading.Thread(target=syncs), threading.Thread(target=webhooks)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(live(store, pid)) == 24 and len(store.records(pid, include_deleted=True)) == 24
    assert store.pending_count(pid) == 24
    assert store.regions_by_source(pid)[pid] == {"regions": 24, "webhook": 24, "sync": 0}
    final = sync_project(settings, pid, store=store)
    assert (final.new, final.changed, final.unchanged) == (0, 0, 12), "the webhook's and the sync's versions differ"


def test_only_via_sync_until_a_webhook_delivers_it(setup, api, ls):
    settings, store = setup
    pid = api.add_project(ls.XML)
    tid = api.add_task(pid)
    ann = api.annotate(tid, ls.region("r1", caption="late webhook") + ls.region("r2", caption="x"))
    sync_project(settings, pid, store=store)
    assert store.regions_by_source(pid)[pid]["sync"] == 2
    late = ls.annotation_event(pid, tid, ann["id"], ann["result"], label_config=ls.XML,
                               created=_seconds(ann["created_at"]), updated=_seconds(ann["updated_at"]))
    answer = handle_event(settings, late, store=store, connection=None)
    assert answer["result"]["outcome"] == "stale"  # the sync stored this version first
    assert store.regions_by_source(pid)[pid] == {"regions": 2, "webhook": 2, "sync": 0}
    assert store.pending_count(pid) == 2
    assert [e["source"] for e in store.events()] == ["sync", "webhook"]


def _seconds(label_studio_time: str) -> float:
    from regionscribe.backend.store import parse_time_us

    return parse_time_us(label_studio_time) / 1e6 - 1714564800


# ------------------------------------------------------------------------------- the command and the worker


def test_the_command(setup, api, ls, tmp_path, settings_env):
    settings, store = setup
    pid = api.add_project(ls.XML)
    tid = api.add_task(pid)
    api.annotate(tid, ls.region("r1", caption="from the command"))
    env = {**settings_env(settings), "REDIS_URL": ""}
    done = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "sync", "--project", str(pid), "--json"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert {k: body[str(pid)][k] for k in ("new", "changed", "unchanged", "deleted")} == {
        "new": 1, "changed": 0, "unchanged": 0, "deleted": 0}
    assert [r.caption for r in Store.open(settings.store_url, images_dir=tmp_path).records(pid)] == ["from the command"]

    text = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "sync", "--project", str(pid), "--quiet"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and f"project {pid}: 0 new, 0 changed, 1 unchanged, 0 deleted" in text.stdout
    missing = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "sync", "--project", "999999999", "--quiet"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "not in Label Studio" in missing.stdout
    bad = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "sync", "--since", "yesterday-ish"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    unset = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "sync"], env={**env, "LABEL_STUDIO_API_KEY": ""},
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert unset.returncode == 2 and "LABEL_STUDIO_API_KEY" in unset.stderr


def test_the_ingest_worker_syncs_every_connected_project(make_settings, api, ls, spawn_worker, redis_client,
                                                        serve, wait):
    """An ingest worker with SYNC_INTERVAL set syncs the projects /setup reported as connected (and those in the
    store) on its own; /metrics then shows the regions that arrived only through the sync."""
    settings = make_settings(label_studio_url=api.url, sync_interval=1)
    server = serve(settings)
    pid = api.add_project(ls.XML)
    api.add_webhook(pid, f"{server.url}/webhook")  # /setup queues its check: found at once, nothing to fix
    tid = api.add_task(pid)
    api.annotate(tid, ls.region("r1", caption="never sent by webhook") + ls.region("r2", caption="nor this"))
    answer = requests.post(f"{server.url}/setup", json={"project": f"{pid}.1714564800", "schema": ls.XML}, timeout=5)
    assert answer.status_code == 200
    before = requests.get(f"{server.url}/metrics", timeout=5).text  # counters are shared by the session's tests
    spawn_worker(settings, [settings.ingest_queue]).wait_ready(redis_client)
    store = Store.shared(settings)
    wait(lambda: len(store.records(pid)) == 2, timeout=60)
    api.delete(next(iter(api.annotations)))
    wait(lambda: len(store.records(pid)) == 0, timeout=60)
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    for outcome in ("new", "deleted"):
        name = f'regionscribe_sync_annotations_total{{outcome="{outcome}"}}'
        assert sample(metrics, name) - sample(before, name) == 1, outcome
    assert sample(metrics, "regionscribe_sync_last_run_timestamp_seconds") > time.time() - 60


def sample(text: str, name: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_show_regions_that_only_the_sync_brought(setup, api, ls, make_settings, serve):
    settings, store = setup
    pid = api.add_project(ls.XML)
    tid = api.add_task(pid)
    api.annotate(tid, ls.region("r1", caption="a") + ls.region("r2", caption="b"))
    other = api.add_task(pid)
    sent = api.annotate(other, ls.region("r9", caption="c"))
    handle_event(settings, ls.annotation_event(pid, other, sent["id"], sent["result"], label_config=ls.XML),
                 store=store, connection=None)
    sync_project(settings, pid, store=store)
    server = serve(make_settings(label_studio_url=api.url))
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert f'regionscribe_regions_sync_only{{project="{pid}"}} 2' in metrics
    assert f'regionscribe_regions_live{{project="{pid}"}} 3' in metrics


def test_report_shows_how_regions_arrived(setup, api, ls, tmp_path):
    from regionscribe.backend.ops.report import write_report
    from tests.builders import fake_checkpoint

    settings, store = setup
    pid = api.add_project(ls.XML)
    api.annotate(api.add_task(pid), ls.region("r1", caption="a"))
    sync_project(settings, pid, store=store)
    base = tmp_path / "base"
    fake_checkpoint(base, "base-1")
    out = write_report(str(tmp_path / "report.html"), settings.replace(model_dir=str(base)))
    page = (tmp_path / "report.html").read_text()
    assert out["regions_by_source"][pid] == {"regions": 1, "webhook": 0, "sync": 1}
    assert "only via sync" in page and f"<td>{pid}</td><td>1</td><td>0</td><td>1</td><td>100.0%</td>" in page



def test_one_sync_waits_at_a_time_and_a_dead_worker_does_not_block(make_settings, redis_client):
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    from regionscribe.backend.feedback.sync import enqueue_sync, tick

    from regionscribe.backend.core.keys import SYNC_JOB_KEY

    settings = make_settings(sync_interval=30)
    assert enqueue_sync(redis_client, settings)
    assert not enqueue_sync(redis_client, settings), "a second sync queued behind one that waits"
    job = Job.fetch(redis_client.get(SYNC_JOB_KEY.format(queue=settings.ingest_queue)).decode(),
                    connection=redis_client, serializer=JSONSerializer)
    job.set_status(JobStatus.STARTED)
    job.worker_name = "a-worker-killed-mid-sync"  # no heartbeat: dead
    job.save()
    assert enqueue_sync(redis_client, settings), "a sync whose worker died blocks the next one"
    assert not tick(redis_client, settings.replace(sync_interval=0))
    redis_client.delete("regionscribe:sync:tick")
    assert not tick(redis_client, settings)  # the last one still waits: the tick queues nothing more
    assert redis_client.ttl("regionscribe:sync:tick") > 0  # and the clock waits a SYNC_INTERVAL
    redis_client.delete(SYNC_JOB_KEY.format(queue=settings.ingest_queue))
    assert not tick(redis_client, settings), "ticked twice within SYNC_INTERVAL"
