"""Structured logs (regionscribe.backend.core.logs, LOG_FORMAT=json): one JSON object per line, the request id of an X-Request-Id header
on the web request's lines and on the worker's lines for the job it queued, gunicorn's lines in JSON too, whatever a
dependency prints straight to stdout or stderr in a worker job or a request in JSON too, and no secret in any line."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pytest
import requests

from regionscribe.backend.web.app import create_app
from regionscribe.backend.core.logs import configure_logging, request_context
from regionscribe.backend.ops.runner import free_port
from regionscribe.backend.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
XML = (ROOT / "labeling_configs" / "region_attributes.xml").read_text()
PASSWORD = "basic-auth-pass-4f9c2e"
API_KEY = "ls-api-key-8d7e6f5a4b3c2d1e"
REDIS_PASSWORD = "redis-pass-31415"


def noisy_job(where: str) -> str:
    """Writes as dependencies do, around the logging module: print, sys.stderr, a C-level write to the file
    descriptors, a library's own logging handler (transformers' one, made before ours), a warning, a progress bar."""
    import transformers

    print(f"a bare print in the {where}")
    sys.stderr.write(f"[somelib] a bare stderr line in the {where}\n")
    sys.stderr.flush()
    os.write(1, f"a raw write to fd 1 in the {where}\n".encode())
    os.write(2, f"a raw write to fd 2 in the {where}, no newline".encode())
    os.write(2, b"\n")
    transformers.logging.get_logger("transformers.noisy").warning(f"a transformers warning in the {where}")
    warnings.warn(f"a library FutureWarning in the {where}", FutureWarning)
    for step in (1, 2):
        sys.stderr.write(f"\rprogress {step}/2 in the {where}")
    sys.stderr.write("\n")
    return "ok"


NOISY_LINES = ["a bare print in the {}", "[somelib] a bare stderr line in the {}", "a raw write to fd 1 in the {}",
               "a raw write to fd 2 in the {}, no newline", "a transformers warning in the {}",
               "a library FutureWarning in the {}", "progress 1/2 in the {}", "progress 2/2 in the {}"]


def assert_noisy_lines_are_json(text: str, where: str) -> None:
    entries = json_lines(text)  # every line an object
    messages = "\n".join(e["message"] for e in entries)
    for line in NOISY_LINES:
        assert line.format(where) in messages, (line.format(where), text[-3000:])
    printed = [e for e in entries if e["message"] == f"a bare print in the {where}"]
    assert len(printed) == 1 and printed[0]["logger"] == "stdout" and printed[0]["level"] == "INFO", printed
    raw = [e for e in entries if e["message"] == f"a raw write to fd 2 in the {where}, no newline"]
    assert len(raw) == 1 and raw[0]["logger"] == "stderr", raw


def json_lines(text: str) -> list[dict]:
    """Every line of `text` as a JSON object (fails on a line that is not one)."""
    entries = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            entries.append(entry)
    return entries


@pytest.fixture
def capture():
    """configure_logging into a buffer; the root logger is put back as it was afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    buffers = []

    def start(settings: Settings) -> io.StringIO:
        buffer = io.StringIO()
        configure_logging(settings, stream=buffer)
        buffers.append(buffer)
        return buffer

    yield start
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


# ---------------------------------------------------------------------------------------------- the format


def test_log_format_setting():
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"LOG_FORMAT": " JSON "}).log_format == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT='xml'"):
        Settings.from_env({"LOG_FORMAT": "xml"})


def test_json_lines(capture):
    out = capture(Settings(log_format="json", log_level="DEBUG"))
    log = logging.getLogger("regionscribe.test")
    log.debug("plain %s", "line")
    with request_context("req-42"):
        log.info("inside a request")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("it failed")
    log.info("explicit id", extra={"request_id": "req-43"})
    log.warning("after the request: caf\u00e9 \ud800")  # non-ASCII, even an unpaired surrogate, is writable
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a Python warning", UserWarning)

    entries = json_lines(out.getvalue())
    assert [e["message"] for e in entries[:5]] == ["plain line", "inside a request", "it failed", "explicit id",
                                                   "after the request: caf\u00e9 \ud800"]
    assert {"time", "level", "logger", "message"} <= set(entries[0]) and "request_id" not in entries[0]
    assert entries[0]["level"] == "DEBUG" and entries[0]["logger"] == "regionscribe.test"
    assert entries[0]["time"].endswith("Z") and "T" in entries[0]["time"]
    assert entries[1]["request_id"] == entries[2]["request_id"] == "req-42"
    assert entries[2]["level"] == "ERROR" and "RuntimeError: boom" in entries[2]["exc_info"]
    assert entries[3]["request_id"] == "req-43"
    assert "request_id" not in entries[4]
    assert entries[5]["logger"] == "py.warnings" and "a Python warning" in entries[5]["message"]


def test_text_lines_carry_the_request_id(capture):
    out = capture(Settings(log_format="text", log_level="INFO"))
    log = logging.getLogger("regionscribe.test")
    log.info("no request")
    with request_context("req-7"):
        log.info("in a request")
    first, second = out.getvalue().splitlines()
    assert first.endswith(" INFO regionscribe.test: no request")
    assert second.endswith(" INFO regionscribe.test [req-7]: in a request")


def test_secrets_are_masked_in_messages_and_tracebacks(capture):
    settings = Settings(log_format="json", log_level="INFO", basic_auth_user="ls", basic_auth_pass=PASSWORD,
                        label_studio_api_key=API_KEY, redis_url=f"redis://:{REDIS_PASSWORD}@redis:6379/0",
                        store_url="postgresql://rs:pg%40secret-271@db/regionscribe")
    out = capture(settings)
    log = logging.getLogger("regionscribe.test")
    log.info("auth %s:%s, key %s", settings.basic_auth_user, PASSWORD, API_KEY)
    log.info("redis %s, store %s, other postgresql://u:another-pw@h/d", settings.redis_url, settings.store_url)
    log.info("connecting with password pg@secret-271")  # the store's password, decoded
    try:
        raise ValueError(f"Label Studio refused Token {API_KEY}")
    except ValueError:
        log.exception("fetch failed")
    text = out.getvalue()
    for secret in (PASSWORD, API_KEY, REDIS_PASSWORD, "pg%40secret-271", "pg@secret-271", "another-pw"):
        assert secret not in text
    entries = json_lines(text)
    assert entries[0]["message"] == "auth ls:***, key ***"
    assert entries[1]["message"] == ("redis redis://:***@redis:6379/0, store postgresql://rs:***@db/regionscribe, "
                                     "other postgresql://u:***@h/d")
    assert entries[2]["message"] == "connecting with password ***"
    assert "Token ***" in entries[3]["exc_info"]


# ------------------------------------------------------------------------------- the web app and the worker


@pytest.fixture(scope="module")
def logged_worker(start_worker, tmp_path_factory):
    """An inference worker logging JSON at DEBUG into a file, with secrets in its environment."""
    path = tmp_path_factory.mktemp("worker-log") / "worker.log"
    worker = start_worker(f"logs-{uuid.uuid4().hex[:8]}", log_path=path, LOG_FORMAT="json", LOG_LEVEL="DEBUG",
                          LABEL_STUDIO_API_KEY=API_KEY, BASIC_AUTH_USER="ls", BASIC_AUTH_PASS=PASSWORD)
    worker.log = path
    return worker


@pytest.fixture
def app_settings(redis_url, image_root, logged_worker, tmp_path):
    return Settings(redis_url=redis_url, model_dir="tiny-untrained", image_root=str(image_root),
                    data_dir=str(tmp_path), inference_queue=logged_worker.queue, ingest_queue=f"ingest-{tmp_path.name}",
                    training_queue=f"training-{tmp_path.name}", predict_timeout=20.0, label_studio_api_key=API_KEY,
                    basic_auth_user="ls", basic_auth_pass=PASSWORD, log_format="json", log_level="DEBUG")


def predict_body(image: str, rid: str = "b1") -> dict:
    box = {"id": rid, "from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
           "value": {"x": 10, "y": 10, "width": 30, "height": 30, "rotation": 0, "rectanglelabels": ["Object"]}}
    return {"tasks": [{"id": 11, "data": {"image": image}}], "label_config": XML, "project": "5.1714564800",
            "params": {"context": {"result": [box]}}}


def worker_entries(worker, request_id: str, message: str, timeout: float = 10.0) -> list[dict]:
    """The worker's JSON lines so far, once one with `request_id` contains `message` (rq logs after the job)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = json_lines(Path(worker.log).read_text())
        if any(e.get("request_id") == request_id and message in e["message"] for e in entries):
            return entries
        if time.monotonic() > deadline:
            raise AssertionError(f"no worker line for {request_id} with {message!r}: "
                                 f"{[e for e in entries if e.get('request_id')]}")
        time.sleep(0.05)


def test_request_id_on_the_web_lines_and_the_workers_lines(capture, app_settings, image_root, logged_worker):
    out = capture(app_settings)
    client = create_app(app_settings).test_client()
    rid = f"req-{uuid.uuid4().hex[:8]}"
    response = client.post("/predict", json=predict_body(str(image_root / "scene1.png")),
                           headers={"X-Request-Id": rid}, auth=("ls", PASSWORD))
    assert response.status_code == 200 and response.headers["X-Request-Id"] == rid
    assert response.get_json()["results"][0]["result"], response.get_json()

    web = [e for e in json_lines(out.getvalue()) if e.get("request_id") == rid]
    assert any(e["logger"] == "regionscribe.backend.web.ml_backend" and "job(s) answered" in e["message"] for e in web), web

    job_lines = [e for e in worker_entries(logged_worker, rid, "Job OK") if e.get("request_id") == rid]
    assert any(e["logger"] == "regionscribe.backend.inference.answers" and f"request {rid} task 11: 1 region(s)" in e["message"]
               for e in job_lines), job_lines
    assert any(e["logger"] == "rq.worker" and "Job OK" in e["message"] for e in job_lines), job_lines

    # the webhook's lines too; a header that is not a plain token is replaced by a fresh id
    event = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 77}], "project": {"id": 5}}
    response = client.post("/webhook", json=event, headers={"X-Request-Id": "hook-1"}, auth=("ls", PASSWORD))
    assert response.status_code == 201
    assert any(e.get("request_id") == "hook-1" and e["message"].startswith("webhook ANNOTATIONS_DELETED")
               for e in json_lines(out.getvalue()))
    response = client.get("/health", headers={"X-Request-Id": "not a token\u00e9"})
    assert response.headers["X-Request-Id"] != "not a token\u00e9" and len(response.headers["X-Request-Id"]) == 12
    assert logged_worker.process.poll() is None


def test_no_secret_in_any_line(capture, app_settings, image_root, logged_worker):
    """Basic auth (right and wrong), predictions through the worker, a webhook, an unhandled error: the password
    and the Label Studio key appear in no line of the web process or the worker (DEBUG level)."""
    out = capture(app_settings)
    app = create_app(app_settings)

    @app.get("/boom")  # an unhandled error, logged with its traceback
    def boom():
        raise RuntimeError(f"failed with key {API_KEY}")

    client = app.test_client()
    assert client.post("/setup", json={}, auth=("ls", "wrong-" + PASSWORD)).status_code == 401
    assert client.post("/setup", json={"project": "5"}, auth=("ls", PASSWORD)).status_code == 200
    rid = f"secret-{uuid.uuid4().hex[:8]}"
    response = client.post("/predict", json=predict_body(str(image_root / "scene2.png"), "s1"),
                           headers={"X-Request-Id": rid}, auth=("ls", PASSWORD))
    assert response.status_code == 200
    response = client.post("/predict", json=predict_body("/data/upload/5/missing.png", "s2"), auth=("ls", PASSWORD))
    assert response.status_code == 200  # Label Studio is not running: an image error, logged by the worker
    assert client.get("/boom", auth=("ls", PASSWORD)).status_code == 500

    worker_log = Path(logged_worker.log)
    worker_entries(logged_worker, rid, "Job OK")
    web = out.getvalue()
    assert "failed with key ***" in web and "RuntimeError" in web
    for text in (web, worker_log.read_text()):
        json_lines(text)
        assert PASSWORD not in text and API_KEY not in text


# ----------------------------------------------------------------------------------------------- gunicorn


@contextlib.contextmanager
def json_web_server(redis_url: str, tmp_path: Path, app_code: str = "", **env):
    """`serve()` under gunicorn in a subprocess with LOG_FORMAT=json, its stdout and stderr in tmp_path/web.log; yields
    (url, log path) once /health answers; SIGTERM at the end (its last lines are written at exit). `app_code` runs
    before serve() (to add routes); `env` adds settings."""
    port = free_port()
    log_path = tmp_path / "web.log"
    env = {**os.environ, "REDIS_URL": redis_url, "MODEL_DIR": "tiny-untrained", "PYTHONPATH": str(ROOT),
           "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "DATA_DIR": str(tmp_path), **env}
    code = f"{app_code}\nfrom regionscribe.backend.web.server import serve\nserve('127.0.0.1', {port}, workers=1)\n"
    with open(log_path, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, start_new_session=True,
                                   stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{url}/health", timeout=1).status_code in (200, 503):
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        yield url, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise


def test_gunicorn_lines_are_json_with_the_request_id(redis_url, tmp_path):
    with json_web_server(redis_url, tmp_path, BASIC_AUTH_USER="ls", BASIC_AUTH_PASS=PASSWORD) as (url, log_path):
        response = requests.post(f"{url}/setup", json={}, auth=("ls", PASSWORD), headers={"X-Request-Id": "gun-1"},
                                 timeout=5)
        assert response.status_code == 200 and response.headers["X-Request-Id"] == "gun-1"
    text = log_path.read_text()
    entries = json_lines(text)
    assert any(e["logger"] == "gunicorn.error" and "Starting gunicorn" in e["message"] for e in entries), entries
    access = [e for e in entries if e["logger"] == "gunicorn.access" and "POST /setup" in e["message"]]
    assert len(access) == 1 and access[0]["request_id"] == "gun-1", access
    assert PASSWORD not in text


def test_a_dependencys_bare_output_in_a_worker_job_is_json(start_worker, redis_client, tmp_path):
    from rq import Queue
    from rq.serializers import JSONSerializer

    path = tmp_path / "worker.log"
    worker = start_worker(f"noisy-{uuid.uuid4().hex[:8]}", log_path=path, LOG_FORMAT="json", LOG_LEVEL="INFO")
    queue = Queue(worker.queue, connection=redis_client, serializer=JSONSerializer)
    job = queue.enqueue("tests.service.test_logs.noisy_job", "worker job")
    deadline = time.monotonic() + 30
    while job.get_status(refresh=True) not in ("finished", "failed"):
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.05)
    assert job.get_status() == "finished", job.exc_info
    worker.stop()  # what is still in the pipes is written at exit
    assert_noisy_lines_are_json(path.read_text(), "worker job")


def test_a_dependencys_bare_output_in_a_request_is_json(redis_url, tmp_path):
    app_code = """
import regionscribe.backend.web.app
from tests.service.test_logs import noisy_job
create_app = regionscribe.backend.web.app.create_app

def noisy_app(settings):
    app = create_app(settings)
    app.get("/noisy")(lambda: noisy_job("request"))
    return app

regionscribe.backend.web.app.create_app = noisy_app
"""
    with json_web_server(redis_url, tmp_path, app_code) as (url, log_path):
        response = requests.get(f"{url}/noisy", timeout=5)
        assert response.status_code == 200 and response.text == "ok"
    text = log_path.read_text()
    assert_noisy_lines_are_json(text, "request")
    assert any(e["logger"] == "gunicorn.access" and "GET /noisy" in e["message"] for e in json_lines(text))
