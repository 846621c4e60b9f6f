"""A bounded run of benchmarks/load_test.py: 8 simulated annotators for 8 s against the backend (gunicorn) and two
real inference workers (untrained tiny model) on a private Redis, all on loopback. Every request must get a
well-formed answer: zero errors."""
from __future__ import annotations

import json

import pytest
import requests

from regionscribe.backend.ops.runner import find_redis_server
from tests.builders import benchmark_module


@pytest.fixture(scope="module")
def load_test():
    with benchmark_module("load_test") as module:
        yield module


def _response(status: int, body) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return r


def test_answer_check_has_teeth(load_test):
    box = {"id": "b1", "type": "rectanglelabels", "from_name": "bbox", "to_name": "image", "value": {}}
    caption = {"id": "b1", "type": "textarea", "from_name": "caption", "to_name": "image",
               "value": {"text": ["a red square"]}}
    good = {"results": [{"result": [box, caption], "model_version": "v1", "score": 0.5}]}
    assert load_test.check_answer(_response(200, good), "b1") is None
    assert "HTTP 503" in load_test.check_answer(_response(503, {"error": "x"}), "b1")
    assert "task error" in load_test.check_answer(_response(200, {"results": [{"result": [], "error": "no"}]}), "b1")
    assert "not echoed" in load_test.check_answer(
        _response(200, {"results": [{"result": [caption], "model_version": "v1"}]}), "b1")
    assert "no caption" in load_test.check_answer(
        _response(200, {"results": [{"result": [box], "model_version": "v1"}]}), "b1")
    assert "not a predict answer" in load_test.check_answer(_response(200, b"<html>"), "b1")


@pytest.mark.slow
def test_eight_annotators_two_workers_zero_errors(load_test, tmp_path):
    if find_redis_server() is None:
        pytest.skip("no redis-server binary")
    result = load_test.run(annotators=8, seconds=8.0, workers=2, model_dir="tiny-untrained", baseline_seconds=2.0,
                           images=4, start_timeout=120.0, log_dir=str(tmp_path))
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] == result["ok"] >= 16, result
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["requests_per_s"] > 0
    baseline = result["baseline_single_client"]
    assert baseline["errors"] == 0 and baseline["ok"] >= 2
    assert result["model_version"] == "tiny-untrained-0"
