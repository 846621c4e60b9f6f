"""Demonstrations served (DEMONSTRATIONS=k), with the untrained tiny describer computing real region tokens:
a refresh computes the tokens of a project's accepted regions from their images (as a prediction sees them); a
describe job shows each box the k accepted regions of other tasks nearest to it (brute force agrees), the model gets
them, and the answer and the prediction record them; a project without accepted regions is predicted as before. The
service-level test goes through /webhook, the worker's jobs and /predict."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import requests

from regionscribe.backend.core.prometheus import Metrics
from regionscribe.backend.core.settings import Settings
from regionscribe.backend.feedback.events import handle_event
from regionscribe.backend.inference import state as worker_state
from regionscribe.backend.inference.answers import describe_payloads, region_pixels
from regionscribe.backend.inference.demonstration_index import forget_indexes
from regionscribe.backend.inference.demonstrations import refresh
from regionscribe.backend.inference.submit import make_payload
from regionscribe.backend.labelstudio.fetcher import ImageFetcher
from regionscribe.backend.labelstudio.labeling_config import ProjectConfig
from regionscribe.backend.store import DemonstrationInput
from regionscribe.model.images import load_image

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 200, 20), (120, 40, 160)]


@pytest.fixture(scope="module")
def describer():
    from regionscribe.training.stages import untrained_describer

    return untrained_describer("tiny", seed=0)


def ingest(store, payload):
    return handle_event(Settings(), payload, store=store, connection=None)


def annotate(store, fake_ls, ls, project, tasks, color_of=lambda i: COLORS[i % len(COLORS)]):
    """One annotation per task, two regions each, on an image of its own served by the fake Label Studio."""
    refs = {}
    for i, task in enumerate(tasks):
        ref = f"/data/upload/{project}/task-{task}.png"
        fake_ls.files[ref] = ls.png((96, 64), color_of(i))
        refs[task] = ref
        result = (ls.region(f"a{task}", x=10, y=10, w=30, h=40, caption=f"object {i}", color="red", size=(96, 64))
                  + ls.region(f"b{task}", x=55, y=30, w=30, h=50, caption=f"second {i}", shape="circle",
                              size=(96, 64)))
        ingest(store, ls.annotation_event(project, task, ls.new_id(), result, image=ref, updated=i))
    return refs


@pytest.fixture
def worker(describer, store, store_url, fake_ls, tmp_path, monkeypatch):
    """This process as an inference worker: the describer, the store and Label Studio's uploads."""
    settings = Settings(store_url=store_url, data_dir=str(tmp_path), label_studio_url=fake_ls.url,
                        label_studio_api_key="feedback-legacy-token-0123", model_dir="tiny-untrained",
                        demonstrations=2)
    fetcher = ImageFetcher(settings)
    state = worker_state.WorkerState(settings=settings, describer=describer, fetcher=fetcher, metrics=Metrics(None),
                                     name="in-process", loads=1)
    monkeypatch.setattr(worker_state, "_STATE", state)
    forget_indexes()
    from regionscribe.backend.store import Store

    monkeypatch.setitem(Store._shared, (__import__("os").getpid(), store_url, str(tmp_path / "images")), store)
    yield state
    forget_indexes()


def query_token(describer, data: bytes, region: dict) -> np.ndarray:
    image = load_image(data)
    box, mask = region_pixels(region, *image.size)
    return describer.region_tokens(image, [box], None if mask is None else [mask])[0]


def test_refresh_computes_each_accepted_regions_token_from_its_image(worker, store, fake_ls, ls):
    describer, fetcher = worker.describer, worker.fetcher
    p = ls.new_id()
    tasks = [ls.new_id() for _ in range(3)]
    refs = annotate(store, fake_ls, ls, p, tasks)
    ingest(store, ls.annotation_event(p, ls.new_id(), ls.new_id(), ls.region("nothing", caption=None, size=(96, 64)),
                                      image=refs[tasks[0]]))  # a box without an answer: no demonstration
    counts = refresh(describer, fetcher, store, p, max_pixels=10 ** 8)
    assert (counts["computed"], counts["written"], counts["errors"], counts["more"]) == (6, 6, 0, False)
    rows = {(r.task_id, r.region_id): r for r in store.demonstrations_since(p, describer.model_version)}
    assert len(rows) == 6
    row = rows[(tasks[1], f"b{tasks[1]}")]
    assert (row.caption, row.attributes) == ("second 1", {"shape": "circle"})  # the question the model is asked
    expected = query_token(describer, fake_ls.files[refs[tasks[1]]], {"x": 55, "y": 30, "width": 30, "height": 50,
                                                                       "rotation": 0})
    assert np.frombuffer(row.token, np.float32) == pytest.approx(expected, abs=1e-5)
    assert refresh(describer, fetcher, store, p, max_pixels=10 ** 8)["missing"] == 0  # nothing left
    # an image that cannot be fetched is an error for its regions, the others are computed
    broken = ls.new_id()
    ingest(store, ls.annotation_event(p, broken, ls.new_id(), ls.region("x", caption="lost", size=(96, 64)),
                                      image="/data/upload/missing.png"))
    counts = refresh(describer, fetcher, store, p, max_pixels=10 ** 8)
    assert (counts["missing"], counts["errors"], counts["written"]) == (1, 1, 0)
    # force: every accepted region again (same tokens, new rows)
    high = max(rows[k].id for k in rows)
    counts = refresh(describer, fetcher, store, p, max_pixels=10 ** 8, force=True, limit=4)
    assert (counts["written"], counts["more"]) == (4, True)
    assert len(store.demonstrations_since(p, describer.model_version, after_id=high)) == 4


def _payload(config, project_id, task, ref, region_id="q", x=12.0, y=12.0):
    regions = [{"id": region_id, "x": x, "y": y, "width": 30.0, "height": 40.0, "rotation": 0.0,
                "labels": ["Object"]}]
    return make_payload(task, ref, regions, config.asks(interactive=True), True, request_id=uuid.uuid4().hex,
                        project_id=project_id)


def test_a_batch_of_predictions_with_demonstrations_sends_its_images_through_the_tower_together(
        worker, store, fake_ls, ls, monkeypatch):
    """Looking demonstrations up needs each box's region token; the worker encodes the batch's images in one pass
    first, so neither the lookups nor describe_many encode an image alone."""
    from regionscribe.model import describer as describer_module

    config = ProjectConfig.parse(ls.XML)
    p = ls.new_id()
    tasks = [ls.new_id() for _ in range(5)]
    refs = annotate(store, fake_ls, ls, p, tasks)
    refresh(worker.describer, worker.fetcher, store, p, max_pixels=10 ** 8)
    worker.describer._cache.clear()
    passes = []
    batched, alone = describer_module.encode_batch, describer_module.encode
    monkeypatch.setattr(describer_module, "encode_batch", lambda m, images: passes.append(len(images))
                        or batched(m, images))
    monkeypatch.setattr(describer_module, "encode", lambda m, image: passes.append(1) or alone(m, image))
    answers = describe_payloads([_payload(config, p, t, refs[t]) for t in tasks[:3]])
    assert passes == [3]
    assert all(len(a["regions"][0]["demonstrations"]) == 2 for a in answers)


def test_a_prediction_is_shown_the_nearest_accepted_regions_of_other_tasks(worker, store, fake_ls, ls):
    describer = worker.describer
    config = ProjectConfig.parse(ls.XML)
    p = ls.new_id()
    tasks = [ls.new_id() for _ in range(5)]
    refs = annotate(store, fake_ls, ls, p, tasks)
    refresh(describer, worker.fetcher, store, p, max_pixels=10 ** 8)
    own = tasks[0]  # the task being predicted has accepted regions of its own: never shown
    payload = _payload(config, p, own, refs[own])

    [answer] = describe_payloads([payload])
    shown = answer["regions"][0]["demonstrations"]
    assert len(shown) == 2 and all(d["task_id"] != own for d in shown)
    assert answer["timings"]["demonstrations"] > 0
    # the nearest two by cosine of the region tokens, among the other tasks' accepted regions (brute force)
    query = query_token(describer, fake_ls.files[refs[own]], payload["regions"][0])
    rows = [r for r in store.demonstrations_since(p, describer.model_version) if r.task_id != own]
    scores = [float(np.dot(query, np.frombuffer(r.token, np.float32))
                    / np.linalg.norm(query) / np.linalg.norm(np.frombuffer(r.token, np.float32))) for r in rows]
    best = sorted(zip(scores, rows), key=lambda sr: -sr[0])[:2]
    assert [(d["task_id"], d["region_id"]) for d in shown] == [(r.task_id, r.region_id) for _, r in best]
    assert [d["similarity"] for d in shown] == pytest.approx([s for s, _ in best], abs=1e-3)
    by_key = {(r.task_id, r.region_id): r for r in rows}
    assert all(d["caption"] == by_key[(d["task_id"], d["region_id"])].caption for d in shown)

    # the model was given them: its rankings differ from the same request without demonstrations
    plain = worker_state.WorkerState(settings=worker.settings.replace(demonstrations=0), describer=describer,
                                     fetcher=worker.fetcher, metrics=Metrics(None), name="plain", loads=1)
    worker_state._STATE = plain
    [without] = describe_payloads([payload])
    assert "demonstrations" not in without["regions"][0]
    assert without["regions"][0]["attributes"] != answer["regions"][0]["attributes"]

    # the prediction and the suggestion the store remembers name them
    from regionscribe.backend.feedback.suggestions import suggestions_from_answer

    regions = config.regions_from_results(ls.region("q", x=12, y=12, w=30, h=40, size=(96, 64)))
    prediction = config.build_prediction(regions, answer, interactive=True)
    assert not config.validate(prediction)
    assert prediction["demonstrations"] == {"q": shown}
    [suggestion] = suggestions_from_answer(config, regions, answer, own)
    store.record_suggestions(p, [suggestion])
    assert store.suggestions(p, own)["q"].demonstrations == shown


def test_a_project_without_accepted_regions_predicts_as_before(worker, store, fake_ls, ls, monkeypatch):
    describer = worker.describer
    config = ProjectConfig.parse(ls.XML)
    p, task = ls.new_id(), ls.new_id()
    ref = f"/data/upload/{p}/alone.png"
    fake_ls.files[ref] = ls.png((96, 64), COLORS[2])
    payload = _payload(config, p, task, ref)
    calls = []
    original = type(describer).region_tokens
    monkeypatch.setattr(type(describer), "region_tokens", lambda self, *a, **k: calls.append(1) or original(
        self, *a, **k))
    [answer] = describe_payloads([payload])
    worker_state._STATE = worker_state.WorkerState(settings=worker.settings.replace(demonstrations=0),
                                                   describer=describer, fetcher=worker.fetcher,
                                                   metrics=Metrics(None), name="plain", loads=1)
    [before] = describe_payloads([payload])
    assert calls == []  # no region token computed: nothing to compare it with
    assert "demonstrations" not in answer["regions"][0] and "demonstrations" not in answer["timings"]
    drop = ("timings", "cache_hit", "worker")
    assert {k: v for k, v in answer.items() if k not in drop} == {k: v for k, v in before.items() if k not in drop}


# ------------------------------------------------------------------------------------------- through the service


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_webhook_annotations_become_demonstrations_of_the_next_prediction(make_settings, serve, spawn_worker,
                                                                          redis_client, fake_ls, ls, wait):
    """/webhook stores annotations of a project and queues their refresh jobs; the inference worker computes the
    tokens; /predict on another task is shown the nearest of them (and never its own task's), the prediction lists
    them and the store's suggestion record keeps them."""
    tag = uuid.uuid4().hex[:8]
    settings = make_settings(inference_queue=f"inference-{tag}", demonstrations=3, predict_timeout=60.0)
    server = serve(settings)
    worker = spawn_worker(settings, [settings.inference_queue],
                          env={"INFERENCE_QUEUE": settings.inference_queue, "DEMONSTRATIONS": "3"})
    worker.wait_ready(redis_client)

    p = ls.new_id()
    tasks = [ls.new_id() for _ in range(4)]
    target = tasks[0]
    for i, task in enumerate(tasks):
        ref = f"/data/upload/{p}/{task}.png"
        fake_ls.files[ref] = ls.png((96, 64), COLORS[i])
        result = (ls.region(f"a{i}", x=10, y=10, w=30, h=40, caption=f"object {i}", color="red", size=(96, 64))
                  + ls.region(f"b{i}", x=55, y=30, w=30, h=50, caption=f"second {i}", shape="circle", size=(96, 64)))
        response = requests.post(f"{server.url}/webhook", json=ls.annotation_event(p, task, ls.new_id(), result,
                                                                                    image=ref, updated=i), timeout=10)
        assert response.status_code == 201, response.text

    from regionscribe.backend.store import Store

    store = Store.shared(settings)
    version = "tiny-untrained-0"
    wait(lambda: len(store.demonstrations_since(p, version)) == 8, timeout=60)
    assert store.accepted_regions(p, version) == []

    body = {"tasks": [{"id": target, "data": {"image": f"/data/upload/{p}/{target}.png"}}], "project": f"{p}.1700",
            "label_config": ls.XML, "params": {"context": {"result": ls.region("new", x=12, y=12, w=30, h=40,
                                                                              size=(96, 64))}}}
    response = requests.post(f"{server.url}/predict", json=body, timeout=90)
    assert response.status_code == 200, response.text
    [prediction] = response.json()["results"]
    assert prediction.get("result") and not prediction.get("error"), prediction
    shown = prediction["demonstrations"]["new"]
    assert len(shown) == 3 and all(d["task_id"] in tasks[1:] for d in shown)
    assert all(d["caption"] for d in shown)
    assert store.suggestions(p, target)["new"].demonstrations == shown
    # a project none of whose regions is accepted yet: the same request, predicted as before
    body["project"] = f"{ls.new_id()}.1700"
    [plain] = requests.post(f"{server.url}/predict", json=body, timeout=90).json()["results"]
    assert plain.get("result") and "demonstrations" not in plain


# ------------------------------------------------------------------------------- refreshes queued by the workers


def test_a_refresh_goes_on_in_chunks_and_is_queued_once_at_a_time(worker, store, fake_ls, ls, redis_client,
                                                                   monkeypatch):
    from rq import Queue
    from rq.serializers import JSONSerializer

    from regionscribe.backend.core.keys import DEMONSTRATIONS_REFRESH_KEY
    from regionscribe.backend.inference import demonstrations
    from regionscribe.backend.inference.demonstration_jobs import queue_refresh, refresh_demonstrations_job

    queue_name = f"inference-{uuid.uuid4().hex[:8]}"
    worker.settings = worker.settings.replace(inference_queue=queue_name)
    worker.metrics = Metrics(redis_client)
    queue = Queue(queue_name, connection=redis_client, serializer=JSONSerializer)
    p = ls.new_id()
    annotate(store, fake_ls, ls, p, [ls.new_id() for _ in range(3)])  # 6 accepted regions
    version = worker.describer.model_version
    mark = DEMONSTRATIONS_REFRESH_KEY.format(project=p, version=version)

    job_id = queue_refresh(redis_client, worker.settings, p, version)
    assert job_id and queue_refresh(redis_client, worker.settings, p, version) is None  # one at a time
    assert queue.count == 1 and redis_client.exists(mark)
    monkeypatch.setattr(demonstrations, "REFRESH_CHUNK", 3)
    first = refresh_demonstrations_job(*queue.jobs[0].args)  # what the worker runs: a chunk, the rest queued
    assert (first["written"], first["more"]) == (4, True)  # 3 regions, and the 4th changed with the 3rd
    assert queue.count == 2 and redis_client.exists(mark)
    continued = queue.jobs[1].args
    assert continued[2] == first["after_seq"] > 0
    second = refresh_demonstrations_job(*continued)
    assert (second["written"], second["more"]) == (2, False)
    assert not redis_client.exists(mark)  # done: the next trigger queues a new one
    assert len(store.demonstrations_since(p, version)) == 6
    queue.empty()


def test_regions_with_nothing_to_show_do_not_hold_a_refresh_up(worker, store, fake_ls, ls, monkeypatch):
    """Accepted regions without an answer the model is asked (a value the config does not offer) and regions whose
    image cannot be fetched are passed over: a chunked refresh still ends, and computes the others."""
    from regionscribe.backend.inference import demonstrations

    p = ls.new_id()
    ref = f"/data/upload/{p}/one.png"
    fake_ls.files[ref] = ls.png((96, 64), COLORS[0])
    for i in range(5):
        ingest(store, ls.annotation_event(p, ls.new_id(), ls.new_id(), ls.region("u", color="ultraviolet",
                                                                                size=(96, 64)), image=ref))
    ingest(store, ls.annotation_event(p, ls.new_id(), ls.new_id(), ls.region("gone", caption="x", size=(96, 64)),
                                      image=f"/data/upload/{p}/missing.png"))
    good = ls.new_id()
    ingest(store, ls.annotation_event(p, good, ls.new_id(), ls.region("g", caption="a red square", size=(96, 64)),
                                      image=ref))
    after, chunks, totals = 0, 0, {"without_answer": 0, "errors": 0, "written": 0}
    while True:
        counts = demonstrations.refresh(worker.describer, worker.fetcher, store, p, max_pixels=10 ** 8, limit=2,
                                        after_seq=after)
        chunks += 1
        totals = {k: totals[k] + counts[k] for k in totals}
        assert chunks < 10, "the refresh goes round in circles"
        if not counts["more"]:
            break
        after = counts["after_seq"]
    assert totals == {"without_answer": 5, "errors": 1, "written": 1} and chunks == 4
    assert [r.task_id for r in store.demonstrations_since(p, worker.describer.model_version)] == [good]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_worker_that_starts_computes_what_the_store_lacks(make_settings, store, spawn_worker, redis_client,
                                                            fake_ls, ls, wait):
    """Annotations stored while no worker ran (the webhook's jobs lost with Redis, or a new model version): a
    worker that starts queues the refresh of every project with accepted regions."""
    tag = uuid.uuid4().hex[:8]
    settings = make_settings(inference_queue=f"inference-{tag}", demonstrations=2)
    p = ls.new_id()
    annotate(store, fake_ls, ls, p, [ls.new_id() for _ in range(2)])
    assert store.demonstrations_since(p, "tiny-untrained-0") == []
    worker = spawn_worker(settings, [settings.inference_queue],
                          env={"INFERENCE_QUEUE": settings.inference_queue, "DEMONSTRATIONS": "2"})
    worker.wait_ready(redis_client)
    wait(lambda: len(store.demonstrations_since(p, "tiny-untrained-0")) == 4, timeout=60)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_rebuild_command(store, store_url, fake_ls, ls, tmp_path, settings_env, make_settings):
    import subprocess
    import sys
    from pathlib import Path

    p = ls.new_id()
    annotate(store, fake_ls, ls, p, [ls.new_id() for _ in range(2)])
    env = {**settings_env(make_settings(redis_url=None)), "REDIS_URL": ""}
    root = Path(__file__).resolve().parents[2]

    def cli(*args, returncode=0):
        done = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "demonstrations", *args,
                               "--store", store_url, "--json"], env=env, cwd=root, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == returncode, done.stderr[-3000:]
        return json.loads(done.stdout) if returncode == 0 else done.stderr

    out = cli("rebuild", "--project", str(p), "--quiet")
    assert out["model_version"] == "tiny-untrained-0"
    assert {k: out["projects"][str(p)][k] for k in ("missing", "written", "errors")} == {
        "missing": 4, "written": 4, "errors": 0}
    assert cli("rebuild", "--project", str(p), "--quiet")["projects"][str(p)]["missing"] == 0
    forced = cli("rebuild", "--project", str(p), "--force", "--quiet")["projects"][str(p)]
    assert forced["written"] == 4
    status = cli("status", "--project", str(p))
    assert status["projects"][str(p)] == {"accepted": 4, "versions": {"tiny-untrained-0": {"tokens": 4,
                                                                                          "retired": 0}}}

    # an older version's tokens (left by the version served before a promotion): prune deletes them
    old = [DemonstrationInput(task_id=m.record.task_id, region_id=m.record.region_id,
                              annotation_id=m.record.annotation_id, content_digest=m.content_digest,
                              token=np.ones(8, np.float32).tobytes(), caption=m.record.caption, attributes={})
           for m in store.accepted_regions(p, "tiny-old")]
    assert store.write_demonstrations(p, "tiny-old", old) == {"written": 4, "skipped": 0}
    refused = cli("prune", returncode=2)  # no Redis: which version the workers serve is unknown
    assert "name the versions to keep with --keep" in refused
    assert set(store.demonstration_counts([p])[p]["versions"]) == {"tiny-old", "tiny-untrained-0"}
    assert cli("prune", "--keep", "tiny-untrained-0") == {"kept": ["tiny-untrained-0"],
                                                          "projects": {str(p): {"tiny-old": 4}}}
    assert cli("status", "--project", str(p))["projects"][str(p)] == status["projects"][str(p)]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_prune_keeps_every_version_a_worker_serves(store, store_url, fake_ls, ls, own_redis, settings_env,
                                                   make_settings):
    """While workers switch to a promoted version, the announced version and each live worker's are kept."""
    import subprocess
    import sys
    from pathlib import Path

    import redis

    from regionscribe.backend.core.keys import MODEL_VERSION_KEY, WORKER_KEY

    p = ls.new_id()
    annotate(store, fake_ls, ls, p, [ls.new_id()])
    for version in ("v-old", "v-serving", "v-announced"):
        items = [DemonstrationInput(task_id=m.record.task_id, region_id=m.record.region_id,
                                    annotation_id=m.record.annotation_id, content_digest=m.content_digest,
                                    token=np.ones(8, np.float32).tobytes(), caption=m.record.caption, attributes={})
                 for m in store.accepted_regions(p, version)]
        assert store.write_demonstrations(p, version, items)["written"] == 2
    settings = make_settings(redis_url=own_redis.url)
    connection = redis.Redis.from_url(own_redis.url)
    connection.set(MODEL_VERSION_KEY, "v-announced")
    connection.set(WORKER_KEY.format(name="w1"), json.dumps({"model_version": "v-serving", "state": "ready",
                                                             "queues": [settings.inference_queue]}), ex=60)
    connection.set(WORKER_KEY.format(name="w2"), json.dumps({"model_version": "v-old", "state": "ready",
                                                             "queues": ["training"]}), ex=60)  # serves no prediction
    done = subprocess.run([sys.executable, "-m", "regionscribe.backend.ops.cli", "demonstrations", "prune", "--store",
                           store_url], env=settings_env(settings), cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kept v-announced (served), v-serving (served)" in done.stdout
    assert f"project {p}: v-old: 2 rows deleted" in done.stdout
    assert set(store.demonstration_counts([p])[p]["versions"]) == {"v-announced", "v-serving"}


def test_a_lookup_that_fails_leaves_the_prediction_as_it_was(worker, store, fake_ls, ls, caplog):
    """The store unreachable from the worker: the box is described without demonstrations, with a warning."""
    config = ProjectConfig.parse(ls.XML)
    p = ls.new_id()
    tasks = [ls.new_id() for _ in range(2)]
    refs = annotate(store, fake_ls, ls, p, tasks)
    refresh(worker.describer, worker.fetcher, store, p, max_pixels=10 ** 8)
    payload = _payload(config, p, tasks[0], refs[tasks[0]])
    [shown] = describe_payloads([payload])
    assert shown["regions"][0]["demonstrations"]
    forget_indexes()
    worker.settings = worker.settings.replace(store_url="postgresql://nobody@127.0.0.1:1/nothing")
    [answer] = describe_payloads([payload])
    assert not answer.get("error") and answer["regions"][0]["caption"] is not None
    assert "demonstrations" not in answer["regions"][0]
    assert any("predicted without demonstrations: StoreError" in r.getMessage() for r in caplog.records)
