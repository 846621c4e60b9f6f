"""Redis going away under a running app, and coming back on the same port: /health answers 503 within Label Studio's
1 s limit while Redis is down (killed, or hung), /setup within its 3 s when Redis hangs, /predict answers a deliberate
503, and they recover once Redis is back, without restarting the app, and without a failed request when Redis
restarts between two requests."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from regionscribe.backend.web.app import create_app
from regionscribe.backend.core.settings import Settings
from tests.processes import RestartableRedis

ROOT = Path(__file__).resolve().parents[2]
XML = (ROOT / "labeling_configs" / "region_attributes.xml").read_text()
LIMIT = 1.0  # Label Studio's timeout for GET /health, in seconds


@pytest.fixture
def private_redis(tmp_path):
    server = RestartableRedis(str(tmp_path))
    server.start()
    yield server
    if server.process.poll() is None:
        server.thaw()
    server.kill()


@pytest.fixture
def client(private_redis, tmp_path):
    settings = Settings(redis_url=private_redis.url, model_dir="tiny-untrained", data_dir=str(tmp_path),
                        inference_queue="restart-inference", image_root=str(tmp_path), log_level="WARNING")
    return create_app(settings).test_client()


def predict_body(with_config: bool = True) -> dict:
    box = {"id": "b1", "from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
           "value": {"x": 10, "y": 10, "width": 30, "height": 30, "rotation": 0, "rectanglelabels": ["Object"]}}
    body = {"tasks": [{"id": 1, "data": {"image": "/images/scene.png"}}], "project": "4.1714564800",
            "params": {"context": {"result": [box]}}}
    if with_config:
        body["label_config"] = XML
    return body


def timed_health(client):
    started = time.perf_counter()
    response = client.get("/health")
    return response, time.perf_counter() - started


def test_redis_killed_then_restarted(client, private_redis):
    response, _ = timed_health(client)
    assert response.status_code == 200 and response.get_json()["redis"] is True

    private_redis.kill()
    response, seconds = timed_health(client)
    body = response.get_json()
    assert response.status_code == 503 and seconds < LIMIT / 2, seconds
    assert body["status"] == "DOWN" and body["redis"] is False
    assert body["detail"].startswith("Redis unreachable")

    # /predict: a deliberate 503 that names the cause, also when the label config would have come from Redis
    for with_config in (True, False):
        response = client.post("/predict", json=predict_body(with_config))
        assert response.status_code == 503, response.get_json()
        assert "the job queue (Redis) is unreachable" in response.get_json()["detail"]

    private_redis.start()  # same port, empty (nothing is persisted)
    response, seconds = timed_health(client)
    assert response.status_code == 200 and response.get_json()["redis"] is True, response.get_json()
    response = client.post("/predict", json=predict_body())
    assert response.status_code == 200  # no inference worker on this queue: a per-task error, not a 503
    assert "no inference worker" in response.get_json()["results"][0]["error"]


def test_a_restart_between_two_requests_fails_neither(client, private_redis):
    """Connections pooled before the restart were closed by it; the app's clients replace them within the request."""
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json=predict_body()).status_code == 200
    private_redis.kill()
    private_redis.start()
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json=predict_body()).status_code == 200


def test_health_answers_in_time_when_redis_hangs(client, private_redis):
    """A Redis that accepts connections but never answers (SIGSTOP) costs /health its short timeouts, not 5 s."""
    assert client.get("/health").status_code == 200
    private_redis.freeze()
    try:
        response, seconds = timed_health(client)
        assert response.status_code == 503 and seconds < LIMIT, seconds
        assert response.get_json()["detail"] == "Redis unreachable: TimeoutError"
    finally:
        private_redis.thaw()
    response, _ = timed_health(client)
    assert response.status_code == 200


def test_setup_answers_in_time_when_redis_hangs(client, private_redis):
    """/setup (Label Studio gives it 3 s) with a Redis that accepts connections but never answers: the config is not
    saved and the project not remembered, but the answer comes within the short timeouts, with the checkpoint's own
    version; once Redis is back, /setup saves the config again."""
    import redis

    from regionscribe.backend.core.keys import PROJECT_CONFIG_KEY

    body = {"project": "7.1714564800", "schema": XML}
    assert client.post("/setup", json=body).status_code == 200
    private_redis.freeze()
    try:
        started = time.perf_counter()
        response = client.post("/setup", json=body)
        seconds = time.perf_counter() - started
    finally:
        private_redis.thaw()
    print(f"\n/setup answered in {seconds * 1000:.0f} ms with Redis hung")
    assert response.status_code == 200 and seconds < 3.0 / 2, seconds
    assert response.get_json()["model_version"] == "tiny-untrained-0"
    connection = redis.Redis.from_url(private_redis.url)
    connection.delete(PROJECT_CONFIG_KEY.format(project=7))
    assert client.post("/setup", json=body).status_code == 200
    assert connection.get(PROJECT_CONFIG_KEY.format(project=7)).decode() == XML
