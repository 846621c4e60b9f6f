"""The production entry points: gunicorn serving the app, and `make run`'s run_all (private Redis + worker + web)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from regionscribe.backend.ops.runner import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 60.0, ready=lambda body: True) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        try:
            response = requests.get(f"{url}/health", timeout=1)
            if response.status_code == 200 and ready(response.json()):
                return response.json()
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def stop(process: subprocess.Popen, timeout: float = 15.0) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def test_gunicorn_serves_the_app(redis_url, worker):
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "MODEL_DIR": "tiny-untrained", "PYTHONPATH": str(ROOT),
           "LOG_LEVEL": "WARNING", "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw"}
    process = subprocess.Popen(
        [sys.executable, "-c", f"from regionscribe.backend.web.server import serve; serve('127.0.0.1', {port}, workers=1)"],
        env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_health(url, process)["redis"] is True
        assert requests.post(f"{url}/setup", json={}, timeout=3).status_code == 401
        answer = requests.post(f"{url}/setup", json={}, auth=("ls", "pw"), timeout=3)
        assert answer.json() == {"model_version": "tiny-untrained-0"}
    finally:
        assert stop(process) == 0


def test_run_all_starts_redis_worker_and_web_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"MODEL_DIR": "tiny-untrained", "PORT": str(port), "HOST": "127.0.0.1", "PYTHONPATH": str(ROOT),
                "LOG_LEVEL": "WARNING", "WEB_WORKERS": "1"})
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", "from regionscribe.backend.ops.runner import run_all; "
                                    "raise SystemExit(run_all())"], env=env, cwd=ROOT, start_new_session=True,
                                   stdout=out, stderr=subprocess.STDOUT)
        try:
            body = wait_for_health(f"http://127.0.0.1:{port}", process, timeout=90,
                                   ready=lambda b: b.get("workers_ready", 0) >= 1)
            assert body["redis"] is True and body["workers"] == 1
            deadline = time.monotonic() + 5
            while "regionscribe is up" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            code = stop(process, timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert f"http://localhost:{port}" in text and "private Redis at redis://127.0.0.1:" in text
    redis_port = text.split("private Redis at redis://127.0.0.1:")[1].split("/")[0]
    children = subprocess.run(["pgrep", "-f", f"redis-server 127.0.0.1:{redis_port}"], capture_output=True)
    assert children.stdout.strip() == b"", "the private redis-server outlived run_all"


@pytest.fixture
def restore_logging():
    """run_all configures the root logger (a handler on this test's captured stderr) and the warnings hook."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_run_all_without_redis_says_how_to_install_it(monkeypatch, capsys, restore_logging):
    import regionscribe.backend.ops.runner as runner
    from regionscribe.backend.core.settings import Settings

    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    monkeypatch.setattr(runner.importlib.util, "find_spec", lambda name: None)
    assert runner.find_redis_server() is None
    assert runner.run_all(Settings(model_dir="tiny-untrained")) == 1
    err = capsys.readouterr().err
    assert "apt-get install redis-server" in err and "REDIS_URL" in err
