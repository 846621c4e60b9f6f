import pytest

from regionscribe.backend.core.registry import Registry
from tests.builders import fake_checkpoint


def test_base_is_current_until_a_version_is_accepted(tmp_path):
    base = tmp_path / "base"
    fake_checkpoint(base, "base-1")
    reg = Registry(tmp_path / "reg", base=base)
    assert reg.current().version == "base-1" and reg.current().path == base
    staged = reg.staging_dir()
    fake_checkpoint(staged, "v2")
    reg.publish(staged, "v2", accepted=False, manifest={"metrics": {"a": 1}})
    assert reg.current().version == "base-1"
    assert reg.get("v2").status == "rejected" and reg.get("v2").manifest["metrics"] == {"a": 1}
    staged = reg.staging_dir()
    fake_checkpoint(staged, "v3")
    reg.publish(staged, "v3", accepted=True, manifest={"parent": "base-1"})
    assert reg.current().version == "v3" and reg.current().manifest["parent"] == "base-1"
    assert [v.version for v in reg.versions()] == ["v2", "v3"]
    reg.set_current("v2")  # rollback by an operator
    assert reg.current().version == "v2"


def test_half_written_versions_are_never_current(tmp_path):
    base = tmp_path / "base"
    fake_checkpoint(base, "base-1")
    reg = Registry(tmp_path / "reg", base=base)
    staged = reg.staging_dir()  # a crash mid-training leaves only a staging folder
    (staged / "model.safetensors").write_bytes(b"partial")
    assert reg.current().version == "base-1" and reg.versions() == []
    with pytest.raises(KeyError):
        reg.set_current(staged.name)
    reg.discard_staging()
    assert not staged.exists()
    (reg.root / "current").write_text("missing-version\n")  # a pointer to nothing falls back to the base
    assert reg.current().version == "base-1"


def test_publishing_twice_refused(tmp_path):
    reg = Registry(tmp_path / "reg", base=tmp_path)
    for _ in range(2):
        staged = reg.staging_dir()
        fake_checkpoint(staged, "v1")
        if (reg.root / "versions" / "v1").exists():
            with pytest.raises(FileExistsError):
                reg.publish(staged, "v1", accepted=True, manifest={})
        else:
            reg.publish(staged, "v1", accepted=True, manifest={})
