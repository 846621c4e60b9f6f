"""A bounded run of benchmarks/everything_at_once.py: webhook events from several clients (repeated deliveries, out of
order, deletes) while a training run and predicting annotators run against one backend. The store must end exactly
at the newest version of every annotation, every webhook answer must be 2xx, /health must answer within 1 s
throughout, and no prediction may fail. The benchmark's own size is 1,000 events, 16 clients and 16 annotators."""
from __future__ import annotations

import random

import pytest

from regionscribe.backend.ops.runner import find_redis_server
from tests.builders import benchmark_module


@pytest.fixture(scope="module")
def everything():
    with benchmark_module("everything_at_once") as module:
        yield module


def test_the_flood_has_duplicates_out_of_order_deliveries_and_deletes(everything):
    events, final = everything.flood(40, 120, ["a.png"], first_id=1000, rng=random.Random(0))
    assert len(events) == 120
    keys = [(e["action"], repr(e.get("annotation") or e.get("annotations"))) for e in events]
    assert len(set(keys)) < len(keys)  # repeated deliveries
    versions = [(e["annotation"]["id"], e["annotation"]["updated_at"]) for e in events if "annotation" in e]
    assert any(a == b and ta > tb for i, (a, ta) in enumerate(versions) for b, tb in versions[i + 1:])  # newer first
    deleted = {e["annotations"][0]["id"] for e in events if e["action"] == "ANNOTATIONS_DELETED"}
    assert deleted and not any(a in deleted for a, _ in final)
    assert all(caption.startswith(f"annotation {a} version ") for (a, _), caption in final.items())


@pytest.mark.slow
def test_webhooks_training_and_predictions_at_once(everything):
    if find_redis_server() is None:
        pytest.skip("no redis-server binary")
    out = everything.run(events=160, clients=4, annotators=4, annotations=50, stage2_steps=60, seed=3,
                         log=lambda m: None)
    assert out["checks"] == {"store_exact": True, "webhooks_all_2xx": True, "health_within_1s": True,
                             "no_prediction_error": True, "training_run_during_flood": True}, out
    assert out["store"]["live_regions"] == out["store"]["expected"] > 0
    assert out["webhooks"]["sent"] == 160 and out["predictions"]["ok"] > 0
    assert out["training"]["runs"][0]["outcome"] in ("accepted", "rejected")
