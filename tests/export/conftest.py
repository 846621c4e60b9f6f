"""Fixtures for the export tests: a store on a real SQLite file and on the real PostgreSQL (own schema per test),
filled the way the webhook fills it (Label Studio 1.23 payloads through regionscribe.backend.feedback.events.handle_event), with images
cached through regionscribe.backend.feedback.image_cache.cache_image exactly as the ingest job caches them."""
from __future__ import annotations

import io
import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.feedback.image_cache import cache_image
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.store import Store, Suggestion

ROOT = Path(__file__).resolve().parents[2]
# the attributes config plus a detailed caption, a relation sentence, <Relations> and a second label
XML = (ROOT / "labeling_configs" / "region_attributes.xml").read_text().replace(
    '<Label value="Object" background="#1f77b4"/>',
    '<Label value="Object" background="#1f77b4"/><Label value="Plant" background="#2ca02c"/>').replace("</View>", """
  <TextArea name="detailed_caption" toName="image" perRegion="true" editable="true" rows="3"/>
  <TextArea name="relation_text" toName="image" perRegion="true" editable="true" rows="1"/>
  <Relations><Relation value="left of"/><Relation value="above"/></Relations>
</View>""")
PG_URL = os.environ.get("REGIONSCRIBE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
NO_REDIS = Settings()
_ids = itertools.count(int(time.time()) % 100000 * 1000 + 500)


def new_id() -> int:
    return next(_ids)


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(1714564800 + seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def png(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def region(rid: str, x=10.0, y=10.0, w=20.0, h=20.0, caption=None, detailed=None, color=None, shape=None,
           family=None, label="Object", size=(640, 480), relation_text=None) -> list[dict]:
    """The results Label Studio's editor sends for one region (one result per control, geometry repeated)."""
    common = {"id": rid, "to_name": "image", "original_width": size[0], "original_height": size[1],
              "image_rotation": 0}
    geometry = {"x": x, "y": y, "width": w, "height": h, "rotation": 0}
    out = [{**common, "from_name": "bbox", "type": "rectanglelabels", "origin": "manual",
            "value": {**geometry, "rectanglelabels": [label]}}]
    for name, text in (("caption", caption), ("detailed_caption", detailed), ("relation_text", relation_text)):
        if text is not None:
            out.append({**common, "from_name": name, "type": "textarea", "origin": "manual",
                        "value": {**geometry, "text": [text]}})
    for name, values in (("color", color), ("shape", shape)):
        if values is not None:
            out.append({**common, "from_name": name, "type": "choices", "origin": "manual",
                        "value": {**geometry, "choices": values if isinstance(values, list) else [values]}})
    if family is not None:
        out.append({**common, "from_name": "shape_family", "type": "taxonomy", "origin": "manual",
                    "value": {**geometry, "taxonomy": family}})
    return out


def relation(a: str, b: str, label: str) -> dict:
    return {"type": "relation", "from_id": a, "to_id": b, "direction": "right", "labels": [label]}


def event(project_id, task_id, annotation_id, result, *, image, updated=0.0, user=1, cancelled=False,
          ground_truth=False, action="ANNOTATION_CREATED") -> dict:
    return {
        "action": action,
        "annotation": {"id": annotation_id, "result": result, "completed_by": user,
                       "created_username": f"annotator{user}@example.com, {user}", "was_cancelled": cancelled,
                       "ground_truth": ground_truth, "created_at": stamp(updated), "updated_at": stamp(updated),
                       "lead_time": 3.0, "task": task_id, "project": project_id},
        "task": {"id": task_id, "data": {"image": image}, "project": project_id},
        "project": {"id": project_id, "title": "regions", "label_config": XML},
    }


class Fetcher:
    """Stands in for regionscribe.backend.labelstudio.fetcher.ImageFetcher: image bytes by reference."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def fetch(self, ref, task_id=None) -> bytes:
        return self.files[ref]


@dataclass
class Filled:
    """What `fill` stored, to compare exports against."""

    p1: int
    p2: int
    by_caption: dict = field(default_factory=dict)  # caption -> (annotation id, region id)
    images: dict = field(default_factory=dict)  # name -> image_ref


def apply(store, payload) -> dict:
    return handle_event(NO_REDIS, payload, store=store, connection=None)


def fill(store: Store, cache: bool = True) -> Filled:
    """Two projects, four images, the cases the filters and round trips need:

    image A (640x480, cached): annotation by user 7 (ground truth) with r1 (unicode caption, colour, shape,
        taxonomy, relation "left of" r2) and r2; a second annotation by user 8 repeats r1 exactly (a duplicate)
    image B (320x240, cached): a caption + detailed caption region (pre-filled by model v1, changed), and an
        attributes-only region (pre-filled by v1, confirmed)
    image C (200x100, cached): a short caption "cup" (pre-filled by v2, confirmed), a day later than the rest
    project 2, image D (100x100, cached): one region; plus a cancelled and a deleted annotation (never exported)
    """
    f = Filled(new_id(), new_id())
    fetcher = Fetcher()
    refs = {}
    for name, size, color in (("A", (640, 480), (200, 30, 30)), ("B", (320, 240), (30, 200, 30)),
                              ("C", (200, 100), (30, 30, 200)), ("D", (100, 100), (90, 90, 90))):
        refs[name] = f"/data/upload/{f.p1}/{name}-{uuid.uuid4().hex[:6]}.png"
        fetcher.files[refs[name]] = png(size, color)
    f.images = refs
    tA, tB, tC, tD, tX = (new_id() for _ in range(5))
    uni = "a red square — ünïcode 🚀 \"quoted\" {braces}"
    a1, a2 = new_id(), new_id()
    apply(store, event(f.p1, tA, a1, region("r1", 10, 20, 30, 40, caption=uni, color="red", shape="square",
                                            family=[["polygon", "square"]], size=(640, 480))
                       + region("r2", 50, 50, 10, 10, caption="a blue circle", color="blue", size=(640, 480))
                       + [relation("r1", "r2", "left of")], image=refs["A"], user=7, ground_truth=True))
    apply(store, event(f.p1, tA, a2, region("s1", 10, 20, 30, 40, caption=uni, color="red", shape="square",
                                            family=[["polygon", "square"]], size=(640, 480)),
                       image=refs["A"], user=8, updated=10))
    f.by_caption[uni] = (a1, "r1")
    f.by_caption["a blue circle"] = (a1, "r2")
    store.record_suggestions(f.p1, [Suggestion(tB, "b1", "v1", caption="a tree"),
                                    Suggestion(tB, "b2", "v1", attributes={"color": ["green"]}),
                                    Suggestion(tC, "c1", "v2", caption="cup")])
    b = new_id()
    apply(store, event(f.p1, tB, b, region("b1", 0, 0, 50, 50, caption="a tall green tree", label="Plant",
                                           detailed="A tall green tree with a thick trunk.", size=(320, 240),
                                           relation_text="beside the fence")
                       + region("b2", 60, 60, 20, 30, color="green", size=(320, 240)),
                       image=refs["B"], user=8, updated=20))
    f.by_caption["a tall green tree"] = (b, "b1")
    c = new_id()
    apply(store, event(f.p1, tC, c, region("c1", 25, 25, 50, 50, caption="cup", size=(200, 100)),
                       image=refs["C"], user=7, updated=86400))
    f.by_caption["cup"] = (c, "c1")
    d = new_id()
    apply(store, event(f.p2, tD, d, region("d1", 5, 5, 90, 90, caption="a grey wall", size=(100, 100)),
                       image=refs["D"], user=9, updated=30))
    f.by_caption["a grey wall"] = (d, "d1")
    apply(store, event(f.p1, tX, new_id(), region("x1", caption="cancelled"), image=refs["D"], cancelled=True))
    gone = new_id()
    apply(store, event(f.p1, tX, gone, region("y1", caption="deleted later"), image=refs["D"]))
    apply(store, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": gone}], "project": {"id": f.p1}})
    if cache:
        for name, ref in refs.items():
            outcome = cache_image(store, fetcher, ref, 1, 64_000_000)
            assert "error" not in outcome, outcome
    return f


# ------------------------------------------------------------------------------------------------- stores


def _pg_problem() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
    return None


@pytest.fixture(scope="session")
def pg_problem():
    return _pg_problem()


def _sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


@pytest.fixture
def pg_url(pg_problem):
    if pg_problem:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {pg_problem}")
    import psycopg

    schema = f"rs_export_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path):
    """A fresh store on SQLite and on PostgreSQL."""
    url = _sqlite_url(tmp_path) if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = Store.open(url, images_dir=tmp_path / "images")
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path):
    store = Store.open(_sqlite_url(tmp_path), images_dir=tmp_path / "images")
    yield store
    store.close()


@pytest.fixture(scope="session")
def tokenizer():
    from regionscribe.training.corpus import vocabulary_text
    from regionscribe.model.tokenizer import train_tokenizer

    return train_tokenizer(vocabulary_text())


@pytest.fixture(scope="session")
def lab():
    """The builders (a fixture, so tests never import conftest by module name)."""
    from types import SimpleNamespace

    return SimpleNamespace(fill=fill, event=event, region=region, relation=relation, apply=apply, new_id=new_id,
                           stamp=stamp, png=png, Fetcher=Fetcher)
