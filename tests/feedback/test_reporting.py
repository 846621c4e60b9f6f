from regionscribe.backend.ops.report import format_table, version_rows, write_report
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.core.registry import Registry
from tests.builders import fake_checkpoint


def test_versions_and_report(tmp_path):
    base = tmp_path / "base"
    fake_checkpoint(base, "base-1")
    settings = Settings(data_dir=str(tmp_path / "data"), model_dir=str(base))
    assert [r["version"] for r in version_rows(settings)] == ["base-1"]  # nothing promoted yet: the base serves
    registry = Registry(settings.registry_path, base=base)
    for name, accepted, score in (("v2", True, 91.5), ("v3", False, 80.0)):
        staged = registry.staging_dir()
        fake_checkpoint(staged, name)
        registry.publish(staged, name, accepted, {"parent": "base-1", "regions": 40, "base_drop": 0.5,
                                                  "scores": {"candidate": {"base_score": score,
                                                                           "heldout_score": 70.0}}})
    rows = version_rows(settings)
    assert [(r["version"], r["status"], r["current"]) for r in rows] == [("v2", "accepted", True),
                                                                          ("v3", "rejected", False)]
    assert rows[0]["base_score"] == 91.5
    table = format_table(rows)
    assert "v3" in table and "rejected" in table
    out = write_report(str(tmp_path / "report.html"), settings)
    page = (tmp_path / "report.html").read_text()
    assert out["versions"] == 2 and "data:image/png;base64," in page and "v2" in page and "edit rate" in page
