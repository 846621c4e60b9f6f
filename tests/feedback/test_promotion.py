"""The promotion gate checks every metric on its own (regionscribe.backend.feedback.promotion): the v4 case from the README's
"Benchmarks" (texture -9.4 points while the mean of attributes and relations stayed inside PROMOTION_TOLERANCE) is
refused, and the refusal names the metric in the manifest and in `regionscribe versions` / `report`."""
from regionscribe.backend.feedback.promotion import promotion_gate
from regionscribe.backend.ops.report import format_table, version_rows, write_report
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.feedback.retrain import base_score
from regionscribe.backend.core.registry import Registry
from tests.builders import fake_checkpoint

# tiny-default-v4 on the base test split (README, "The embedded default")
V4 = {"attribute:color": 100.0, "attribute:shape": 98.7, "attribute:size": 100.0, "attribute:texture": 88.3,
      "relation": 95.7, "relation:horizontal": 99.7, "relation:vertical": 99.6, "relation:size": 99.0,
      "relation:color": 95.1, "relation:overlap": 87.2, "caption:CIDEr-D": 912.0, "caption:exact_match": 0.86,
      "counts": {"attribute:texture": 626}, "split": "test", "n_scenes": 200, "model_version": "tiny-default-v4"}


def scores(base: dict, heldout: float | None = 50.0) -> dict:
    return {"base": base, "heldout": {}, "base_score": round(base_score(base), 2), "heldout_score": heldout}


def test_the_v4_case_is_refused_by_texture():
    candidate = {**V4, "attribute:texture": round(V4["attribute:texture"] - 9.4, 2)}
    cand, cur = scores(candidate, heldout=99.1), scores(V4, heldout=0.0)  # the new concept learnt: held-out better
    mean_drop = cur["base_score"] - cand["base_score"]
    assert mean_drop <= Settings().promotion_tolerance  # what the old gate read: 1.88 points, inside 2.0, accepted
    gate = promotion_gate(cand, cur, Settings().promotion_tolerance, Settings().promotion_cider_tolerance)
    assert not gate.accepted
    assert [c.metric for c in gate.failed] == ["attribute:texture"]
    assert gate.failed[0].drop == 9.4
    assert "attribute:texture" in gate.as_dict()["reasons"][0]


def test_each_metric_has_its_own_check():
    tolerance, cider = 2.0, 25.0
    gate = promotion_gate(scores(V4), scores(V4), tolerance, cider)
    assert gate.accepted
    checked = {c.metric for c in gate.checks}
    assert checked == {"attribute:color", "attribute:shape", "attribute:size", "attribute:texture",
                       "relation:horizontal", "relation:vertical", "relation:size", "relation:color",
                       "relation:overlap", "caption:CIDEr-D", "heldout"}
    # just inside each tolerance: accepted; just past it, on one relation axis or the captions alone: refused
    inside = {**V4, "relation:overlap": 87.2 - 2.0, "caption:CIDEr-D": 912.0 - 25.0}
    assert promotion_gate(scores(inside), scores(V4), tolerance, cider).accepted
    for metric, value in (("relation:overlap", 87.2 - 2.1), ("caption:CIDEr-D", 912.0 - 25.5)):
        gate = promotion_gate(scores({**V4, metric: value}), scores(V4), tolerance, cider)
        assert [c.metric for c in gate.failed] == [metric]
    # a metric the current version has and the candidate lacks fails; worse held-out corrections fail
    missing = {k: v for k, v in V4.items() if k != "attribute:size"}
    assert [c.metric for c in promotion_gate(scores(missing), scores(V4), tolerance, cider).failed] == ["attribute:size"]
    worse = promotion_gate(scores(V4, heldout=49.9), scores(V4, heldout=50.0), tolerance, cider)
    assert [c.metric for c in worse.failed] == ["heldout"]
    # no held-out corrections (fewer than 5 images): the base split decides
    assert promotion_gate(scores(V4, None), scores(V4, None), tolerance, cider).accepted


def test_a_refused_version_names_its_metric(tmp_path):
    base = tmp_path / "base"
    fake_checkpoint(base, "base-1")
    settings = Settings(data_dir=str(tmp_path / "data"), model_dir=str(base))
    registry = Registry(settings.registry_path, base=base)
    cand, cur = scores({**V4, "attribute:texture": 78.9}, 99.1), scores(V4, 0.0)
    gate = promotion_gate(cand, cur, settings.promotion_tolerance, settings.promotion_cider_tolerance)
    staged = registry.staging_dir()
    fake_checkpoint(staged, "v5")
    registry.publish(staged, "v5", gate.accepted, {"parent": "base-1", "regions": 198, "gate": gate.as_dict(),
                                                  "scores": {"candidate": cand, "current": cur}})
    manifest = registry.versions()[0].manifest
    assert manifest["status"] == "rejected" and manifest["gate"]["failed"] == ["attribute:texture"]
    row, = [r for r in version_rows(settings) if r["version"] == "v5"]
    assert row["failed"] == "attribute:texture -9.40 (tolerance 2)"
    assert "attribute:texture -9.40" in format_table(version_rows(settings))
    write_report(str(tmp_path / "report.html"), settings)
    assert "attribute:texture -9.40 (tolerance 2)" in (tmp_path / "report.html").read_text()
