"""The web process never imports torch (Label Studio gives /health 1 s and /setup 3 s): the app, started in a fresh
Python process with no version announced in Redis, answers /health, /setup, /predict, /webhook and /metrics without
torch in sys.modules; `regionscribe versions` reads the registry without it too."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: sys.argv = [redis_url, data_dir, label_config]. A live worker's liveness key (nobody
# takes the job) makes /predict submit a describe job and wait for it; START_TRAINING enqueues a training run.
APP = r"""
import json, sys, uuid

from regionscribe.backend.core.connections import redis_connection
from regionscribe.backend.core.liveness import Heartbeat
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.web.app import create_app

redis_url, data_dir, xml = sys.argv[1:4]
tag = uuid.uuid4().hex[:8]
settings = Settings(redis_url=redis_url, data_dir=data_dir, model_dir=None, predict_timeout=1.0,
                    inference_queue=f"inference-{tag}", ingest_queue=f"ingest-{tag}",
                    training_queue=f"training-{tag}")
name = f"torch-free-{tag}"
info = {"name": name, "state": "ready", "queues": [settings.inference_queue]}
beat = Heartbeat(redis_connection(redis_url), name, info, every=30)
beat.beat()
client = create_app(settings).test_client()
box = {"id": "r1", "type": "rectanglelabels", "from_name": "bbox", "to_name": "image", "original_width": 96,
       "original_height": 64, "image_rotation": 0,
       "value": {"x": 10, "y": 10, "width": 30, "height": 30, "rotation": 0, "rectanglelabels": ["Object"]}}
caption = {**box, "type": "textarea", "from_name": "caption",
           "value": {"x": 10, "y": 10, "width": 30, "height": 30, "rotation": 0, "text": ["a red square"]}}
task = {"id": 11, "data": {"image": "/data/upload/1/scene.png"}, "annotations": [], "predictions": []}
event = {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": xml},
         "task": {"id": 11, "data": {"image": "/data/upload/1/scene.png"}, "project": 1},
         "annotation": {"id": 21, "result": [box, caption], "completed_by": 1, "task": 11, "project": 1,
                        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}}
codes = {
    "health": client.get("/health").status_code,
    "setup": client.post("/setup", json={"project": "1.1716200000", "schema": xml}).status_code,
    "predict": client.post("/predict", json={"tasks": [task], "project": "1.1716200000", "label_config": xml,
                                             "params": {"context": {"result": [box]}}}).get_json(),
    "webhook": client.post("/webhook", json=event).status_code,
    "start_training": client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}).get_json(),
    "metrics": client.get("/metrics").status_code,
}
beat.stop()
print(json.dumps({"codes": codes, "torch": sorted(m for m in sys.modules
                                                  if m.split(".")[0] in ("torch", "torchvision", "transformers"))}))
"""


def _empty_db(redis_url: str) -> str:
    """The same server, a database no other test writes: no version announced there."""
    return redis_url.rsplit("/", 1)[0] + "/9"


def test_the_web_app_answers_every_route_without_torch(redis_url, tmp_path, h):
    done = subprocess.run([sys.executable, "-c", APP, _empty_db(redis_url), str(tmp_path / "data"),
                           h.config_xml("region_captioning")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    codes = result["codes"]
    assert codes["health"] == 200 and codes["setup"] == 200 and codes["webhook"] == 201 and codes["metrics"] == 200
    assert "PREDICT_TIMEOUT" in codes["predict"]["results"][0]["error"]  # submitted, waited for, no worker took it
    assert codes["start_training"]["training"]["enqueued"]  # the training run was enqueued from the web process
    assert result["torch"] == [], result["torch"]


def test_versions_reads_the_registry_without_torch(tmp_path):
    code = ("import sys; from regionscribe.backend.ops.cli import main; main(['versions', '--json']); "
            "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'transformers')])")
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "data"),
           "REGISTRY_DIR": str(tmp_path / f"registry-{uuid.uuid4().hex[:6]}")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:]
