"""regionscribe against a real Label Studio 1.23.2, through Label Studio's own REST API (labelstudio.md §9).

For every config in labeling_configs/: create a project, upload a real PNG (so the task's image is a
`/data/upload/...` URL the worker must fetch back from Label Studio with the API token), connect the backend as an
interactive ML backend, then
- interactive: what the labeling UI's smart tool sends (`/api/ml/{id}/interactive-annotating` with a drawn box)
  comes back with the box echoed under its own id and the caption/attributes/relation text filled in under that id;
- batch: the Data Manager's "Retrieve predictions" action on an annotated task stores one prediction with the
  backend's model_version, every region linked by id, score in [0, 1].
And: a task whose image the backend may not fetch (a private host not in ALLOWED_HOSTS) gets no prediction while the
other task of the same batch does.

What the tests expect is read from each config (its first region tool, control names, choice values, taxonomy paths,
relation labels), so a new config in labeling_configs/ is tested without changes here. A config whose first region
tool is <PolygonLabels> (region_segments.xml) is drawn with polygons round the same objects: its answers must come
back under each polygon's id, the polygon itself unchanged.
"""
from __future__ import annotations

import io
import math
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from PIL import Image, ImageDraw

if TYPE_CHECKING:  # the fixture's type, for the annotations only
    from tests.e2e.conftest import Backend

pytestmark = pytest.mark.e2e

CONFIGS = Path(__file__).resolve().parents[2] / "labeling_configs"
CONFIG_FILES = sorted(CONFIGS.glob("*.xml"))
IMAGE_SIZE = (160, 120)
FORCED_RELATIONS = float(os.environ.get("E2E_RELATION_THRESHOLD", "0")) == 0.0  # see conftest's backend fixture
PRIVATE_IMAGE_URL = "http://10.255.77.1/private/scene.png"  # RFC 1918, not in ALLOWED_HOSTS: must be refused


# ------------------------------------------------------------------------------------------------ helpers


def scene_png() -> bytes:
    """A red square and a blue disc on white: two things to draw boxes around."""
    image = Image.new("RGB", IMAGE_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((16, 20, 64, 68), fill=(220, 20, 20))
    draw.ellipse((90, 50, 140, 100), fill=(20, 40, 220))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class ConfigSpec:
    """What a labeling config asks for, read from its XML."""

    image: str
    image_key: str
    region_tool: str  # the name of the config's first region tool (RectangleLabels or PolygonLabels)
    region_type: str  # its tag in lowercase, the results' `type`
    label: str
    caption: str | None
    relation_text: str | None
    choices: dict[str, set[str]] = field(default_factory=dict)
    taxonomies: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)
    relation_labels: set[str] = field(default_factory=set)
    has_relations: bool = False

    @classmethod
    def read(cls, xml: str) -> "ConfigSpec":
        root = ET.fromstring(xml)
        image = next(root.iter("Image"))
        rect = next(node for node in root.iter() if node.tag in ("RectangleLabels", "PolygonLabels"))
        textareas = [t.attrib["name"] for t in root.iter("TextArea") if t.attrib.get("perRegion") == "true"]
        relation_text = next((n for n in textareas if "relation" in n.lower()), None)
        rest = [n for n in textareas if n != relation_text]
        caption = next((n for n in rest if "caption" in n.lower() or "description" in n.lower()),
                       rest[0] if rest else None)

        def leaf_paths(node, prefix=()):
            paths = set()
            for child in node.findall("Choice"):
                path = prefix + (child.attrib["value"],)
                paths |= leaf_paths(child, path) or {path}
            return paths

        relations = list(root.iter("Relations"))
        return cls(
            image=image.attrib["name"], image_key=image.attrib["value"].lstrip("$"), region_tool=rect.attrib["name"],
            region_type=rect.tag.lower(), label=next(rect.iter("Label")).attrib["value"], caption=caption, relation_text=relation_text,
            choices={c.attrib["name"]: {ch.attrib["value"] for ch in c.iter("Choice")}
                     for c in root.iter("Choices") if c.attrib.get("perRegion") == "true"},
            taxonomies={t.attrib["name"]: leaf_paths(t) for t in root.iter("Taxonomy")
                        if t.attrib.get("perRegion") == "true"},
            relation_labels={r.attrib["value"] for node in relations for r in node.iter("Relation")},
            has_relations=bool(relations))


def box(spec: ConfigSpec, rid: str, x: float, y: float, w: float, h: float, origin: str | None = "manual") -> dict:
    """A region round (x, y, w, h) as the labeling UI serializes it, drawn with the config's region tool: a
    rectanglelabels box, or a polygonlabels octagon inscribed in that box."""
    if spec.region_type == "polygonlabels":
        cx, cy, rx, ry = x + w / 2, y + h / 2, w / 2, h / 2
        points = [[round(cx + rx * math.cos(2 * math.pi * k / 8), 4), round(cy + ry * math.sin(2 * math.pi * k / 8), 4)]
                  for k in range(8)]
        geometry = {"points": points, "closed": True}
    else:
        geometry = {"x": x, "y": y, "width": w, "height": h, "rotation": 0}
    item = {"id": rid, "type": spec.region_type, "from_name": spec.region_tool, "to_name": spec.image,
            "original_width": IMAGE_SIZE[0], "original_height": IMAGE_SIZE[1], "image_rotation": 0,
            "value": {**geometry, spec.region_type: [spec.label]}}
    if origin:
        item["origin"] = origin
    return item


def geometry_of(spec: ConfigSpec, item: dict) -> dict:
    """The geometry keys of a region result's value (its labels left out), numbers flattened (polygon points)."""
    def flat(v):
        return [x for p in v for x in p] if isinstance(v, list) and v and isinstance(v[0], list) else v

    return {k: flat(v) for k, v in item["value"].items() if k != spec.region_type}


# the red square and the blue disc of scene_png(), in percent
RED = (16 / 160 * 100, 20 / 120 * 100, 48 / 160 * 100, 48 / 120 * 100)
BLUE = (90 / 160 * 100, 50 / 120 * 100, 50 / 160 * 100, 50 / 120 * 100)


class LS:
    """Label Studio's REST API with the legacy token; every call checks its status and says what came back."""

    def __init__(self, ls):  # conftest.LabelStudio
        self.base = ls.url
        self.session = requests.Session()
        self.session.headers.update(ls.headers)

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201), timeout: float = 120,
             **kwargs):
        expect = (expect,) if isinstance(expect, int) else expect
        started = time.monotonic()
        r = self.session.request(method, f"{self.base}{path}", timeout=timeout, **kwargs)
        took = time.monotonic() - started
        assert r.status_code in expect, (f"{method} {path} -> {r.status_code} (expected {expect}) in {took:.2f} s: "
                                         f"{r.text[:1500]}")
        return r.json() if r.content else None

    def predictions(self, task_id: int) -> list[dict]:
        body = self.call("GET", f"/api/predictions?task={task_id}")
        return body if isinstance(body, list) else body.get("results", body.get("predictions", []))


@dataclass
class Project:
    name: str
    xml: str
    spec: ConfigSpec
    id: int
    task_id: int
    task_image: str
    ml: dict  # the POST /api/ml answer


@pytest.fixture(scope="session")
def ls_api(label_studio) -> LS:
    return LS(label_studio)


def create_project(api: LS, title: str, xml: str) -> int:
    body = api.call("POST", "/api/projects", json={"title": title, "label_config": xml}, expect=201)
    return body["id"]


def upload_png(api: LS, project_id: int, name: str = "scene.png") -> tuple[int, str]:
    """Upload a PNG through /import (multipart): the task's image becomes /data/upload/<project>/<hash>-<name>."""
    body = api.call("POST", f"/api/projects/{project_id}/import", expect=201,
                    files={"file": (name, scene_png(), "image/png")})
    assert body.get("task_count") == 1, body
    tasks = tasks_of(api, project_id)
    task = tasks[-1]
    return task["id"], task["data"]


def tasks_of(api: LS, project_id: int) -> list[dict]:
    body = api.call("GET", f"/api/tasks?project={project_id}&page_size=100")
    return body["tasks"] if isinstance(body, dict) else body


def connect(api: LS, project_id: int, backend: Backend) -> dict:
    """POST /api/ml: Label Studio calls the backend's /health and /setup before it answers 201."""
    return api.call("POST", "/api/ml", expect=201, json={
        "url": backend.url, "project": project_id, "is_interactive": True, "title": "regionscribe"})


_PROJECTS: dict[str, Project] = {}


@pytest.fixture
def project(request, ls_api, backend) -> Project:
    """One project per config, made once per session: PNG task uploaded, backend connected."""
    path: Path = request.param
    if path.stem not in _PROJECTS:
        xml = path.read_text()
        spec = ConfigSpec.read(xml)
        pid = create_project(ls_api, f"e2e {path.stem}", xml)
        tid, data = upload_png(ls_api, pid)
        image = data.get(spec.image_key)
        if image is None:  # an upload is stored under "$undefined$" and resolved to the config's key when served
            image = next(iter(data.values()))
        ml = connect(ls_api, pid, backend)
        _PROJECTS[path.stem] = Project(path.stem, xml, spec, pid, tid, image, ml)
    return _PROJECTS[path.stem]


by_config = pytest.mark.parametrize("project", CONFIG_FILES, ids=[p.stem for p in CONFIG_FILES], indirect=True)


def by_id(results: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for item in results:
        if item.get("type") != "relation":
            grouped.setdefault(item.get("id"), []).append(item)
    return grouped


def check_region_results(spec: ConfigSpec, results: list[dict], region_ids: list[str], where: str,
                         relations_expected: bool = True) -> None:
    """Each region id carries its box, a non-empty caption and one valid value per attribute control; relations
    reference existing ids with labels from the config (and, with RELATION_THRESHOLD=0 as the e2e backend runs, a
    <Relations> config with two regions gets at least one). `relations_expected=False` (interactive answers, which
    Label Studio's editor cannot take relations in): there is none."""
    groups = by_id(results)
    for rid in region_ids:
        items = groups.get(rid)
        assert items, f"{where}: nothing under region id {rid!r}; ids present: {sorted(groups)}"
        kinds = {(i["type"], i["from_name"]) for i in items}
        assert (spec.region_type, spec.region_tool) in kinds, f"{where}: the region {rid} is not in the result: {items}"
        for item in items:
            assert item["to_name"] == spec.image, f"{where}: to_name {item['to_name']!r}: {item}"
            value = item["value"]
            coordinates = [v for point in value["points"] for v in point] if "points" in value else \
                [value[key] for key in ("x", "y", "width", "height")]
            assert all(0 <= float(v) <= 100 for v in coordinates), f"{where}: geometry outside 0..100: {item}"
            if "score" in item:
                assert 0 <= item["score"] <= 1, f"{where}: per-result score outside [0, 1]: {item}"
        if spec.caption:
            caps = [i for i in items if i["type"] == "textarea" and i["from_name"] == spec.caption]
            assert len(caps) == 1, f"{where}: expected one {spec.caption!r} textarea for {rid}, got {caps}"
            text = caps[0]["value"]["text"]
            assert isinstance(text, list) and text and isinstance(text[0], str) and text[0].strip(), caps[0]
        if spec.relation_text:
            rel = [i for i in items if i["type"] == "textarea" and i["from_name"] == spec.relation_text]
            assert len(rel) == 1, f"{where}: expected one {spec.relation_text!r} textarea for {rid}, got {rel}"
            assert rel[0]["value"]["text"] and rel[0]["value"]["text"][0].strip(), rel[0]
        for name, allowed in spec.choices.items():
            got = [i for i in items if i["type"] == "choices" and i["from_name"] == name]
            assert len(got) == 1, f"{where}: expected one {name!r} choices result for {rid}, got {got}"
            values = got[0]["value"]["choices"]
            assert values and set(values) <= allowed, f"{where}: {name} = {values}, allowed {sorted(allowed)}"
        for name, paths in spec.taxonomies.items():
            got = [i for i in items if i["type"] == "taxonomy" and i["from_name"] == name]
            assert len(got) == 1, f"{where}: expected one {name!r} taxonomy result for {rid}, got {got}"
            values = [tuple(p) for p in got[0]["value"]["taxonomy"]]
            assert values and set(values) <= paths, f"{where}: {name} = {values}, allowed {sorted(paths)}"
    unknown = set(groups) - set(region_ids)
    assert not unknown, f"{where}: results under ids nobody drew: {sorted(unknown)}"
    relations = [r for r in results if r.get("type") == "relation"]
    if not relations_expected:
        assert relations == [], f"{where}: relations in an answer that must carry none: {relations}"
    elif spec.has_relations and spec.relation_labels and len(region_ids) >= 2 and FORCED_RELATIONS:
        assert relations, f"{where}: no relations between {region_ids} although RELATION_THRESHOLD=0"
    for rel in relations:
        assert spec.has_relations, f"{where}: a relation for a config without <Relations>: {rel}"
        assert rel["from_id"] in region_ids and rel["to_id"] in region_ids, f"{where}: dangling relation {rel}"
        assert rel["from_id"] != rel["to_id"], rel
        assert rel["labels"] and set(rel["labels"]) <= spec.relation_labels, rel
        assert rel.get("direction") in ("left", "right", "bi"), rel


def sdk_validate(xml: str, prediction: dict) -> list:
    """Label Studio's own prediction validator (label-studio-sdk's LabelInterface, as LS 1.23 uses it)."""
    from label_studio_sdk.label_interface import LabelInterface

    return LabelInterface(xml).validate_prediction(prediction, return_errors=True) or []


# ---------------------------------------------------------------------------------------------------- tests


@by_config
def test_connect_calls_health_and_setup(project: Project, ls_api: LS, backend: Backend, label_studio, e2e_logs):
    """POST /api/ml answered 201 after LS called /health and /setup; LS shows the backend connected with our
    model_version; /setup saw this project's config; the training webhook was created."""
    assert project.task_image.startswith("/data/upload/"), project.task_image
    ml = project.ml
    assert ml["is_interactive"] is True, ml
    listed = ls_api.call("GET", f"/api/ml?project={project.id}")
    assert len(listed) == 1, listed
    entry = listed[0]
    assert entry["id"] == ml["id"]
    assert entry["state"] == "CO", f"backend not connected in LS: {entry}"
    assert entry["model_version"] == backend.model_version, entry

    import redis

    stored = redis.Redis.from_url(backend.redis_url).get(f"regionscribe:project:{project.id}:label_config")
    assert stored is not None and stored.decode().strip() == project.xml.strip(), "/setup did not receive this project's config"
    access = backend.web.log.read_text(errors="replace")
    assert re.search(r'"GET /health HTTP/1\.1" 200', access), "no /health call from LS in the backend's access log"
    assert re.search(r'"POST /setup HTTP/1\.1" 200', access), "no /setup call from LS in the backend's access log"

    hooks = ls_api.call("GET", f"/api/webhooks?project={project.id}")
    assert any(h["url"].rstrip("/") == f"{backend.url}/webhook" for h in hooks), hooks


@by_config
def test_interactive_prefill(project: Project, ls_api: LS, backend: Backend, label_studio, e2e_logs):
    """What the smart tool sends after a box is drawn: the answer echoes the box (same id, same geometry) and adds
    the caption, one value per attribute control, and for <Relations> configs relation text (no relations: the
    labeling page cannot take them in an interactive answer, see backend/labelstudio/predictions.py)."""
    spec = project.spec
    drawn = [box(spec, "userBox01", *RED)]
    if spec.has_relations or spec.relation_text:  # relations need a second box
        drawn.append(box(spec, "userBox02", *BLUE))
    started = time.monotonic()
    body = ls_api.call("POST", f"/api/ml/{project.ml['id']}/interactive-annotating",
                       json={"task": project.task_id, "context": {"result": drawn}})
    took = time.monotonic() - started
    assert "errors" not in body and "data" in body, body
    data = body["data"]
    assert "error" not in data, f"the backend answered an error: {data}"
    assert data.get("model_version") == backend.model_version, data
    result = data["result"]
    ids = [d["id"] for d in drawn]
    check_region_results(spec, result, ids, "interactive", relations_expected=False)

    for d in drawn:  # the annotator's own region comes back unchanged, so accepting the suggestion keeps it
        echoed = [r for r in result if r.get("id") == d["id"] and r["type"] == spec.region_type]
        assert len(echoed) == 1, echoed
        assert echoed[0]["value"] == d["value"], (echoed[0], d)
        assert echoed[0]["from_name"] == d["from_name"]
        for item in by_id(result)[d["id"]]:
            assert item["original_width"] == IMAGE_SIZE[0] and item["original_height"] == IMAGE_SIZE[1], item
            if item["type"] != spec.region_type:  # per-region results repeat the region's geometry
                got = geometry_of(spec, item)
                for key, want in geometry_of(spec, d).items():
                    assert got[key] == pytest.approx(want), item
    errors = sdk_validate(project.xml, {"result": result, "score": data.get("score", 0.5),
                                        "model_version": data["model_version"]})
    assert not errors, errors

    # the worker had to fetch the image from Label Studio with the token (the task only holds a /data/upload URL)
    assert re.search(re.escape(project.task_image) + r'\S* HTTP/1\.1" 200', tail(label_studio.proc.log, 200_000)), \
        f"Label Studio's log shows no successful GET of {project.task_image}"
    # interactive answers are suggestions: nothing is stored
    assert ls_api.predictions(project.task_id) == []
    print(f"\n[e2e] {project.name}: interactive-annotating answered in {took:.2f} s")


@by_config
def test_batch_retrieve_predictions(project: Project, ls_api: LS, backend: Backend, e2e_logs):
    """Data Manager → "Retrieve predictions" on a task annotated with two boxes: one stored prediction with the
    backend's model_version, both boxes kept under their ids with caption/attributes, score in [0, 1]."""
    spec = project.spec
    boxes = [box(spec, "annBox01", *RED, origin=None), box(spec, "annBox02", *BLUE, origin=None)]
    ann = ls_api.call("POST", f"/api/tasks/{project.task_id}/annotations/", expect=201,
                      json={"result": boxes, "lead_time": 3.5, "was_cancelled": False})
    assert ann["task"] == project.task_id

    started = time.monotonic()
    action = ls_api.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project.id}",
                         json={"selectedItems": {"all": True, "excluded": []}})
    took = time.monotonic() - started
    assert action.get("processed_items") == 1, action

    predictions = ls_api.predictions(project.task_id)
    assert len(predictions) == 1, predictions
    pred = predictions[0]
    assert pred["model_version"] == backend.model_version, pred
    assert pred["score"] is not None and 0 <= pred["score"] <= 1, pred
    check_region_results(spec, pred["result"], ["annBox01", "annBox02"], "batch")
    for b in boxes:
        stored = [r for r in pred["result"] if r.get("id") == b["id"] and r["type"] == spec.region_type][0]
        got = geometry_of(spec, stored)
        for key, want in geometry_of(spec, b).items():
            assert got[key] == pytest.approx(want), stored
        assert stored["value"][spec.region_type] == [spec.label]
    errors = sdk_validate(project.xml, {"result": pred["result"], "score": pred["score"],
                                        "model_version": pred["model_version"]})
    assert not errors, errors

    # the same model version again: Label Studio's skip rule sends nothing and stores nothing new
    ls_api.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project.id}",
                json={"selectedItems": {"all": True, "excluded": []}})
    assert len(ls_api.predictions(project.task_id)) == 1

    # the annotation reached the backend's /webhook (ANNOTATION_CREATED, sent synchronously by LS)
    assert 'action="ANNOTATION_CREATED"' in backend.metrics(), "no ANNOTATION_CREATED webhook counted"
    print(f"\n[e2e] {project.name}: retrieve_tasks_predictions answered in {took:.2f} s")


def test_unfetchable_image_gets_no_prediction(ls_api: LS, backend: Backend, e2e_logs):
    """A batch with a servable task and a task whose image sits on a private, non-allow-listed host: the first gets
    its prediction, the second none (the backend answers an item without `result` for it, which LS skips), and the
    action itself succeeds."""
    path = CONFIGS / "region_captioning.xml"
    if not path.exists():
        path = CONFIG_FILES[0]
    xml = path.read_text()
    spec = ConfigSpec.read(xml)
    pid = create_project(ls_api, "e2e unfetchable image", xml)
    good_id, _ = upload_png(ls_api, pid)
    ls_api.call("POST", f"/api/projects/{pid}/import", expect=201,
                json=[{"data": {spec.image_key: PRIVATE_IMAGE_URL}}])
    bad_id = next(t["id"] for t in tasks_of(ls_api, pid) if t["data"].get(spec.image_key) == PRIVATE_IMAGE_URL)
    connect(ls_api, pid, backend)
    for tid, rid in ((good_id, "goodBox"), (bad_id, "badBox")):
        ls_api.call("POST", f"/api/tasks/{tid}/annotations/", expect=201,
                    json={"result": [box(spec, rid, *RED, origin=None)], "lead_time": 1.0})

    started = time.monotonic()
    action = ls_api.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                         json={"selectedItems": {"all": True, "excluded": []}})
    took = time.monotonic() - started
    assert action.get("processed_items") == 2, action
    assert took < 30, f"the refused image should fail fast, the action took {took:.1f} s"

    good = ls_api.predictions(good_id)
    assert len(good) == 1 and good[0]["model_version"] == backend.model_version, good
    check_region_results(spec, good[0]["result"], ["goodBox"], "batch (servable task)")
    assert ls_api.predictions(bad_id) == [], "a prediction was stored for the task whose image may not be fetched"
    log = backend.web.log.read_text(errors="replace")
    assert "10.255.77.1" in log, "the backend did not log why the private-host image was refused"


def test_shapes_project_brush_and_broken_polygon(ls_api: LS, backend: Backend, e2e_logs):
    """region_segments.xml through Label Studio: a brush mask (Label Studio's RLE) and a polygon are described
    under their own ids, while a 2-point polygon drawn with them gets its own error in `region_errors`."""
    import numpy as np

    from regionscribe.backend.labelstudio.shapes import Shape

    xml = (CONFIGS / "region_segments.xml").read_text()
    spec = ConfigSpec.read(xml)
    pid = create_project(ls_api, "e2e shapes with errors", xml)
    tid, _ = upload_png(ls_api, pid)
    ml = connect(ls_api, pid, backend)
    mask = np.zeros(IMAGE_SIZE[::-1], bool)
    mask[50:100, 90:140] = True  # the blue disc's square
    common = {"to_name": spec.image, "original_width": IMAGE_SIZE[0], "original_height": IMAGE_SIZE[1],
              "image_rotation": 0, "origin": "manual"}
    painted = {**common, "id": "brush01", "type": "brushlabels", "from_name": "paint",
               "value": {"format": "rle", "rle": list(Shape.from_mask(mask).rle), "brushlabels": [spec.label]}}
    broken = {**common, "id": "line01", "type": "polygonlabels", "from_name": spec.region_tool,
              "value": {"points": [[10, 10], [40, 40]], "closed": True, "polygonlabels": [spec.label]}}
    drawn = [box(spec, "poly01", *RED), painted, broken]
    body = ls_api.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                       json={"task": tid, "context": {"result": drawn}})
    data = body.get("data") or {}
    assert "error" not in data, f"the backend answered an error: {data}"
    groups = by_id(data["result"])
    assert set(groups) == {"poly01", "brush01"}, sorted(groups)
    for rid in ("poly01", "brush01"):
        captions = [i for i in groups[rid] if i["from_name"] == spec.caption]
        assert len(captions) == 1 and captions[0]["value"]["text"][0].strip(), groups[rid]
    echoed = next(i for i in groups["brush01"] if i["type"] == "brushlabels")
    assert echoed["value"]["rle"] == painted["value"]["rle"]
    assert [e["id"] for e in data.get("region_errors", [])] == ["line01"], data.get("region_errors")
    assert "needs at least 3" in data["region_errors"][0]["error"]
    assert not sdk_validate(xml, {"result": data["result"], "score": data.get("score", 0.5),
                                  "model_version": data["model_version"]})


def tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def test_personal_access_token(ls_api: LS, pat_backend: Backend, label_studio, e2e_logs):
    """A backend configured with a personal access token (Label Studio's default kind of API key) fetches the
    uploaded image too: it exchanges the token at /api/token/refresh/ and sends `Bearer <access>`."""
    path = CONFIGS / "region_captioning.xml"
    if not path.exists():
        path = CONFIG_FILES[0]
    xml = path.read_text()
    spec = ConfigSpec.read(xml)
    pid = create_project(ls_api, "e2e personal access token", xml)
    tid, _ = upload_png(ls_api, pid)
    ml = connect(ls_api, pid, pat_backend)
    body = ls_api.call("POST", f"/api/ml/{ml['id']}/interactive-annotating",
                       json={"task": tid, "context": {"result": [box(spec, "userBox01", *RED)]}})
    data = body.get("data") or {}
    assert "errors" not in body and "error" not in data, body
    check_region_results(spec, data["result"], ["userBox01"], "interactive (personal access token)",
                         relations_expected=False)
    assert re.search(r'"POST /api/token/refresh/ HTTP/1\.1" 200', tail(label_studio.proc.log, 500_000)), \
        "Label Studio's log shows no successful token refresh by the worker"
