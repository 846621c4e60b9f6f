"""Fixtures for the feedback-loop tests: the store on a real SQLite file AND a real PostgreSQL (own schema per test),
a private redis-server, a fake Label Studio serving uploads, the Flask app behind a real threaded HTTP server, and
regionscribe workers as subprocesses. Payloads are built the way Label Studio 1.23 sends them."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from regionscribe.backend.ops.runner import find_redis_server, free_port
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.store import Store
from tests.builders import exif_rotated_jpeg, png_bytes
from tests.processes import GroupProcess, RestartableRedis, WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "feedback-legacy-token-0123"
PG_URL = os.environ.get("REGIONSCRIBE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_ids = itertools.count(int(time.time()) % 100000 * 1000)


def new_id() -> int:
    """A fresh integer id (projects, tasks, annotations) so tests sharing a Redis never collide."""
    return next(_ids)


# --------------------------------------------------------------------------------------------------- images


def png(size=(64, 48), color=(200, 30, 30)) -> bytes:
    return png_bytes(size, color)


exif_jpeg = exif_rotated_jpeg


# ----------------------------------------------------------------------------------- Label Studio payloads

XML = (ROOT / "labeling_configs" / "region_attributes.xml").read_text()
RELATIONS_XML = (ROOT / "labeling_configs" / "region_relations.xml").read_text()


def stamp(seconds: float) -> str:
    """Label Studio's timestamp format (DRF DateTimeField, UTC): 2024-05-01T12:00:00.123456Z."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(1714564800 + seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def region(rid: str, x=10.0, y=10.0, w=20.0, h=20.0, caption=None, color=None, shape=None, family=None,
           texture=None, label="Object", size=(640, 480)) -> list[dict]:
    """The results Label Studio's editor serializes for one region (same `id` on each, geometry repeated)."""
    common = {"id": rid, "to_name": "image", "original_width": size[0], "original_height": size[1],
              "image_rotation": 0}
    geometry = {"x": x, "y": y, "width": w, "height": h, "rotation": 0}
    out = [{**common, "from_name": "bbox", "type": "rectanglelabels", "origin": "manual",
            "value": {**geometry, "rectanglelabels": [label]}}]
    if caption is not None:
        out.append({**common, "from_name": "caption", "type": "textarea", "origin": "manual",
                    "value": {**geometry, "text": [caption]}})
    for name, values in (("color", color), ("shape", shape), ("texture", texture)):
        if values is not None:
            out.append({**common, "from_name": name, "type": "choices", "origin": "manual",
                        "value": {**geometry, "choices": values if isinstance(values, list) else [values]}})
    if family is not None:
        out.append({**common, "from_name": "shape_family", "type": "taxonomy", "origin": "manual",
                    "value": {**geometry, "taxonomy": family}})
    return out


def annotation_event(project_id: int, task_id: int, annotation_id: int, result: list, *, action="ANNOTATION_CREATED",
                     updated=0.0, created=0.0, image="/data/upload/1/x.png", label_config: str | None = XML,
                     user=1, cancelled=False, ground_truth=False, lead_time=12.5) -> dict:
    """An ANNOTATION_CREATED/UPDATED payload with the keys Label Studio 1.23 sends (action, annotation, task,
    project): the annotation as its AnnotationSerializer writes it, the task with its data, the project object."""
    return {
        "action": action,
        "annotation": {
            "id": annotation_id, "result": result, "created_username": f"annotator{user}@example.com, {user}",
            "created_ago": "0\u00a0minutes", "completed_by": user, "was_cancelled": cancelled,
            "ground_truth": ground_truth, "created_at": stamp(created), "updated_at": stamp(updated),
            "draft_created_at": None, "lead_time": lead_time, "import_id": None, "last_action": None,
            "bulk_created": False, "task": task_id, "project": project_id, "updated_by": user,
            "parent_prediction": None, "parent_annotation": None, "last_created_by": None,
        },
        "task": {
            "id": task_id, "data": {"image": image}, "meta": {}, "created_at": stamp(-100),
            "updated_at": stamp(updated), "is_labeled": True, "overlap": 1, "inner_id": task_id % 1000,
            "total_annotations": 1, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": project_id,
            "updated_by": user, "file_upload": 1, "comment_authors": [],
        },
        "project": {
            "id": project_id, "title": "regions", "description": "", **({"label_config": label_config}
                                                                       if label_config else {}),
            "expert_instruction": "", "show_instruction": False, "show_skip_button": True,
            "enable_empty_annotation": True, "created_at": stamp(-1000), "updated_at": stamp(-10),
            "model_version": "", "is_draft": False, "is_published": False, "sampling": "Sequential sampling",
        },
    }


def deleted_event(project_id: int, annotation_ids: list[int]) -> dict:
    return {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in annotation_ids],
            "project": {"id": project_id, "title": "regions"}}


@pytest.fixture
def api(ls):
    """A fake of Label Studio's REST API (tests/feedback/fake_labelstudio.py) for the sync and webhook tests."""
    from tests.feedback.fake_labelstudio import FakeLabelStudio

    fake = FakeLabelStudio(ls.TOKEN)
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def ls():
    """Payload builders (a fixture, so tests never import conftest by module name)."""
    from types import SimpleNamespace

    return SimpleNamespace(region=region, annotation_event=annotation_event, deleted_event=deleted_event, png=png,
                           exif_jpeg=exif_jpeg, new_id=new_id, stamp=stamp, XML=XML, RELATIONS_XML=RELATIONS_XML,
                           TOKEN=TOKEN)


# ------------------------------------------------------------------------------------------------- stores


def _pg_reachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
    return None


@pytest.fixture(scope="session")
def pg_problem():
    return _pg_reachable()


def close_shared(url: str) -> None:
    for key, store in list(Store._shared.items()):
        if store.url == url or key[1] == url:
            store.close()
            Store._shared.pop(key, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path, pg_problem):
    """A fresh, empty store URL: a SQLite file under tmp_path, or an own schema in the real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
        yield url
        close_shared(url)
        return
    if pg_problem:
        print(f"\nPostgreSQL at {PG_URL} is unreachable: {pg_problem}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {pg_problem}")
    import psycopg

    schema = f"rs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        close_shared(url)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store(store_url, tmp_path):
    s = Store.open(store_url, images_dir=tmp_path / "images")
    yield s
    s.close()


@pytest.fixture
def own_redis(tmp_path):
    if find_redis_server() is None:
        pytest.skip("no redis-server binary")
    server = RestartableRedis(str(tmp_path))
    server.start()
    yield server
    server.kill()


# ------------------------------------------------------------------------------------------ fake Label Studio


class _LS(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append(self.path)
        if not self.path.startswith("/data/upload/"):
            return self._send(404, b"", "text/plain")
        if self.headers.get("Authorization") != f"Token {TOKEN}":
            return self._send(401, b'{"detail":"auth"}', "application/json")
        data = self.server.files.get(self.path)
        if data is None:
            return self._send(404, b'{"detail":"not found"}', "application/json")
        return self._send(200, data, "image/png")

    def _send(self, status, body, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="session")
def fake_ls():
    """Label Studio's upload endpoint on loopback: `files` maps a path (/data/upload/...) to bytes."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LS)
    server.daemon_threads = True
    server.files, server.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------------------------------ settings


@pytest.fixture
def make_settings(store_url, redis_url, tmp_path, fake_ls):
    """Settings for one test: its own store, DATA_DIR, queues (so job counts are per test) and Label Studio."""
    tag = uuid.uuid4().hex[:8]

    def make(**changes) -> Settings:
        base = Settings(redis_url=redis_url, store_url=store_url, data_dir=str(tmp_path),
                        label_studio_url=fake_ls.url, label_studio_api_key=TOKEN, model_dir="tiny-untrained",
                        ingest_queue=f"ingest-{tag}", training_queue=f"training-{tag}", retrain_after=50,
                        log_level="WARNING",
                        # the periodic sync only where a test asks for it: fake_ls serves uploads, not the API
                        sync_interval=0)
        return base.replace(**changes)

    return make


def env_for(settings: Settings) -> dict:
    env = dict(os.environ)
    env.update({
        "REDIS_URL": settings.redis_url or "", "STORE_URL": settings.store_url or "", "DATA_DIR": settings.data_dir,
        "LABEL_STUDIO_URL": settings.label_studio_url or "",
        "LABEL_STUDIO_API_KEY": settings.label_studio_api_key or "",
        "INGEST_QUEUE": settings.ingest_queue, "TRAINING_QUEUE": settings.training_queue,
        "RETRAIN_AFTER": str(settings.retrain_after), "MODEL_DIR": "tiny-untrained", "WORKER_HEARTBEAT": "0.25",
        "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
        "SYNC_INTERVAL": str(settings.sync_interval),
        "BASIC_AUTH_USER": settings.basic_auth_user or "", "BASIC_AUTH_PASS": settings.basic_auth_pass or "",
    })
    return env


@pytest.fixture(scope="session")
def settings_env():
    """settings -> the environment a regionscribe subprocess needs to run with them."""
    return env_for


def Worker(settings: Settings, queues: list[str], burst: bool = False, env: dict | None = None) -> WorkerProcess:
    """`regionscribe worker --queue <queues>` as a subprocess (burst: exits when the queues are empty)."""
    return WorkerProcess({**env_for(settings), **(env or {})}, f"feedback-{uuid.uuid4().hex[:8]}", queues=queues,
                         burst=burst)


@pytest.fixture
def spawn_worker():
    started: list[WorkerProcess] = []

    def spawn(settings: Settings, queues: list[str], burst: bool = False, env: dict | None = None) -> WorkerProcess:
        worker = Worker(settings, queues, burst=burst, env=env)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()


class Backend(GroupProcess):
    """`regionscribe serve` (gunicorn: one worker process with threads) as a subprocess in its own process group, so
    it can be killed with -9 like a crashed host would. Its output goes to <DATA_DIR>/backend-<port>.log."""

    def __init__(self, settings: Settings, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(settings.data_dir) / f"backend-{self.port}.log"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "regionscribe.backend.ops.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1"], env=env_for(settings), cwd=ROOT, start_new_session=True, stdout=out,
                stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> "Backend":
        """Until /health answers (200, or 503 while Redis is down)."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the backend exited with {self.process.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code in (200, 503):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the backend did not answer /health in {timeout} s")

    def stop(self) -> None:
        super().stop(timeout=15)


@pytest.fixture
def spawn_backend():
    started: list[Backend] = []

    def spawn(settings: Settings, port: int | None = None) -> Backend:
        backend = Backend(settings, port)
        started.append(backend)
        return backend.wait_ready()

    yield spawn
    for backend in started:
        backend.stop()


# ----------------------------------------------------------------------------------------------- the server


class Server:
    """The Flask app behind werkzeug's threaded server (a real HTTP server, one thread per connection)."""

    def __init__(self, settings: Settings):
        from werkzeug.serving import make_server

        from regionscribe.backend.web.app import create_app

        self.app = create_app(settings)
        self.httpd = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(settings: Settings) -> Server:
        server = Server(settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def wait_until(predicate, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")


@pytest.fixture(scope="session")
def wait():
    return wait_until
