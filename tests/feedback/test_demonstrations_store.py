"""The store's demonstrations table (DEMONSTRATIONS=k), fed through ingest exactly as the webhook feeds it, on a real
SQLite file and a real PostgreSQL: which regions count as accepted, tokens written and read back in id order, the
newest answer wins (an update, a second annotation of the same region), deleted and changed regions are retired in the
transaction that deletes or changes them, a token computed for content that changed meanwhile is refused, and rows
are per model version."""
from __future__ import annotations

import numpy as np
import pytest

from regionscribe.backend.core.settings import Settings
from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.store import DemonstrationInput

NO_REDIS = Settings()
V1, V2 = "tiny-v1", "tiny-v2"


def apply(store, payload) -> dict:
    return handle_event(NO_REDIS, payload, store=store, connection=None)


def token(seed: int, dim: int = 8) -> bytes:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32).tobytes()


def compute(store, project_id, version, task_ids=None, seed=0) -> dict:
    """What a worker does: the accepted regions missing a row for `version`, each given a token and its answer."""
    missing = store.accepted_regions(project_id, version, task_ids)
    items = [DemonstrationInput(task_id=m.record.task_id, region_id=m.record.region_id,
                                annotation_id=m.record.annotation_id, content_digest=m.content_digest,
                                token=token(seed + i), caption=m.record.caption,
                                attributes={k: str(v[0]) for k, v in m.record.attributes.items() if v})
             for i, m in enumerate(missing)]
    return store.write_demonstrations(project_id, version, items)


def live_rows(store, project_id, version) -> dict:
    """(task, region) -> row, as an index that applied every row in id order holds them."""
    out = {}
    for row in store.demonstrations_since(project_id, version):
        if row.token is None:
            out.pop((row.task_id, row.region_id), None)
        else:
            out[(row.task_id, row.region_id)] = row
    return out


def test_accepted_regions_are_live_answered_and_not_cancelled(store, ls):
    p, t1, t2, t3 = ls.new_id(), ls.new_id(), ls.new_id(), ls.new_id()
    apply(store, ls.annotation_event(p, t1, ls.new_id(), ls.region("a", caption="a red square", color="red")
                                     + ls.region("empty", x=50)))  # a box with nothing filled: not an answer
    apply(store, ls.annotation_event(p, t2, ls.new_id(), ls.region("b", color="blue")))  # attributes only: accepted
    apply(store, ls.annotation_event(p, t3, ls.new_id(), ls.region("c", caption="skipped"), cancelled=True))
    accepted = store.accepted_regions(p)
    assert [(m.record.task_id, m.record.region_id) for m in accepted] == [(t1, "a"), (t2, "b")]  # change order
    assert store.accepted_regions(p, V1) == accepted  # no tokens yet: every one is missing
    assert store.accepted_regions(p, V1, limit=1) == accepted[:1]
    assert [m.record.region_id for m in store.accepted_regions(p, task_ids=[t2])] == ["b"]
    assert store.accepted_regions(p, task_ids=[]) == []
    assert store.demonstration_projects() == [p] or p in store.demonstration_projects()


def test_written_tokens_come_back_in_id_order_and_are_no_longer_missing(store, ls):
    p, t1, t2, a1, a2 = (ls.new_id() for _ in range(5))
    apply(store, ls.annotation_event(p, t1, a1, ls.region("a", caption="a red square", color="red", shape="square")))
    apply(store, ls.annotation_event(p, t2, a2, ls.region("b", caption="a blue circle")))
    assert compute(store, p, V1) == {"written": 2, "skipped": 0}
    rows = store.demonstrations_since(p, V1)
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    by_key = {(r.task_id, r.region_id): r for r in rows}
    assert by_key[(t1, "a")].caption == "a red square" and by_key[(t1, "a")].annotation_id == a1
    assert by_key[(t1, "a")].attributes == {"color": "red", "shape": "square"}
    assert by_key[(t1, "a")].token == token(0) or by_key[(t1, "a")].token == token(1)
    assert store.accepted_regions(p, V1) == []  # nothing left to compute
    assert compute(store, p, V1) == {"written": 0, "skipped": 0}
    assert store.demonstrations_since(p, V1, after_id=rows[-1].id) == []
    assert store.demonstration_counts([p])[p] == {"accepted": 2, "versions": {V1: {"tokens": 2, "retired": 0}}}


def test_an_updated_answer_replaces_its_row_with_a_new_id(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    apply(store, ls.annotation_event(p, t, a, ls.region("a", caption="a red square"), updated=1))
    compute(store, p, V1)
    first = store.demonstrations_since(p, V1)
    assert len(first) == 1
    # the annotator corrects the caption: the old answer is retired in the same transaction
    apply(store, ls.annotation_event(p, t, a, ls.region("a", caption="a crimson square"), action="ANNOTATION_UPDATED",
                                     updated=2))
    after = store.demonstrations_since(p, V1, after_id=first[0].id)
    assert [(r.region_id, r.token) for r in after] == [("a", None)]
    assert live_rows(store, p, V1) == {}
    missing = store.accepted_regions(p, V1)
    assert [m.record.caption for m in missing] == ["a crimson square"]
    compute(store, p, V1, seed=5)
    rows = store.demonstrations_since(p, V1)
    assert len(rows) == 1 and rows[0].id > after[-1].id and rows[0].caption == "a crimson square"  # one row per key
    # an update that leaves the region as it was keeps its row
    apply(store, ls.annotation_event(p, t, a, ls.region("a", caption="a crimson square") + ls.region("new", x=60,
                                     caption="another"), action="ANNOTATION_UPDATED", updated=3))
    assert [r.id for r in store.demonstrations_since(p, V1)] == [rows[0].id]


def test_deleted_and_removed_regions_disappear(store, ls):
    p, t1, t2, a1, a2 = (ls.new_id() for _ in range(5))
    apply(store, ls.annotation_event(p, t1, a1, ls.region("a", caption="one") + ls.region("b", x=50, caption="two"),
                                     updated=1))
    apply(store, ls.annotation_event(p, t2, a2, ls.region("c", caption="three")))
    compute(store, p, V1)
    compute(store, p, V2)
    assert set(live_rows(store, p, V1)) == {(t1, "a"), (t1, "b"), (t2, "c")}
    # region b removed from the annotation
    apply(store, ls.annotation_event(p, t1, a1, ls.region("a", caption="one"), action="ANNOTATION_UPDATED", updated=2))
    assert set(live_rows(store, p, V1)) == {(t1, "a"), (t2, "c")}
    # annotation a2 deleted: its regions' rows retired, for every model version
    apply(store, ls.deleted_event(p, [a2]))
    assert set(live_rows(store, p, V1)) == {(t1, "a")} and set(live_rows(store, p, V2)) == {(t1, "a")}
    assert store.accepted_regions(p, V1) == []  # nothing comes back
    # an annotation that becomes cancelled is no answer
    apply(store, ls.annotation_event(p, t1, a1, ls.region("a", caption="one"), action="ANNOTATION_UPDATED", updated=3,
                                     cancelled=True))
    assert live_rows(store, p, V1) == {}
    counts = store.demonstration_counts([p])[p]
    assert counts["versions"][V1] == {"tokens": 0, "retired": 3}


def test_the_newest_answer_wins_across_annotations_of_a_task(store, ls):
    """Two annotators accepted the same predicted region (the same region id in two annotations of one task)."""
    p, t, older, newer = (ls.new_id() for _ in range(4))
    apply(store, ls.annotation_event(p, t, older, ls.region("r", caption="a red square"), updated=1, user=1))
    compute(store, p, V1)
    assert live_rows(store, p, V1)[(t, "r")].annotation_id == older
    apply(store, ls.annotation_event(p, t, newer, ls.region("r", caption="a scarlet square"), updated=2, user=2))
    assert live_rows(store, p, V1) == {}  # superseded at once
    assert [(m.record.annotation_id, m.record.caption) for m in store.accepted_regions(p, V1)] == [
        (newer, "a scarlet square")]
    compute(store, p, V1)
    assert live_rows(store, p, V1)[(t, "r")].caption == "a scarlet square"
    # the newer annotation is deleted: the older answer is the newest again, and a worker computes it back
    apply(store, ls.deleted_event(p, [newer]))
    assert live_rows(store, p, V1) == {}
    assert [m.record.annotation_id for m in store.accepted_regions(p, V1, [t])] == [older]
    compute(store, p, V1, task_ids=[t])
    assert live_rows(store, p, V1)[(t, "r")].caption == "a red square"


def test_a_token_for_content_that_changed_meanwhile_is_refused(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    apply(store, ls.annotation_event(p, t, a, ls.region("r", caption="before"), updated=1))
    stale = store.accepted_regions(p, V1)  # a worker starts computing...
    apply(store, ls.annotation_event(p, t, a, ls.region("r", caption="after"), action="ANNOTATION_UPDATED",
                                     updated=2))  # ...while the annotator corrects the region
    item = DemonstrationInput(task_id=t, region_id="r", annotation_id=a, content_digest=stale[0].content_digest,
                              token=token(1), caption="before", attributes={})
    assert store.write_demonstrations(p, V1, [item]) == {"written": 0, "skipped": 1}
    apply(store, ls.deleted_event(p, [a]))
    fresh = DemonstrationInput(task_id=t, region_id="r", annotation_id=a, content_digest="whatever", token=token(1),
                               caption="after", attributes={})
    assert store.write_demonstrations(p, V1, [fresh]) == {"written": 0, "skipped": 1}  # deleted meanwhile
    assert live_rows(store, p, V1) == {}


def test_rows_are_per_model_version(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    apply(store, ls.annotation_event(p, t, a, ls.region("r", caption="a red square")))
    compute(store, p, V1, seed=1)
    assert store.demonstrations_since(p, V2) == []
    assert [m.record.region_id for m in store.accepted_regions(p, V2)] == ["r"]  # the new version needs its own
    compute(store, p, V2, seed=2)
    assert live_rows(store, p, V1)[(t, "r")].token == token(1)
    assert live_rows(store, p, V2)[(t, "r")].token == token(2)
    other = ls.new_id()
    assert store.demonstrations_since(other, V1) == []  # and per project


def test_pruning_deletes_the_versions_no_longer_served_and_keeps_the_rest(store, ls):
    p, q, t, u, a, b = (ls.new_id() for _ in range(6))
    apply(store, ls.annotation_event(p, t, a, ls.region("r", caption="a red square") + ls.region("s", x=50,
                                     caption="a blue circle")))
    apply(store, ls.annotation_event(q, u, b, ls.region("r", caption="a green star")))
    for project in (p, q):
        compute(store, project, V1, seed=1)
        compute(store, project, V2, seed=2)
    apply(store, ls.deleted_event(p, [a]))  # p's V1 and V2 rows retired (token NULL): retired rows go too
    compute(store, q, "tiny-v3", seed=3)
    assert store.prune_demonstrations([V2], project_ids=[q]) == {q: {V1: 1, "tiny-v3": 1}}  # only q's
    assert store.demonstration_counts([p])[p]["versions"] == {V1: {"tokens": 0, "retired": 2},
                                                            V2: {"tokens": 0, "retired": 2}}
    assert store.prune_demonstrations([V2]) == {p: {V1: 2}}
    assert store.prune_demonstrations([V2]) == {}  # nothing left to prune
    assert set(store.demonstration_counts([p, q])[q]["versions"]) == {V2}
    assert live_rows(store, q, V2)[(u, "r")].token == token(2)  # the kept version is untouched
    assert store.demonstrations_since(q, V1) == []
    with pytest.raises(ValueError, match="keep_versions is empty"):
        store.prune_demonstrations([])


def test_stale_rows_are_retired_by_the_safety_net(store, ls):
    p, t, a = ls.new_id(), ls.new_id(), ls.new_id()
    apply(store, ls.annotation_event(p, t, a, ls.region("r", caption="a red square")))
    compute(store, p, V1)
    assert store.retire_stale_demonstrations(p, V1) == 0
    # a region changed behind the store's back (by hand, a bug): the refresh's safety net retires its row
    store._run(lambda tx: tx.execute("UPDATE regions SET deleted = 1 WHERE annotation_id = ?", (a,)))
    assert store.retire_stale_demonstrations(p, V1) == 1
    assert live_rows(store, p, V1) == {}
