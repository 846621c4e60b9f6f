"""POST /export: Basic auth like every route but /health; writes only under <DATA_DIR>/exports/<name>; 201 with the
counts, 400 for bad options or an empty selection, 409 for an existing name; nothing written on an error."""
from __future__ import annotations

import base64

import pytest

from regionscribe.backend.web.app import create_app
from regionscribe.backend.export import verify_manifest
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.store import Store


def auth(user="ls", password="s3cret") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def client(sqlite_store, tmp_path, lab):
    lab.fill(sqlite_store)  # images under tmp_path/images = <DATA_DIR>/images
    settings = Settings(data_dir=str(tmp_path), store_url=sqlite_store.url, basic_auth_user="ls",
                        basic_auth_pass="s3cret", log_level="WARNING")
    yield create_app(settings).test_client()
    for key, store in list(Store._shared.items()):
        if store.url == sqlite_store.url:
            store.close()
            Store._shared.pop(key, None)


def test_export_route(client, tmp_path):
    exports = tmp_path / "exports"
    assert client.post("/export", json={"format": "coco"}).status_code == 401
    assert client.post("/export", json={"format": "coco"}, headers=auth(password="wrong")).status_code == 401
    assert not exports.exists()

    answer = client.post("/export", json={"format": ["coco", "conversations"], "name": "v1", "images": "copy",
                                          "split": [0.5, 0.5], "seed": 2, "min_caption_length": 4},
                         headers=auth())
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["name"] == "v1" and body["folder"] == "exports/v1" and body["counts"]["regions"] == 4
    assert verify_manifest(exports / "v1") == [] and (exports / "v1" / "images").is_dir()

    again = client.post("/export", json={"format": "coco", "name": "v1"}, headers=auth())
    assert again.status_code == 409

    named = client.post("/export", json={"format": "vg"}, headers=auth())
    assert named.status_code == 201 and named.get_json()["name"].startswith("export-")

    for body, message in [({"format": "yolo"}, "unknown format"),
                          ({}, "'format' is missing"),
                          ({"format": "coco", "project": 999999999}, "no region matches"),
                          ({"format": "coco", "name": "../../etc"}, "bad name"),
                          ({"format": "coco", "name": ".hidden"}, "bad name"),
                          ({"format": "coco", "out": "/tmp/elsewhere"}, "unknown option(s) out"),
                          ({"format": "coco", "overwrite": True}, "unknown option(s) overwrite"),
                          ({"format": "coco", "seed": "x"}, "seed must be an integer"),
                          ({"format": "coco", "keep_duplicates": "yes"}, "keep_duplicates must be true or false"),
                          ({"format": "coco", "split": "0.5,x"}, "bad split")]:
        answer = client.post("/export", json=body, headers=auth())
        assert answer.status_code == 400, body
        assert message in answer.get_json()["detail"], (body, answer.get_json())
    assert client.post("/export", data="not json", headers=auth()).status_code == 400
    names = sorted(p.name for p in exports.iterdir())
    assert len(names) == 2 and names[1] == "v1" and names[0].startswith("export-")  # nothing else, no leftovers
