"""`regionscribe doctor` against a real private redis-server, a fake Label Studio on loopback, a real SQLite store,
a real registry folder and an untrained tiny checkpoint on disk: the all-OK path and clear FAIL messages."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import pytest

from regionscribe.backend.ops.doctor import FAIL, OK, SKIP, WARN, main, render, run_checks
from regionscribe.backend.ops.runner import free_port
from regionscribe.backend.core.settings import Settings, TINY_UNTRAINED
from regionscribe.backend.core.liveness import Heartbeat


@pytest.fixture
def queues():
    """Queue names of this test only, so that workers of other tests never count."""
    tag = uuid.uuid4().hex[:8]
    return {"inference_queue": f"inference-{tag}", "training_queue": f"training-{tag}", "ingest_queue": f"ingest-{tag}"}


@pytest.fixture
def heartbeats(redis_client):
    """Announce workers exactly the way regionscribe.backend.ops.worker.run_worker does (its Heartbeat), without
    starting them."""
    started = []

    def announce(queue: str, state: str = "ready", model_version: str | None = None) -> None:
        name = f"doctor-test-{uuid.uuid4().hex[:8]}"
        info = {"name": name, "pid": 1, "host": "test-host", "state": state, "model_version": model_version,
                "queues": [queue]}
        beat = Heartbeat(redis_client, name, info, every=30)
        beat.beat()
        started.append(beat)

    yield announce
    for beat in started:
        beat.stop()


@pytest.fixture
def registry(tmp_path, tiny_checkpoint):
    from regionscribe.backend.core.registry import Registry

    reg = Registry(tmp_path / "registry", base=tiny_checkpoint)
    staged = reg.staging_dir()
    shutil.copytree(tiny_checkpoint, staged, dirs_exist_ok=True)
    reg.publish(staged, "v1", accepted=True, manifest={"metrics": {}})
    return reg


@pytest.fixture
def settings(redis_url, fake_ls, tiny_checkpoint, tmp_path, registry, queues, h):
    return Settings(redis_url=redis_url, model_dir=str(tiny_checkpoint), label_studio_url=fake_ls.url,
                    label_studio_api_key=h.LEGACY_TOKEN, data_dir=str(tmp_path / "data"),
                    registry_dir=str(registry.root), **queues)


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


def all_workers(heartbeats, s: Settings) -> None:
    heartbeats(s.inference_queue, model_version="tiny-test-v1")
    heartbeats(s.training_queue)
    heartbeats(s.ingest_queue)


@pytest.fixture
def quiet_webhooks(redis_client):
    """The session's Redis as a deployment with no connected project, no 401 on /webhook and a sync a moment ago
    (other tests share this Redis and leave their own)."""
    import time

    from regionscribe.backend.core.keys import SYNC_LAST_KEY
    from regionscribe.backend.core.keys import REFUSED_LAST_KEY
    from regionscribe.backend.core.keys import CONNECTED_KEY

    redis_client.delete(CONNECTED_KEY, REFUSED_LAST_KEY, *redis_client.keys("regionscribe:webhook_refused:*"))
    redis_client.set(SYNC_LAST_KEY, json.dumps({"at": time.time(), "projects": {}}))


def test_everything_ok(settings, heartbeats, capsys, quiet_webhooks):
    all_workers(heartbeats, settings)
    checks = by_name(run_checks(settings, env={}))
    assert {n: c.status for n, c in checks.items()} == {
        "settings": OK, "redis": OK, "store": OK, "registry": OK, "model": OK, "workers.inference": OK,
        "workers.training": OK, "workers.ingest": OK, "label_studio": OK, "label_studio.auth": OK,
        "webhooks.401": OK, "webhooks": SKIP, "sync": OK}, render(list(checks.values()))
    assert "answers PING; Redis " in checks["redis"].detail
    assert "sqlite store" in checks["store"].detail and "(created now)" in checks["store"].detail
    assert "current v1" in checks["registry"].detail
    assert "version tiny-test-v1" in checks["model"].detail
    assert "legacy token is accepted (as admin@example.com)" in checks["label_studio.auth"].detail
    assert main(settings=settings) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("all checks passed")


def test_json_output(settings, heartbeats, capsys):
    all_workers(heartbeats, settings)
    assert main(json_output=True, settings=settings) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    assert {"name", "status", "detail", "fix", "seconds"} <= set(doc["checks"][0])


def test_personal_access_token_is_exchanged(settings, heartbeats, h, fake_ls):
    all_workers(heartbeats, settings)
    checks = by_name(run_checks(settings.replace(label_studio_api_key=h.PAT), env={}))
    assert checks["label_studio.auth"].status == OK
    assert "personal access token is accepted" in checks["label_studio.auth"].detail
    assert any(path == "/api/token/refresh/" for _, path, _ in fake_ls.seen)


def test_redis_down(settings, capsys):
    down = f"redis://127.0.0.1:{free_port()}/0"
    assert main(settings=settings.replace(redis_url=down), timeout=1) == 1
    out = capsys.readouterr().out
    assert "FAIL  redis" in out and f"cannot reach Redis at {down}: ConnectionError" in out
    assert "fix: is Redis running and reachable from here?" in out
    checks = by_name(run_checks(settings.replace(redis_url=down), timeout=1, env={}))
    assert checks["workers"].status == SKIP
    assert checks["store"].status == OK  # the other checks still run


def test_redis_unset(settings):
    checks = by_name(run_checks(settings.replace(redis_url=None), env={}))
    assert checks["redis"].status == FAIL and checks["redis"].detail == "REDIS_URL is not set"


@pytest.mark.parametrize("kind", ["legacy", "pat"])
def test_wrong_token(settings, heartbeats, h, kind, capsys):
    all_workers(heartbeats, settings)
    bad = "wrong-legacy-token-987654321" if kind == "legacy" else h.fake_jwt(
        {"token_type": "refresh", "exp": 4102444800, "jti": "revoked"})
    assert main(settings=settings.replace(label_studio_api_key=bad)) == 1
    out = capsys.readouterr().out
    assert bad not in out
    if kind == "legacy":
        assert "Label Studio refused the legacy token in LABEL_STUDIO_API_KEY (HTTP 401)" in out
        assert "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true" in out
    else:
        assert "Label Studio refused the personal access token in LABEL_STUDIO_API_KEY (POST /api/token/refresh/ → " \
               "HTTP 401)" in out
        assert "create a new personal access token" in out


def test_label_studio_unreachable_and_unset(settings):
    gone = f"http://127.0.0.1:{free_port()}"
    checks = by_name(run_checks(settings.replace(label_studio_url=gone), timeout=1, env={}))
    assert checks["label_studio"].status == FAIL
    assert f"cannot reach Label Studio at {gone}" in checks["label_studio"].detail
    checks = by_name(run_checks(settings.replace(label_studio_url=None), env={}))
    assert checks["label_studio"].status == WARN and "not configured" in checks["label_studio"].detail


def test_missing_checkpoint(settings, tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    assert main(settings=settings.replace(model_dir=str(missing))) == 1
    out = capsys.readouterr().out
    assert "FAIL  model" in out and f"MODEL_DIR at {missing}: missing the folder" in out
    assert "point MODEL_DIR at a folder written by `regionscribe train`" in out
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    checks = by_name(run_checks(settings.replace(model_dir=str(half)), env={}))
    assert checks["model"].status == FAIL and "missing model.safetensors" in checks["model"].detail


def test_announced_version_not_on_this_machine(settings, redis_client, tmp_path):
    from regionscribe.backend.core.keys import CURRENT_KEY

    redis_client.set(CURRENT_KEY, json.dumps({"version": "v9", "path": str(tmp_path / "elsewhere" / "v9")}))
    try:
        checks = by_name(run_checks(settings, env={}))
    finally:
        redis_client.delete(CURRENT_KEY)
    assert checks["model"].status == FAIL
    assert "the registry's current version v9" in checks["model"].detail
    assert "mount the registry (REGISTRY_DIR) at the same path on every worker machine" in checks["model"].fix


def test_broken_registry_pointer(settings, registry):
    (registry.root / "current").write_text("v-gone\n")
    checks = by_name(run_checks(settings, env={}))
    assert checks["registry"].status == FAIL
    assert "'v-gone', which is not a complete version" in checks["registry"].detail


def test_no_inference_worker(settings, heartbeats):
    heartbeats(settings.training_queue)
    heartbeats(settings.inference_queue, state="loading")
    checks = by_name(run_checks(settings, env={}))
    assert checks["workers.inference"].status == WARN and "still loading" in checks["workers.inference"].detail
    assert checks["workers.ingest"].status == WARN and "no live ingest worker" in checks["workers.ingest"].detail
    checks = by_name(run_checks(settings.replace(inference_queue=f"nobody-{uuid.uuid4().hex}"), env={}))
    assert checks["workers.inference"].status == FAIL
    assert "start an inference worker" in checks["workers.inference"].fix


def test_store_unreachable_postgres_hides_the_password(settings, capsys):
    url = f"postgresql://regionscribe:pg-Secret-42@127.0.0.1:{free_port()}/regionscribe"
    assert main(settings=settings.replace(store_url=url), timeout=1) == 1
    out = capsys.readouterr().out
    assert "FAIL  store" in out and "regionscribe:***@127.0.0.1" in out
    assert "pg-Secret-42" not in out


def test_no_secret_is_ever_printed(settings, heartbeats, capsys):
    """Secrets in every place they can be: the API key, BASIC_AUTH_PASS, passwords in REDIS_URL and STORE_URL."""
    all_workers(heartbeats, settings)
    down = free_port()
    secret = settings.replace(label_studio_api_key="Zz-api-key-Secret-1", basic_auth_user="u",
                              basic_auth_pass="Zz-basic-Secret-2",
                              redis_url=f"redis://:Zz-redis-Secret-3@127.0.0.1:{down}/0")
    for as_json in (False, True):
        main(json_output=as_json, settings=secret, timeout=1)
        out = capsys.readouterr().out
        assert "Zz-" not in out, out


def test_bad_environment_variable():
    checks = run_checks(env={"PORT": "not-a-number"})
    assert [(c.name, c.status) for c in checks] == [("settings", FAIL)]
    assert "PORT='not-a-number' is not a valid int" in checks[0].detail


def test_tiny_untrained_load(settings, heartbeats):
    all_workers(heartbeats, settings)
    checks = by_name(run_checks(settings.replace(model_dir=TINY_UNTRAINED), load=True, env={}))
    assert checks["model"].status == WARN  # fine for tests, said so
    assert "loaded on cpu in" in checks["model"].detail and "one box described in" in checks["model"].detail


def test_load_a_checkpoint(settings, heartbeats):
    all_workers(heartbeats, settings)
    checks = by_name(run_checks(settings, load=True, env={}))
    assert checks["model"].status == OK and "loaded on cpu in" in checks["model"].detail


def test_sharded_checkpoint_and_adapter_version(settings, heartbeats, tmp_path):
    """A sharded checkpoint (real-size models) and a LoRA adapter version over a base pass the model check and load;
    an adapter whose base is gone fails with that said."""
    import torch

    from regionscribe.model import adapters
    from regionscribe.model.modeling import RegionScribeModel
    from tests.builders import tiny_parts_checkpoint

    all_workers(heartbeats, settings)
    base = tiny_parts_checkpoint(tmp_path / "tree" / "base", tmp_path / "parts")
    sharded = tmp_path / "sharded"
    model = RegionScribeModel.from_pretrained(base)
    model.save_pretrained(sharded, metadata={"version": "sharded-v1"}, max_shard_bytes=256 * 1024)
    check = by_name(run_checks(settings.replace(model_dir=str(sharded)), load=True, env={}))["model"]
    assert check.status == OK and "version sharded-v1" in check.detail and "loaded on cpu in" in check.detail

    torch.manual_seed(0)
    adapters.attach(model, {"r": 2, "target_modules": ["q_proj", "v_proj"]})
    version = tmp_path / "tree" / "v1"
    adapters.save(model, version, base, {"version": "adapter-v1"}, visual=False)
    check = by_name(run_checks(settings.replace(model_dir=str(version)), load=True, env={}))["model"]
    assert check.status == OK and "version adapter-v1" in check.detail and "loaded on cpu in" in check.detail
    shutil.rmtree(base)
    check = by_name(run_checks(settings.replace(model_dir=str(version)), env={}))["model"]
    assert check.status == FAIL and "LoRA adapter over" in check.detail and "not there" in check.detail


def test_command_line(settings, tmp_path):
    """`regionscribe doctor --json` in a fresh process, settings from the environment; exit 1 on a FAIL."""
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "DATA_DIR": str(tmp_path / "cli-data"), "MODEL_DIR": str(tmp_path / "nothing"), "LABEL_STUDIO_URL": "",
           "LABEL_STUDIO_API_KEY": "cli-Secret-Key"}
    done = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "doctor", "--json", "--timeout", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path.parent, timeout=60)
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    assert doc["ok"] is False and statuses["redis"] == FAIL and statuses["model"] == FAIL
    assert "cli-Secret-Key" not in done.stdout + done.stderr
