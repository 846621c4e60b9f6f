"""Subprocesses the tests start, kill -9 and start again: regionscribe workers, each in its own process group, and
a private redis-server that can be stopped, frozen and restarted on the same port."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from regionscribe.backend.ops.runner import find_redis_server, free_port, start_redis

ROOT = Path(__file__).resolve().parents[1]


class GroupProcess:
    """A subprocess started in its own session: `kill` is kill -9 of the whole group (as the OOM killer or a
    crashed host would: no cleanup, no callbacks), `stop` a SIGTERM first."""

    process: subprocess.Popen

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)


class WorkerProcess(GroupProcess):
    """`regionscribe.backend.ops.worker.run_worker` in a subprocess with environment `env` (its settings), on
    `queues` (None: the settings' inference and ingest queues), `burst`: exit when they are empty; with `log_path`, its
    stdout and stderr go to that file."""

    def __init__(self, env: dict, name: str, log_path: str | os.PathLike | None = None,
                 queues: list[str] | None = None, burst: bool = False):
        self.name = name
        self.log_path = log_path
        args = f"name={name!r}" + (f", queues={queues!r}" if queues is not None else "") + (", burst=True" if burst else "")
        output = open(log_path, "wb") if log_path is not None else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", f"from regionscribe.backend.ops.worker import run_worker; run_worker({args})"],
                env=env, cwd=ROOT, start_new_session=True, stdout=output, stderr=output)
        finally:
            if output is not None:
                output.close()

    def wait_ready(self, client: redis.Redis, timeout: float = 60.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}")
            raw = client.get(f"regionscribe:workers:{self.name}")
            if raw and json.loads(raw).get("state") == "ready":
                return self
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.name} not ready in {timeout} s")


class RestartableRedis:
    """A private redis-server (no persistence) that a test may kill, freeze and start again on the same port."""

    def __init__(self, workdir: str):
        self.binary = find_redis_server()
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process, url = start_redis(self.binary, port=self.port, workdir=self.workdir)
        assert url == self.url

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)
