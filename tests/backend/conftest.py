"""Fixtures for the backend tests: a private redis-server, real inference workers (subprocesses on the untrained tiny
model), a loopback HTTP server that plays image host and Label Studio, and real images written with PIL."""
from __future__ import annotations

import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image


from regionscribe.backend.core.settings import Settings
from tests.builders import exif_rotated_jpeg, fake_jwt, png_bytes

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "labeling_configs"
LEGACY_TOKEN = "legacy-token-0123456789"


PAT = fake_jwt({"token_type": "refresh", "exp": 4102444800, "user_id": 1})
ACCESS = fake_jwt({"token_type": "access", "exp": 4102444800, "user_id": 1})


def scene_png(size=(96, 64)) -> bytes:
    """Two coloured squares on white: something to describe."""
    image = Image.new("RGB", size, (255, 255, 255))
    for x in range(8, 40):
        for y in range(8, 40):
            image.putpixel((x, y), (220, 20, 20))
    for x in range(56, 88):
        for y in range(20, 52):
            image.putpixel((x, y), (20, 20, 220))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ images on disk


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "scene.png").write_bytes(scene_png())
    (root / "red.png").write_bytes(png_bytes())
    (root / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    (root / "gray.png").write_bytes(png_bytes(mode="L", color=128))
    (root / "rgba.png").write_bytes(png_bytes(mode="RGBA", color=(0, 0, 255, 128)))
    (root / "not-an-image.png").write_bytes(b"<html>this is not an image</html>")
    (root / "sub").mkdir()
    (root / "sub" / "blue.png").write_bytes(png_bytes(color=(0, 0, 255)))
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(png_bytes(color=(1, 2, 3)))
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "inside-link.png").symlink_to(root / "red.png")
    return root


# -------------------------------------------------------------------- a loopback image host / Label Studio


class _Handler(BaseHTTPRequestHandler):
    server_version = "fake-ls"
    routes: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body=b"", ctype="image/png", headers=None, length=True):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_POST(self):
        self.server.seen.append((self.path, dict(self.headers)))
        if self.path == "/api/token/refresh/":
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if body.get("refresh") == PAT:
                return self._send(200, json.dumps({"access": ACCESS}).encode(), "application/json")
            return self._send(401, b'{"detail":"bad"}', "application/json")
        self._send(404, b"", "text/plain")

    def do_GET(self):
        self.server.seen.append((self.path, dict(self.headers)))
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        if path.startswith("/data/upload/"):
            auth = self.headers.get("Authorization")
            if auth not in (f"Token {LEGACY_TOKEN}", f"Bearer {ACCESS}"):
                return self._send(401, b'{"detail":"auth"}', "application/json")
            accept = self.headers.get("Accept", "*/*")
            if "*/*" not in accept and "application/json" not in accept:  # DRF's content negotiation, as in LS 1.23
                return self._send(406, b'{"detail":"Could not satisfy the request Accept header."}',
                                  "application/json")
            name = path.rsplit("/", 1)[-1]
            if name == "redirect-out.png":
                return self._send(302, headers={"Location": query["to"][0]}, ctype="text/plain")
            data = self.server.files.get(name)
            return self._send(200, data) if data else self._send(404, b"", "text/plain")
        if path == "/img.png":
            return self._send(200, self.server.files["scene.png"])
        if path == "/no-auth-check.png":
            return self._send(200, self.server.files["red.png"])
        if path == "/redirect":
            return self._send(302, headers={"Location": query["to"][0]}, ctype="text/plain")
        if path == "/loop":
            return self._send(302, headers={"Location": "/loop"}, ctype="text/plain")
        if path == "/html":
            return self._send(200, b"<html>login</html>", "text/html")
        if path == "/big.png":
            return self._send(200, self.server.files["big.png"])
        if path == "/big-chunked.png":  # no Content-Length: the limit must hold while streaming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            data = self.server.files["big.png"]
            for i in range(0, len(data), 4096):
                self.wfile.write(data[i:i + 4096])
            return None
        if path == "/slow.png":
            time.sleep(float(query.get("s", ["3"])[0]))
            return self._send(200, self.server.files["scene.png"])
        if path == "/bomb.png":
            return self._send(200, self.server.files["bomb.png"])
        return self._send(404, b"", "text/plain")


@pytest.fixture(scope="session")
def http_host(image_root):
    """A loopback HTTP server: image host, redirector and fake Label Studio (uploads + token refresh)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    big = Image.effect_noise((400, 400), 64).convert("RGB")
    buf = io.BytesIO()
    big.save(buf, "PNG")
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")  # 144 MP, a few KB on the wire
    server.files = {"scene.png": scene_png(), "red.png": png_bytes(), "big.png": buf.getvalue(),
                    "rotated.jpg": exif_rotated_jpeg(), "bomb.png": bomb.getvalue()}
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.hostport = f"127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------------------------------ workers


def worker_env(redis_url: str, image_root, http_host, queue: str = "inference", **extra) -> dict:
    env = dict(os.environ)
    env.update({
        "REDIS_URL": redis_url, "MODEL_DIR": "tiny-untrained", "IMAGE_ROOT": str(image_root),
        "ALLOWED_HOSTS": http_host.hostport, "LABEL_STUDIO_URL": http_host.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
        "INFERENCE_QUEUE": queue, "WORKER_HEARTBEAT": "0.25", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DATA_DIR": str(Path(image_root).parent / "worker-data"),
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="session")
def worker(redis_url, redis_client, image_root, http_host, worker_process):
    """One long-lived inference worker on queue "inference" for the whole session."""
    w = worker_process(worker_env(redis_url, image_root, http_host), "test-worker-main", queues=["inference"])
    try:
        w.wait_ready(redis_client)
        yield w
    finally:
        w.stop()


@pytest.fixture
def spawn_worker(redis_url, redis_client, image_root, http_host, worker_process):
    """Start extra workers (own queue names); all are killed at teardown."""
    started = []

    def spawn(name: str, queue: str, wait: bool = True, queues: list[str] | None = None, plain: bool = False,
              **extra):
        """`queues`: what it serves (default: `queue` alone); `plain`: no --queue at all, as a deployment starts it."""
        w = worker_process(worker_env(redis_url, image_root, http_host, queue=queue, **extra), name,
                           queues=None if plain else (queues or [queue]))
        started.append(w)
        if wait:
            w.wait_ready(redis_client)
        return w

    yield spawn
    for w in started:
        w.kill()


# ----------------------------------------------------------------------------------------------- the app


@pytest.fixture
def make_settings(redis_url, image_root, http_host, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))  # the store /predict writes suggestions to: never ./var

    def make(**changes) -> Settings:
        base = Settings(redis_url=redis_url, model_dir="tiny-untrained", image_root=str(image_root),
                        data_dir=data_dir,
                        allowed_hosts=(http_host.hostport,), label_studio_url=http_host.url,
                        label_studio_api_key=LEGACY_TOKEN, predict_timeout=20.0)
        return base.replace(**changes)

    return make


@pytest.fixture
def client(make_settings, worker):
    from regionscribe.backend.web.app import create_app

    app = create_app(make_settings())
    return app.test_client()


def config_xml(name: str) -> str:
    return (CONFIGS / f"{name}.xml").read_text()


@pytest.fixture(scope="session")
def h():
    """Helpers for the test modules (a fixture, so that no test imports conftest by module name)."""
    from types import SimpleNamespace

    return SimpleNamespace(config_xml=config_xml, png_bytes=png_bytes, scene_png=scene_png,
                           exif_rotated_jpeg=exif_rotated_jpeg, fake_jwt=fake_jwt, PAT=PAT, ACCESS=ACCESS,
                           LEGACY_TOKEN=LEGACY_TOKEN)
