"""Fixtures for the service tests: a private redis-server, a fake Label Studio (health, whoami, personal access token
exchange) on loopback, an untrained tiny checkpoint on disk, scene images, and inference workers (tests/conftest.py's
WorkerProcess). Images and tokens come from tests/builders.py, as in every folder."""
from __future__ import annotations

import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tests.builders import fake_jwt


ROOT = Path(__file__).resolve().parents[2]
LEGACY_TOKEN = "legacy-token-0123456789abcdef"


PAT = fake_jwt({"token_type": "refresh", "exp": 4102444800, "user_id": 1, "jti": "pat-ok"})
ACCESS = fake_jwt({"token_type": "access", "exp": 4102444800, "user_id": 1})


def scene_png(size=(96, 64), seed: int = 0) -> bytes:
    """Two coloured squares on white, moved by `seed`: something to describe."""
    image = Image.new("RGB", size, (255, 255, 255))
    dx = (seed * 7) % 16
    image.paste((220, 20, 20), (8 + dx, 8, 40 + dx, 40))
    image.paste((20, 20, 220), (56 - dx // 2, 20, 88 - dx // 2, 52))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


class _FakeLabelStudio(BaseHTTPRequestHandler):
    """What `regionscribe doctor` asks Label Studio 1.23: /health, /api/current-user/whoami (legacy `Token` or
    `Bearer` access token) and /api/token/refresh/ (personal access token → access token)."""

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.seen.append(("GET", self.path, dict(self.headers)))
        if self.path in ("/health", "/health/"):
            return self._send(200, {"status": "UP"})
        if self.path == "/api/current-user/whoami":
            if self.headers.get("Authorization") in (f"Token {LEGACY_TOKEN}", f"Bearer {ACCESS}"):
                return self._send(200, {"id": 1, "email": "admin@example.com", "username": "admin"})
            return self._send(401, {"detail": "Authentication credentials were not provided."})
        return self._send(404, {"detail": "Not found."})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.seen.append(("POST", self.path, dict(self.headers)))
        if self.path == "/api/token/refresh/":
            if body.get("refresh") == PAT:
                return self._send(200, {"access": ACCESS})
            return self._send(401, {"detail": "Token is invalid or expired", "code": "token_not_valid"})
        return self._send(404, {"detail": "Not found."})


@pytest.fixture(scope="session")
def fake_ls():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeLabelStudio)
    server.daemon_threads = True
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model saved as a real checkpoint folder (config.json, model.safetensors, tokenizer)."""
    from regionscribe.training.stages import untrained_describer

    path = tmp_path_factory.mktemp("checkpoint") / "tiny-untrained-ckpt"
    untrained_describer("tiny", seed=0).model.save_pretrained(path, metadata={"version": "tiny-test-v1"})
    return path


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i in range(6):
        (root / f"scene{i}.png").write_bytes(scene_png(seed=i))
    return root


@pytest.fixture(scope="session")
def h():
    from types import SimpleNamespace

    return SimpleNamespace(LEGACY_TOKEN=LEGACY_TOKEN, PAT=PAT, ACCESS=ACCESS, fake_jwt=fake_jwt, ROOT=ROOT)


@pytest.fixture(scope="module")
def start_worker(redis_url, redis_client, image_root, worker_process, tmp_path_factory):
    """Start inference workers (untrained tiny model, images read from `image_root`) on their own queue; with
    `log_path`, a worker's output goes to that file; keyword arguments are more environment variables. All are
    stopped when the module's tests are done."""
    started = []

    def start(queue: str, log_path=None, **extra):
        env = dict(os.environ)
        env.update({
            "REDIS_URL": redis_url, "MODEL_DIR": "tiny-untrained", "IMAGE_ROOT": str(image_root),
            "INFERENCE_QUEUE": queue, "WORKER_HEARTBEAT": "0.25", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DATA_DIR": str(tmp_path_factory.mktemp("worker-data")),
        })
        env.update({k: str(v) for k, v in extra.items()})
        worker = worker_process(env, f"service-{queue}", log_path=log_path, queues=[queue])
        worker.queue = queue
        started.append(worker)
        worker.wait_ready(redis_client)
        return worker

    yield start
    for worker in started:
        worker.stop()
