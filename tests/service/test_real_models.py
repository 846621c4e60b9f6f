"""`regionscribe train --vision PATH --lm PATH`: for each tower (CLIP, SigLIP) x LM family (Llama, Qwen2, Qwen3,
Mistral), tiny random HF models saved to local folders are trained through both stages, saved, the checkpoint folder
is moved (and the tower's and LM's folders deleted), reloaded, and served by a real inference worker through /predict.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import torch

from regionscribe.backend.web.app import create_app
from regionscribe.backend.ops.cli import main as cli_main
from regionscribe.backend.core.settings import Settings
from regionscribe.model.describer import RegionDescriber
from tests.builders import tiny_lm, tiny_tower

ROOT = Path(__file__).resolve().parents[2]
XML = (ROOT / "labeling_configs" / "region_captioning.xml").read_text()
def _predict_body(image: str) -> dict:
    box = {"id": "b1", "from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
           "value": {"x": 10, "y": 10, "width": 40, "height": 50, "rotation": 0, "rectanglelabels": ["Object"]}}
    return {"tasks": [{"id": 7, "data": {"image": image}}], "label_config": XML, "project": "3.1714564800",
            "params": {"context": {"result": [box]}}}


@pytest.mark.parametrize("lm_family", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_tower_and_lm_train_move_reload_serve(tower, lm_family, tmp_path, start_worker, redis_url, image_root,
                                              capsys):
    parts = tmp_path / "parts"
    vision, lm = tiny_tower(tower, parts / tower), tiny_lm(lm_family, parts / lm_family)
    out = tmp_path / "trained"
    assert cli_main(["train", "--vision", str(vision), "--lm", str(lm), "--out", str(out), "--stage1-steps", "2",
                     "--stage2-steps", "2", "--batch-size", "2", "--quiet", "--version", f"{tower}-{lm_family}",
                     *(["--lora-r", "4"] if lm_family == "qwen2" else [])]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert all(summary["final_loss"][k] > 0 for k in ("stage1", "stage2"))
    doc = json.loads((out / "config.json").read_text())
    assert doc["model"]["preset"] == "parts" and doc["vision"]["model_type"].startswith(tower)
    assert doc["lm"]["model_type"] == lm_family

    moved = tmp_path / "elsewhere" / "checkpoint"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    shutil.rmtree(parts)  # the tower and the LM folders are gone: the checkpoint holds everything it needs
    describer = RegionDescriber.from_pretrained(moved)
    assert describer.model_version == f"{tower}-{lm_family}"
    assert next(describer.model.parameters()).dtype == torch.float32  # fp32 on the CPU
    assert describer.model.config.frozen_vision()
    vision_types = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}
    assert type(describer.model.vision).__name__ == vision_types[tower]

    worker = start_worker(f"real-{tower}-{lm_family}-{uuid.uuid4().hex[:6]}", MODEL_DIR=str(moved))
    data_dir = tmp_path / "data"
    settings = Settings(redis_url=redis_url, model_dir=str(moved), image_root=str(image_root), data_dir=str(data_dir),
                        store_url=f"sqlite:///{data_dir / 'store.sqlite3'}", inference_queue=worker.queue,
                        ingest_queue=f"ingest-{worker.queue}", training_queue=f"training-{worker.queue}",
                        predict_timeout=30.0, log_level="WARNING")
    data_dir.mkdir()
    response = create_app(settings).test_client().post("/predict", json=_predict_body(str(image_root / "scene1.png")))
    assert response.status_code == 200, response.get_data(as_text=True)
    [result] = response.get_json()["results"]
    assert result["model_version"] == f"{tower}-{lm_family}"
    assert result["result"], result
    worker.stop()
