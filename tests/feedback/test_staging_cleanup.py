"""A killed training run leaves a staging folder in the registry; the next training worker to start removes it once
no live run's folder can be that old."""
import os
import time

from regionscribe.backend.core.settings import Settings
from regionscribe.backend.ops.worker import _discard_dead_staging
from regionscribe.backend.core.registry import Registry
from tests.builders import fake_checkpoint


def test_staging_folders_are_discarded_only_once_older_than_a_run_can_live(tmp_path):
    base = tmp_path / "base"
    fake_checkpoint(base, "base-1")
    settings = Settings(data_dir=str(tmp_path / "data"), training_timeout=3600)
    reg = Registry(settings.registry_path, base=base)
    live, dead = reg.staging_dir(), reg.staging_dir()
    (dead / "model.safetensors").write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(dead, (two_hours_ago, two_hours_ago))
    _discard_dead_staging(settings)  # what a training worker does when it starts
    assert live.is_dir() and not dead.exists()
    assert reg.discard_staging(older_than=3600) == []
    assert reg.discard_staging() == [live.name] and not live.exists()
