"""Describe jobs: what the web process puts on the "inference" queue, what a worker does with it, and how the web
process waits for the answers.

A job carries one task: its id, its image reference, every region on it (Label Studio percent geometry of its
bounding box with its region id and labels, and for a polygon, ellipse, brush or keypoint its `shape`, see
regionscribe.backend.labelstudio.shapes) and the `Asks`. The worker fetches and decodes the image, turns the regions into pixel boxes and
masks of the decoded (EXIF-rotated) image, describes all of them in one batched pass (or, when the payload lists
which to `describe`, only those, every region still counting as a relation partner), and returns a JSON-able dict.
A worker that finds several jobs waiting answers them together (`answer_batch`: one `describe_many` pass), each
with its own dict. Regions travel in percent, not pixels, because only the worker knows the decoded image's true
size (Label Studio's original_width/height may be missing, or refer to the un-rotated file). A region whose shape
cannot be described there (an empty mask, a brush RLE of another size) comes back as {"id", "error"}; the others
are described.

Jobs and results are JSON-serialized (rq's JSONSerializer), never pickled, so a Redis shared with other software
cannot make a worker unpickle code.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from regionscribe.model.asks import Asks
from regionscribe.model.errors import RegionScribeError

from regionscribe.backend.labelstudio.fetcher import FetchError
from regionscribe.backend.labelstudio.shapes import percent_box_to_pixels
from regionscribe.backend.core.logs import request_context
from regionscribe.backend.labelstudio.shapes import Shape, ShapeError
from regionscribe.backend.core.settings import Settings

log = logging.getLogger(__name__)

JOB_FUNCTION = "regionscribe.backend.inference.jobs.describe_job"


# ------------------------------------------------------------------------------------------- the job payload


def make_payload(task_id, image_ref: str, regions: list[dict], asks: Asks, interactive: bool,
                 request_id: str | None = None, describe: list[int] | None = None) -> dict:
    """`regions`: every box of the task (all of them are relation partners); `describe`: the indices of those to
    describe (None: all of them)."""
    payload = {"task_id": task_id, "image": image_ref, "regions": regions, "asks": asdict(asks),
               "interactive": interactive, "request_id": request_id}
    if describe is not None:
        payload["describe"] = list(describe)
    return payload


# --------------------------------------------------------------------------------------- in the worker process

_BYTES_CACHE: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
_BYTES_CACHE_SECONDS = 60.0  # an annotator drawing box after box on one image: fetch it once a minute
_BYTES_CACHE_ITEMS = 8


def _fetch_bytes(state, ref: str, task_id) -> bytes:
    now = time.monotonic()
    key = f"{task_id}|{ref}"
    hit = _BYTES_CACHE.get(key)
    if hit is not None and now - hit[0] < _BYTES_CACHE_SECONDS:
        _BYTES_CACHE.move_to_end(key)
        return hit[1]
    data = state.fetcher.fetch(ref, task_id)
    _BYTES_CACHE[key] = (now, data)
    while len(_BYTES_CACHE) > _BYTES_CACHE_ITEMS:
        _BYTES_CACHE.popitem(last=False)
    return data


_ANSWERED: dict[str, dict] = {}  # job id -> its answer, computed with other jobs in one pass (answer_batch)


def describe_job(payload: dict) -> dict:
    """Runs in an inference worker. Input errors (image unreachable, not an image, bad box) come back as
    {"error": ...}; anything else raises and rq records the job as failed. When the worker answered this job
    together with others (`answer_batch`), it returns that answer."""
    from rq import get_current_job

    job = get_current_job()
    if job is not None and job.id in _ANSWERED:
        return _ANSWERED.pop(job.id)
    return describe_payloads([payload])[0]


def answer_batch(jobs: list) -> int:
    """Answer several waiting describe jobs in one batched pass (the worker's job loop calls it before running
    them); each job then returns its own answer when rq runs it. Returns how many were answered. Anything but an
    input error leaves the jobs unanswered, so each runs alone and fails alone."""
    try:
        answers = describe_payloads([job.args[0] for job in jobs])
    except Exception as exc:
        log.warning("batched pass over %d jobs failed (%s: %s); running them one by one", len(jobs),
                    type(exc).__name__, exc)
        return 0
    for job, answer in zip(jobs, answers):
        _ANSWERED[job.id] = answer
    return len(jobs)


def forget_answers(job_ids) -> None:
    """Drop answers a job loop computed but did not hand out (a job that could not run)."""
    for job_id in job_ids:
        _ANSWERED.pop(job_id, None)


def describe_payloads(payloads: list[dict]) -> list[dict]:
    """Describe every payload's task in one batched pass (`RegionDescriber.describe_many`): the vision tower over
    the images not cached yet together, then every box's questions together. Each payload gets its own answer or
    its own {"error": ...}."""
    from regionscribe.backend.inference.worker import current, refresh_model

    state = current()
    refresh_model(state, state.metrics.connection)
    started = time.perf_counter()
    answers: list[dict | None] = [None] * len(payloads)
    requests, owners = [], []
    for i, payload in enumerate(payloads):
        with request_context(payload.get("request_id")):
            prepared = _prepare(state, payload)
        if isinstance(prepared, dict):
            answers[i] = prepared
            continue
        requests.append(prepared.request)
        owners.append((i, prepared))
    described = state.describer.describe_many(requests) if requests else []
    for (i, prepared), description in zip(owners, described):
        payload = payloads[i]
        with request_context(payload.get("request_id")):  # its lines carry its request id, in a batch too
            if isinstance(description, RegionScribeError):
                answers[i] = _error(state, "input", str(description))
            else:
                answers[i] = _answer(state, payload, prepared, description, started, len(payloads))
    return answers


@dataclass
class _Prepared:
    """A payload made ready for the describer: its request, the image size, and which payload regions it holds
    (`kept`: the payload index of each box given to the describer; `region_errors`: payload index -> error)."""

    request: object  # regionscribe.model.describer.DescribeRequest
    size: tuple[int, int]
    kept: list[int]
    region_errors: dict[int, str]


def _prepare(state, payload: dict) -> "_Prepared | dict":
    """The payload's describe request, or an error answer (image unreachable or not an image, `describe` not a list
    of region indices, no region left to describe). Each region's pixel box and, for a polygon, ellipse or brush,
    its mask on the decoded (EXIF-corrected) image; a region whose shape cannot be described there (an empty mask,
    an RLE of another size) is reported on its own."""
    from regionscribe.model.describer import DescribeRequest
    from regionscribe.model.images import load_image

    try:
        data = _fetch_bytes(state, payload["image"], payload.get("task_id"))
        image = load_image(data, max_pixels=state.settings.max_image_pixels)
    except (FileNotFoundError, FetchError, RegionScribeError) as exc:
        log.info("request %s task %s: image error: %s", payload.get("request_id"), payload.get("task_id"), exc)
        return _error(state, "image", str(exc))
    width, height = image.size
    kept: list[int] = []
    boxes, masks, region_errors = [], [], {}
    for k, region in enumerate(payload["regions"]):
        try:
            box, mask = region_pixels(region, width, height)
        except ShapeError as exc:
            region_errors[k] = f"region {region.get('id')}: {exc}"
            continue
        kept.append(k)
        boxes.append(box)
        masks.append(mask)
    if region_errors:
        state.metrics.count("region_errors", len(region_errors))
        log.info("request %s task %s: %s", payload.get("request_id"), payload.get("task_id"),
                 "; ".join(region_errors.values()))
    only = payload.get("describe")
    count = len(payload["regions"])
    if only is not None and not isinstance(only, list):
        return _error(state, "input", f"`describe` must be a list of box indices, not {type(only).__name__}")
    if only is not None and any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < count for k in only):
        return _error(state, "input", f"`describe` names boxes {only!r}; there are {count} boxes "
                                      f"(indices 0..{count - 1})")
    position = {k: i for i, k in enumerate(kept)}
    wanted = range(count) if only is None else only
    targets = [position[k] for k in wanted if k in position]
    if not targets:
        if region_errors:  # nothing left to describe: the task's error is its regions' errors
            return _error(state, "input", "; ".join(region_errors.values()))
        return _error(state, "input", "no region to describe")
    request = DescribeRequest(image, boxes, Asks(**payload["asks"]), image_key=hashlib.sha256(data).hexdigest(),
                              only=None if only is None and not region_errors else targets,
                              masks=masks if any(m is not None for m in masks) else None)
    return _Prepared(request, (width, height), kept, region_errors)


def _answer(state, payload: dict, prepared: _Prepared, description, started: float, batch: int) -> dict:
    kept, region_errors = prepared.kept, prepared.region_errors
    boxes, only = prepared.request.boxes, prepared.request.only
    described = len(boxes) if only is None else len(set(only))
    log.info("request %s task %s: %s region(s) in %.3f s (cache %s, %d job(s) in the pass)",
             payload.get("request_id"), payload.get("task_id"),
             described if only is None else f"{described} of {len(boxes)}", time.perf_counter() - started,
             "hit" if description.cache_hit else "miss", batch)
    state.metrics.count("worker_jobs", outcome="ok")
    state.metrics.count("cache", result="hit" if description.cache_hit else "miss")
    state.metrics.count("regions", described)
    width, height = prepared.size
    position = {k: i for i, k in enumerate(kept)}
    out_regions = []
    for k, region in enumerate(payload["regions"]):
        if k in region_errors:
            out_regions.append({"id": region["id"], "error": region_errors[k]})
            continue
        d = description.regions[position[k]]
        out_regions.append(
            {"id": region["id"], "box": list(d.box), "caption": d.caption, "caption_confidence": d.caption_confidence,
             "detailed": d.detailed, "attributes": {k: [[v, p] for v, p in ranked] for k, ranked in d.attributes.items()},
             "relation_text": d.relation_text,
             "relation_partner": None if d.relation_partner is None else kept[d.relation_partner],
             "confidence": d.confidence})
    return {
        "task_id": payload.get("task_id"),
        "width": width,
        "height": height,
        "model_version": description.model_version,
        "cache_hit": description.cache_hit,
        "timings": {**description.timings, "job": time.perf_counter() - started},
        "worker": state.name,
        "worker_loads": state.loads,
        "regions": out_regions,
        "relations": [{"subject": kept[r.subject], "object": kept[r.object], "label": r.label, "score": r.score}
                      for r in description.relations],
    }


def region_pixels(region: dict, width: int, height: int) -> tuple[tuple[float, float, float, float], object]:
    """A payload region on a `width`×`height` image → (pixel xyxy box, boolean mask or None). A rectangle (no
    `shape` in the payload) is its bounding box, at least one pixel, inside the image, as it always was; a polygon,
    ellipse or brush its mask and the mask's bounding box; a keypoint a small box round it. Raises ShapeError."""
    shape = region.get("shape")
    if shape is None:
        x1, y1, x2, y2 = percent_box_to_pixels(region, width, height)
        # at least one pixel, inside the image: a sliver or a box dragged past the edge is still a region
        x1, y1 = min(x1, width - 1.0), min(y1, height - 1.0)
        return (x1, y1, max(x2, x1 + 1.0), max(y2, y1 + 1.0)), None
    shape = Shape.from_json(shape)
    mask = shape.mask(width, height)
    return shape.pixel_box(width, height, mask), mask


def _error(state, kind: str, message: str) -> dict:
    state.metrics.count("worker_jobs", outcome=f"{kind}_error")
    return {"error": message, "error_kind": kind}


# -------------------------------------------------------------------------------------- in the web process


@dataclass
class Outcome:
    """What came back for one job: the worker's dict, or an error message for that task."""

    value: dict | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.value is not None and "error" not in self.value

    @property
    def message(self) -> str:
        return self.error or (self.value or {}).get("error", "")


class NoWorkers(RuntimeError):
    pass


def inference_queue(connection: redis.Redis, settings: Settings) -> Queue:
    return Queue(settings.inference_queue, connection=connection, serializer=JSONSerializer)


def submit(queue: Queue, payloads: list[dict], settings: Settings) -> list[Job]:
    """Enqueue one job per payload in one round trip."""
    wait = max(1, math.ceil(settings.predict_timeout))
    data = [Queue.prepare_data(JOB_FUNCTION, args=(p,), job_id=f"rs-{uuid.uuid4().hex}", timeout=settings.job_timeout,
                               ttl=wait + 5, result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl,
                               description=f"describe task {p.get('task_id')}",
                               meta={"request_id": p.get("request_id")}) for p in payloads]
    return queue.enqueue_many(data)


def wait_for(connection: redis.Redis, jobs: list[Job], timeout: float, poll: float = 0.5) -> list[Outcome]:
    """Block until every job has an outcome or `timeout` seconds pass; never longer. A job whose worker stops
    beating (killed mid-job) gets an error as soon as that is noticed; jobs still waiting in the queue at the
    deadline are cancelled so no worker spends time on them."""
    from regionscribe.backend.inference.worker import is_alive

    deadline = time.monotonic() + timeout
    outcomes: list[Outcome | None] = [None] * len(jobs)
    pending = {job.id: i for i, job in enumerate(jobs)}
    cursors = {Result.get_key(job.id): "0-0" for job in jobs}
    next_check = time.monotonic() + poll
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        streams = {key: cursors[key] for key in (Result.get_key(jid) for jid in pending)}
        block_ms = max(1, int(min(remaining, poll) * 1000))
        for stream, entries in connection.xread(streams, block=block_ms) or []:
            stream = stream.decode() if isinstance(stream, bytes) else stream
            job_id = stream.rsplit(":", 1)[-1]
            for result_id, fields in entries:
                result_id = result_id.decode() if isinstance(result_id, bytes) else result_id
                cursors[stream] = result_id
                result = Result.restore(job_id, result_id, fields, connection=connection, serializer=JSONSerializer)
                outcome = _outcome(result)
                if outcome is not None and job_id in pending:
                    outcomes[pending.pop(job_id)] = outcome
        if pending and time.monotonic() >= next_check:
            next_check = time.monotonic() + poll
            _check_pending(connection, pending, outcomes, is_alive)
    for job_id, i in pending.items():
        outcomes[i] = Outcome(error=f"no answer from the inference workers within PREDICT_TIMEOUT={timeout:g} s "
                                    "(workers busy, stopped or too slow for this load)")
    if pending:
        _cancel_queued(connection, list(pending))
    return [o if o is not None else Outcome(error="no outcome") for o in outcomes]


def _outcome(result: Result) -> Outcome | None:
    if result.type == Result.Type.SUCCESSFUL:
        value = result.return_value
        if not isinstance(value, dict):
            return Outcome(error="the worker returned an unexpected value")
        return Outcome(value=value)
    if result.type in (Result.Type.FAILED, Result.Type.MAX_RETRIES_EXCEEDED):
        return Outcome(error=f"the worker failed on this task: {_last_line(result.exc_string)}")
    if result.type == Result.Type.STOPPED:
        return Outcome(error="the job was stopped before it finished")
    return None  # RETRIED: wait for the next result


def _check_pending(connection: redis.Redis, pending: dict[str, int], outcomes: list, is_alive) -> None:
    pipe = connection.pipeline(transaction=False)
    ids = list(pending)
    for job_id in ids:
        pipe.hmget(Job.key_for(job_id), "status", "worker_name")
    for job_id, (status, worker_name) in zip(ids, pipe.execute()):
        status = status.decode() if status else None
        worker_name = worker_name.decode() if worker_name else None
        if status is None:
            outcomes[pending.pop(job_id)] = Outcome(error="the job disappeared from Redis (expired or deleted)")
        elif status in (JobStatus.CANCELED.value, JobStatus.STOPPED.value):
            outcomes[pending.pop(job_id)] = Outcome(error=f"the job was {status}")
        elif status == JobStatus.STARTED.value and worker_name and not is_alive(connection, worker_name):
            outcomes[pending.pop(job_id)] = Outcome(
                error=f"the inference worker {worker_name} stopped while describing this task (killed or crashed); "
                      "try again")
            _record_abandoned(connection, job_id, worker_name)


def _record_abandoned(connection: redis.Redis, job_id: str, worker_name: str) -> None:
    """Move a job whose worker died to rq's FailedJobRegistry now, rather than when rq's own abandoned-job cleanup
    gets to it (job timeout + 60 s later): no job is lost silently, and rq-dashboard shows it at once."""
    from rq.job_lifecycle import record_job_failure

    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        if job.get_status() != JobStatus.STARTED:
            return
        with connection.pipeline() as pipe:
            record_job_failure(job, f"AbandonedJobError: worker {worker_name} stopped beating while running the job",
                               pipe)
            pipe.execute()
    except Exception as exc:  # best effort: rq's cleanup will get it later anyway
        log.warning("could not record job %s as failed: %s", job_id, exc)


def _cancel_queued(connection: redis.Redis, job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            if job.get_status() in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                job.cancel()
        except Exception as exc:  # the job may have expired or finished meanwhile
            log.debug("could not cancel job %s: %s", job_id, exc)


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
