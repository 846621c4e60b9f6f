"""The store, fed through ingest exactly as the webhook feeds it, on a real SQLite file and a real PostgreSQL:
record shape, idempotency, ordering, tombstones, cancellations, unicode, suggestions and edit rate, snapshots and the
pending count, migrations under concurrent openers, and close/reopen."""
from __future__ import annotations

import threading

import pytest

from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.store import Store, StoreError

NO_REDIS = Settings()  # redis_url None: the store alone


def apply(store, payload) -> dict:
    return handle_event(NO_REDIS, payload, store=store, connection=None)


def live(store, project_id):
    return {(r.annotation_id, r.region_id): r for r in store.records(project_id)}


def test_created_event_becomes_records(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    result = (ls.region("r1", x=10, y=20, w=30, h=40, caption="a red square", color="red", shape="square",
                        family=[["polygon", "square"]], texture=["solid", "striped"])
              + ls.region("r2", x=50, y=50, w=10, h=10, caption="a blue circle", color="blue")
              + [{"type": "relation", "from_id": "r1", "to_id": "r2", "direction": "right", "labels": ["left of"]}])
    answer = apply(store, ls.annotation_event(p, t, a, result, updated=5, created=5, ground_truth=True, user=7))
    assert answer["status"] == "ok" and answer["result"]["outcome"] == "applied"
    assert answer["result"]["regions"] == 2 and answer["result"]["changed_regions"] == 2
    records = live(store, p)
    r1 = records[(a, "r1")]
    assert (r1.project_id, r1.task_id, r1.annotation_id, r1.image_ref) == (p, t, a, "/data/upload/1/x.png")
    assert (r1.x, r1.y, r1.width, r1.height, r1.rotation) == (10.0, 20.0, 30.0, 40.0, 0.0)
    assert r1.pixel_box == pytest.approx((64.0, 96.0, 256.0, 288.0))  # from original_width/height 640x480
    assert r1.labels == ("Object",) and r1.caption == "a red square"
    assert r1.attributes == {"color": ["red"], "shape": ["square"], "shape_family": [["polygon", "square"]],
                             "texture": ["solid", "striped"]}
    assert r1.relations == [{"to": "r2", "labels": ["left of"], "direction": "right"}]
    assert (r1.completed_by, r1.completed_by_email, r1.lead_time) == (7, "annotator7@example.com", 12.5)
    assert r1.created_at == ls.stamp(5) and r1.updated_at == ls.stamp(5)
    assert r1.ground_truth and not r1.was_cancelled and not r1.deleted
    assert r1.prefilled_by is None and r1.changed is None
    assert r1.image_sha256 is None and r1.image_path is None  # not cached yet: the ingest job does that
    assert records[(a, "r2")].relations == []
    events = store.events()
    assert [(e["action"], e["deliveries"], e["outcome"]) for e in events] == [("ANNOTATION_CREATED", 1, "applied")]
    assert events[0]["payload"]["annotation"]["id"] == a
    assert store.label_config(p) == ls.XML  # kept for the trainer


def test_relation_text_and_config_roles(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    common = {"to_name": "image", "original_width": 100, "original_height": 100}
    g = {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 0}
    result = [
        {"id": "a", "from_name": "bbox", "type": "rectanglelabels", **common,
         "value": {**g, "rectanglelabels": ["Object"]}},
        {"id": "a", "from_name": "relation_text", "type": "textarea", **common,
         "value": {**g, "text": ["left of b"]}},
        {"id": "a", "from_name": "caption", "type": "textarea", **common, "value": {**g, "text": ["a cup"]}},
    ]
    apply(store, ls.annotation_event(p, t, a, result, label_config=ls.RELATIONS_XML))
    r = live(store, p)[(a, "a")]
    assert (r.caption, r.relation_text) == ("a cup", "left of b")


def test_without_any_config_the_first_textarea_is_the_caption(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    g = {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 0}
    result = [{"id": "z", "from_name": "box", "to_name": "img", "type": "rectangle", "value": g},
              {"id": "z", "from_name": "notes", "to_name": "img", "type": "textarea", "value": {**g, "text": ["first"]}},
              {"id": "z", "from_name": "more", "to_name": "img", "type": "textarea", "value": {**g, "text": ["second"]}}]
    apply(store, ls.annotation_event(p, t, a, result, label_config=None))
    assert live(store, p)[(a, "z")].caption == "first"


def test_update_replaces_the_region_set(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    apply(store, ls.annotation_event(p, t, a, ls.region("r1", caption="old") + ls.region("r2", caption="gone"),
                                     updated=1))
    apply(store, ls.annotation_event(p, t, a, ls.region("r1", caption="new") + ls.region("r3", caption="added"),
                                     action="ANNOTATION_UPDATED", updated=2))
    records = live(store, p)
    assert set(records) == {(a, "r1"), (a, "r3")}
    assert records[(a, "r1")].caption == "new" and records[(a, "r1")].updated_at == ls.stamp(2)
    removed = [r for r in store.records(p, include_deleted=True) if r.region_id == "r2"]
    assert len(removed) == 1 and removed[0].deleted and removed[0].deleted_at
    assert [r.region_id for r in store.snapshot(p).records] == ["r1", "r3"]


def test_the_same_event_twice_leaves_the_same_state(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    event = ls.annotation_event(p, t, a, ls.region("r1", caption="x", color="red"), updated=1)
    first = apply(store, event)
    state = live(store, p)
    pending = store.pending_count(p)
    second = apply(store, event)
    assert first["result"]["outcome"] == "applied" and second["result"]["outcome"] == "stale"
    assert live(store, p) == state and store.pending_count(p) == pending == 1
    assert [e["deliveries"] for e in store.events()] == [2]


def test_update_before_create_keeps_the_newest(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    created = ls.annotation_event(p, t, a, ls.region("r1", caption="draft") + ls.region("r2", caption="x"),
                                  updated=1, created=1)
    updated = ls.annotation_event(p, t, a, ls.region("r1", caption="final"), action="ANNOTATION_UPDATED",
                                  updated=9, created=1)
    assert apply(store, updated)["result"]["outcome"] == "applied"
    assert apply(store, created)["result"]["outcome"] == "stale"
    records = live(store, p)
    assert set(records) == {(a, "r1")} and records[(a, "r1")].caption == "final"


def test_same_timestamp_different_content_is_order_independent(store, ls):
    p, t, a, b = ls.new_id(), ls.new_id(), ls.new_id(), ls.new_id()

    def events(annotation_id):
        return (ls.annotation_event(p, t, annotation_id, ls.region("r1", caption="one"), updated=3),
                ls.annotation_event(p, t, annotation_id, ls.region("r1", caption="two"), updated=3,
                                    action="ANNOTATION_UPDATED"))

    one, two = events(a)
    apply(store, one), apply(store, two)
    one, two = events(b)
    apply(store, two), apply(store, one)
    captions = {r.annotation_id: r.caption for r in store.records(p)}
    assert captions[a] == captions[b]


def test_delete_tombstones_and_a_late_create_does_not_resurrect(store, ls):
    p, t, a, b = ls.new_id(), ls.new_id(), ls.new_id(), ls.new_id()
    created = ls.annotation_event(p, t, a, ls.region("r1", caption="x"), updated=1)
    apply(store, created)
    apply(store, ls.annotation_event(p, t, b, ls.region("k", caption="kept"), updated=1))
    answer = apply(store, ls.deleted_event(p, [a]))
    assert (answer["result"]["outcome"], answer["result"]["annotations"], answer["result"]["regions"]) == (
        "deleted", 1, 1)
    assert set(live(store, p)) == {(b, "k")}
    late_update = ls.annotation_event(p, t, a, ls.region("r1", caption="y"), updated=5, action="ANNOTATION_UPDATED")
    assert apply(store, late_update)["result"]["outcome"] == "tombstoned"
    assert apply(store, created)["result"]["outcome"] == "tombstoned"
    assert set(live(store, p)) == {(b, "k")}
    assert [r.region_id for r in store.snapshot(p).records] == ["k"]
    gone = [r for r in store.records(p, include_deleted=True) if r.annotation_id == a]
    assert len(gone) == 1 and gone[0].deleted and gone[0].caption == "x"  # kept for audit, never trained on
    apply(store, ls.deleted_event(p, [a]))  # a second delete changes nothing
    assert set(live(store, p)) == {(b, "k")}


def test_delete_before_create(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    apply(store, ls.deleted_event(p, [a]))
    assert apply(store, ls.annotation_event(p, t, a, ls.region("r1", caption="x")))["result"]["outcome"] == "tombstoned"
    assert store.records(p) == [] and store.pending_count(p) == 0


def test_cancelled_annotations_hold_no_training_pairs(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    apply(store, ls.annotation_event(p, t, a, ls.region("r1", caption="skipped"), cancelled=True))
    records = store.records(p)
    assert len(records) == 1 and records[0].was_cancelled
    assert store.snapshot(p).records == [] and store.pending_count(p) == 0
    apply(store, ls.annotation_event(p, t, a, ls.region("r1", caption="done"), updated=2,
                                     action="ANNOTATION_UPDATED"))
    assert [r.caption for r in store.snapshot(p).records] == ["done"] and store.pending_count(p) == 1


def test_unicode_captions_are_kept_intact(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    captions = {"u1": "ein rötlicher Würfel – «très» 🟥🔺", "u2": "红色的正方形，旁边是蓝色圆圈", "u3": "مربع أحمر",
                "u4": "e\u0301 combining, zero\u200bwidth, tab\tand\nnewline", "u5": "quote \" back\\slash ' ; --"}
    result = [item for rid, text in captions.items() for item in ls.region(rid, caption=text, color="red")]
    apply(store, ls.annotation_event(p, t, a, result))
    got = {r.region_id: r.caption for r in store.records(p)}
    assert got == captions
    assert store.events()[0]["payload"]["annotation"]["result"][1]["value"]["text"] == [captions["u1"]]
    nul = ls.annotation_event(p, t, a + 1, ls.region("n", caption="nul\x00byte"))
    apply(store, nul)
    assert [r.caption for r in store.records(p) if r.annotation_id == a + 1] == ["nulbyte"]


def test_suggestions_give_changed_and_confirmed_flags_and_the_edit_rate(store, ls):
    from regionscribe.backend.store import Suggestion

    p, t1, t2 = ls.new_id(), ls.new_id(), ls.new_id()
    store.record_suggestions(p, [
        Suggestion(t1, "s1", "v1", caption="a red square", attributes={"color": ["red"]}),
        Suggestion(t1, "s2", "v1", caption="a blue circle", attributes={"color": ["blue"]}),
        Suggestion(t1, "s3", "v1", caption="a star", attributes={"color": ["green"]}),
        Suggestion(t2, "s1", "v2", caption="a triangle", attributes={"shape_family": [["polygon", "triangle"]]}),
    ])
    result1 = (ls.region("s1", caption="  a red   square ", color="red")  # whitespace only: confirmed
               + ls.region("s2", caption="a purple circle", color="blue")  # caption corrected
               + ls.region("s3", caption="a star", color="yellow")  # attribute corrected
               + ls.region("own", caption="drawn by hand"))  # never suggested
    apply(store, ls.annotation_event(p, t1, ls.new_id(), result1))
    apply(store, ls.annotation_event(p, t2, ls.new_id(), ls.region("s1", caption="a triangle",
                                                                    family=[["polygon", "triangle"]])))
    flags = {(r.task_id, r.region_id): (r.prefilled_by, r.changed) for r in store.records(p)}
    assert flags == {(t1, "s1"): ("v1", False), (t1, "s2"): ("v1", True), (t1, "s3"): ("v1", True),
                     (t1, "own"): (None, None), (t2, "s1"): ("v2", False)}
    rates = store.edit_rate()
    assert rates["v1"] == {"regions": 3, "changed": 2, "rate": pytest.approx(2 / 3)}
    assert rates["v2"] == {"regions": 1, "changed": 0, "rate": 0.0}
    assert store.edit_rate(by="project_id", project_id=p) == {p: {"regions": 4, "changed": 2, "rate": 0.5}}
    with pytest.raises(ValueError):
        store.edit_rate(by="colour")


def test_snapshot_id_pending_count_and_mark_training_started(store, ls):
    p, t = ls.new_id(), ls.new_id()
    a1, a2 = ls.new_id(), ls.new_id()
    apply(store, ls.annotation_event(p, t, a1, ls.region("r1", caption="one") + ls.region("box-only")))
    apply(store, ls.annotation_event(p, t, a2, ls.region("r1", color="red")))
    assert store.pending_count(p) == 2  # a box without text or attributes is no training pair
    snap = store.snapshot(p)
    assert [(r.annotation_id, r.region_id) for r in snap.records] == [(a1, "r1"), (a2, "r1")]
    assert store.snapshot(p).id == snap.id and len(snap.id) == 24
    with pytest.raises(KeyError):
        store.mark_training_started(p, "not-a-snapshot")
    # an event between snapshot and mark counts toward the next run
    apply(store, ls.annotation_event(p, t, ls.new_id(), ls.region("late", caption="late")))
    store.mark_training_started(p, snap.id)
    assert store.pending_count(p) == 1
    assert [r["snapshot_id"] for r in store.training_runs(p)] == [snap.id]
    # a change restarts the count from the watermark, and changes the snapshot id
    apply(store, ls.annotation_event(p, t, a1, ls.region("r1", caption="one, corrected"), updated=5,
                                     action="ANNOTATION_UPDATED"))
    assert store.pending_count(p) == 2
    assert store.snapshot(p).id != snap.id
    # an update that changes nothing a model learns from is not pending work
    snap2 = store.snapshot(p)
    store.mark_training_started(p, snap2.id)
    apply(store, ls.annotation_event(p, t, a1, ls.region("r1", caption="one, corrected"), updated=6,
                                     action="ANNOTATION_UPDATED", lead_time=99))
    assert store.pending_count(p) == 0


def test_training_request_is_durable_until_a_later_snapshot_starts(store, ls):
    p = ls.new_id()
    assert not store.training_requested(p)
    apply(store, {"action": "START_TRAINING", "project": {"id": p, "title": "regions"}})
    assert store.training_requested(p)
    snap = store.snapshot(p)
    store.mark_training_started(p, snap.id)
    assert not store.training_requested(p)
    assert [e["action"] for e in store.events()] == ["START_TRAINING"]


def test_a_run_that_never_completes_gives_its_count_and_request_back(store, ls):
    p, t = ls.new_id(), ls.new_id()
    for n in range(3):
        apply(store, ls.annotation_event(p, t, ls.new_id(), ls.region("r", caption=f"c{n}")))
    apply(store, {"action": "START_TRAINING", "project": {"id": p}})
    snap = store.snapshot(p)
    store.mark_training_started(p, snap.id, job_id="job-1")
    assert store.pending_count(p) == 0 and not store.training_requested(p)
    assert store.open_training_run(p)["job_id"] == "job-1"
    apply(store, ls.annotation_event(p, t, ls.new_id(), ls.region("during", caption="during the run")))
    # the worker is killed: the run's regions and its request are pending again, the event during it too
    assert store.training_failed(p, "job-1", "worker gone")
    assert store.pending_count(p) == 4 and store.training_requested(p)
    assert store.open_training_run(p) is None
    assert store.training_failed(p, "job-1") is False  # idempotent: reported twice, given back once
    assert store.pending_count(p) == 4
    assert [r["outcome"] for r in store.training_runs(p)] == ["failed: worker gone"]
    # the next run completes: its snapshot holds everything, nothing is pending after it
    snap2 = store.snapshot(p)
    run = store.mark_training_started(p, snap2.id, job_id="job-2")
    assert len(snap2.records) == 4 and store.pending_count(p) == 0 and not store.training_requested(p)
    store.training_completed(run, "accepted")
    assert store.training_failed(p, "job-2") is False  # a completed run is never given back
    assert store.pending_count(p) == 0
    # a failed run after a completed one goes back to the completed one's watermark, not to zero
    apply(store, ls.annotation_event(p, t, ls.new_id(), ls.region("next", caption="next")))
    store.mark_training_started(p, store.snapshot(p).id, job_id="job-3")
    assert store.pending_count(p) == 0
    assert store.training_failed(p, "job-3", "raised")
    assert store.pending_count(p) == 1 and not store.training_requested(p)
    assert [r["outcome"] for r in store.training_runs(p)] == ["failed: worker gone", "accepted", "failed: raised"]


def test_migrations_are_recorded_and_safe_under_concurrent_openers(store_url, tmp_path):
    errors, stores = [], []

    def open_one():
        try:
            stores.append(Store.open(store_url, images_dir=tmp_path / "images"))
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    s = stores[0]
    rows = s._run(lambda tx: tx.all("SELECT version, name FROM schema_version ORDER BY version"), write=False)
    assert rows == [{"version": 1, "name": "initial schema"}, {"version": 2, "name": "training run outcome"},
                    {"version": 3, "name": "event source"}, {"version": 4, "name": "training leases"},
                    {"version": 5, "name": "region shape"}, {"version": 6, "name": "demonstrations"}]
    assert s.schema_version() == 6
    for each in stores:
        each.close()


def test_restart_of_the_store_loses_nothing(store_url, tmp_path, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    first = Store.open(store_url, images_dir=tmp_path / "images")
    apply(first, ls.annotation_event(p, t, a, ls.region("r1", caption="kept", color="red")))
    apply(first, ls.deleted_event(p, [ls.new_id()]))
    before = (first.records(p, include_deleted=True), first.snapshot(p).id, first.pending_count(p), first.events())
    first.close()
    with pytest.raises(StoreError):
        first.records(p)
    again = Store.open(store_url, images_dir=tmp_path / "images")
    after = (again.records(p, include_deleted=True), again.snapshot(p).id, again.pending_count(p), again.events())
    assert after == before
    again.close()


def test_bad_urls_are_refused_clearly(tmp_path):
    with pytest.raises(StoreError, match="unsupported store URL"):
        Store.open("mysql://x/y", images_dir=tmp_path)
    with pytest.raises(StoreError, match="cannot connect"):
        Store.open("postgresql://nobody:secret@127.0.0.1:1/nothing", images_dir=tmp_path)
    try:
        Store.open("postgresql://nobody:secret@127.0.0.1:1/nothing", images_dir=tmp_path)
    except StoreError as exc:
        assert "secret" not in str(exc)


def test_settings_name_the_store():
    from regionscribe.backend.store import default_url

    assert default_url(Settings.from_env({})) == "sqlite:///var/store.sqlite3"
    assert default_url(Settings.from_env({"DATA_DIR": "/srv/rs"})) == "sqlite:////srv/rs/store.sqlite3"
    s = Settings.from_env({"DATABASE_URL": "postgresql://u:pw@db/rs"})
    assert default_url(s) == "postgresql://u:pw@db/rs" and "pw" not in repr(s)
    s = Settings.from_env({"DATABASE_URL": "postgresql://a/b", "STORE_URL": "sqlite:////x.db", "RETRAIN_AFTER": "7"})
    assert (s.store_url, s.retrain_after, s.ingest_queue) == ("sqlite:////x.db", 7, "ingest")


def test_raw_events_replay_into_a_new_store(store, tmp_path, ls):
    from regionscribe.backend.feedback.events import replay

    p, t, a, b = ls.new_id(), ls.new_id(), ls.new_id(), ls.new_id()
    for event in (ls.annotation_event(p, t, a, ls.region("r1", caption="v2 ✓"), updated=2,
                                      action="ANNOTATION_UPDATED"),
                  ls.annotation_event(p, t, a, ls.region("r1", caption="v1") + ls.region("r2", caption="x"),
                                      updated=1),
                  ls.annotation_event(p, t, b, ls.region("k", caption="gone")),
                  ls.deleted_event(p, [b]),
                  {"action": "START_TRAINING", "project": {"id": p}}):
        apply(store, event)
    target = Store.open(f"sqlite:///{tmp_path / 'replayed.sqlite3'}", images_dir=tmp_path / "images")
    assert replay(store, target) == 5
    def fields(s):
        return [(r.annotation_id, r.region_id, r.caption, r.deleted) for r in s.records(p, include_deleted=True)]

    assert fields(target) == fields(store) == [(a, "r1", "v2 ✓", False), (b, "k", "gone", True)]
    assert target.snapshot(p).id == store.snapshot(p).id
    assert replay(store, target) == 5 and fields(target) == fields(store)  # replaying again changes nothing
    target.close()



def test_the_source_migration_keeps_what_a_v2_store_holds(store_url, tmp_path, ls, monkeypatch):
    """A store written before migration 3 (no event sources) opens with everything it held marked as arrived
    through the webhook, which is how it arrived."""
    import regionscribe.backend.store.schema as schema_module  # migrate() reads MIGRATIONS there

    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    monkeypatch.setattr(schema_module, "MIGRATIONS", schema_module.MIGRATIONS[:2])
    old = Store.open(store_url, images_dir=tmp_path / "images")
    assert old.schema_version() == 2

    def v2_rows(tx):  # what the v2 code wrote for one ANNOTATION_CREATED
        tx.execute("INSERT INTO projects (project_id, created_at) VALUES (?, 1)", (p,))
        tx.execute("INSERT INTO events (digest, action, project_id, annotation_id, received_at, last_received_at, "
                   "payload, outcome) VALUES ('d1', 'ANNOTATION_CREATED', ?, ?, 1, 1, '{}', 'applied')", (p, a))
        tx.execute("INSERT INTO annotations (annotation_id, project_id, task_id, version_us, version_digest, "
                   "regions, stored_at) VALUES (?, ?, ?, 5, 'v', 1, 1)", (a, p, t))
        tx.execute("INSERT INTO regions (annotation_id, region_id, project_id, task_id, x, y, width, height, labels, "
                   "caption, attributes, relations, has_content, content_digest, change_seq, stored_at) VALUES "
                   "(?, 'r1', ?, ?, 1, 1, 5, 5, '[]', 'from before', '{}', '[]', 1, 'c', 1, 1)", (a, p, t))

    old._run(v2_rows)
    old.close()
    monkeypatch.undo()
    new = Store.open(store_url, images_dir=tmp_path / "images")
    assert new.schema_version() == schema_module.MIGRATIONS[-1][0]  # every later step applied too
    assert [(r.caption, r.source) for r in new.records(p)] == [("from before", "webhook")]
    assert [e["source"] for e in new.events()] == ["webhook"]
    assert new.annotation_versions(p)[a]["source"] == "webhook"
    assert new.regions_by_source(p) == {p: {"regions": 1, "webhook": 1, "sync": 0}}
    new.close()


def test_training_lease_one_holder_until_it_expires_or_is_released(store, ls):
    import time

    p = ls.new_id()
    assert store.training_lease(p) is None
    assert store.acquire_training_lease(p, "job-a", 0.6)["holder"] == "job-a"
    assert store.acquire_training_lease(p, "job-b", 0.6) is None  # a live lease of another run
    assert store.acquire_training_lease(p, "job-a", 0.6) is not None  # its holder takes it again
    assert store.training_lease(p)["holder"] == "job-a"
    assert store.renew_training_lease(p, "job-a", 0.6) and not store.renew_training_lease(p, "job-b", 0.6)
    time.sleep(0.8)  # job-a's worker stopped renewing
    assert store.training_lease(p) is None
    assert store.acquire_training_lease(p, "job-b", 30)["holder"] == "job-b"
    assert not store.renew_training_lease(p, "job-a", 30)  # job-a learns it lost the project
    assert not store.release_training_lease(p, "job-a") and store.training_lease(p)["holder"] == "job-b"
    # closing job-b's run as failed releases its lease
    snap = store.snapshot(p)
    store.mark_training_started(p, snap.id, job_id="job-b")
    assert store.training_failed(p, "job-b", "worker gone") and store.training_lease(p) is None
    assert store.acquire_training_lease(p, "job-c", 30) is not None and store.release_training_lease(p, "job-c")
    assert store.training_lease(p) is None
