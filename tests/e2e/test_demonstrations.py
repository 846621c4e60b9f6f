"""Demonstrations end to end, against the real Label Studio 1.23.2 (issue 19, item 5's last point): a new project's
first 20 accepted regions change its next predictions, with no training run.

The project calls stars by a made-up word of its own (training.corpus.episodes.nonsense_name from a fixed seed): its
labeling config offers, per rectangle, a caption, a colour and a shape whose choices are the four base shapes and
that word. Its tasks are synthetic corpus scenes of the "novel" split (which no training run draws), uploaded to
Label Studio as PNG files; a backend of this module's own serves it with DEMONSTRATIONS=4.

1. Before anything is accepted, the held-out tasks are predicted through Label Studio's interactive-annotating (what
   the labeling page's smart tool calls, with every object's box drawn): a star is never answered with the word, which
   the model cannot know, and no prediction names demonstrations.
2. Annotations are submitted through Label Studio's API on other tasks, answered in the project's convention (stars
   are the word, in the captions too: episodes.Convention / answers_of), until 20 regions are accepted. Label
   Studio's webhook carries them to the backend, whose inference worker computes their region tokens; the test waits
   until the store has a token of the served model version for each, and `regionscribe demonstrations status` says
   so. No training run is queued and the served model version stays the same.
3. The held-out tasks are predicted again, the same way: every prediction changed, few other shapes are answered
   with the word (at most MAX_OTHER_WORD_RATE) and most keep their base names, and each prediction names the
   demonstrations it was shown: 4 per box, accepted regions of other tasks only (also when the predicted task has
   accepted regions of its own). At least MIN_WORD_RATE of the stars are now answered with the word, and each star
   answered with it was shown an accepted star (the measured rates are printed).

The checkpoint is the conftest's (E2E_MODEL_DIR, else the embedded default). The backend has its own Redis database
and its own store, so the other e2e backends' projects and jobs never mix with it.
"""
from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import requests

pytestmark = pytest.mark.e2e

K = 4  # DEMONSTRATIONS
SEED = 47  # of the scenes: the "novel" split, which no training run draws (benchmarks/demonstrations.py uses 19)
WORD_SEED = "e2e-demonstrations"  # of the project's made-up word for stars
ACCEPTED = 20  # regions the annotators accept before the second round of predictions
POOL_WITHOUT_STARS = 2  # annotated tasks with no star among the annotated ones
HELD_OUT_STARS = 8  # predicted tasks with a star
HELD_OUT_WITHOUT = 2  # predicted tasks without one
IMAGE_SIZE = 128  # make_scenes' default, square
TOKENS_TIMEOUT = 120.0  # s for the worker to compute the accepted regions' tokens
# What the second round must show (11 stars and 21 other objects are predicted), below the goal for
# benchmarks/demonstrations.py (the word for >= 85% of the stars at k=4) with a margin for this small sample. Every
# run prints the measured rates ([e2e] demonstrations: before: ... / after ...).
MIN_WORD_RATE = 0.6  # stars answered with the word, after
MIN_BASE_RATE_AFTER = 0.75  # other shapes answered with their own base name, after
# other shapes answered with the word, after: a checkpoint that reads demonstrations sometimes takes the word from a
# star among a square's nearest (an earlier one: 2 of 21 here; the embedded default, README "Demonstrations": 0 of 21)
MAX_OTHER_WORD_RATE = 0.15


def labeling_config(word: str) -> str:
    """labeling_configs/region_attributes.xml's rectangle, caption, colour and shape, the shape's star renamed."""
    colors = "".join(f'<Choice value="{c}"/>' for c in
                     ("red", "green", "blue", "yellow", "orange", "brown", "black", "purple"))
    shapes = "".join(f'<Choice value="{s}"/>' for s in ("circle", "square", "triangle", "cross", word))
    return f"""<View>
  <Image name="image" value="$image" zoom="true" zoomControl="true" rotateControl="false"/>
  <RectangleLabels name="bbox" toName="image" smart="true" strokeWidth="2">
    <Label value="Object" background="#1f77b4"/>
  </RectangleLabels>
  <TextArea name="caption" toName="image" perRegion="true" editable="true"
            rows="2" maxSubmissions="1" displayMode="region-list" placeholder="Region caption"/>
  <Header value="Color"/>
  <Choices name="color" toName="image" perRegion="true" choice="single" showInline="true">{colors}</Choices>
  <Header value="Shape"/>
  <Choices name="shape" toName="image" perRegion="true" choice="single" showInline="true">{shapes}</Choices>
</View>"""


class LS:
    """Label Studio's REST API with the legacy token; every call checks its status."""

    def __init__(self, ls):
        self.base = ls.url
        self.session = requests.Session()
        self.session.headers.update(ls.headers)

    def call(self, method: str, path: str, expect=(200, 201), timeout: float = 120, **kwargs):
        expect = (expect,) if isinstance(expect, int) else expect
        r = self.session.request(method, f"{self.base}{path}", timeout=timeout, **kwargs)
        assert r.status_code in expect, f"{method} {path} -> {r.status_code}: {r.text[:1500]}"
        return r.json() if r.content else None


@dataclass
class Task:
    id: int
    scene: object  # training.corpus.Scene
    name: str  # the uploaded file's name


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def geometry(obj) -> dict:
    """An object's box (pixel xyxy, x1/y1 exclusive) in Label Studio's percent."""
    x0, y0, x1, y1 = obj.box
    scale = 100.0 / IMAGE_SIZE
    return {"x": x0 * scale, "y": y0 * scale, "width": (x1 - x0) * scale, "height": (y1 - y0) * scale,
            "rotation": 0}


def region_results(rid: str, obj, answers: tuple[str, dict] | None = None) -> list[dict]:
    """The results of one rectangle as the labeling page serializes them: the box, and with `answers` (caption,
    {control: value}) its caption and choices under the same id."""
    common = {"id": rid, "to_name": "image", "original_width": IMAGE_SIZE, "original_height": IMAGE_SIZE,
              "image_rotation": 0}
    box = geometry(obj)
    items = [{**common, "from_name": "bbox", "type": "rectanglelabels",
              "value": {**box, "rectanglelabels": ["Object"]}}]
    if answers is not None:
        caption, values = answers
        items.append({**common, "from_name": "caption", "type": "textarea", "value": {**box, "text": [caption]}})
        items += [{**common, "from_name": name, "type": "choices", "value": {**box, "choices": [value]}}
                  for name, value in values.items()]
    return items


@dataclass
class Project:
    id: int
    ml_id: int
    word: str
    convention: object  # episodes.Convention
    pool: list[Task]  # annotated
    held_out: list[Task]  # predicted


def scenes_for_the_project():
    """(pool, held out) scenes: the pool has stars in all but POOL_WITHOUT_STARS of its scenes and ACCEPTED objects
    or a few more; the held-out scenes HELD_OUT_STARS with a star and HELD_OUT_WITHOUT without."""
    from regionscribe.training.corpus import WITHHELD_SHAPE, make_scenes

    scenes = make_scenes("novel", 60, seed=SEED)
    stars = [s for s in scenes if any(o.shape == WITHHELD_SHAPE for o in s.objects)]
    without = [s for s in scenes if not any(o.shape == WITHHELD_SHAPE for o in s.objects)]
    pool = without[:POOL_WITHOUT_STARS]
    rest = iter(stars)
    while sum(len(s.objects) for s in pool) < ACCEPTED:
        pool.append(next(rest))
    held_out = [next(rest) for _ in range(HELD_OUT_STARS)] + without[POOL_WITHOUT_STARS:][:HELD_OUT_WITHOUT]
    assert len(held_out) == HELD_OUT_STARS + HELD_OUT_WITHOUT, "not enough scenes drawn"
    return pool, held_out


@pytest.fixture(scope="module")
def backend(backends, label_studio, redis_url, e2e_dir, e2e_logs):
    """A backend of this module's own, with DEMONSTRATIONS=4: its own Redis database and store."""
    procs: list = []
    try:
        found, procs = backends.start(
            "demo", redis_url=redis_url.rsplit("/", 1)[0] + "/2", label_studio=label_studio,
            api_key=label_studio.token, queue="inference", e2e_dir=e2e_dir, e2e_logs=e2e_logs,
            # RETRAIN_AFTER spelled out above the regions accepted here: the proof is that predictions change
            # without a training run, and the test checks that none was queued
            extra_env={"DEMONSTRATIONS": str(K), "RETRAIN_AFTER": "50"})
    except RuntimeError as exc:
        for proc in reversed(procs or [p for p in e2e_logs.values() if p.name.startswith("demo-")]):
            proc.stop(timeout=15)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield found
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=15)


@pytest.fixture(scope="module")
def api(label_studio) -> LS:
    return LS(label_studio)


@pytest.fixture(scope="module")
def project(api, backend) -> Project:
    """The project, its PNG tasks uploaded in one import, the backend connected (its /setup makes the webhook)."""
    from regionscribe.training.corpus import WITHHELD_SHAPE
    from regionscribe.training.corpus.episodes import Convention, nonsense_name

    word = nonsense_name(random.Random(WORD_SEED))
    pool, held_out = scenes_for_the_project()
    pid = api.call("POST", "/api/projects", expect=201, json={"title": "e2e demonstrations",
                                                              "label_config": labeling_config(word)})["id"]
    named = [(f"demo-{i:02d}.png", scene) for i, scene in enumerate(pool + held_out)]
    body = api.call("POST", f"/api/projects/{pid}/import", expect=201,
                    files=[(f"file{i}", (name, png(scene.image), "image/png"))  # one field each: one task each
                           for i, (name, scene) in enumerate(named)])
    assert body.get("task_count") == len(named), body
    listed = api.call("GET", f"/api/tasks?project={pid}&page_size=100")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    by_name = {}
    for task in listed:
        ref = next(v for v in task["data"].values() if isinstance(v, str))
        by_name[ref.rsplit("-", 1)[-1]] = task["id"]  # /data/upload/<project>/<hash>-demo-07.png -> "07.png"
    tasks = [Task(by_name[name.rsplit("-", 1)[-1]], scene, name) for name, scene in named]
    ml = api.call("POST", "/api/ml", expect=201, json={"url": backend.url, "project": pid, "is_interactive": True,
                                                       "title": "regionscribe"})
    return Project(pid, ml["id"], word, Convention("shape", WITHHELD_SHAPE, word), tasks[:len(pool)],
                   tasks[len(pool):])


def predict(api: LS, project: Project, task: Task) -> dict:
    """Label Studio's interactive-annotating for a task, every object's box drawn (ids o0, o1, ...): the answer's
    `data` (result, model_version, demonstrations...)."""
    drawn = [item for i, obj in enumerate(task.scene.objects) for item in region_results(f"o{i}", obj)]
    body = api.call("POST", f"/api/ml/{project.ml_id}/interactive-annotating",
                    json={"task": task.id, "context": {"result": drawn}})
    data = body.get("data") or {}
    assert "errors" not in body and "error" not in data and data.get("result"), f"task {task.id}: {body}"
    return data


def shape_answers(data: dict) -> dict[str, str]:
    """Region id → the predicted shape."""
    return {item["id"]: item["value"]["choices"][0] for item in data["result"]
            if item["type"] == "choices" and item["from_name"] == "shape"}


def captions(data: dict) -> dict[str, str]:
    return {item["id"]: item["value"]["text"][0] for item in data["result"]
            if item["type"] == "textarea" and item["from_name"] == "caption"}


@dataclass
class Round:
    """The held-out tasks predicted once: per star, whether its shape (and caption) is the word; per other object,
    whether its shape is its own base name; and the answers themselves (task id → data)."""

    star_word: list[bool]
    star_caption_word: list[bool]
    other_base: list[bool]
    other_word: list[bool]
    answers: dict[int, dict]

    @staticmethod
    def rate(values: list[bool]) -> float:
        return sum(values) / len(values) if values else float("nan")

    def summary(self) -> str:
        return (f"stars named with the word {sum(self.star_word)}/{len(self.star_word)} "
                f"({self.rate(self.star_word):.0%}), in the caption {sum(self.star_caption_word)}/"
                f"{len(self.star_caption_word)} ({self.rate(self.star_caption_word):.0%}); other shapes with their "
                f"base name {sum(self.other_base)}/{len(self.other_base)} ({self.rate(self.other_base):.0%}), with "
                f"the word {sum(self.other_word)}")


def predict_held_out(api: LS, project: Project) -> Round:
    from regionscribe.training.corpus import WITHHELD_SHAPE

    out = Round([], [], [], [], {})
    for task in project.held_out:
        data = predict(api, project, task)
        out.answers[task.id] = data
        shapes, texts = shape_answers(data), captions(data)
        for i, obj in enumerate(task.scene.objects):
            rid = f"o{i}"
            assert rid in shapes and rid in texts, f"task {task.id}: no shape or caption for {rid}: {data['result']}"
            if obj.shape == WITHHELD_SHAPE:
                out.star_word.append(shapes[rid] == project.word)
                out.star_caption_word.append(project.word in texts[rid].replace(",", " ").split())
            else:
                out.other_base.append(shapes[rid] == obj.shape)
                out.other_word.append(shapes[rid] == project.word)
    return out


def annotate(api: LS, project: Project) -> int:
    """Submit one annotation per pool task, every object answered in the project's convention, as an annotator
    would through Label Studio. Returns the number of regions accepted."""
    from regionscribe.training.corpus.episodes import answers_of

    regions = 0
    for task in project.pool:
        result = [item for i, obj in enumerate(task.scene.objects)
                  for item in region_results(f"a{task.id}o{i}", obj,
                                             answers_of(project.convention, obj, attributes=("color", "shape")))]
        api.call("POST", f"/api/tasks/{task.id}/annotations/", expect=201,
                 json={"result": result, "lead_time": 4.0, "was_cancelled": False})
        regions += len(task.scene.objects)
    return regions


def wait_for_tokens(backend, project_id: int, regions: int) -> dict:
    """Until the store has `regions` accepted regions of the project and a token of the served model version for
    each; the store's counts (`regionscribe demonstrations status`'s) are returned."""
    store = backend.store()
    deadline = time.monotonic() + TOKENS_TIMEOUT
    counts: dict = {}
    while time.monotonic() < deadline:
        counts = store.demonstration_counts([project_id]).get(project_id, {})
        tokens = counts.get("versions", {}).get(backend.model_version, {}).get("tokens", 0)
        if counts.get("accepted") == regions and tokens == regions:
            return counts
        time.sleep(0.5)
    raise AssertionError(
        f"the backend did not compute the region tokens of the project's {regions} accepted regions with "
        f"{backend.model_version} within {TOKENS_TIMEOUT:.0f} s (store counts: {counts}); the webhook, the "
        f"refresh job on the inference worker or its image fetch did not get through: see the demo-web and "
        f"demo-worker logs below")


def cli(backend, *args: str, env_of, src) -> dict:
    done = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=src,
                          env=env_of(REDIS_URL=backend.redis_url, DATA_DIR=str(backend.data_dir), STORE_URL="",
                                     DATABASE_URL="", DEMONSTRATIONS=str(K), PYTHONPATH=str(src)))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def no_training(backend, project: Project, api: LS) -> None:
    """No training run queued or recorded for the project, and the backend still serves the same model version."""
    import redis

    from regionscribe.backend.core.keys import TRAINING_JOB_KEY

    client = redis.Redis.from_url(backend.redis_url)
    assert client.get(TRAINING_JOB_KEY.format(project=project.id)) is None, "a training run was queued"
    store = backend.store()
    assert store.open_training_run(project.id) is None, "a training run is recorded for the project"
    health = requests.get(f"{backend.url}/health", timeout=10).json()
    assert health["model_version"] == backend.model_version, health
    [entry] = api.call("GET", f"/api/ml?project={project.id}")
    assert entry["model_version"] == backend.model_version, entry


def test_first_accepted_regions_change_the_next_predictions_without_training(api, project, backend, backends,
                                                                             e2e_logs):
    started = time.monotonic()
    stars_pool = sum(o.shape == project.convention.value for t in project.pool for o in t.scene.objects)

    # 1. before anything is accepted: the word is unknown, nothing is demonstrated
    before = predict_held_out(api, project)
    print(f"\n[e2e] demonstrations: project {project.id} calls stars {project.word!r}; {len(project.pool)} tasks "
          f"annotated ({stars_pool} stars), {len(project.held_out)} predicted, DEMONSTRATIONS={K}, model "
          f"{backend.model_version}")
    print(f"[e2e] demonstrations: before: {before.summary()}")
    assert len(before.star_word) >= HELD_OUT_STARS, before.summary()
    assert not any(before.star_word), f"the word was predicted before any region was accepted: {before.summary()}"
    assert not any(before.star_caption_word), before.summary()
    for task_id, data in before.answers.items():
        assert not data.get("demonstrations"), f"task {task_id}: demonstrations with nothing accepted: {data}"

    # 2. the annotators accept regions in the project's convention; the webhook and the worker do the rest
    submitted = time.monotonic()
    regions = annotate(api, project)
    assert regions >= ACCEPTED
    counts = wait_for_tokens(backend, project.id, regions)
    took_tokens = time.monotonic() - submitted
    status = cli(backend, "demonstrations", "status", "--project", str(project.id), "--json",
                 env_of=backends.env, src=backends.src)
    assert status["served_model_version"] == backend.model_version, status
    assert status["projects"][str(project.id)] == counts, status
    no_training(backend, project, api)

    # 3. the same predictions again
    after = predict_held_out(api, project)
    print(f"[e2e] demonstrations: after {regions} accepted regions (annotations submitted and their tokens computed "
          f"in {took_tokens:.1f} s): {after.summary()}")
    pool_ids = {t.id for t in project.pool}
    for task in project.held_out:
        shown = after.answers[task.id].get("demonstrations") or {}
        assert set(shown) == {f"o{i}" for i in range(len(task.scene.objects))}, \
            f"task {task.id}: demonstrations for {sorted(shown)}, expected every box"
        for rid, used in shown.items():
            assert len(used) == K, f"task {task.id} {rid}: {len(used)} demonstrations shown, DEMONSTRATIONS={K}"
            assert {d["task_id"] for d in used} <= pool_ids, f"task {task.id} {rid}: not an annotated task: {used}"
            assert all(d["caption"] for d in used), used
    # the accepted regions changed every prediction (what is predicted, or how sure it is), with no training run
    for task in project.held_out:
        was, now = before.answers[task.id], after.answers[task.id]
        assert (was.get("score"), was["result"]) != (now.get("score"), now["result"]), \
            f"task {task.id}: the same prediction with demonstrations as without: {now}"
    star_rate, base_rate = Round.rate(after.star_word), Round.rate(after.other_base)
    assert Round.rate(after.other_word) <= MAX_OTHER_WORD_RATE, f"other shapes named with the word: {after.summary()}"
    assert base_rate >= MIN_BASE_RATE_AFTER, f"other shapes lost their base names: {after.summary()}"
    # whether a star is shown accepted stars (with the word) is what this checkpoint's region tokens find nearest, the
    # model's side of issue 19, checked with the word below; the lookup itself is tested exactly in tests/feedback
    star_shown = {f"{task.id}/o{i}": any(d["attributes"].get("shape") == project.word
                                        for d in after.answers[task.id]["demonstrations"][f"o{i}"])
                  for task in project.held_out for i, obj in enumerate(task.scene.objects)
                  if obj.shape == project.convention.value}
    shown_rate = f"{sum(star_shown.values())}/{len(star_shown)} stars shown an accepted star"

    # a task with accepted regions of its own is never shown them
    own = project.pool[-1]
    data = predict(api, project, own)
    for rid, used in (data.get("demonstrations") or {}).items():
        assert own.id not in {d["task_id"] for d in used}, f"task {own.id} was shown its own regions: {used}"
        assert {d["task_id"] for d in used} <= pool_ids - {own.id}, used
    assert data.get("demonstrations"), data
    no_training(backend, project, api)
    print(f"[e2e] demonstrations: the test took {time.monotonic() - started:.0f} s; {shown_rate}")
    assert star_rate >= MIN_WORD_RATE, \
        f"the model did not take the project's word from the demonstrations: {after.summary()}; {shown_rate}"
    # the word comes from the demonstrations: a star answered with it was shown an accepted star (star_shown is in the
    # order of after.star_word); whether every star is shown one is the region tokens' nearest neighbours (a star
    # whose 4 nearest of the 22 accepted regions hold no star cannot take the word), printed above, not checked
    unshown = [key for key, named in zip(star_shown, after.star_word) if named and not star_shown[key]]
    assert not unshown, f"stars answered with the word without an accepted star shown: {unshown}; {star_shown}"
