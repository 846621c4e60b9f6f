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


def test_registry_and_checkpoint_versions_import_no_torch(tmp_path):
    """The registry and a checkpoint's version are read by the web process, `regionscribe versions` and doctor:
    importing them (and reading a version) must not load torch."""
    import subprocess
    import sys

    fake_checkpoint(tmp_path / "base", "base-1")
    code = ("import sys; from pathlib import Path\n"
            "import regionscribe.backend.core.registry as registry, regionscribe.model.checkpoints as checkpoints\n"
            f"assert checkpoints.checkpoint_version(Path({str(tmp_path / 'base')!r})) == 'base-1'\n"
            f"assert registry.Registry(Path({str(tmp_path / 'reg')!r}), base=Path({str(tmp_path / 'base')!r}))"
            ".current().version == 'base-1'\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
